/**
 * Per-replica admission: an adaptive concurrency limit (Gradient2), an optional cap set by
 * mitigations, a bounded priority queue with a timeout, GIE-style shedding of sheddable requests
 * (priority below `sheddableBelow`) while saturated, and a `Retry-After` predicted from the
 * replica's measured completion rate. It is also the actuator mitigations act through
 * (cap, release, drain, undrain, shed). See gateways.md §4, §6, §9, §13.
 *
 * The fast path (`tryAcquire` and ending a permit) allocates only the permit and never logs.
 */

import { InvalidArgumentError, InvalidOptionError, VllmMonitorError } from '../errors.js'
import { Gradient2Limit } from './gradient2.js'
import type { AdmissionActuator, Permit, Priority, Rejection, RejectReason } from './types.js'

export interface AdmissionOptions {
  /** Adaptive limit per replica before any sample (default 20). */
  initialLimit?: number
  /** Floor of the adaptive limit (default 4). */
  minLimit?: number
  /** Ceiling of the adaptive limit (default 200). */
  maxLimit?: number
  /** Waiters per replica; beyond it a request is rejected 429 'overloaded' (default 256). */
  maxQueue?: number
  /** How long a request may wait in the queue before a 429 'queue-timeout' (default 30 000 ms). */
  queueTimeoutMs?: number
  /**
   * Requests with a priority below this are rejected at once (429 'overloaded') while the replica's
   * in-flight count is at its limit, instead of queueing (default 0: GIE's "priority < 0 is sheddable").
   */
  sheddableBelow?: number
  /** Clock in ms (default `performance.now`). */
  now?: () => number
}

/** Everything `state()` reports about one replica. */
export interface AdmissionState {
  /** The effective limit: min(adaptive limit, cap). */
  limit: number
  adaptiveLimit: number
  cap: number | null
  capReason: string | null
  inflight: number
  queued: number
  draining: boolean
  /** Measured rate at which slots free up (EWMA), 0 before it is known. */
  completionsPerSec: number
  admitted: number
  rejected: number
}

const kAdmissionRejected = Symbol.for('vllm-monitor.error.VLLM_MONITOR_ADMISSION_REJECTED')

/** A request was not admitted; `rejection` says why and what to answer (status, Retry-After). */
export class AdmissionRejectedError extends VllmMonitorError {
  override readonly name = 'AdmissionRejectedError'
  override readonly code = 'VLLM_MONITOR_ADMISSION_REJECTED' as const
  readonly rejection: Rejection
  constructor(rejection: Rejection, options?: ErrorOptions) {
    super(rejection.message, options)
    this.rejection = rejection
    Object.defineProperty(this, kAdmissionRejected, { value: true })
  }
  static override [Symbol.hasInstance](x: unknown): boolean {
    return (x as Record<symbol, unknown> | null)?.[kAdmissionRejected] === true
  }
}

const kDefaults = {
  initialLimit: 20,
  minLimit: 4,
  maxLimit: 200,
  maxQueue: 256,
  queueTimeoutMs: 30_000,
  sheddableBelow: 0,
} as const

/** Smoothing of the completion-interval and latency averages. */
const kRateAlpha = 0.2
const kRetryAfterMinS = 1
const kRetryAfterMaxS = 60
/** Node runs a timer set longer than this after 1 ms (with a TimeoutOverflowWarning). */
const kMaxTimerMs = 2_147_483_647

interface Waiter {
  priority: number
  seq: number
  enqueuedAt: number
  resolve: (permit: Permit) => void
  reject: (err: unknown) => void
  timer: ReturnType<typeof setTimeout> | null
  signal: AbortSignal | null
  onAbort: (() => void) | null
  /** Settled or removed; a queue slot holding it is skipped. */
  done: boolean
  /** The band it waits in; null once taken off the queue. */
  band: Band | null
}

interface DrainWaiter {
  resolve: (drained: boolean) => void
  timer: ReturnType<typeof setTimeout> | null
}

/** One priority band: a FIFO with a moving head (holes are waiters marked done). */
interface Band {
  priority: number
  items: Waiter[]
  head: number
  /** Waiters in `items` not done. */
  live: number
}

/**
 * A band is rewritten without its holes and taken slots once they number this many and outnumber
 * its live waiters. Without it a band that never empties (sustained overload, or a low band
 * starved by a higher one while its waiters time out) grows by a slot, or a whole waiter, per
 * request for as long as that lasts.
 */
const kCompactAfter = 64

class ReplicaAdmission {
  readonly name: string
  readonly limiter: Gradient2Limit
  cap: number | null = null
  capReason: string | null = null
  inflight = 0
  draining = false
  /** Set by `shed`: priorities below it are rejected regardless of saturation; null when not shedding. */
  shedBelow: number | null = null
  shedReason: string | null = null
  /** Live waiters (not counting holes). */
  queued = 0
  /** Bands sorted by priority, highest first. */
  bands: Band[] = []
  admitted = 0
  rejected = 0
  /** EWMA of ms between slot releases; 0 until two releases were seen. */
  completionIntervalMs = 0
  lastCompletionAt = -1
  /** EWMA of successful request latency in ms; 0 until one was seen. */
  latencyMs = 0
  drainWaiters: DrainWaiter[] = []

  constructor(name: string, limiter: Gradient2Limit) {
    this.name = name
    this.limiter = limiter
  }

  effectiveLimit(): number {
    const adaptive = this.limiter.limit
    return this.cap !== null && this.cap < adaptive ? this.cap : adaptive
  }

  completionsPerSec(): number {
    return this.completionIntervalMs > 0 ? 1000 / this.completionIntervalMs : 0
  }
}

/** Set by AdmissionController's static block: lets a permit end itself without a public method. */
let endPermit: (
  controller: AdmissionController,
  s: ReplicaAdmission,
  grantedAt: number,
  inflightAtStart: number,
  kind: 0 | 1 | 2,
) => void

/** A granted slot. One object per grant; ending it twice is a no-op. */
class AdmissionPermit implements Permit {
  readonly replica: string
  readonly #controller: AdmissionController
  readonly #state: ReplicaAdmission
  readonly #grantedAt: number
  readonly #inflightAtStart: number
  #ended = false

  constructor(controller: AdmissionController, state: ReplicaAdmission, grantedAt: number) {
    this.replica = state.name
    this.#controller = controller
    this.#state = state
    this.#grantedAt = grantedAt
    this.#inflightAtStart = state.inflight
  }

  success(): void {
    if (this.#ended) return
    this.#ended = true
    endPermit(this.#controller, this.#state, this.#grantedAt, this.#inflightAtStart, 0)
  }

  dropped(): void {
    if (this.#ended) return
    this.#ended = true
    endPermit(this.#controller, this.#state, this.#grantedAt, this.#inflightAtStart, 1)
  }

  ignore(): void {
    if (this.#ended) return
    this.#ended = true
    endPermit(this.#controller, this.#state, this.#grantedAt, this.#inflightAtStart, 2)
  }
}

function optionError(name: string, rule: string): InvalidOptionError {
  return new InvalidOptionError(`AdmissionController: option "${name}" must be ${rule}`)
}

function validate(options: AdmissionOptions): Required<AdmissionOptions> {
  if (options === null || typeof options !== 'object')
    throw new InvalidOptionError('AdmissionController: options must be an object')
  const o = { ...kDefaults, ...options }
  const positiveInt = (name: 'initialLimit' | 'minLimit' | 'maxLimit') => {
    const v = o[name]
    if (!Number.isInteger(v) || v < 1) throw optionError(name, 'a positive integer')
  }
  positiveInt('minLimit')
  positiveInt('maxLimit')
  positiveInt('initialLimit')
  if (o.maxLimit < o.minLimit) throw optionError('maxLimit', 'an integer >= minLimit')
  if (o.initialLimit < o.minLimit || o.initialLimit > o.maxLimit)
    throw optionError('initialLimit', 'an integer between minLimit and maxLimit')
  if (!Number.isInteger(o.maxQueue) || o.maxQueue < 0) throw optionError('maxQueue', 'a non-negative integer')
  if (typeof o.queueTimeoutMs !== 'number' || !(o.queueTimeoutMs > 0 && o.queueTimeoutMs <= kMaxTimerMs))
    throw optionError('queueTimeoutMs', `a positive number of milliseconds, at most ${kMaxTimerMs}`)
  if (typeof o.sheddableBelow !== 'number' || Number.isNaN(o.sheddableBelow))
    throw optionError('sheddableBelow', 'a number')
  if (options.now !== undefined && typeof options.now !== 'function')
    throw optionError('now', 'a function returning milliseconds')
  return { ...o, now: options.now ?? (() => performance.now()) }
}

export class AdmissionController implements AdmissionActuator {
  readonly #options: Required<AdmissionOptions>
  readonly #now: () => number
  readonly #replicas = new Map<string, ReplicaAdmission>()
  #seq = 0

  constructor(options: AdmissionOptions = {}) {
    this.#options = validate(options)
    this.#now = this.#options.now
  }

  /** Names of the replicas seen so far. */
  replicas(): string[] {
    return [...this.#replicas.keys()]
  }

  /** A snapshot of one replica's admission state (created on first use). */
  state(replica: string): AdmissionState {
    const s = this.#get(replica)
    return {
      limit: s.effectiveLimit(),
      adaptiveLimit: s.limiter.limit,
      cap: s.cap,
      capReason: s.capReason,
      inflight: s.inflight,
      queued: s.queued,
      draining: s.draining,
      completionsPerSec: s.completionsPerSec(),
      admitted: s.admitted,
      rejected: s.rejected,
    }
  }

  /**
   * Sync fast path: a permit when the replica is under its effective limit, not draining and has
   * nobody queued ahead; otherwise null (the caller may `acquire` to queue). The priority matters
   * here only while the replica is shed (`shed`): a request below the threshold gets null, and
   * `acquire` then rejects it.
   */
  tryAcquire(replica: string, priority?: Priority): Permit | null {
    const s = this.#get(replica)
    if (s.draining || s.queued > 0 || s.inflight >= s.effectiveLimit()) return null
    // A shed request is left to `acquire`, which rejects it with the 429.
    if (s.shedBelow !== null && (priority ?? 0) < s.shedBelow) return null
    return this.#grant(s)
  }

  /**
   * A permit now, or after waiting in the replica's priority queue (higher priority first, FIFO
   * within one). Rejects with `AdmissionRejectedError` (overloaded / queue-timeout / draining) or, when
   * `signal` aborts, with the signal's reason.
   */
  acquire(replica: string, priority: Priority = 0, signal?: AbortSignal): Promise<Permit> {
    if (typeof priority !== 'number' || Number.isNaN(priority))
      return Promise.reject(new InvalidArgumentError('acquire: priority must be a number'))
    if (signal?.aborted) return Promise.reject(signal.reason)
    const s = this.#get(replica)
    if (s.draining || s.cap === 0) return Promise.reject(this.#reject(s, 'draining'))
    if (s.shedBelow !== null && priority < s.shedBelow) {
      const why = `replica ${s.name} is shedding requests with priority < ${s.shedBelow} (${s.shedReason})`
      return Promise.reject(this.#reject(s, 'overloaded', why))
    }
    if (s.queued === 0 && s.inflight < s.effectiveLimit()) return Promise.resolve(this.#grant(s))
    if (priority < this.#options.sheddableBelow) return Promise.reject(this.#reject(s, 'overloaded'))
    if (s.queued >= this.#options.maxQueue) return Promise.reject(this.#reject(s, 'overloaded'))
    return new Promise<Permit>((resolve, reject) => {
      const w: Waiter = {
        priority,
        seq: this.#seq++,
        enqueuedAt: this.#now(),
        resolve,
        reject,
        timer: null,
        signal: signal ?? null,
        onAbort: null,
        done: false,
        band: null,
      }
      this.#enqueue(s, w)
      w.timer = setTimeout(() => this.#timeOut(s, w), this.#options.queueTimeoutMs)
      w.timer.unref?.()
      if (signal) {
        w.onAbort = () => {
          if (w.done) return
          this.#remove(s, w)
          reject(signal.reason)
        }
        signal.addEventListener('abort', w.onAbort, { once: true })
      }
    })
  }

  cap(replica: string, limit: number, reason: string): void {
    if (!Number.isInteger(limit) || limit < 0)
      throw new InvalidArgumentError('cap: limit must be a non-negative integer')
    const s = this.#get(replica)
    s.cap = limit
    s.capReason = String(reason)
    if (limit === 0) this.#rejectAll(s, 'draining')
    // A raised cap admits the waiters that now fit, as release() does.
    else this.#dispatch(s)
  }

  release(replica: string): void {
    const s = this.#get(replica)
    s.cap = null
    s.capReason = null
    this.#dispatch(s)
  }

  drain(replica: string, timeoutMs: number): Promise<boolean> {
    if (typeof timeoutMs !== 'number' || Number.isNaN(timeoutMs) || timeoutMs < 0)
      return Promise.reject(new InvalidArgumentError('drain: timeoutMs must be a non-negative number'))
    const s = this.#get(replica)
    s.draining = true
    this.#rejectAll(s, 'draining')
    if (s.inflight === 0) return Promise.resolve(true)
    return new Promise<boolean>((resolve) => {
      const d: DrainWaiter = { resolve, timer: null }
      s.drainWaiters.push(d)
      // Longer than a timer can wait is as good as no bound.
      if (timeoutMs <= kMaxTimerMs) {
        d.timer = setTimeout(() => {
          const i = s.drainWaiters.indexOf(d)
          if (i >= 0) s.drainWaiters.splice(i, 1)
          resolve(false)
        }, timeoutMs)
        d.timer.unref?.()
      }
    })
  }

  /**
   * Load shedding set by a mitigation: until `unshed`, requests to the replica with a priority below
   * `belowPriority` are rejected at once (429 'overloaded' with Retry-After), saturated or not.
   * Requests already queued are not affected.
   */
  shed(replica: string, belowPriority: number, reason: string): void {
    if (typeof belowPriority !== 'number' || Number.isNaN(belowPriority))
      throw new InvalidArgumentError('shed: belowPriority must be a number')
    const s = this.#get(replica)
    s.shedBelow = belowPriority
    s.shedReason = String(reason)
  }

  /** The priority below which `shed` turns requests away, null when the replica is not shed. */
  shedBelow(replica: string): number | null {
    return this.#get(replica).shedBelow
  }

  /** Lifts `shed`. */
  unshed(replica: string): void {
    const s = this.#get(replica)
    s.shedBelow = null
    s.shedReason = null
  }

  undrain(replica: string): void {
    const s = this.#get(replica)
    s.draining = false
    // Whoever still waits for this drain learns it did not complete.
    this.#settleDrains(s, false)
    this.#dispatch(s)
  }

  static {
    endPermit = (c, s, grantedAt, inflightAtStart, kind) => c.#end(s, grantedAt, inflightAtStart, kind)
  }

  /** Ends a permit: 0 success, 1 dropped, 2 ignore. */
  #end(s: ReplicaAdmission, grantedAt: number, inflightAtStart: number, kind: 0 | 1 | 2): void {
    const now = this.#now()
    if (kind === 0) {
      const rtt = now - grantedAt
      s.limiter.onSample(rtt, inflightAtStart, false)
      s.latencyMs = s.latencyMs === 0 ? rtt : s.latencyMs + (rtt - s.latencyMs) * kRateAlpha
    } else if (kind === 1) {
      s.limiter.onSample(now - grantedAt, inflightAtStart, true)
    }
    if (s.lastCompletionAt >= 0) {
      const dt = now - s.lastCompletionAt
      s.completionIntervalMs =
        s.completionIntervalMs === 0
          ? dt
          : s.completionIntervalMs + (dt - s.completionIntervalMs) * kRateAlpha
    }
    s.lastCompletionAt = now
    s.inflight--
    if (s.queued > 0) this.#dispatch(s)
    if (s.inflight === 0 && s.drainWaiters.length > 0) this.#settleDrains(s, true)
  }

  #get(replica: string): ReplicaAdmission {
    let s = this.#replicas.get(replica)
    if (s === undefined) {
      if (typeof replica !== 'string' || replica.length === 0)
        throw new InvalidArgumentError('replica must be a non-empty string')
      const o = this.#options
      s = new ReplicaAdmission(
        replica,
        new Gradient2Limit({ initialLimit: o.initialLimit, minLimit: o.minLimit, maxLimit: o.maxLimit }),
      )
      this.#replicas.set(replica, s)
    }
    return s
  }

  #grant(s: ReplicaAdmission): Permit {
    s.inflight++
    s.admitted++
    return new AdmissionPermit(this, s, this.#now())
  }

  /** Seconds until the queue (plus one more request) would drain at the measured rate. */
  #retryAfterS(s: ReplicaAdmission): number {
    let rate = s.completionsPerSec()
    if (rate === 0 && s.latencyMs > 0) rate = s.effectiveLimit() / (s.latencyMs / 1000)
    if (!(rate > 0)) return kRetryAfterMinS
    const seconds = Math.ceil((s.queued + 1) / rate)
    return seconds < kRetryAfterMinS ? kRetryAfterMinS : Math.min(seconds, kRetryAfterMaxS)
  }

  #reject(s: ReplicaAdmission, reason: RejectReason, detail?: string): AdmissionRejectedError {
    s.rejected++
    const status = reason === 'draining' || reason === 'no-replica' ? 503 : 429
    const message =
      detail !== undefined
        ? detail
        : reason === 'overloaded'
          ? `replica ${s.name} is overloaded`
          : reason === 'queue-timeout'
            ? `request waited in the queue for replica ${s.name} past ${this.#options.queueTimeoutMs} ms`
            : reason === 'draining'
              ? `replica ${s.name} is draining`
              : `no replica can take requests`
    return new AdmissionRejectedError({ reason, status, retryAfterS: this.#retryAfterS(s), message })
  }

  #enqueue(s: ReplicaAdmission, w: Waiter): void {
    const bands = s.bands
    let i = 0
    while (i < bands.length && bands[i]!.priority > w.priority) i++
    let band = bands[i]
    if (band === undefined || band.priority !== w.priority) {
      band = { priority: w.priority, items: [], head: 0, live: 0 }
      bands.splice(i, 0, band)
    }
    band.items.push(w)
    band.live++
    w.band = band
    s.queued++
  }

  /** Takes the next live waiter off the queue (highest priority, oldest first). */
  #shift(s: ReplicaAdmission): Waiter | null {
    const bands = s.bands
    while (bands.length > 0) {
      const band = bands[0]!
      while (band.head < band.items.length) {
        const w = band.items[band.head]!
        band.items[band.head] = undefined as unknown as Waiter
        band.head++
        if (!w.done) {
          this.#unlink(s, w)
          s.queued--
          return w
        }
      }
      bands.shift()
    }
    return null
  }

  /** Marks a waiter removed; its slot in the band is skipped later. */
  #remove(s: ReplicaAdmission, w: Waiter): void {
    w.done = true
    s.queued--
    this.#cleanup(w)
    this.#unlink(s, w)
    if (s.queued === 0) s.bands.length = 0
  }

  /** `w` left its band: drops a band with no live waiter left, compacts one mostly made of holes. */
  #unlink(s: ReplicaAdmission, w: Waiter): void {
    const band = w.band
    if (band === null) return
    w.band = null
    if (--band.live === 0) {
      const i = s.bands.indexOf(band)
      if (i >= 0) s.bands.splice(i, 1)
      return
    }
    const garbage = band.items.length - band.live
    if (garbage < kCompactAfter || garbage <= band.live) return
    const items: Waiter[] = []
    for (let i = band.head; i < band.items.length; i++) {
      const x = band.items[i]
      if (x !== undefined && !x.done) items.push(x)
    }
    band.items = items
    band.head = 0
  }

  #cleanup(w: Waiter): void {
    if (w.timer !== null) clearTimeout(w.timer)
    w.timer = null
    if (w.signal !== null && w.onAbort !== null) w.signal.removeEventListener('abort', w.onAbort)
    w.onAbort = null
  }

  #timeOut(s: ReplicaAdmission, w: Waiter): void {
    if (w.done) return
    this.#remove(s, w)
    w.reject(this.#reject(s, 'queue-timeout'))
  }

  /** Admits waiters while there is room; those already past their timeout are rejected instead. */
  #dispatch(s: ReplicaAdmission): void {
    if (s.draining) return
    const timeout = this.#options.queueTimeoutMs
    while (s.queued > 0 && s.inflight < s.effectiveLimit()) {
      const w = this.#shift(s)
      if (w === null) break
      w.done = true
      this.#cleanup(w)
      if (this.#now() - w.enqueuedAt >= timeout) {
        w.reject(this.#reject(s, 'queue-timeout'))
        continue
      }
      w.resolve(this.#grant(s))
    }
  }

  #rejectAll(s: ReplicaAdmission, reason: RejectReason): void {
    for (;;) {
      const w = this.#shift(s)
      if (w === null) break
      w.done = true
      this.#cleanup(w)
      w.reject(this.#reject(s, reason))
    }
    s.bands.length = 0
  }

  #settleDrains(s: ReplicaAdmission, drained: boolean): void {
    const waiters = s.drainWaiters
    s.drainWaiters = []
    for (const d of waiters) {
      if (d.timer !== null) clearTimeout(d.timer)
      d.resolve(drained)
    }
  }
}
