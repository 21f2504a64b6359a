/**
 * The standalone gateway: an OpenAI-compatible pass-through on `node:http` and undici, one
 * keep-alive `undici.Pool` per upstream. Every request body is forwarded unchanged to the replica
 * the gateway picks (same method and path, headers minus hop-by-hop); the response's status,
 * headers and body stream back unchanged (`proxy-exchange.ts`: admission, failover, streaming;
 * `proxy-http.ts`: headers and error answers; `proxy-options.ts`: validation).
 *
 * This module is the server and its lifecycle:
 * - Admission: 429/503 with `Retry-After` and an OpenAI-style error body; nothing hangs.
 * - Stalls: `gateway.checkStalls()` on an unref'd timer; the stream stays open (the client decides).
 * - Monitor: its checkpoints refresh the gateway once every replica has been read.
 * - Drain: new requests get 503 + `Retry-After` + `Connection: close`; in-flight ones finish (up
 *   to `drainTimeoutMs`), then the server closes (gateways.md §10).
 */
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Pool } from 'undici'
import type { VLLMEngineMonitor } from '../monitor/monitor.js'
import type { Checkpoint } from '../telemetry/types.js'
import type { Gateway } from './gateway.js'
import { onRequest, ProxyCore, type Upstream } from './proxy-exchange.js'
import { type GatewayProxyOptions, type ResolvedProxyOptions, resolveProxyOptions } from './proxy-options.js'

export type { GatewayProxyOptions, GatewayUpstream } from './proxy-options.js'

/** After close(), connections still open (not idle) are destroyed after this long, ms. */
const kCloseGraceMs = 1000

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

  private constructor(server: Server, core: ProxyCore, r: ResolvedProxyOptions, url: string) {
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
    const r = resolveProxyOptions(options)
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
    const core = new ProxyCore(r.gateway, upstreams, r.maxBodyBytes)
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
    // A drain still waiting ends now (its timer is not unref'd and would hold the process).
    const drainWaiting = core.onIdle
    core.onIdle = null
    drainWaiting?.()
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
