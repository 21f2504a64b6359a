/**
 * Netflix Gradient2 adaptive concurrency limit (concurrency-limits `limit/Gradient2Limit.java`),
 * fed one sample per finished request. It compares a short-term RTT (the sample) with a long-term
 * exponential average: while they agree the limit grows by `queueSize` per sample (smoothed), and when
 * the short RTT rises above `rttTolerance` times the long one the limit shrinks (by at most half per
 * step before smoothing). A dropped request (upstream failure or timeout) is treated as loss: the
 * limit backs off multiplicatively (AIMD, ×0.9). See gateways.md §9.
 *
 * Because the gradient is floored at 0.5 and `queueSize` is added every step, delay alone settles the
 * limit near 2 × queueSize at worst (8 with the defaults); loss backoff can take it down to `minLimit`.
 *
 * No allocation per sample: all state is numbers on the instance.
 */

import { InvalidOptionError } from '../errors.js'

export interface Gradient2Options {
  /** Limit before any sample (default 20). */
  initialLimit?: number
  /** Floor of the limit (default 4). */
  minLimit?: number
  /** Ceiling of the limit (default 200). */
  maxLimit?: number
  /** Weight of a new limit against the current one, in (0, 1] (default 0.2). */
  smoothing?: number
  /** Growth allowance per sample: a number, or a function of the current limit (default 4). */
  queueSize?: number | ((limit: number) => number)
  /** How much the short RTT may exceed the long RTT before the limit shrinks, >= 1 (default 1.5). */
  rttTolerance?: number
  /** Samples the long RTT averages over (default 600). */
  longWindow?: number
}

/** Multiplicative backoff applied to the limit on a dropped sample. */
const kLossBackoff = 0.9
/** The long RTT is a plain average over this many first samples before the exponential average. */
const kLongRttWarmup = 10

function optionError(name: string, rule: string): InvalidOptionError {
  return new InvalidOptionError(`Gradient2Limit: option "${name}" must be ${rule}`)
}

export class Gradient2Limit {
  readonly minLimit: number
  readonly maxLimit: number
  readonly smoothing: number
  readonly rttTolerance: number
  readonly longWindow: number
  readonly #queueSizeFixed: number
  readonly #queueSizeFn: ((limit: number) => number) | null
  readonly #longFactor: number
  #estimatedLimit: number
  #longRtt = 0
  #longCount = 0
  #lastRtt = 0

  constructor(options: Gradient2Options = {}) {
    const initialLimit = options.initialLimit ?? 20
    const minLimit = options.minLimit ?? 4
    const maxLimit = options.maxLimit ?? 200
    const smoothing = options.smoothing ?? 0.2
    const queueSize = options.queueSize ?? 4
    const rttTolerance = options.rttTolerance ?? 1.5
    const longWindow = options.longWindow ?? 600
    if (!Number.isInteger(minLimit) || minLimit < 1) throw optionError('minLimit', 'a positive integer')
    if (!Number.isInteger(maxLimit) || maxLimit < minLimit)
      throw optionError('maxLimit', 'an integer >= minLimit')
    if (!Number.isInteger(initialLimit) || initialLimit < minLimit || initialLimit > maxLimit)
      throw optionError('initialLimit', 'an integer between minLimit and maxLimit')
    if (typeof smoothing !== 'number' || !(smoothing > 0 && smoothing <= 1))
      throw optionError('smoothing', 'a number in (0, 1]')
    if (typeof queueSize === 'number') {
      if (!Number.isFinite(queueSize) || queueSize < 0) throw optionError('queueSize', 'a number >= 0')
    } else if (typeof queueSize !== 'function') {
      throw optionError('queueSize', 'a number >= 0 or a function of the limit')
    }
    if (typeof rttTolerance !== 'number' || !Number.isFinite(rttTolerance) || rttTolerance < 1)
      throw optionError('rttTolerance', 'a number >= 1')
    if (!Number.isInteger(longWindow) || longWindow < 1) throw optionError('longWindow', 'a positive integer')
    this.minLimit = minLimit
    this.maxLimit = maxLimit
    this.smoothing = smoothing
    this.rttTolerance = rttTolerance
    this.longWindow = longWindow
    this.#queueSizeFixed = typeof queueSize === 'number' ? queueSize : 0
    this.#queueSizeFn = typeof queueSize === 'function' ? queueSize : null
    this.#longFactor = 2 / (longWindow + 1)
    this.#estimatedLimit = initialLimit
  }

  /** The current limit, an integer in [minLimit, maxLimit]. */
  get limit(): number {
    return Math.floor(this.#estimatedLimit)
  }

  /** The unrounded estimate (for gauges). */
  get estimatedLimit(): number {
    return this.#estimatedLimit
  }

  /** The long-term RTT average in ms (0 before the first sample). */
  get longRttMs(): number {
    return this.#longRtt
  }

  /** The last sample's RTT in ms (0 before the first sample). */
  get lastRttMs(): number {
    return this.#lastRtt
  }

  /**
   * Feeds one finished request: its RTT in ms, the number of requests in flight when it started,
   * and whether it was dropped (failed upstream or timed out).
   */
  onSample(rttMs: number, inflight: number, dropped: boolean): void {
    if (dropped) {
      // Loss: back off multiplicatively; a dropped request's RTT says nothing about queueing.
      const backedOff = this.#estimatedLimit * kLossBackoff
      this.#estimatedLimit = Math.max(backedOff, this.minLimit)
      return
    }
    if (!(rttMs >= 0) || !Number.isFinite(rttMs)) return
    // A zero RTT (sub-millisecond clock) would make every ratio infinite; floor it.
    const shortRtt = Math.max(rttMs, 0.001)
    this.#lastRtt = shortRtt
    let longRtt: number
    if (this.#longCount < kLongRttWarmup) {
      this.#longCount++
      longRtt = this.#longRtt + (shortRtt - this.#longRtt) / this.#longCount
    } else {
      longRtt = this.#longRtt + (shortRtt - this.#longRtt) * this.#longFactor
    }
    this.#longRtt = longRtt
    // After a long stretch of high latency the long RTT lags behind a recovered system: pull it down
    // faster than the exponential average would.
    if (longRtt / shortRtt > 2) this.#longRtt = longRtt * 0.95

    const limit = this.#estimatedLimit
    // App-limited: too few requests in flight to say anything about the limit; don't grow it.
    if (inflight < limit / 2) return

    let gradient = (this.rttTolerance * longRtt) / shortRtt
    if (gradient > 1) gradient = 1
    else if (gradient < 0.5) gradient = 0.5
    const queueSize = this.#queueSizeFn === null ? this.#queueSizeFixed : this.#queueSizeFn(limit)
    let next = limit * gradient + queueSize
    next = limit * (1 - this.smoothing) + next * this.smoothing
    if (next < this.minLimit) next = this.minLimit
    else if (next > this.maxLimit) next = this.maxLimit
    this.#estimatedLimit = next
  }
}
