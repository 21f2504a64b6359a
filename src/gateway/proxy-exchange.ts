/**
 * One client request through the standalone proxy, as an undici dispatch handler: admission
 * (at once or after queueing), the upstream attempt, failover, and the response streamed back.
 *
 * - Failover: an upstream that fails before the client got a byte (refused, reset, headers
 *   timeout) is excluded and the request retried on another replica, each replica at most once.
 *   The response head is held back until the first body byte so that a replica that sends headers
 *   and then dies is still retried.
 * - Pass-through: status, headers (minus hop-by-hop) and body go back unchanged, SSE chunks byte
 *   for byte as they arrive, with the client socket's backpressure (`controller.pause()`/`resume()`).
 * - A replica that dies mid-stream: the client's response is destroyed (it sees an error).
 * - Client abort: the upstream request is aborted and the admission slot released.
 *
 * Why `pool.dispatch` with a handler object: `pool.request` wraps every response in a Readable
 * and a promise and `pool.stream` commits to the client's response at the upstream's headers (no
 * failover after them); `dispatch` hands each socket chunk straight to `res.write`, and one object
 * per request serves as the handler and the request's state. It uses the v2 handler callbacks
 * (`onResponseStart`...), the only ABI undici 8 keeps (nodejs/undici#4786); undici 7 bridges
 * them with one small wrapper.
 *
 * Per request: the exchange, the forwarded header array, the dispatch options; per chunk nothing.
 * Listeners are module-level functions (`this` is the emitter), not closures; nothing logs.
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Dispatcher, Pool } from 'undici'
import { AdmissionRejectedError, type Gateway, RequestHandle } from './gateway.js'
import {
  describe,
  forwardRequestHeaders,
  hopByHop,
  isTimeout,
  sendError,
  sendRejection,
} from './proxy-http.js'
import type { Rejection } from './types.js'

export interface Upstream {
  name: string
  pool: Pool
  /** The upstream URL's path (without trailing slash), prefixed to every request path. */
  prefix: string
}

/** Retry-After for requests refused while draining (seconds). */
const kDrainRetryAfterS = 5
const kExchange = Symbol('vllm-monitor.gateway.exchange')

type Carrier = { [kExchange]?: Exchange }

/** Scratch for the response head: `writeHead` consumes it synchronously. */
const kHead: Array<string | string[]> = []

function onReqData(this: IncomingMessage, chunk: Buffer): void {
  const ex = (this as Carrier)[kExchange]
  if (ex === undefined || ex.settled) return
  ex.bodyBytes += chunk.length
  if (ex.bodyBytes > ex.core.maxBodyBytes) {
    ex.tooLarge()
    return
  }
  if (ex.body === null) ex.body = chunk
  else if (ex.parts === null) ex.parts = [ex.body, chunk]
  else ex.parts.push(chunk)
}

function onReqEnd(this: IncomingMessage): void {
  const ex = (this as Carrier)[kExchange]
  if (ex === undefined || ex.settled) return
  if (ex.parts !== null) {
    ex.body = Buffer.concat(ex.parts)
    ex.parts = null
  }
  ex.admit()
}

/** The client's response closed: after `end()` that is normal; before, the client went away. */
function onResClose(this: ServerResponse): void {
  const ex = (this as Carrier)[kExchange]
  if (ex !== undefined && !ex.settled) ex.kill()
}

function onResDrain(this: ServerResponse): void {
  ;(this as Carrier)[kExchange]?.controller?.resume()
}

const kClientGone = new Error('the client closed the connection')

/**
 * One client request: its forwarded headers and body, its admission handle, and the undici
 * handler for the current attempt.
 */
class Exchange implements Dispatcher.DispatchHandler {
  readonly core: ProxyCore
  readonly req: IncomingMessage
  readonly res: ServerResponse
  readonly headers: string[]
  priority = 0
  body: Buffer | null = null
  parts: Buffer[] | null = null
  bodyBytes = 0
  handle: RequestHandle | null = null
  controller: Dispatcher.DispatchController | null = null
  status = 0
  statusText = ''
  upstreamHeaders: Record<string, string | string[] | undefined> | null = null
  sse = false
  /** The response head went to the client: from here on no failover. */
  headSent = false
  /** The client's response is finished, destroyed or about to be; later callbacks are ignored. */
  settled = false
  excluded: Set<string> | null = null
  lastError: Error | null = null
  ac: AbortController | null = null

  constructor(core: ProxyCore, req: IncomingMessage, res: ServerResponse) {
    this.core = core
    this.req = req
    this.res = res
    const headers: string[] = []
    this.priority = forwardRequestHeaders(req.rawHeaders, headers)
    this.headers = headers
  }

  /**
   * The body passed `maxBodyBytes` before it was admitted: 413, and the connection closes (the
   * rest of the body is not read into memory).
   */
  tooLarge(): void {
    if (this.settled) return
    this.settled = true
    this.body = null
    this.parts = null
    sendError(
      this.res,
      413,
      'invalid_request_error',
      'request_too_large',
      `request body larger than ${this.core.maxBodyBytes} bytes`,
      null,
      true,
    )
    this.req.pause()
    this.core.done(this)
  }

  /** Picks a replica and admits the request (at once, or after queueing), then sends it. */
  admit(): void {
    if (this.settled) return
    const r = this.core.gateway.tryBegin(this.priority, this.excluded ?? undefined)
    if (r === null) this.queue()
    else if (r instanceof RequestHandle) this.send(r)
    else this.rejected(r)
  }

  private queue(): void {
    const ac = new AbortController()
    this.ac = ac
    this.core.gateway.begin(this.priority, ac.signal, this.excluded ?? undefined).then(
      (h) => {
        this.ac = null
        if (this.settled) h.abort()
        else this.send(h)
      },
      (err: unknown) => {
        this.ac = null
        if (this.settled) return
        if (err instanceof AdmissionRejectedError) this.rejected(err.rejection)
        else this.internalError(err)
      },
    )
  }

  private rejected(r: Rejection): void {
    if (this.lastError !== null && r.reason === 'no-replica') {
      // Every replica that could take it failed before answering.
      const err = this.lastError
      const timeout = isTimeout(err)
      const code = (err as { code?: unknown }).code
      this.settle()
      sendError(
        this.res,
        timeout ? 504 : 502,
        'upstream_error',
        typeof code === 'string' ? code : 'upstream_error',
        `no replica answered: ${describe(err)}`,
        null,
        this.core.draining,
      )
      return
    }
    this.settle()
    sendRejection(this.res, r, this.core.draining)
  }

  private internalError(err: unknown): void {
    this.settle()
    sendError(
      this.res,
      500,
      'server_error',
      'gateway_error',
      String((err as Error)?.message ?? err),
      null,
      false,
    )
  }

  private send(h: RequestHandle): void {
    const up = this.core.upstreams.get(h.replica)
    if (up === undefined) {
      h.abort()
      this.internalError(new Error(`gateway picked ${h.replica}, which has no upstream`))
      return
    }
    this.handle = h
    const url = this.req.url ?? '/'
    up.pool.dispatch(
      {
        path: up.prefix === '' ? url : up.prefix + url,
        method: this.req.method as Dispatcher.HttpMethod,
        headers: this.headers,
        body: this.body,
      },
      this,
    )
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.controller = controller
    if (this.settled) controller.abort(kClientGone)
  }

  onResponseStart(
    _controller: Dispatcher.DispatchController,
    statusCode: number,
    headers: Record<string, string | string[] | undefined>,
    statusMessage?: string,
  ): void {
    this.status = statusCode
    this.statusText = statusMessage ?? ''
    this.upstreamHeaders = headers
    const ct = headers['content-type']
    this.sse = typeof ct === 'string' && ct.startsWith('text/event-stream')
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.settled) return
    if (!this.headSent) this.writeHead()
    const h = this.handle as RequestHandle
    if (this.sse) h.chunk()
    else h.firstByte()
    if (!this.res.write(chunk)) {
      controller.pause()
      this.res.once('drain', onResDrain)
    }
  }

  onResponseEnd(): void {
    if (this.settled) return
    if (!this.headSent) this.writeHead()
    this.settle()
    this.res.end()
    ;(this.handle as RequestHandle).end(this.status)
  }

  onResponseError(_controller: Dispatcher.DispatchController, err: Error): void {
    if (this.settled) return
    const h = this.handle as RequestHandle
    this.controller = null
    if (!this.headSent) {
      if ((err as { code?: unknown }).code === 'UND_ERR_INVALID_ARG') {
        // undici refused the request itself (`OPTIONS *`, an absolute-form target...): nothing was
        // sent, and counting it against each replica in turn let a few such requests open every
        // replica's breaker.
        h.abort()
        this.handle = null
        this.settle()
        sendError(
          this.res,
          400,
          'invalid_request_error',
          'invalid_request',
          describe(err),
          null,
          this.core.draining,
        )
        return
      }
      // Nothing reached the client: exclude the replica and try another.
      h.fail(isTimeout(err) ? 'timeout' : 'connect-error', describe(err), 502)
      this.handle = null
      this.upstreamHeaders = null
      this.lastError = err
      if (this.excluded === null) this.excluded = new Set()
      this.excluded.add(h.replica)
      this.admit()
      return
    }
    h.fail(isTimeout(err) ? 'timeout' : 'server-error', describe(err), this.status)
    this.settle()
    // The client must see the stream break, not a clean end.
    this.res.destroy()
  }

  private writeHead(): void {
    this.headSent = true
    const hs = this.upstreamHeaders
    const head = kHead
    if (hs !== null) {
      for (const k in hs) {
        const v = hs[k]
        if (v === undefined || hopByHop(k)) continue
        head.push(k, v)
      }
    }
    if (this.core.draining) head.push('connection', 'close')
    try {
      if (this.statusText === '') this.res.writeHead(this.status, head)
      else this.res.writeHead(this.status, this.statusText, head)
    } finally {
      head.length = 0
    }
  }

  private settle(): void {
    this.settled = true
    this.core.done(this)
  }

  /** The client went away, or the proxy closes: abort everything and release the slot. */
  kill(): void {
    if (this.settled) return
    this.settle()
    this.ac?.abort(kClientGone)
    this.controller?.abort(kClientGone)
    this.handle?.abort()
    if (!this.res.writableEnded) this.res.destroy()
  }
}

/** What the exchanges share: the gateway, the upstream pools, the requests in flight, the drain. */
export class ProxyCore {
  readonly gateway: Gateway
  readonly upstreams: Map<string, Upstream>
  readonly active = new Set<Exchange>()
  readonly maxBodyBytes: number
  draining = false
  onIdle: (() => void) | null = null

  constructor(gateway: Gateway, upstreams: Map<string, Upstream>, maxBodyBytes: number) {
    this.gateway = gateway
    this.upstreams = upstreams
    this.maxBodyBytes = maxBodyBytes
  }

  done(ex: Exchange): void {
    this.active.delete(ex)
    if (this.onIdle !== null && this.active.size === 0) this.onIdle()
  }
}

export function onRequest(core: ProxyCore, req: IncomingMessage, res: ServerResponse): void {
  if (core.draining) {
    sendError(
      res,
      503,
      'service_unavailable',
      'draining',
      'the gateway is shutting down; retry on another instance',
      kDrainRetryAfterS,
      true,
    )
    return
  }
  const ex = new Exchange(core, req, res)
  if (Number.isNaN(ex.priority)) {
    sendError(
      res,
      400,
      'invalid_request_error',
      'invalid_priority',
      'x-priority must be an integer',
      null,
      false,
    )
    return
  }
  core.active.add(ex)
  ;(req as Carrier)[kExchange] = ex
  ;(res as Carrier)[kExchange] = ex
  res.on('close', onResClose)
  req.on('data', onReqData)
  req.on('end', onReqEnd)
}
