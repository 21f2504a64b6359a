/**
 * The gateway facade every adapter and the standalone proxy share: it picks a replica (scores
 * from the monitor's checkpoints plus local in-flight accounting), admits the request to it
 * (adaptive limit, priority queue, 429 + Retry-After), and follows the request to its end so the
 * monitor learns what only the request path sees: time to first token, inter-token gaps, streams
 * that stall while `/health` says 200, upstream errors. Those become the gateway's own metrics
 * and, when something is wrong, monitor events (`gateway-stream-stall`, `gateway-upstream-error`).
 *
 * The request path allocates a handle per request and nothing per chunk.
 */
import { InvalidOptionError } from '../errors.js'
import type { Checkpoint, MonitorEvent, TelemetryRecord } from '../telemetry/types.js'
import { AdmissionController, type AdmissionOptions, AdmissionRejectedError } from './admission.js'
import { type OutcomeKind, type PickerOptions, ReplicaPicker } from './picker.js'
import type { Permit, Priority, Rejection, ReplicaView } from './types.js'

export interface GatewayReplica {
  name: string
  url: string
}

export interface GatewayOptions {
  replicas: readonly GatewayReplica[]
  admission?: AdmissionOptions
  picker?: PickerOptions
  /** A stream silent for longer than this (ms) is a stall (default 10 s). */
  stallAfterMs?: number
  /** Where the gateway's events go (the monitor's `push`). */
  push?: (record: TelemetryRecord) => void
  /** ms clock shared with the monitor (default performance.now()). */
  now?: () => number
}

/** Per-replica request statistics since the gateway started. */
export interface ReplicaRequestStats {
  requests: number
  errors: number
  stalls: number
  rejected: number
  /** Exponentially weighted means, ms; null before the first observation. */
  ttftMs: number | null
  interTokenMs: number | null
  /** Completion tokens reported by the responses (`usage`), summed. */
  completionTokens: number
}

/** A request in flight: report its progress, then exactly one of end / fail / abort. */
export class RequestHandle {
  readonly replica: string
  readonly url: string
  /** When the request was admitted (gateway clock, ms). */
  readonly startedAt: number
  private firstAt = Number.NaN
  private firstChunkAt = Number.NaN
  private lastAt = Number.NaN
  private chunks = 0
  private stalled = false
  private done = false

  constructor(
    private readonly gw: Gateway,
    readonly view: ReplicaView,
    private readonly permit: Permit,
  ) {
    this.replica = view.name
    this.url = view.url
    this.startedAt = gw.now()
  }

  /** The first byte (or token) of the response arrived. */
  firstByte(): void {
    if (!Number.isNaN(this.firstAt)) return
    const t = this.gw.now()
    this.firstAt = t
    this.lastAt = t
  }

  /** A streamed chunk arrived (an SSE event, a token). */
  chunk(): void {
    const t = this.gw.now()
    if (this.chunks === 0) this.firstChunkAt = t
    if (Number.isNaN(this.firstAt)) {
      this.firstAt = t
      this.lastAt = t
      this.chunks++
      return
    }
    const gap = t - this.lastAt
    if (gap > this.gw.stallAfterMs && !this.stalled) {
      this.stalled = true
      this.gw.stall(this, gap)
    }
    this.lastAt = t
    this.chunks++
  }

  /** @internal Reports a stall once when the stream has gone silent for longer than the bound. */
  checkStall(): void {
    if (this.done || this.stalled || this.chunks === 0) return
    const gap = this.gw.now() - this.lastAt
    if (gap > this.gw.stallAfterMs) {
      this.stalled = true
      this.gw.stall(this, gap)
    }
  }

  /** ms since the last byte (or since admission before the first): for stall watchdogs. */
  silentForMs(): number {
    return this.gw.now() - (Number.isNaN(this.lastAt) ? this.startedAt : this.lastAt)
  }

  /**
   * The response ended. `status` is what the client got; a 5xx from the upstream counts against
   * the replica's breaker, a 4xx (the client's error) does not.
   */
  end(status: number, usage?: { promptTokens?: number | null; completionTokens?: number | null }): void {
    if (this.done) return
    this.done = true
    const upstream5xx = status >= 500
    if (upstream5xx) this.permit.dropped()
    else this.permit.success()
    this.gw.finish(
      this,
      status,
      upstream5xx ? 'server-error' : status >= 400 ? 'client-error' : 'success',
      null,
      usage,
    )
  }

  /** The upstream failed (refused, reset, timed out): a loss for the limiter, a failure for the breaker. */
  fail(kind: Exclude<OutcomeKind, 'success' | 'client-error'>, error: string, status = 502): void {
    if (this.done) return
    this.done = true
    this.permit.dropped()
    this.gw.finish(this, status, kind, error, undefined)
  }

  /** The client went away before the end: says nothing about the replica. */
  abort(): void {
    if (this.done) return
    this.done = true
    this.permit.ignore()
    this.gw.release(this)
  }

  get ended(): boolean {
    return this.done
  }

  /** @internal Folds this request's TTFT and inter-token mean into its replica's statistics. */
  foldInto(s: ReplicaRequestStats): void {
    if (!Number.isNaN(this.firstAt)) {
      const ttft = this.firstAt - this.startedAt
      s.ttftMs = s.ttftMs === null ? ttft : s.ttftMs + EWMA * (ttft - s.ttftMs)
    }
    if (this.chunks > 1) {
      const gap = (this.lastAt - this.firstChunkAt) / (this.chunks - 1)
      s.interTokenMs = s.interTokenMs === null ? gap : s.interTokenMs + EWMA * (gap - s.interTokenMs)
    }
  }
}

const EWMA = 0.1

export class Gateway {
  readonly admission: AdmissionController
  readonly picker: ReplicaPicker
  readonly stallAfterMs: number
  readonly now: () => number
  private readonly push: ((r: TelemetryRecord) => void) | null
  private readonly views = new Map<string, ReplicaView>()
  private readonly stats = new Map<string, ReplicaRequestStats>()
  private readonly active = new Set<RequestHandle>()
  private readonly autoCapped = new Set<string>()

  constructor(options: GatewayOptions) {
    if (!Array.isArray(options?.replicas) || options.replicas.length === 0)
      throw new InvalidOptionError('gateway: replicas must be a non-empty array of { name, url }')
    for (const r of options.replicas)
      if (typeof r?.name !== 'string' || r.name === '' || typeof r.url !== 'string' || !URL.canParse(r.url))
        throw new InvalidOptionError(`gateway: replica ${JSON.stringify(r)} needs a name and an absolute URL`)
    const stall = options.stallAfterMs ?? 10_000
    if (!(typeof stall === 'number' && stall > 0 && Number.isFinite(stall)))
      throw new InvalidOptionError(`gateway: stallAfterMs must be a positive number (got ${String(stall)})`)
    this.stallAfterMs = stall
    this.now = options.now ?? (() => performance.now())
    this.push = options.push ?? null
    this.admission = new AdmissionController({ ...options.admission, now: this.now })
    this.picker = new ReplicaPicker({ ...options.picker, now: this.now })
    for (const r of options.replicas) {
      this.views.set(r.name, {
        name: r.name,
        url: r.url.replace(/\/+$/, ''),
        kvCacheUsage: null,
        requestsWaiting: null,
        requestsRunning: null,
        stale: false,
        // Until the monitor says otherwise a configured replica is assumed to serve: a gateway
        // without a monitor must still route.
        serving: true,
        risk: 0,
      })
      this.stats.set(r.name, {
        requests: 0,
        errors: 0,
        stalls: 0,
        rejected: 0,
        ttftMs: null,
        interTokenMs: null,
        completionTokens: 0,
      })
    }
    this.picker.update([...this.views.values()])
  }

  /** The replicas as configured, with what the latest checkpoint said of them. */
  replicas(): ReplicaView[] {
    return [...this.views.values()]
  }

  /** Refreshes the picker from a monitor checkpoint (KV, queue, staleness, lifecycle, risk). */
  refresh(cp: Checkpoint): void {
    const risk = new Map<string, number>()
    for (const p of cp.predictions) {
      const r = p.target.replica
      if (r === null) continue
      if (p.probability > (risk.get(r) ?? 0)) risk.set(r, p.probability)
    }
    for (const e of cp.engines) {
      const v = this.views.get(e.replica)
      if (v === undefined) continue
      v.kvCacheUsage = e.reading?.kvCacheUsage ?? null
      v.requestsWaiting = e.reading?.requestsWaiting ?? null
      v.requestsRunning = e.reading?.requestsRunning ?? null
      v.stale = e.stale
      // Before the monitor's first look a replica is unknown, not down: keep routing to it.
      if (e.reading !== null) v.serving = e.lifecycleState === 'SERVING' || e.lifecycleState === 'DEGRADED'
      v.risk = risk.get(e.replica) ?? 0
      this.followQueue(
        e.replica,
        e.stale ? null : (e.reading?.requestsWaiting ?? null),
        e.reading?.requestsRunning ?? null,
      )
    }
    this.picker.update([...this.views.values()])
  }

  /**
   * Queue-aware admission: while vLLM reports requests waiting in its own queue, more admitted
   * requests only wait there (their time to first token growing with every one), so the replica
   * is capped at what it is running; the cap is lifted once its queue is empty. The adaptive
   * limit reacts to latency, which an LLM request only shows after its whole generation: this
   * reacts at the next scrape. A cap set by anything else (a mitigation) is left alone.
   */
  private followQueue(replica: string, waiting: number | null, running: number | null): void {
    const st = this.admission.state(replica)
    const mine = this.autoCapped.has(replica)
    if (!mine && st.cap !== null) return
    if (waiting !== null && waiting > 0 && running !== null && running > 0) {
      const limit = Math.max(1, Math.min(st.adaptiveLimit, running))
      if (!mine || st.cap !== limit) {
        this.admission.cap(replica, limit, `vLLM queue: ${waiting} waiting`)
        this.autoCapped.add(replica)
      }
    } else if (mine) {
      this.admission.release(replica)
      this.autoCapped.delete(replica)
    }
  }

  /**
   * Picks a replica (not in `exclude`) and admits the request to it: at once when a slot is free,
   * else after waiting in its queue. Rejects with an AdmissionRejectedError (429 or 503 with
   * Retry-After) when it cannot.
   */
  async begin(
    priority: Priority = 0,
    signal?: AbortSignal,
    exclude?: ReadonlySet<string>,
  ): Promise<RequestHandle> {
    // One pick per request: picking twice would move the round robin on twice.
    const view = this.picker.pick(exclude)
    if (view === null) throw new AdmissionRejectedError(this.noReplica())
    const now = this.admission.tryAcquire(view.name, priority)
    if (now !== null) return this.started(view, now)
    try {
      const permit = await this.admission.acquire(view.name, priority, signal)
      return this.started(view, permit)
    } catch (err) {
      if (err instanceof AdmissionRejectedError) this.countRejected(view.name)
      throw err
    }
  }

  /**
   * The synchronous path: a handle when a replica has a free slot, a Rejection when none can
   * take the request at all, null when it has to queue (then call `begin`).
   */
  tryBegin(priority: Priority = 0, exclude?: ReadonlySet<string>): RequestHandle | Rejection | null {
    const view = this.picker.pick(exclude)
    if (view === null) return this.noReplica()
    const permit = this.admission.tryAcquire(view.name, priority)
    if (permit === null) return null
    return this.started(view, permit)
  }

  private started(view: ReplicaView, permit: Permit): RequestHandle {
    this.picker.onStart(view.name)
    const h = new RequestHandle(this, view, permit)
    this.active.add(h)
    return h
  }

  private noReplica(): Rejection {
    return {
      reason: 'no-replica',
      status: 503,
      retryAfterS: 5,
      message: 'no replica can take requests (all broken, draining or not serving)',
    }
  }

  private countRejected(replica: string): void {
    const s = this.stats.get(replica)
    if (s !== undefined) s.rejected++
  }

  /** Per-replica request statistics. */
  requestStats(replica: string): ReplicaRequestStats | null {
    return this.stats.get(replica) ?? null
  }

  /** Requests in flight now. */
  inFlight(): number {
    return this.active.size
  }

  /**
   * Checks the in-flight streams for stalls (call on a timer; the proxy does every second). Only
   * a stream that has started counts: before the first chunk the upstream's headers timeout
   * bounds the wait, and a non-streaming response is allowed its whole generation time.
   */
  checkStalls(): void {
    for (const h of this.active) h.checkStall()
  }

  /** @internal */
  stall(h: RequestHandle, gapMs: number): void {
    const s = this.stats.get(h.replica)
    if (s !== undefined) s.stalls++
    this.event({
      type: 'gateway-stream-stall',
      severity: 'warning',
      replica: h.replica,
      gpu: null,
      message: `a response from ${h.replica} went silent for ${(gapMs / 1000).toFixed(1)} s mid-stream (engine hang?)`,
      data: { gapMs: Math.round(gapMs) },
    })
  }

  /** @internal */
  finish(
    h: RequestHandle,
    status: number,
    kind: OutcomeKind,
    error: string | null,
    usage: { promptTokens?: number | null; completionTokens?: number | null } | undefined,
  ): void {
    this.release(h)
    this.picker.record(h.replica, kind)
    const s = this.stats.get(h.replica)
    if (s === undefined) return
    s.requests++
    h.foldInto(s)
    if (typeof usage?.completionTokens === 'number') s.completionTokens += usage.completionTokens
    if (kind !== 'success' && kind !== 'client-error') {
      s.errors++
      this.event({
        type: 'gateway-upstream-error',
        severity: 'warning',
        replica: h.replica,
        gpu: null,
        message: `request to ${h.replica} failed: ${error ?? `HTTP ${status}`}`,
        data: { kind, status },
      })
    }
  }

  /** @internal */
  release(h: RequestHandle): void {
    if (this.active.delete(h)) this.picker.onEnd(h.replica)
  }

  private event(e: MonitorEvent): void {
    if (this.push === null) return
    try {
      this.push({ t: this.now(), kind: 'event', ...e })
    } catch {
      // the monitor reports its own failures; the request path must not fail with it
    }
  }
}

export { AdmissionRejectedError }
