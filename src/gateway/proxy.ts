/**
 * The standalone gateway: an OpenAI-compatible pass-through on `node:http` and undici, one
 * keep-alive `undici.Pool` per upstream. Every request body is forwarded unchanged to the replica
 * the gateway picks (same method and path, headers minus hop-by-hop); the response's status,
 * headers and body stream back unchanged, SSE chunks byte for byte as they arrive.
 *
 * - Admission: 429/503 with `Retry-After` and an OpenAI-style error body; nothing hangs.
 * - Failover: an upstream that fails before the client got a byte (refused, reset, headers
 *   timeout) is excluded and the request retried on another replica, each replica at most once.
 *   The response head is held back until the first body byte so that a replica that sends headers
 *   and then dies is still retried.
 * - A replica that dies mid-stream: the client's response is destroyed (it sees an error).
 * - Client abort: the upstream request is aborted and the admission slot released.
 * - Stalls: `gateway.checkStalls()` on an unref'd timer; the stream stays open (the client decides).
 * - Drain: new requests get 503 + `Retry-After` + `Connection: close`; in-flight ones finish (up
 *   to `drainTimeoutMs`), then the server closes (gateways.md §10).
 *
 * Why `pool.dispatch` with a handler object: `pool.request` wraps every response in a Readable
 * and a promise and `pool.stream` commits to the client's response at the upstream's headers (no
 * failover after them); `dispatch` hands each socket chunk straight to `res.write` with explicit
 * backpressure (`controller.pause()`/`resume()`), and one object per request serves as the
 * handler and the request's state. It uses the v2 handler callbacks (`onResponseStart`...), the
 * only ABI undici 8 keeps (nodejs/undici#4786); undici 7 bridges them with one small wrapper.
 *
 * The request path allocates per request: the exchange, the forwarded header array, the dispatch
 * options; per chunk nothing. Listeners are module-level functions (`this` is the emitter), not
 * closures; nothing logs.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { type Dispatcher, Pool } from 'undici'
import { InvalidOptionError } from '../errors.js'
import type { VLLMEngineMonitor } from '../monitor/monitor.js'
import type { Checkpoint } from '../telemetry/types.js'
import type { AdmissionOptions } from './admission.js'
import { AdmissionRejectedError, Gateway, RequestHandle } from './gateway.js'
import type { PickerOptions } from './picker.js'
import type { Rejection } from './types.js'

export interface GatewayUpstream {
  name: string
  url: string
}

export interface GatewayProxyOptions {
  /**
   * The replicas (`'http://host:8000'` strings are named r0, r1, ... as the monitor names them).
   * Required unless `gateway` is given; with both, they must name the gateway's replicas.
   */
  upstreams?: ReadonlyArray<GatewayUpstream | string>
  /** Address to bind (default 127.0.0.1). */
  host?: string
  /** Port (0 = any free port). */
  port: number
  /** The gateway to route through (default: one built from `upstreams`). */
  gateway?: Gateway
  /**
   * A monitor watching the same replicas (same names): its checkpoints refresh the picker (KV,
   * queue, lifecycle, risk) and, when the proxy builds the gateway, the gateway's events
   * (`gateway-stream-stall`, `gateway-upstream-error`) are pushed into it on its clock.
   */
  monitor?: VLLMEngineMonitor
  /** Bound on the time to the upstream's response headers (TTFT), ms (default 60 000). */
  headersTimeoutMs?: number
  /**
   * Bound on the silence between two body chunks, ms; 0 (default) = none: a stalled stream stays
   * open until the client gives up (it is reported as a stall after `stallAfterMs`).
   */
  bodyTimeoutMs?: number
  /** A stream silent this long is a stall (default 10 000; with `gateway`, set it there). */
  stallAfterMs?: number
  /** How long `drain()` waits for in-flight requests before closing anyway, ms (default 30 000). */
  drainTimeoutMs?: number
  /** Keep-alive connections per upstream (default 128). */
  connections?: number
  /** Admission options of the gateway built from `upstreams` (not with `gateway`). */
  admission?: AdmissionOptions
  /** Picker options of the gateway built from `upstreams` (not with `gateway`). */
  picker?: PickerOptions
}

const kDefaults = {
  host: '127.0.0.1',
  headersTimeoutMs: 60_000,
  bodyTimeoutMs: 0,
  drainTimeoutMs: 30_000,
  connections: 128,
} as const

/** Retry-After for requests refused while draining (seconds). */
const kDrainRetryAfterS = 5
/** After close(), connections still open (not idle) are destroyed after this long, ms. */
const kCloseGraceMs = 1000
const kExchange = Symbol('vllm-monitor.gateway.exchange')

interface Upstream {
  name: string
  pool: Pool
  /** The upstream URL's path (without trailing slash), prefixed to every request path. */
  prefix: string
}

type Carrier = { [kExchange]?: Exchange }

/** Response headers that describe this hop only; node sets its own. */
function hopByHop(lower: string): boolean {
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

/** Scratch for the response head: `writeHead` consumes it synchronously. */
const kHead: Array<string | string[]> = []

function isTimeout(err: Error): boolean {
  const code = (err as { code?: unknown }).code
  return (
    code === 'UND_ERR_HEADERS_TIMEOUT' ||
    code === 'UND_ERR_CONNECT_TIMEOUT' ||
    code === 'UND_ERR_BODY_TIMEOUT'
  )
}

function describe(err: Error): string {
  const code = (err as { code?: unknown }).code
  return typeof code === 'string' && !err.message.includes(code) ? `${code}: ${err.message}` : err.message
}

function sendError(
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

function sendRejection(res: ServerResponse, r: Rejection, close: boolean): void {
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

function onReqData(this: IncomingMessage, chunk: Buffer): void {
  const ex = (this as Carrier)[kExchange]
  if (ex === undefined) return
  if (ex.body === null) ex.body = chunk
  else if (ex.parts === null) ex.parts = [ex.body, chunk]
  else ex.parts.push(chunk)
}

function onReqEnd(this: IncomingMessage): void {
  const ex = (this as Carrier)[kExchange]
  if (ex === undefined) return
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
    const raw = req.rawHeaders
    const out: string[] = []
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
          this.priority = v.trim() !== '' && Number.isInteger(p) ? p : Number.NaN
          break
        }
      }
      out.push(k, v)
    }
    if (dropNamed !== null) {
      for (let i = out.length - 2; i >= 0; i -= 2)
        if (dropNamed.includes((out[i] as string).toLowerCase())) out.splice(i, 2)
    }
    this.headers = out
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

/** What the exchanges share. */
class ProxyCore {
  readonly gateway: Gateway
  readonly upstreams: Map<string, Upstream>
  readonly active = new Set<Exchange>()
  draining = false
  onIdle: (() => void) | null = null

  constructor(gateway: Gateway, upstreams: Map<string, Upstream>) {
    this.gateway = gateway
    this.upstreams = upstreams
  }

  done(ex: Exchange): void {
    this.active.delete(ex)
    if (this.onIdle !== null && this.active.size === 0) this.onIdle()
  }
}

interface Resolved {
  host: string
  port: number
  gateway: Gateway
  replicas: GatewayUpstream[]
  headersTimeoutMs: number
  bodyTimeoutMs: number
  drainTimeoutMs: number
  connections: number
  monitor: VLLMEngineMonitor | null
}

function optionError(name: string, rule: string): InvalidOptionError {
  return new InvalidOptionError(`GatewayProxy: option "${name}" must be ${rule}`)
}

function normalizeUpstreams(list: unknown): GatewayUpstream[] {
  if (!Array.isArray(list) || list.length === 0)
    throw optionError('upstreams', 'a non-empty array of URLs or { name, url }')
  const out: GatewayUpstream[] = []
  const names = new Set<string>()
  list.forEach((u: unknown, i) => {
    const r =
      typeof u === 'string' ? { name: `r${i}`, url: u } : (u as Partial<GatewayUpstream> | null | undefined)
    const url = r?.url
    if (typeof url !== 'string' || !URL.canParse(url) || !/^https?:$/.test(new URL(url).protocol))
      throw optionError(`upstreams[${i}]`, `an http(s) URL or { name, url } (got ${JSON.stringify(u)})`)
    const name = r?.name
    if (typeof name !== 'string' || name === '')
      throw optionError(`upstreams[${i}].name`, 'a non-empty string')
    if (names.has(name)) throw optionError(`upstreams[${i}].name`, `unique (${name} appears twice)`)
    names.add(name)
    out.push({ name, url })
  })
  return out
}

function positive(name: string, v: unknown, fallback: number, allowZero = false): number {
  if (v === undefined) return fallback
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || (!allowZero && v === 0))
    throw optionError(name, allowZero ? 'a number of ms >= 0' : 'a positive number of ms')
  return v
}

/** The monitor's clock, so the gateway's events land on the monitor's timeline. */
function monitorClock(monitor: VLLMEngineMonitor): () => number {
  const own = (monitor.options as { now?: () => number }).now
  if (typeof own === 'function') return own
  const offset = performance.now() - monitor.getStatus().uptimeMs
  return () => performance.now() - offset
}

function resolve(o: GatewayProxyOptions): Resolved {
  if (o === null || typeof o !== 'object')
    throw new InvalidOptionError('GatewayProxy: options must be an object')
  const port = o.port
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw optionError('port', 'an integer in 0-65535')
  const host = o.host ?? kDefaults.host
  if (typeof host !== 'string' || host === '') throw optionError('host', 'a non-empty string')
  const headersTimeoutMs = positive('headersTimeoutMs', o.headersTimeoutMs, kDefaults.headersTimeoutMs)
  const bodyTimeoutMs = positive('bodyTimeoutMs', o.bodyTimeoutMs, kDefaults.bodyTimeoutMs, true)
  const drainTimeoutMs = positive('drainTimeoutMs', o.drainTimeoutMs, kDefaults.drainTimeoutMs, true)
  const connections = o.connections ?? kDefaults.connections
  if (!Number.isInteger(connections) || connections < 1)
    throw optionError('connections', 'a positive integer')
  const monitor = o.monitor ?? null
  if (monitor !== null && (typeof monitor.on !== 'function' || typeof monitor.push !== 'function'))
    throw optionError('monitor', 'a VLLMEngineMonitor')
  let gateway: Gateway
  let replicas: GatewayUpstream[]
  if (o.gateway !== undefined) {
    if (!(o.gateway instanceof Gateway)) throw optionError('gateway', 'a Gateway')
    for (const k of ['stallAfterMs', 'admission', 'picker'] as const)
      if (o[k] !== undefined) throw optionError(k, 'set on the gateway passed in, not on the proxy')
    gateway = o.gateway
    replicas = gateway.replicas().map((v) => ({ name: v.name, url: v.url }))
    if (o.upstreams !== undefined) {
      const given = normalizeUpstreams(o.upstreams)
      const byName = new Map(replicas.map((r) => [r.name, r.url]))
      const same =
        given.length === replicas.length &&
        given.every((u) => byName.get(u.name) === u.url.replace(/\/+$/, ''))
      if (!same)
        throw optionError('upstreams', "the gateway's replicas (same names and URLs) when both are given")
    }
  } else {
    replicas = normalizeUpstreams(o.upstreams)
    const stallAfterMs = positive('stallAfterMs', o.stallAfterMs, 10_000)
    gateway = new Gateway({
      replicas,
      stallAfterMs,
      ...(o.admission === undefined ? {} : { admission: o.admission }),
      ...(o.picker === undefined ? {} : { picker: o.picker }),
      ...(monitor === null ? {} : { push: (r) => monitor.push(r), now: monitorClock(monitor) }),
    })
  }
  return {
    host,
    port,
    gateway,
    replicas,
    headersTimeoutMs,
    bodyTimeoutMs,
    drainTimeoutMs,
    connections,
    monitor,
  }
}

export class GatewayProxy {
  /** `http://host:port` of the listening proxy. */
  readonly url: string
  readonly gateway: Gateway
  readonly #server: Server
  readonly #core: ProxyCore
  readonly #drainTimeoutMs: number
  readonly #stallTimer: NodeJS.Timeout
  readonly #monitor: VLLMEngineMonitor | null
  readonly #onCheckpoint: (cp: Checkpoint) => void
  #draining: Promise<void> | null = null
  #closing: Promise<void> | null = null

  private constructor(server: Server, core: ProxyCore, r: Resolved, url: string) {
    this.url = url
    this.gateway = r.gateway
    this.#server = server
    this.#core = core
    this.#drainTimeoutMs = r.drainTimeoutMs
    const gw = r.gateway
    this.#stallTimer = setInterval(() => gw.checkStalls(), Math.min(1000, Math.max(10, gw.stallAfterMs / 2)))
    this.#stallTimer.unref()
    this.#monitor = r.monitor
    const names = new Set(r.replicas.map((u) => u.name))
    let warm = false
    this.#onCheckpoint = (cp) => {
      // Before its first scrape the monitor says NOT_STARTED: routing on that would refuse every
      // request until the first scrape lands. Until each replica has been read once, the gateway
      // keeps its configured view (serving).
      if (!warm) {
        for (const e of cp.engines) if (names.has(e.replica) && e.reading === null) return
        warm = true
      }
      gw.refresh(cp)
    }
    this.#monitor?.on('checkpoint', this.#onCheckpoint)
  }

  /** Starts the proxy; resolves once it listens. Rejects on bad options or when it cannot bind. */
  static async start(options: GatewayProxyOptions): Promise<GatewayProxy> {
    const r = resolve(options)
    const upstreams = new Map<string, Upstream>()
    for (const u of r.replicas) {
      const url = new URL(u.url)
      upstreams.set(u.name, {
        name: u.name,
        pool: new Pool(url.origin, {
          connections: r.connections,
          headersTimeout: r.headersTimeoutMs,
          bodyTimeout: r.bodyTimeoutMs,
        }),
        prefix: url.pathname.replace(/\/+$/, ''),
      })
    }
    const core = new ProxyCore(r.gateway, upstreams)
    const server = createServer((req, res) => onRequest(core, req, res))
    try {
      await new Promise<void>((ok, fail) => {
        server.once('error', fail)
        server.listen(r.port, r.host, () => {
          server.off('error', fail)
          ok()
        })
      })
    } catch (err) {
      await Promise.all([...upstreams.values()].map((u) => u.pool.destroy()))
      throw err
    }
    const addr = server.address() as AddressInfo
    const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address
    return new GatewayProxy(server, core, r, `http://${host}:${addr.port}`)
  }

  /** Requests received and not yet answered (queued, in flight, streaming). */
  get inFlight(): number {
    return this.#core.active.size
  }

  get draining(): boolean {
    return this.#core.draining
  }

  /**
   * Stops admitting (503 + Retry-After + Connection: close), waits for the requests in flight up
   * to `drainTimeoutMs`, then closes. Resolves once closed.
   */
  drain(): Promise<void> {
    if (this.#draining !== null) return this.#draining
    const core = this.#core
    core.draining = true
    // Idle keep-alive clients reconnect and learn of the drain on their next request.
    this.#server.closeIdleConnections()
    this.#draining = new Promise<void>((done) => {
      if (core.active.size === 0 || this.#closing !== null) {
        done()
        return
      }
      const timer = setTimeout(done, this.#drainTimeoutMs)
      core.onIdle = () => {
        clearTimeout(timer)
        done()
      }
    }).then(() => this.close())
    return this.#draining
  }

  /** Closes now: requests still in flight are aborted (their clients see the connection end). */
  close(): Promise<void> {
    if (this.#closing !== null) return this.#closing
    const core = this.#core
    core.draining = true
    core.onIdle = null
    clearInterval(this.#stallTimer)
    this.#monitor?.off('checkpoint', this.#onCheckpoint)
    for (const ex of [...core.active]) ex.kill()
    const server = this.#server
    const closed = new Promise<void>((done) => server.close(() => done()))
    // server.close() ends idle keep-alive connections (whose responses have finished); a client
    // that still holds one open (a request on its way, answered 503 + close) gets a short grace.
    server.closeIdleConnections()
    const backstop = setTimeout(() => server.closeAllConnections(), kCloseGraceMs)
    this.#closing = closed.then(async () => {
      clearTimeout(backstop)
      await Promise.all([...core.upstreams.values()].map((u) => u.pool.destroy()))
    })
    return this.#closing
  }
}

function onRequest(core: ProxyCore, req: IncomingMessage, res: ServerResponse): void {
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
