/**
 * The monitor's HTTP surface on plain `node:http`: Prometheus scrapes `/metrics`, dashboards and
 * scripts read `/api/status` and download `/api/export`, orchestrators probe `/healthz`. A handler
 * that throws answers 500 naming the cause and the server keeps serving; nothing reaches the host's
 * event loop as an exception.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { debuglog } from 'node:util'
import { InvalidOptionError } from '../errors.js'
import type { MonitorStatus } from '../monitor/status.js'
import type { MonitorMetrics } from './registry.js'

const debug = debuglog('vllm-monitor')

export interface HttpSurfaceOptions {
  /** Interface to bind. Default '127.0.0.1': the export holds model names and URLs; opt in to '0.0.0.0'. */
  host?: string
  /** TCP port; 0 (the default) picks a free one, read it from the result. */
  port?: number
  metrics: Pick<MonitorMetrics, 'metrics' | 'contentType'>
  getStatus: () => MonitorStatus
  /** The body of `/api/export` (usually `toExportJson(...)`); may return a promise. */
  exportData: () => unknown
  /**
   * Told about each request a handler failed (the client got a 500). Default: a process warning
   * (code VLLM_MONITOR_HTTP_HANDLER_FAILED) the first time each route fails, debuglog after that.
   */
  onError?: (err: Error) => void
  /** Let the process exit while the surface listens (for a monitor embedded in a host). Default false. */
  unref?: boolean
}

export interface HttpSurface {
  /** e.g. `http://127.0.0.1:9464`. */
  url: string
  port: number
  /** Stops listening and ends every connection, keep-alive ones included. Idempotent. */
  close(): Promise<void>
}

type Route = (req: IncomingMessage, res: ServerResponse) => unknown

// In-flight requests get this long to finish on close() before their sockets are destroyed too.
const kCloseGraceMs = 1_000

/** Starts the HTTP surface; rejects with InvalidOptionError on bad options, or when it cannot listen. */
export async function startHttpSurface(options: HttpSurfaceOptions): Promise<HttpSurface> {
  const o = validate(options)
  const warned = new Set<string>()
  const onError =
    o.onError ??
    ((err: Error, route?: string) => {
      debug('http surface: %s', err.message)
      if (route === undefined || warned.has(route)) return
      warned.add(route)
      process.emitWarning(err.message, { code: 'VLLM_MONITOR_HTTP_HANDLER_FAILED' })
    })

  const report = (err: Error, route?: string) => {
    try {
      onError(err, route)
    } catch (inner) {
      debug('http surface: onError threw: %o', inner)
    }
  }

  const routes: Record<string, Route> = {
    '/metrics': async (_req, res) => {
      send(res, 200, o.metrics.contentType, await failing('metrics.metrics()', () => o.metrics.metrics()))
    },
    '/api/status': async (_req, res) => {
      sendJson(res, 200, await failing('getStatus()', o.getStatus), 'getStatus()')
    },
    '/api/export': async (_req, res) => {
      const data = await failing('exportData()', o.exportData)
      const stamp = new Date().toISOString().replaceAll(':', '-')
      res.setHeader('content-disposition', `attachment; filename="vllm-monitor-export-${stamp}.json"`)
      sendJson(res, 200, data, 'exportData()')
    },
    '/healthz': (_req, res) => send(res, 200, 'text/plain; charset=utf-8', 'ok'),
  }

  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?', 1)[0] ?? '/'
    const route = Object.hasOwn(routes, path) ? routes[path] : undefined
    if (route === undefined) return sendJson(res, 404, { error: `no such endpoint: ${path}`, endpoints })
    // HEAD is GET without the body (node:http drops it), as HTTP requires of any GET resource.
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('allow', 'GET, HEAD')
      return sendJson(res, 405, { error: `${req.method} is not allowed on ${path}; use GET` })
    }
    Promise.resolve()
      .then(() => route(req, res))
      .catch((err: unknown) => {
        const e = err instanceof Error ? err : new Error(String(err))
        report(e, path)
        if (res.headersSent) return res.destroy()
        res.removeHeader('content-disposition')
        sendJson(res, 500, { error: e.message })
      })
  })

  await new Promise<void>((resolve, reject) => {
    const onListenError = (err: NodeJS.ErrnoException) => {
      const why = err.code === 'EADDRINUSE' ? 'the address is already in use' : err.message
      const e = new InvalidOptionError(
        `cannot listen on ${formatHost(o.host)}:${o.port}: ${why} (${err.code ?? 'error'})`,
        { cause: err },
      )
      reject(e)
    }
    server.once('error', onListenError)
    server.listen(o.port, o.host, () => {
      server.off('error', onListenError)
      resolve()
    })
  })
  // After listen, errors are per-connection (node:http handles them) or fatal to the server alone.
  server.on('error', (err) => report(err))
  // Embedded in a host (a gateway), the surface must not keep the process alive on its own.
  if (o.unref === true) server.unref()

  const port = (server.address() as AddressInfo).port
  let closing: Promise<void> | null = null
  return {
    url: `http://${formatHost(o.host)}:${port}`,
    port,
    close() {
      closing ??= new Promise<void>((resolve) => {
        const force = setTimeout(() => server.closeAllConnections(), kCloseGraceMs)
        force.unref()
        server.close(() => {
          clearTimeout(force)
          resolve()
        })
        server.closeIdleConnections()
      })
      return closing
    },
  }
}

const endpoints = ['/metrics', '/api/status', '/api/export', '/healthz']

/** Runs a getter, prefixing what it throws with its name so that the 500 says which one failed. */
async function failing<T>(what: string, fn: () => T | Promise<T>): Promise<T> {
  try {
    return await fn()
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err)
    throw new Error(`${what} threw: ${message}`, { cause: err })
  }
}

function send(res: ServerResponse, status: number, contentType: string, body: string): void {
  res.statusCode = status
  res.setHeader('content-type', contentType)
  res.setHeader('content-length', Buffer.byteLength(body))
  res.setHeader('cache-control', 'no-store')
  res.end(body)
}

// JSON.stringify already writes NaN and Infinity as null; a BigInt or a cycle throws, and becomes
// the handler's 500, naming whose value it was.
function sendJson(res: ServerResponse, status: number, value: unknown, from = 'the response'): void {
  let body: string | undefined
  try {
    body = JSON.stringify(value)
  } catch (err) {
    throw new Error(`${from} returned a value JSON cannot hold: ${(err as Error).message}`, { cause: err })
  }
  if (body === undefined) throw new Error(`${from} returned a value JSON cannot hold: ${typeof value}`)
  send(res, status, 'application/json; charset=utf-8', body)
}

function formatHost(host: string): string {
  return host.includes(':') ? `[${host}]` : host
}

type Validated = Required<Omit<HttpSurfaceOptions, 'onError'>> & {
  onError: ((err: Error, route?: string) => void) | undefined
}

function validate(options: HttpSurfaceOptions): Validated {
  if (options === null || typeof options !== 'object') {
    throw new InvalidOptionError('startHttpSurface options must be an object')
  }
  const { host = '127.0.0.1', port = 0, metrics, getStatus, exportData, onError, unref = false } = options
  if (typeof host !== 'string' || host === '') {
    throw new InvalidOptionError('options.host must be a non-empty string')
  }
  if (!Number.isInteger(port) || port < 0 || port > 65_535) {
    throw new InvalidOptionError(`options.port must be an integer from 0 to 65535, found ${String(port)}`)
  }
  if (typeof metrics?.metrics !== 'function') {
    throw new InvalidOptionError('options.metrics must be a MonitorMetrics')
  }
  for (const [name, fn] of [
    ['getStatus', getStatus],
    ['exportData', exportData],
  ] as const) {
    if (typeof fn !== 'function') throw new InvalidOptionError(`options.${name} must be a function`)
  }
  if (onError !== undefined && typeof onError !== 'function') {
    throw new InvalidOptionError('options.onError must be a function')
  }
  if (typeof unref !== 'boolean') throw new InvalidOptionError('options.unref must be a boolean')
  return { host, port, metrics, getStatus, exportData, onError, unref }
}
