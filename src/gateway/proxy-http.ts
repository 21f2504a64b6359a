/**
 * The proxy's HTTP plumbing: which headers are forwarded each way (hop-by-hop ones are not), the
 * OpenAI-style error answers (429/503 with `Retry-After`, 502/504 when no replica answered), and
 * how an undici error is classified and described.
 */
import type { ServerResponse } from 'node:http'
import type { Rejection } from './types.js'

/** Response headers that describe this hop only; node sets its own. */
export function hopByHop(lower: string): boolean {
  switch (lower) {
    case 'connection':
    case 'keep-alive':
    case 'proxy-connection':
    case 'transfer-encoding':
    case 'te':
    case 'trailer':
    case 'upgrade':
    case 'proxy-authenticate':
    case 'proxy-authorization':
      return true
    default:
      return false
  }
}

/**
 * Copies the client's raw headers that go upstream into `out` (flat name/value pairs) and returns
 * the request's priority from `x-priority`: 0 without one, NaN when it is not an integer.
 */
export function forwardRequestHeaders(raw: readonly string[], out: string[]): number {
  let priority = 0
  let dropNamed: string[] | null = null
  for (let i = 0; i < raw.length; i += 2) {
    const k = raw[i] as string
    const v = raw[i + 1] as string
    const lower = k.toLowerCase()
    switch (lower) {
      case 'host':
      case 'content-length':
      case 'expect':
      case 'keep-alive':
      case 'proxy-connection':
      case 'transfer-encoding':
      case 'te':
      case 'trailer':
      case 'upgrade':
      case 'proxy-authorization':
        continue
      case 'connection':
        // RFC 9110 §7.6.1: the headers it names are hop-by-hop too.
        for (const t of v.split(',')) {
          const name = t.trim().toLowerCase()
          if (name === '' || name === 'close' || name === 'keep-alive') continue
          if (dropNamed === null) dropNamed = []
          dropNamed.push(name)
        }
        continue
      case 'x-priority': {
        const p = Number(v)
        priority = v.trim() !== '' && Number.isInteger(p) ? p : Number.NaN
        break
      }
    }
    out.push(k, v)
  }
  if (dropNamed !== null) {
    for (let i = out.length - 2; i >= 0; i -= 2)
      if (dropNamed.includes((out[i] as string).toLowerCase())) out.splice(i, 2)
  }
  return priority
}

export function isTimeout(err: Error): boolean {
  const code = (err as { code?: unknown }).code
  return (
    code === 'UND_ERR_HEADERS_TIMEOUT' ||
    code === 'UND_ERR_CONNECT_TIMEOUT' ||
    code === 'UND_ERR_BODY_TIMEOUT'
  )
}

export function describe(err: Error): string {
  const code = (err as { code?: unknown }).code
  return typeof code === 'string' && !err.message.includes(code) ? `${code}: ${err.message}` : err.message
}

export function sendError(
  res: ServerResponse,
  status: number,
  type: string,
  code: string,
  message: string,
  retryAfterS: number | null,
  close: boolean,
): void {
  if (res.headersSent || res.destroyed) {
    res.destroy()
    return
  }
  const body = JSON.stringify({ error: { message, type, param: null, code } })
  const head = ['content-type', 'application/json', 'content-length', String(Buffer.byteLength(body))]
  if (retryAfterS !== null) head.push('retry-after', String(retryAfterS))
  if (close) head.push('connection', 'close')
  res.writeHead(status, head)
  res.end(body)
}

export function sendRejection(res: ServerResponse, r: Rejection, close: boolean): void {
  sendError(
    res,
    r.status,
    r.status === 429 ? 'rate_limit_exceeded' : 'service_unavailable',
    r.reason,
    r.message,
    r.retryAfterS,
    close,
  )
}
