/**
 * node:http embedding (also the base of the Express one): admission before the host's handler,
 * `req.vllm` for the host, and the handle ended from the response's own events: 'finish' with the
 * status sent, 'close' without 'finish' as a client abort (gateways.md §11). `req`'s 'close' is
 * not used: since Node 16 it also fires once a request body has been read.
 */

import type { IncomingMessage, ServerResponse } from 'node:http'
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

/** A node request once admitted. */
export type VllmIncomingMessage = IncomingMessage & { vllm: VllmContext }

export interface NodeAdapterOptions<Req extends IncomingMessage = IncomingMessage> {
  /** A request's priority (default: the integer in its `x-priority` header, else 0). */
  priority?: (req: Req) => Priority
  /**
   * Count every `res.write()` as a streamed chunk, which gives the gateway time to first byte,
   * inter-token gaps and stalls without help from the host (default true).
   */
  trackWrites?: boolean
}

export interface ResolvedNodeOptions<Req> {
  priority: (req: Req) => Priority
  trackWrites: boolean
}

const kHandle = Symbol('vllm-monitor.gateway.handle')
const kWrite = Symbol('vllm-monitor.gateway.write')

type Tracked = ServerResponse & { [kHandle]?: RequestHandle; [kWrite]?: ServerResponse['write'] }
type WriteCallback = (error: Error | null | undefined) => void

function headerPriority(req: { headers: IncomingMessage['headers'] }): Priority {
  return parsePriority(req.headers[PRIORITY_HEADER])
}

export function resolveNodeOptions<Req extends IncomingMessage>(
  options: NodeAdapterOptions<Req> | undefined,
  who: string,
): ResolvedNodeOptions<Req> {
  if (options !== undefined && (options === null || typeof options !== 'object'))
    throw new InvalidArgumentError(`${who}: options must be an object`)
  checkPriorityOption(options?.priority, who)
  return { priority: options?.priority ?? headerPriority, trackWrites: options?.trackWrites ?? true }
}

/** Answers a rejection: its status, `Retry-After`, an OpenAI-style JSON error. */
export function sendRejection(res: ServerResponse, r: Rejection): void {
  if (res.headersSent) {
    res.destroy()
    return
  }
  const body = rejectionBody(r)
  res.statusCode = r.status
  res.setHeader('retry-after', String(r.retryAfterS))
  res.setHeader('content-type', kJsonContentType)
  res.setHeader('content-length', Buffer.byteLength(body))
  res.end(body)
}

/** Counts each write to `res` as a chunk of `handle`'s response (whoever patched `write` first still runs). */
export function trackWrites(res: ServerResponse, handle: RequestHandle): void {
  const r = res as Tracked
  r[kHandle] = handle
  r[kWrite] = res.write
  res.write = trackedWrite as ServerResponse['write']
}

function trackedWrite(
  this: Tracked,
  chunk: unknown,
  encoding?: BufferEncoding | WriteCallback,
  cb?: WriteCallback,
) {
  this[kHandle]?.chunk()
  return (this[kWrite] as (c: unknown, e?: unknown, cb?: unknown) => boolean).call(this, chunk, encoding, cb)
}

/** Ends `handle` when `res` finishes (with the status sent) or closes first (client abort). */
export function trackResponse(res: ServerResponse, handle: RequestHandle, writes: boolean): void {
  if (writes) trackWrites(res, handle)
  else (res as Tracked)[kHandle] = handle
  // Listeners shared by every response (they find the handle on it): no closure per request.
  res.on('finish', onFinish)
  res.on('close', onClose)
}

function onFinish(this: Tracked): void {
  this[kHandle]?.end(this.statusCode)
}

function onClose(this: Tracked): void {
  // After 'finish' the handle has ended and this is a no-op.
  this[kHandle]?.abort()
}

/**
 * Admits `req` and calls `admitted` with its handle (synchronously when a slot is free), or answers
 * the rejection. While queued, a client that leaves takes its place in the queue with it.
 * The callbacks take `req`, `res` and `extra` so that callers create them once, not per request.
 */
export function admitNode<Req extends IncomingMessage, X>(
  gateway: Gateway,
  req: Req,
  res: ServerResponse,
  extra: X,
  o: ResolvedNodeOptions<Req>,
  admitted: (req: Req, res: ServerResponse, handle: RequestHandle, extra: X) => void,
  failed: (req: Req, res: ServerResponse, err: unknown, extra: X) => void,
): void {
  let priority: Priority
  try {
    priority = o.priority(req)
  } catch (err) {
    failed(req, res, err, extra)
    return
  }
  const first = gateway.tryBegin(priority)
  if (isHandle(first)) {
    admitted(req, res, first, extra)
    return
  }
  if (first !== null) {
    sendRejection(res, first)
    return
  }
  const ac = new AbortController()
  const onGone = () => ac.abort()
  res.once('close', onGone)
  queue(gateway, priority, ac.signal).then(
    (r) => {
      res.off('close', onGone)
      if (!isHandle(r)) {
        if (!ac.signal.aborted) sendRejection(res, r)
      } else if (ac.signal.aborted) r.abort()
      else admitted(req, res, r, extra)
    },
    (err) => {
      res.off('close', onGone)
      if (!ac.signal.aborted) failed(req, res, err, extra)
    },
  )
}

export function attach(req: IncomingMessage, handle: RequestHandle): VllmIncomingMessage {
  const r = req as VllmIncomingMessage
  r.vllm = contextOf(handle)
  return r
}

function sendError(res: ServerResponse, err: unknown): void {
  if (res.headersSent) {
    res.destroy()
    return
  }
  const body = JSON.stringify({
    error: { message: errorMessage(err), type: 'server_error', param: null, code: null },
  })
  res.statusCode = 500
  res.setHeader('content-type', kJsonContentType)
  res.setHeader('content-length', Buffer.byteLength(body))
  res.end(body)
}

/** The handler threw: a 500 if nothing was sent yet, else the response is cut (and was a failure). */
function handlerFailed(res: ServerResponse, handle: RequestHandle, err: unknown): void {
  const kind = classifyError(err)
  if (!res.headersSent) settleThrown(handle, err, 500)
  else if (kind === 'abort') handle.abort()
  else handle.fail(kind ?? 'server-error', errorMessage(err), res.statusCode)
  sendError(res, err)
}

/**
 * A node:http request listener that admits each request before `handler` runs. The handler finds
 * the replica in `req.vllm` and answers as usual; a 429/503 with `Retry-After` is sent without
 * calling it. A handler that throws (or rejects) gets a 500 and the request is recorded as failed.
 */
export function createHttpHandler<Req extends IncomingMessage = IncomingMessage>(
  gateway: Gateway,
  handler: (req: Req & { vllm: VllmContext }, res: ServerResponse) => unknown,
  options?: NodeAdapterOptions<Req>,
): (req: IncomingMessage, res: ServerResponse) => void {
  checkGateway(gateway, 'createHttpHandler')
  if (typeof handler !== 'function')
    throw new InvalidArgumentError('createHttpHandler: handler must be a function')
  const o = resolveNodeOptions(options, 'createHttpHandler')
  const admitted = (req: Req, res: ServerResponse, handle: RequestHandle): void => {
    trackResponse(res, handle, o.trackWrites)
    let out: unknown
    try {
      out = handler(attach(req, handle) as Req & VllmIncomingMessage, res)
    } catch (err) {
      handlerFailed(res, handle, err)
      return
    }
    if (out !== null && typeof out === 'object' && typeof (out as Promise<unknown>).then === 'function')
      (out as Promise<unknown>).then(undefined, (err: unknown) => handlerFailed(res, handle, err))
  }
  const failed = (_req: Req, res: ServerResponse, err: unknown): void => sendError(res, err)
  return function vllmHttpHandler(req: IncomingMessage, res: ServerResponse): void {
    admitNode(gateway, req as Req, res, undefined, o, admitted, failed)
  }
}
