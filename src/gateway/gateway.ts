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
import { QueueAwareCap } from './queue-cap.js'
import { type ReplicaRequestStats, RequestHandle } from './request-handle.js'
import { type SloOptions, TtftSlo, validateSlo } from './slo.js'
import type { Permit, Priority, Rejection, RejectReason, ReplicaView } from './types.js'

export { type ReplicaRequestStats, RequestHandle }

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
  /**
   * The time to first token promised to clients. With it a request that has to queue waits only
   * while it can still make the SLO (the SLO minus the replica's expected time from admission to
   * first byte), then gets 429 'queue-timeout' + Retry-After instead of a late admission.
   */
  slo?: SloOptions
}

/** Why the SLO timer aborted a queued request (never leaves the gateway). */
const kSloDeadline = Symbol('vllm-monitor.gateway.sloDeadline')

export class Gateway {
  readonly admission: AdmissionController
  readonly picker: ReplicaPicker
  readonly stallAfterMs: number
  readonly now: () => number
  /** The TTFT SLO admission keeps to; null without one. */
  readonly slo: TtftSlo | null
  private readonly push: ((r: TelemetryRecord) => void) | null
  private readonly views = new Map<string, ReplicaView>()
  private readonly stats = new Map<string, ReplicaRequestStats>()
  private readonly active = new Set<RequestHandle>()
  private readonly queueCap: QueueAwareCap

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
    this.queueCap = new QueueAwareCap(this.admission, this.now)
    const slo = validateSlo(options.slo, 'gateway')
    this.slo = slo === null ? null : new TtftSlo(slo)
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
      this.queueCap.follow(
        e.replica,
        e.stale ? null : (e.reading?.requestsWaiting ?? null),
        e.reading?.requestsRunning ?? null,
      )
    }
    this.picker.update([...this.views.values()])
  }

  /**
   * Picks a replica (not in `exclude`) and admits the request to it: at once when a slot is free,
   * else after waiting in its queue (with an SLO, only while it can still make it). Rejects with
   * an AdmissionRejectedError (429 or 503 with Retry-After) when it cannot.
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
      const permit =
        this.slo === null
          ? await this.admission.acquire(view.name, priority, signal)
          : await this.acquireWithinSlo(this.slo, view.name, priority, signal)
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

  /** Queues for `replica` no longer than the request can wait and still make the SLO. */
  private async acquireWithinSlo(
    slo: TtftSlo,
    replica: string,
    priority: Priority,
    signal: AbortSignal | undefined,
  ): Promise<Permit> {
    const budgetMs = slo.queueBudgetMs(replica)
    if (budgetMs <= 0) throw new AdmissionRejectedError(this.sloRejection(slo, replica, 'overloaded', 0))
    if (signal?.aborted) throw signal.reason
    const ac = new AbortController()
    const forward = () => ac.abort(signal?.reason)
    signal?.addEventListener('abort', forward, { once: true })
    const timer = setTimeout(() => ac.abort(kSloDeadline), budgetMs)
    timer.unref()
    const queuedAt = performance.now()
    try {
      const permit = await this.admission.acquire(replica, priority, ac.signal)
      // A timer runs late on a busy loop: a slot granted past the deadline would admit it late.
      if (performance.now() - queuedAt <= budgetMs) return permit
      permit.ignore()
    } catch (err) {
      if (err !== kSloDeadline) throw err
    } finally {
      clearTimeout(timer)
      signal?.removeEventListener('abort', forward)
    }
    throw new AdmissionRejectedError(
      this.sloRejection(slo, replica, 'queue-timeout', performance.now() - queuedAt),
    )
  }

  private sloRejection(slo: TtftSlo, replica: string, reason: RejectReason, waitedMs: number): Rejection {
    const st = this.admission.state(replica)
    // The admission controller's own estimate: the time for the queue ahead to drain.
    const rate = st.completionsPerSec
    const retryAfterS = rate > 0 ? Math.min(60, Math.max(1, Math.ceil((st.queued + 1) / rate))) : 1
    const first = slo.expectedFirstByteMs(replica)
    const firstText = first === null ? '' : `, first byte expected ${Math.round(first)} ms after admission`
    return {
      reason,
      status: 429,
      retryAfterS,
      message:
        reason === 'queue-timeout'
          ? `request waited ${Math.round(waitedMs)} ms for replica ${replica} and can no longer make the ${slo.ttftMs} ms TTFT SLO${firstText}`
          : `replica ${replica} cannot queue a request within the ${slo.ttftMs} ms TTFT SLO${firstText}`,
    }
  }

  /** @internal A request to `replica` got its first byte `ms` after admission. */
  firstByteAfter(replica: string, ms: number): void {
    this.slo?.observe(replica, ms)
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
