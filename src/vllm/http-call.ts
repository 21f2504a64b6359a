/**
 * One HTTP request with a hard deadline that never rejects: what the control client and the health
 * probes share. The deadline covers connect, headers and the whole body (a timer around
 * `req.destroy()`), so a server that accepts the connection and never answers costs exactly
 * `timeoutMs`. Failures come back as values: an errno code (`ECONNREFUSED`, `ECONNRESET`...),
 * `ETIMEDOUT` for the deadline, `ABORTED` when the caller's signal fired, `BODY_TOO_LARGE`.
 */
import http from 'node:http'
import https from 'node:https'
import { InvalidOptionError } from '../errors.js'

export interface HttpCallOptions {
  method: 'GET' | 'POST'
  url: URL
  timeoutMs: number
  /** Connection pool; `undefined` uses Node's global agent. */
  agent?: http.Agent | false
  headers?: Record<string, string>
  body?: string
  /**
   * Retry once, within the same deadline, when the connection is reset before any answer: a
   * keep-alive socket the server had just closed. Only for idempotent requests.
   */
  retryOnReset?: boolean
  /** Bodies longer than this (UTF-16 units) are not buffered. Default 1 MiB. */
  maxBodyChars?: number
  /** false: only the status matters; the body is drained (so the socket returns to the pool). */
  readBody?: boolean
  signal?: AbortSignal
}

export interface HttpCallResult {
  /** Status code, null when no answer came. */
  status: number | null
  /** The body as text (any status), null when no complete answer came. */
  body: string | null
  /** null when an answer (of any status) came; else why not. */
  error: string | null
  /** From the call to the last byte (or the failure), ms. */
  latencyMs: number
  /** 1, or 2 when a reset connection was retried. */
  attempts: number
}

function codeOf(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code
  return typeof code === 'string' && code !== '' ? code : 'ERROR'
}

export function httpCall(o: HttpCallOptions): Promise<HttpCallResult> {
  const start = performance.now()
  const deadline = start + o.timeoutMs
  const maxBody = o.maxBodyChars ?? 1024 * 1024
  return new Promise<HttpCallResult>((resolve) => {
    let settled = false
    let attempts = 0
    const settle = (status: number | null, body: string | null, error: string | null) => {
      if (settled) return
      settled = true
      resolve({ status, body, error, latencyMs: performance.now() - start, attempts })
    }
    if (o.signal?.aborted) {
      settle(null, null, 'ABORTED')
      return
    }
    const attempt = (mayRetry: boolean) => {
      attempts++
      const mod = o.url.protocol === 'https:' ? https : http
      const headers: Record<string, string> = { accept: 'application/json', ...o.headers }
      if (o.body !== undefined) {
        headers['content-type'] ??= 'application/json'
        headers['content-length'] = String(Buffer.byteLength(o.body))
      }
      let req: http.ClientRequest
      try {
        req = mod.request(o.url, { method: o.method, agent: o.agent, headers })
      } catch (err) {
        settle(null, null, codeOf(err))
        return
      }
      let timedOut = false
      let aborted = false
      let answered = false
      // Set when this attempt hands over to the retry: its own close/error then mean nothing.
      let superseded = false
      const timer = setTimeout(
        () => {
          timedOut = true
          req.destroy()
        },
        Math.max(1, deadline - performance.now()),
      )
      timer.unref()
      const onAbort = () => {
        aborted = true
        req.destroy()
      }
      o.signal?.addEventListener('abort', onAbort, { once: true })
      const fail = (err: unknown) => {
        if (superseded) return
        settle(null, null, aborted ? 'ABORTED' : timedOut ? 'ETIMEDOUT' : codeOf(err))
      }
      req.once('close', () => {
        clearTimeout(timer)
        o.signal?.removeEventListener('abort', onAbort)
        if (!settled && !superseded) fail(new Error('socket closed'))
      })
      req.on('error', (err) => {
        if (mayRetry && !answered && !timedOut && !aborted && codeOf(err) === 'ECONNRESET') {
          superseded = true
          clearTimeout(timer)
          attempt(false)
          return
        }
        fail(err)
      })
      req.on('response', (res) => {
        answered = true
        const status = res.statusCode ?? 0
        if (o.readBody === false) {
          res.resume()
          settle(status, null, null)
          return
        }
        res.setEncoding('utf8')
        let body = ''
        res.on('data', (chunk: string) => {
          body += chunk
          if (body.length > maxBody) {
            settle(status, null, 'BODY_TOO_LARGE')
            req.destroy()
          }
        })
        res.on('error', fail)
        res.on('end', () => {
          if (res.complete) settle(status, body, null)
          else fail(Object.assign(new Error('incomplete body'), { code: 'ECONNRESET' }))
        })
        res.on('close', () => {
          if (!res.complete) fail(Object.assign(new Error('connection reset'), { code: 'ECONNRESET' }))
        })
      })
      req.end(o.body)
    }
    attempt(o.retryOnReset === true)
  })
}

/** `base` + `path` (a path prefix in `base` is kept) + query. */
export function endpointUrl(base: URL, path: string, query?: Array<[string, string]>): URL {
  const u = new URL(base.href)
  u.pathname = `${u.pathname.replace(/\/+$/, '')}${path}`
  u.search = ''
  for (const [k, v] of query ?? []) u.searchParams.append(k, v)
  return u
}

/** Parses JSON, or null. */
export function parseJson(text: string | null): unknown {
  if (text === null || text === '') return null
  try {
    return JSON.parse(text) as unknown
  } catch {
    return null
  }
}

/** Validates a server's base URL (http: or https:); `where` names the option in the error. */
export function parseHttpUrl(url: unknown, where: string): URL {
  if (typeof url !== 'string' || url === '') {
    throw new InvalidOptionError(`${where} must be a non-empty URL string`)
  }
  let u: URL
  try {
    u = new URL(url)
  } catch {
    throw new InvalidOptionError(`${where} is not a valid URL: ${JSON.stringify(url)}`)
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') {
    throw new InvalidOptionError(`${where} must be an http: or https: URL, got ${u.protocol}`)
  }
  return u
}

/** Node's timers hold 2^31-1 ms at most; a longer one fires after 1 ms. */
export const MAX_TIMER_MS = 2_147_483_647

/** Validates a timeout in ms: positive and within what a Node timer holds. */
export function checkTimeoutMs(v: unknown, where: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0 || v > MAX_TIMER_MS) {
    throw new InvalidOptionError(
      `${where} must be a positive number of milliseconds, at most ${MAX_TIMER_MS}`,
    )
  }
  return v
}
