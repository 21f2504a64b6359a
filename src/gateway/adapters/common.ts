/**
 * What every embedding shares: the context handed to the host, the priority header, the
 * OpenAI-style rejection body, and how an error thrown around a request ends its handle.
 *
 * The adapters never import a framework at run time: each types the few members it touches
 * structurally, so fastify, express and hono stay out of the package's dependencies.
 */

import { InvalidArgumentError } from '../../errors.js'
import { AdmissionRejectedError } from '../admission.js'
import { type Gateway, RequestHandle } from '../gateway.js'
import type { Priority, Rejection } from '../types.js'

/** What an adapter exposes to the host once a request is admitted. */
export interface VllmContext {
  /** Name of the chosen replica. */
  readonly replica: string
  /** The replica's base URL without a trailing slash: proxy to `${url}${path}`. */
  readonly url: string
  /**
   * The admitted request. The adapter ends it (response finished, client gone, handler error);
   * the host may report `firstByte()`/`chunk()` itself or end it earlier with `fail()`.
   */
  readonly handle: RequestHandle
}

/** The request header a client sets its priority with (an integer; higher is more important). */
export const PRIORITY_HEADER = 'x-priority'

export const kJsonContentType = 'application/json; charset=utf-8'

/** An `x-priority` header value as a priority: a safe integer, else 0. */
export function parsePriority(value: string | readonly string[] | null | undefined): Priority {
  const v = typeof value === 'string' ? value : value?.[0]
  if (v === undefined || v === null || v === '') return 0
  const n = Number(v)
  return Number.isSafeInteger(n) ? n : 0
}

/** The JSON body of a 429/503, shaped like OpenAI's (and vLLM's) error responses. */
export function rejectionBody(r: Rejection): string {
  return JSON.stringify({
    error: {
      message: r.message,
      type: r.status === 429 ? 'rate_limit_exceeded' : 'service_unavailable',
      param: null,
      code: r.reason,
    },
  })
}

export function contextOf(handle: RequestHandle): VllmContext {
  return { replica: handle.replica, url: handle.url, handle }
}

export function checkGateway(gateway: Gateway, who: string): void {
  if (
    gateway === null ||
    typeof gateway !== 'object' ||
    typeof gateway.tryBegin !== 'function' ||
    typeof gateway.begin !== 'function'
  )
    throw new InvalidArgumentError(`${who}: gateway must be a Gateway`)
}

export function checkPriorityOption(priority: unknown, who: string): void {
  if (priority !== undefined && typeof priority !== 'function')
    throw new InvalidArgumentError(`${who}: options.priority must be a function`)
}

/**
 * Admission after `tryBegin` said the request has to queue: the handle, or the rejection to answer
 * with. Rejects only when `signal` aborted (the client left) or on a bug.
 */
export function queue(
  gateway: Gateway,
  priority: Priority,
  signal: AbortSignal,
): Promise<RequestHandle | Rejection> {
  return gateway.begin(priority, signal).then(undefined, toRejection)
}

function toRejection(err: unknown): Rejection {
  if (err instanceof AdmissionRejectedError) return err.rejection
  throw err
}

export function isHandle(x: RequestHandle | Rejection | null): x is RequestHandle {
  return x instanceof RequestHandle
}

const kConnectCodes = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EPIPE',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_CLOSED',
])
const kTimeoutCodes = new Set([
  'ETIMEDOUT',
  'ESOCKETTIMEDOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
])

type ErrorLike = { name?: unknown; code?: unknown; cause?: unknown; status?: unknown; statusCode?: unknown }

/**
 * 'abort' for the caller's own abort, the transport failure an error reports (its own code or its
 * cause's, as fetch wraps them; OpenAI's APIConnection*Error by name), null for anything else.
 */
export function classifyError(err: unknown): 'abort' | 'connect-error' | 'timeout' | null {
  if (err === null || typeof err !== 'object') return null
  const e = err as ErrorLike
  if (e.name === 'AbortError' || e.name === 'APIUserAbortError' || e.code === 'ABORT_ERR') return 'abort'
  if (e.name === 'APIConnectionTimeoutError' || e.name === 'TimeoutError') return 'timeout'
  const cause = e.cause !== null && typeof e.cause === 'object' ? (e.cause as ErrorLike) : null
  for (const code of [e.code, cause?.code]) {
    if (typeof code !== 'string') continue
    if (kTimeoutCodes.has(code)) return 'timeout'
    if (kConnectCodes.has(code)) return 'connect-error'
  }
  if (e.name === 'APIConnectionError') return 'connect-error'
  return null
}

/** The HTTP status an error carries (`status` or `statusCode`), null when none. */
export function errorStatus(err: unknown): number | null {
  if (err === null || typeof err !== 'object') return null
  const e = err as ErrorLike
  const s = typeof e.status === 'number' ? e.status : e.statusCode
  return typeof s === 'number' && Number.isInteger(s) && s >= 100 && s <= 599 ? s : null
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

/**
 * Ends `handle` for an error the host's handler threw, `status` being what the client got: an
 * abort says nothing about the replica, a transport failure is one, anything else is recorded
 * with the status sent (a 5xx counts against the replica, a 4xx does not).
 */
export function settleThrown(handle: RequestHandle, err: unknown, status: number): void {
  const kind = classifyError(err)
  if (kind === 'abort') handle.abort()
  else if (kind !== null) handle.fail(kind, errorMessage(err), status)
  else if (status >= 500) handle.fail('server-error', errorMessage(err), status)
  else handle.end(status)
}

/**
 * Ends `handle` for an error a wrapped client call threw or rejected with: an abort says nothing,
 * an API error with a 4xx is the caller's, anything else is an upstream failure.
 */
export function settleError(handle: RequestHandle, err: unknown): void {
  const kind = classifyError(err)
  const status = errorStatus(err)
  if (kind === 'abort') handle.abort()
  else if (status !== null && status >= 400 && status < 500) handle.end(status)
  else handle.fail(kind ?? 'server-error', errorMessage(err), status !== null && status >= 500 ? status : 502)
}
