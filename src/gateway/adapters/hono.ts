/**
 * Hono 4 embedding: `app.use(honoMiddleware(gateway))`. A response body streams after the
 * middleware returns, so the handle ends when the body does: the body is passed through a stream
 * that counts chunks, ends the handle at its end and aborts it when the runtime cancels it (the
 * client went away; @hono/node-server cancels on the socket's 'close').
 */

import { InvalidArgumentError } from '../../errors.js'
import type { Gateway, RequestHandle } from '../gateway.js'
import type { Priority, Rejection } from '../types.js'
import {
  checkGateway,
  checkPriorityOption,
  classifyError,
  contextOf,
  errorMessage,
  isHandle,
  kJsonContentType,
  PRIORITY_HEADER,
  parsePriority,
  queue,
  rejectionBody,
  settleThrown,
  type VllmContext,
} from './common.js'

/** Hono variables the middleware sets: `new Hono<{ Variables: VllmVariables }>()`. */
export type VllmVariables = { vllm: VllmContext }

/** The members of a Hono context the middleware uses. */
export interface HonoContextLike {
  req: { header(name: string): string | undefined; raw: Request }
  res: Response
  error: Error | undefined
  set(key: 'vllm', value: VllmContext): void
}

export interface HonoAdapterOptions {
  /** A request's priority (default: the integer in its `x-priority` header, else 0). */
  priority?: (c: HonoContextLike) => Priority
}

/** nginx's "client closed request": answered to nobody, the client has gone. */
const kClientClosed = 499

function headerPriority(c: HonoContextLike): Priority {
  return parsePriority(c.req.header(PRIORITY_HEADER))
}

function rejectionResponse(r: Rejection): Response {
  return new Response(rejectionBody(r), {
    status: r.status,
    headers: { 'retry-after': String(r.retryAfterS), 'content-type': kJsonContentType },
  })
}

/** `body` passed through: each chunk is one for `handle`; its end, error or cancel ends `handle`. */
function trackBody(
  body: ReadableStream<Uint8Array>,
  handle: RequestHandle,
  status: number,
): ReadableStream<Uint8Array> {
  const reader = body.getReader()
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        let step: Awaited<ReturnType<typeof reader.read>>
        try {
          step = await reader.read()
        } catch (err) {
          const kind = classifyError(err)
          if (kind === 'abort') handle.abort()
          else handle.fail(kind ?? 'server-error', errorMessage(err), status)
          controller.error(err)
          return
        }
        if (step.done) {
          handle.end(status)
          controller.close()
          return
        }
        handle.chunk()
        controller.enqueue(step.value)
      },
      cancel(reason) {
        handle.abort()
        return reader.cancel(reason)
      },
    },
    // Pull only when the runtime reads: no chunk is taken from upstream ahead of the client.
    { highWaterMark: 0 },
  )
}

/**
 * Hono middleware: admits the request, `c.set('vllm', { replica, url, handle })`, runs the rest of
 * the chain; answers 429/503 with `Retry-After` itself (the handler never runs).
 */
export function honoMiddleware(
  gateway: Gateway,
  options?: HonoAdapterOptions,
): (c: HonoContextLike, next: () => Promise<void>) => Promise<Response | undefined> {
  checkGateway(gateway, 'honoMiddleware')
  if (options !== undefined && (options === null || typeof options !== 'object'))
    throw new InvalidArgumentError('honoMiddleware: options must be an object')
  checkPriorityOption(options?.priority, 'honoMiddleware')
  const priorityOf = options?.priority ?? headerPriority
  return async function vllmHonoMiddleware(c, next) {
    const signal = c.req.raw.signal
    const priority = priorityOf(c)
    let admitted = gateway.tryBegin(priority)
    if (admitted === null) {
      try {
        admitted = await queue(gateway, priority, signal)
      } catch (err) {
        if (signal.aborted) return new Response(null, { status: kClientClosed })
        throw err
      }
    }
    if (!isHandle(admitted)) return rejectionResponse(admitted)
    const handle = admitted
    if (signal.aborted) {
      // Granted just as the client left.
      handle.abort()
      return new Response(null, { status: kClientClosed })
    }
    c.set('vllm', contextOf(handle))
    // Hono has no abort hook: the request's signal (aborted by @hono/node-server when the socket
    // closes before the response finished) releases the slot even while the handler still runs.
    signal.addEventListener('abort', () => handle.abort(), { once: true })
    try {
      await next()
    } catch (err) {
      // Hono's onError takes only Error instances: anything else escapes compose, and the runtime
      // answers it with a 500.
      settleThrown(handle, signal.aborted ? new DOMException('client gone', 'AbortError') : err, 500)
      throw err
    }
    const res = c.res
    if (signal.aborted) handle.abort()
    else if (c.error !== undefined) settleThrown(handle, c.error, res.status)
    else if (res.body === null) handle.end(res.status)
    else c.res = new Response(trackBody(res.body, handle, res.status), res)
    return undefined
  }
}
