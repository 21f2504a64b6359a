/**
 * The gateway's time-to-first-token SLO. A request that has to queue for a replica may wait only
 * as long as it can still make the SLO: the SLO minus the time the replica is expected to take
 * from admission to the first byte. Past that it is answered 429 + Retry-After instead of being
 * admitted late (an admitted request that misses the SLO has cost a slot and still failed its
 * client). gateways.md §9: CoDel-style admission, queue wait measured against a TTFT SLO.
 *
 * The expected first-byte time is Jacobson's RTT estimator (RFC 6298 §2: mean + k x mean
 * deviation, gains 1/8 and 1/4) over admission-to-first-byte times, per replica, so the budget
 * covers most admitted requests rather than the average one.
 */
import { InvalidOptionError } from '../errors.js'

export interface SloOptions {
  /** Time to first token the gateway's clients are promised, ms (queue wait included). */
  ttftMs: number
}

/** Budget fraction of the SLO a request may queue before any first byte was measured. */
const kColdQueueShare = 0.5
/** Deviations added to the mean first-byte time (RFC 6298 uses 4 for a timeout; this is a budget). */
const kDeviations = 2
const kMeanGain = 1 / 8
const kDevGain = 1 / 4
/** The queue budget becomes a timer; Node runs one set longer than this after 1 ms. */
const kMaxTimerMs = 2_147_483_647

export function validateSlo(slo: unknown, who: string): SloOptions | null {
  if (slo === undefined) return null
  if (slo === null || typeof slo !== 'object')
    throw new InvalidOptionError(`${who}: slo must be an object like { ttftMs: 2000 }`)
  const t = (slo as { ttftMs?: unknown }).ttftMs
  if (typeof t !== 'number' || !Number.isFinite(t) || t <= 0)
    throw new InvalidOptionError(`${who}: slo.ttftMs must be a positive number of ms (got ${String(t)})`)
  if (t > kMaxTimerMs)
    throw new InvalidOptionError(`${who}: slo.ttftMs must be at most ${kMaxTimerMs} ms (got ${t})`)
  return { ttftMs: t }
}

/** Admission-to-first-byte time of one replica's requests. */
class FirstByteEstimate {
  meanMs = Number.NaN
  devMs = 0

  add(ms: number): void {
    if (Number.isNaN(this.meanMs)) {
      this.meanMs = ms
      this.devMs = ms / 2
      return
    }
    const err = ms - this.meanMs
    this.meanMs += kMeanGain * err
    this.devMs += kDevGain * ((err < 0 ? -err : err) - this.devMs)
  }

  /** A first-byte time most requests stay under; NaN before the first sample. */
  expectedMs(): number {
    return this.meanMs + kDeviations * this.devMs
  }
}

export class TtftSlo {
  readonly ttftMs: number
  readonly #replicas = new Map<string, FirstByteEstimate>()

  constructor(options: SloOptions) {
    this.ttftMs = options.ttftMs
  }

  /** A request to `replica` got its first byte `ms` after admission. */
  observe(replica: string, ms: number): void {
    let e = this.#replicas.get(replica)
    if (e === undefined) {
      e = new FirstByteEstimate()
      this.#replicas.set(replica, e)
    }
    e.add(ms)
  }

  /** ms a request to `replica` expects from admission to its first byte; null before any. */
  expectedFirstByteMs(replica: string): number | null {
    const v = this.#replicas.get(replica)?.expectedMs()
    return v === undefined || Number.isNaN(v) ? null : v
  }

  /** How long a request may queue for `replica` and still make the SLO (<= 0: not at all). */
  queueBudgetMs(replica: string): number {
    const first = this.expectedFirstByteMs(replica)
    return first === null ? this.ttftMs * kColdQueueShare : this.ttftMs - first
  }
}
