/**
 * Picks the replica for the next request: a weighted score over scraped KV-cache and queue headroom,
 * local in-flight accounting between scrapes (vLLM DP-LB style, min-max normalized like GIE's
 * queue-scorer) and the forecaster's risk, times a per-replica weight that mitigations lower.
 * Stale readings count as saturated (GIE). A per-replica circuit breaker keeps failing replicas out:
 * connection errors, 5xx and timeouts count, a client's 4xx does not (gateways.md §4, §6, §13).
 */

import { InvalidArgumentError, InvalidOptionError } from '../errors.js'
import type { ReplicaView } from './types.js'

export interface PickerOptions {
  /** Weights of the score terms (defaults kv 2, queue 2, inflight 1, risk 2). */
  weights?: { kv?: number; queue?: number; inflight?: number; risk?: number }
  /** KV-cache usage (0-1) at which KV headroom reaches 0 (default 0.8). */
  kvThreshold?: number
  /** Waiting requests at which queue headroom reaches 0 (default 5). */
  queueThreshold?: number
  breaker?: {
    /** Consecutive failures that open the breaker (default 5). */
    failureThreshold?: number
    /** How long it stays open before admitting a trial (default 10 000 ms). */
    openMs?: number
    /** Successful trials in half-open that close it (default 2). */
    halfOpenSuccesses?: number
  }
  /** Clock in ms (default `performance.now`). */
  now?: () => number
}

/** How a request to a replica ended, as the breaker counts it. */
export type OutcomeKind = 'success' | 'connect-error' | 'server-error' | 'timeout' | 'client-error'

export type BreakerState = 'closed' | 'open' | 'half-open'

export interface PickerSnapshotEntry {
  name: string
  /** The replica's score now (weighted, before tie-breaking); 0 when it cannot be picked. */
  score: number
  weight: number
  inflight: number
  breaker: BreakerState
  draining: boolean
  serving: boolean
  stale: boolean
}

const kBreakerClosed = 0
const kBreakerOpen = 1
const kBreakerHalfOpen = 2
type BreakerCode = typeof kBreakerClosed | typeof kBreakerOpen | typeof kBreakerHalfOpen
const kBreakerNames: readonly BreakerState[] = ['closed', 'open', 'half-open']

/** Scores closer than this are equal (round-robin among them). */
const kTieEpsilon = 1e-9

class Entry {
  readonly name: string
  view: ReplicaView | null = null
  inflight = 0
  weight = 1
  draining = false
  breaker: BreakerCode = kBreakerClosed
  failures = 0
  openedAt = 0
  halfOpenSuccesses = 0
  /** Trial requests started while half-open and not yet ended. */
  trials = 0
  /** Scratch: the score computed during the current pick. */
  score = 0

  constructor(name: string) {
    this.name = name
  }
}

function optionError(name: string, rule: string): InvalidOptionError {
  return new InvalidOptionError(`ReplicaPicker: option "${name}" must be ${rule}`)
}

function nonNegative(name: string, v: unknown, fallback: number): number {
  if (v === undefined) return fallback
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw optionError(name, 'a number >= 0')
  return v
}

function positive(name: string, v: unknown, fallback: number): number {
  if (v === undefined) return fallback
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) throw optionError(name, 'a number > 0')
  return v
}

function positiveInt(name: string, v: unknown, fallback: number): number {
  if (v === undefined) return fallback
  if (!Number.isInteger(v) || (v as number) < 1) throw optionError(name, 'a positive integer')
  return v as number
}

export class ReplicaPicker {
  readonly #wKv: number
  readonly #wQueue: number
  readonly #wInflight: number
  readonly #wRisk: number
  readonly #kvThreshold: number
  readonly #queueThreshold: number
  readonly #failureThreshold: number
  readonly #openMs: number
  readonly #halfOpenSuccesses: number
  readonly #now: () => number
  /** Every replica ever named; those not in the last update have `view === null`. */
  readonly #entries = new Map<string, Entry>()
  /** The current candidates, in update order. */
  #current: Entry[] = []
  #rr = 0

  constructor(options: PickerOptions = {}) {
    if (options === null || typeof options !== 'object')
      throw new InvalidOptionError('ReplicaPicker: options must be an object')
    const w = options.weights ?? {}
    if (w === null || typeof w !== 'object') throw optionError('weights', 'an object')
    this.#wKv = nonNegative('weights.kv', w.kv, 2)
    this.#wQueue = nonNegative('weights.queue', w.queue, 2)
    this.#wInflight = nonNegative('weights.inflight', w.inflight, 1)
    this.#wRisk = nonNegative('weights.risk', w.risk, 2)
    this.#kvThreshold = positive('kvThreshold', options.kvThreshold, 0.8)
    this.#queueThreshold = positive('queueThreshold', options.queueThreshold, 5)
    const b = options.breaker ?? {}
    if (b === null || typeof b !== 'object') throw optionError('breaker', 'an object')
    this.#failureThreshold = positiveInt('breaker.failureThreshold', b.failureThreshold, 5)
    this.#openMs = nonNegative('breaker.openMs', b.openMs, 10_000)
    this.#halfOpenSuccesses = positiveInt('breaker.halfOpenSuccesses', b.halfOpenSuccesses, 2)
    if (options.now !== undefined && typeof options.now !== 'function')
      throw optionError('now', 'a function returning milliseconds')
    this.#now = options.now ?? (() => performance.now())
  }

  /**
   * Replaces the known replicas. Breaker state, in-flight counts, weights and draining flags of
   * replicas that remain are kept; replicas that left lose breaker state and in-flight counts.
   */
  update(views: readonly ReplicaView[]): void {
    const next: Entry[] = []
    const seen = new Set<string>()
    for (const view of views) {
      if (seen.has(view.name)) continue
      seen.add(view.name)
      const e = this.#entry(view.name)
      e.view = view
      next.push(e)
    }
    for (const e of this.#current) {
      if (seen.has(e.name)) continue
      e.view = null
      e.inflight = 0
      e.trials = 0
      e.breaker = kBreakerClosed
      e.failures = 0
      e.halfOpenSuccesses = 0
    }
    this.#current = next
  }

  /**
   * The best eligible replica (serving, not draining, breaker not open, not in `exclude`), or null.
   * Replicas with weight 0 are picked only when no other is eligible.
   */
  pick(exclude?: ReadonlySet<string>): ReplicaView | null {
    const list = this.#current
    const now = this.#now()
    // Pass 1: eligibility, in-flight range, and whether any positive-weight replica is eligible.
    let minIn = Number.POSITIVE_INFINITY
    let maxIn = Number.NEGATIVE_INFINITY
    let anyPositive = false
    let anyEligible = false
    for (let i = 0; i < list.length; i++) {
      const e = list[i]!
      if (!this.#eligible(e, now, exclude)) {
        e.score = Number.NaN
        continue
      }
      e.score = 0
      anyEligible = true
      if (e.weight > 0) anyPositive = true
      if (e.inflight < minIn) minIn = e.inflight
      if (e.inflight > maxIn) maxIn = e.inflight
    }
    if (!anyEligible) return null
    // Pass 2: scores and the best one among the tier in use.
    let best = Number.NEGATIVE_INFINITY
    for (let i = 0; i < list.length; i++) {
      const e = list[i]!
      if (Number.isNaN(e.score)) continue
      if (anyPositive && e.weight === 0) {
        e.score = Number.NaN
        continue
      }
      const raw = this.#rawScore(e, minIn, maxIn)
      e.score = anyPositive ? raw * e.weight : raw
      if (e.score > best) best = e.score
    }
    // Pass 3: round-robin among the ties.
    let ties = 0
    for (let i = 0; i < list.length; i++) {
      const s = list[i]!.score
      if (!Number.isNaN(s) && s >= best - kTieEpsilon) ties++
    }
    let k = this.#rr++ % ties
    if (this.#rr >= Number.MAX_SAFE_INTEGER) this.#rr = 0
    for (let i = 0; i < list.length; i++) {
      const e = list[i]!
      if (Number.isNaN(e.score) || e.score < best - kTieEpsilon) continue
      if (k-- === 0) return e.view
    }
    return null
  }

  /** A request to `replica` started (local in-flight accounting between scrapes). */
  onStart(replica: string): void {
    const e = this.#entries.get(replica)
    if (e === undefined) return
    e.inflight++
    if (this.#state(e, this.#now()) === kBreakerHalfOpen) e.trials++
  }

  /** A request to `replica` ended. */
  onEnd(replica: string): void {
    const e = this.#entries.get(replica)
    if (e === undefined) return
    if (e.inflight > 0) e.inflight--
    if (e.trials > 0) e.trials--
  }

  /** Feeds the circuit breaker with how a request ended. */
  record(replica: string, kind: OutcomeKind): void {
    const e = this.#entries.get(replica)
    if (e === undefined) return
    const state = this.#state(e, this.#now())
    if (kind === 'client-error') return
    if (kind === 'success') {
      if (state === kBreakerClosed) e.failures = 0
      else if (state === kBreakerHalfOpen && ++e.halfOpenSuccesses >= this.#halfOpenSuccesses) {
        e.breaker = kBreakerClosed
        e.failures = 0
        e.halfOpenSuccesses = 0
        e.trials = 0
      }
      return
    }
    if (kind !== 'connect-error' && kind !== 'server-error' && kind !== 'timeout')
      throw new InvalidArgumentError(`record: unknown outcome kind ${String(kind)}`)
    if (state === kBreakerHalfOpen) {
      this.#open(e)
    } else if (state === kBreakerClosed && ++e.failures >= this.#failureThreshold) {
      this.#open(e)
    }
  }

  /** Scales the replica's score (1 default; 0 = only when nothing else is eligible). */
  setWeight(replica: string, multiplier: number): void {
    if (typeof multiplier !== 'number' || !Number.isFinite(multiplier) || multiplier < 0)
      throw new InvalidArgumentError('setWeight: multiplier must be a finite number >= 0')
    this.#entry(replica).weight = multiplier
  }

  /** A draining replica is never picked. */
  setDraining(replica: string, draining: boolean): void {
    this.#entry(replica).draining = draining
  }

  breakerState(replica: string): BreakerState {
    const e = this.#entries.get(replica)
    return e === undefined ? 'closed' : kBreakerNames[this.#state(e, this.#now())]!
  }

  /** Every current replica with its score (as `pick` would see it, without exclusions). */
  snapshot(): PickerSnapshotEntry[] {
    const now = this.#now()
    const list = this.#current
    let minIn = Number.POSITIVE_INFINITY
    let maxIn = Number.NEGATIVE_INFINITY
    for (const e of list) {
      if (!this.#eligible(e, now, undefined)) continue
      if (e.inflight < minIn) minIn = e.inflight
      if (e.inflight > maxIn) maxIn = e.inflight
    }
    return list.map((e) => {
      const view = e.view!
      const eligible = this.#eligible(e, now, undefined)
      return {
        name: e.name,
        score: eligible ? this.#rawScore(e, minIn, maxIn) * e.weight : 0,
        weight: e.weight,
        inflight: e.inflight,
        breaker: kBreakerNames[this.#state(e, now)]!,
        draining: e.draining,
        serving: view.serving,
        stale: view.stale,
      }
    })
  }

  #entry(name: string): Entry {
    let e = this.#entries.get(name)
    if (e === undefined) {
      if (typeof name !== 'string' || name.length === 0)
        throw new InvalidArgumentError('replica must be a non-empty string')
      e = new Entry(name)
      this.#entries.set(name, e)
    }
    return e
  }

  #open(e: Entry): void {
    e.breaker = kBreakerOpen
    e.openedAt = this.#now()
    e.failures = 0
    e.halfOpenSuccesses = 0
    e.trials = 0
  }

  /** The breaker state, moving open → half-open once `openMs` has passed. */
  #state(e: Entry, now: number): BreakerCode {
    if (e.breaker === kBreakerOpen && now - e.openedAt >= this.#openMs) {
      e.breaker = kBreakerHalfOpen
      e.halfOpenSuccesses = 0
      e.trials = 0
    }
    return e.breaker
  }

  #eligible(e: Entry, now: number, exclude: ReadonlySet<string> | undefined): boolean {
    const view = e.view
    if (view === null || !view.serving || e.draining) return false
    if (exclude?.has(e.name)) return false
    const state = this.#state(e, now)
    if (state === kBreakerOpen) return false
    // Half-open admits one trial at a time.
    if (state === kBreakerHalfOpen && e.trials > 0) return false
    return true
  }

  #rawScore(e: Entry, minIn: number, maxIn: number): number {
    const view = e.view!
    let kvHeadroom = 0
    let queueHeadroom = 0
    if (!view.stale) {
      const kv = view.kvCacheUsage
      if (kv !== null && Number.isFinite(kv)) {
        const r = kv / this.#kvThreshold
        kvHeadroom = r >= 1 ? 0 : r <= 0 ? 1 : 1 - r
      }
      const q = view.requestsWaiting
      if (q !== null && Number.isFinite(q)) {
        const r = q / this.#queueThreshold
        queueHeadroom = r >= 1 ? 0 : r <= 0 ? 1 : 1 - r
      }
    }
    const inflightHeadroom = maxIn > minIn ? (maxIn - e.inflight) / (maxIn - minIn) : 1
    const risk = view.risk > 0 ? Math.min(view.risk, 1) : 0
    return (
      this.#wKv * kvHeadroom +
      this.#wQueue * queueHeadroom +
      this.#wInflight * inflightHeadroom +
      this.#wRisk * (1 - risk)
    )
  }
}
