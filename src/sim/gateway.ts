/**
 * An in-process gateway for the simulated fleet, in simulated time: the levers mitigations pull
 * (`src/mitigation/types.ts`), so a mitigation loop can act on a `SimFleet` and a benchmark can
 * count what reached the clients with the monitor on and off on the same seed.
 *
 * Once attached (`fleet.attachGateway(gateway)`), every arrival goes through it:
 * - base arrivals go to the least-loaded replica that serves and is not drained, load (the
 *   engine's running + waiting gauges, plus the gateway's queue for it, + 1) divided by its weight
 *   (weight 0: never); a share (`lowPriorityShare`) of them is sheddable (priority -1);
 * - surge arrivals are pinned to their replica (session affinity) unless its weight is below 1,
 *   when a share 1 - weight of them goes least-loaded elsewhere, or it is drained (then all);
 * - per replica: shedding (priority below the bar: 429 at once), a concurrency cap with a bounded
 *   FIFO (overflow: 429; waiting past `queueTimeoutMs`: 429 with Retry-After), and drain.
 * Its randomness comes from the fleet's `gateway` fork only, so a fleet without a gateway reads
 * exactly as before (test/sim/fingerprint.test.ts).
 */
import { InvalidArgumentError, InvalidOptionError } from '../errors.js'
import type { AdmissionActuator } from '../gateway/types.js'
import type { RoutingActuator } from '../mitigation/types.js'
import type { FinishReason, RequestSink, SimRequest } from './engine.js'
import type { FleetGateway, SimFleet } from './fleet.js'
import type { Rng } from './random.js'
import type { SimReplica } from './replica.js'

export { type SimActuatorOptions, simActuators } from './actuators.js'

/** Structurally the shedding lever of `src/mitigation/actuators.ts`. */
export interface ShedActuator {
  /** Answers 429 at once to the replica's requests with a priority below `belowPriority`. */
  shed(replica: string, belowPriority: number, reason: string): void
  unshed(replica: string): void
}

/** How a request ended for its client. `failed` includes "no replica" (connection refused). */
export type SimRequestOutcome = 'ok' | 'shed' | 'queue-timeout' | 'failed'

/** One request as its client saw it (`onRequest`). Times are simulated ms. */
export interface SimGatewayRequest {
  arrivalMs: number
  priority: number
  /** The replica a surge arrival was pinned to, null for the base stream. */
  pinned: string | null
  /** Where it was sent (or queued), null when no replica could take it. */
  replica: string | null
  firstTokenMs: number | null
  finishMs: number
  outcome: SimRequestOutcome
  /** Retry-After of a 429, seconds; null otherwise. */
  retryAfterS: number | null
}

export interface SimGatewayOptions {
  /** Share of base arrivals with priority -1 (sheddable). Default 0.2. */
  lowPriorityShare?: number
  /** Requests waiting at the gateway per replica before 429s. Default 256. */
  maxQueue?: number
  /** Simulated ms a request may wait at the gateway before a 429. Default 30 000. */
  queueTimeoutMs?: number
  /** Each request once it ended. */
  onRequest?: (request: SimGatewayRequest) => void
}

/** Totals since attach. `failed` counts requests whose replica failed them; `lost`, those that found none. */
export interface SimGatewayStats {
  arrived: number
  ok: number
  shed: number
  queueTimeout: number
  failed: number
  lost: number
  /** Waiting at the gateway now. */
  queued: number
  /** Sent to a replica and not finished now. */
  inFlight: number
}

const kDefaultOptions = { lowPriorityShare: 0.2, maxQueue: 256, queueTimeoutMs: 30_000 }
const kMinuteMs = 60_000
/** Latency histograms have buckets 1 % wide: SLO checks hold to 1 %. */
const kLogStep = Math.log(1.01)

interface Live {
  arrivalMs: number
  priority: number
  pinned: string | null
  lane: Lane | null
  prompt: number
  target: number
  max: number
  deadlineMs: number
  firstTokenMs: number
  lastTokenMs: number
}

interface Lane {
  replica: SimReplica
  weight: number
  cap: number | null
  drained: boolean
  shedBelow: number | null
  inFlight: number
  queue: Live[]
  drains: Array<{ deadlineMs: number; resolve: (drained: boolean) => void }>
  /** Slots freed by something other than a normal finish: fill them at the next tick. */
  dirty: boolean
}

interface Minute {
  ttft: Map<number, number>
  itl: Map<number, number>
  failed: number
}

function bucketOf(ms: number): number {
  return ms <= 1 ? 0 : Math.ceil(Math.log(ms) / kLogStep)
}

/** The bucket holding the p99 (nearest rank) of a histogram; -1 when empty. */
function p99Bucket(h: Map<number, number>): number {
  let n = 0
  for (const c of h.values()) n += c
  if (n === 0) return -1
  const rank = Math.ceil(0.99 * n)
  let seen = 0
  for (const k of [...h.keys()].sort((a, b) => a - b)) {
    seen += h.get(k) as number
    if (seen >= rank) return k
  }
  return -1
}

function routable(r: SimReplica): boolean {
  // A hung engine still accepts requests (the API server is fine), as `SimFleet` routes.
  return (r.phase === 'serving' || r.phase === 'hung') && r.engine !== null
}

export class SimGateway implements FleetGateway, AdmissionActuator, RoutingActuator, ShedActuator {
  #fleet: SimFleet | null = null
  #priorityRng: Rng | null = null
  #affinityRng: Rng | null = null
  readonly #lanes = new Map<string, Lane>()
  readonly #options: Required<Omit<SimGatewayOptions, 'onRequest'>>
  readonly #onRequest: ((request: SimGatewayRequest) => void) | null
  readonly #minutes: Minute[] = []
  /** Requests not ended yet (waiting here or in flight): a stuck one counts against the SLO too. */
  readonly #live = new Set<Live>()
  /** (arrival, end) of requests that ended without a first token after waiting (failed, timed out). */
  readonly #unanswered: number[] = []
  #firstArrivalMs = -1
  #stats: SimGatewayStats = {
    arrived: 0,
    ok: 0,
    shed: 0,
    queueTimeout: 0,
    failed: 0,
    lost: 0,
    queued: 0,
    inFlight: 0,
  }

  constructor(options: SimGatewayOptions = {}) {
    const o = { ...kDefaultOptions, ...options }
    if (typeof o.lowPriorityShare !== 'number' || !(o.lowPriorityShare >= 0 && o.lowPriorityShare <= 1))
      throw new InvalidOptionError('options.lowPriorityShare must be a number from 0 to 1')
    if (!Number.isInteger(o.maxQueue) || o.maxQueue < 0)
      throw new InvalidOptionError('options.maxQueue must be a non-negative integer')
    if (typeof o.queueTimeoutMs !== 'number' || !Number.isFinite(o.queueTimeoutMs) || o.queueTimeoutMs <= 0)
      throw new InvalidOptionError('options.queueTimeoutMs must be a positive number of milliseconds')
    this.#options = {
      lowPriorityShare: o.lowPriorityShare,
      maxQueue: o.maxQueue,
      queueTimeoutMs: o.queueTimeoutMs,
    }
    this.#onRequest = options.onRequest ?? null
  }

  /** @internal Called by `SimFleet.attachGateway`. */
  attach(fleet: SimFleet, rng: Rng): void {
    if (this.#fleet !== null) throw new InvalidArgumentError('SimGateway: already attached to a fleet')
    this.#fleet = fleet
    // Separate streams, so that routing choices never shift the priorities and vice versa.
    this.#priorityRng = rng.fork('priority')
    this.#affinityRng = rng.fork('affinity')
    for (const r of fleet.replicas) {
      this.#lanes.set(r.name, {
        replica: r,
        weight: 1,
        cap: null,
        drained: false,
        shedBelow: null,
        inFlight: 0,
        queue: [],
        drains: [],
        dirty: false,
      })
    }
  }

  // --- the arrivals ----------------------------------------------------------------------------

  /** @internal One request arriving at `tMs` (the fleet calls this); false when turned away at once. */
  arrive(
    tMs: number,
    promptTokens: number,
    targetTokens: number,
    maxTokens: number,
    pinned: SimReplica | null,
  ): boolean {
    this.#attached()
    if (this.#firstArrivalMs < 0) this.#firstArrivalMs = tMs
    this.#stats.arrived++
    const low = pinned === null && (this.#priorityRng as Rng).next() < this.#options.lowPriorityShare
    const live: Live = {
      arrivalMs: tMs,
      priority: low ? -1 : 0,
      pinned: pinned?.name ?? null,
      lane: null,
      prompt: promptTokens,
      target: targetTokens,
      max: maxTokens,
      deadlineMs: -1,
      firstTokenMs: -1,
      lastTokenMs: -1,
    }
    this.#live.add(live)
    const lane = this.#route(live)
    if (lane === null) {
      this.#lose(live, tMs)
      return false
    }
    return this.#admit(lane, live, tMs)
  }

  /** @internal After every fleet tick: queue timeouts, drain deadlines, deferred dispatches. */
  tick(tMs: number): void {
    for (const lane of this.#lanes.values()) {
      if (lane.queue.length > 0) this.#expire(lane, tMs)
      if (lane.queue.length > 0 && (lane.drained || !routable(lane.replica))) this.#reroute(lane, tMs)
      if (lane.dirty || lane.queue.length > 0) {
        lane.dirty = false
        this.#pump(lane, tMs)
      }
      if (lane.drains.length > 0) this.#settleDrains(lane, tMs)
    }
  }

  #route(live: Live): Lane | null {
    if (live.pinned === null) return this.#leastLoaded(null)
    const home = this.#lanes.get(live.pinned) as Lane
    if (!home.drained && routable(home.replica) && home.weight > 0) {
      if (home.weight >= 1) return home
      if ((this.#affinityRng as Rng).next() >= 1 - home.weight) return home
      return this.#leastLoaded(home) ?? home
    }
    return this.#leastLoaded(home)
  }

  #leastLoaded(exclude: Lane | null): Lane | null {
    let best: Lane | null = null
    let bestScore = Number.POSITIVE_INFINITY
    for (const lane of this.#lanes.values()) {
      if (lane === exclude || lane.drained || lane.weight <= 0 || !routable(lane.replica)) continue
      const e = lane.replica.engine as NonNullable<SimReplica['engine']>
      const score = (e.gaugeRunning + e.gaugeWaiting + lane.queue.length + 1) / lane.weight
      if (score < bestScore) {
        bestScore = score
        best = lane
      }
    }
    return best
  }

  #admit(lane: Lane, live: Live, tMs: number): boolean {
    live.lane = lane
    if (lane.shedBelow !== null && live.priority < lane.shedBelow) {
      this.#end(live, 'shed', tMs, 1)
      return false
    }
    if (lane.queue.length === 0 && !this.#atCap(lane)) {
      this.#dispatch(lane, live, tMs)
      return true
    }
    if (lane.queue.length >= this.#options.maxQueue) {
      this.#end(live, 'shed', tMs, 1)
      return false
    }
    if (live.deadlineMs < 0) live.deadlineMs = tMs + this.#options.queueTimeoutMs
    lane.queue.push(live)
    this.#stats.queued++
    return true
  }

  #atCap(lane: Lane): boolean {
    return lane.cap !== null && lane.inFlight >= lane.cap
  }

  #dispatch(lane: Lane, live: Live, tMs: number): void {
    const r = lane.replica
    // A surge arrival on another replica comes at an instant this one's engine has not reached yet.
    if (r.engine !== null && r.engine.now < tMs) r.engine.advanceTo(tMs)
    lane.inFlight++
    this.#stats.inFlight++
    if (r.submit(live.prompt, live.target, live.max, this.#sink(lane, live)) === null) {
      lane.inFlight--
      this.#stats.inFlight--
      this.#end(live, 'failed', tMs, null)
    }
  }

  #sink(lane: Lane, live: Live): RequestSink {
    return {
      onToken: (_req: SimRequest, tMs: number) => {
        const m = this.#minute(tMs)
        if (live.firstTokenMs < 0) {
          live.firstTokenMs = tMs
          const k = bucketOf(tMs - live.arrivalMs)
          m.ttft.set(k, (m.ttft.get(k) ?? 0) + 1)
        } else {
          const k = bucketOf(tMs - live.lastTokenMs)
          m.itl.set(k, (m.itl.get(k) ?? 0) + 1)
        }
        live.lastTokenMs = tMs
      },
      onFinish: (_req: SimRequest, reason: FinishReason, tMs: number) => {
        lane.inFlight--
        this.#stats.inFlight--
        const ok = reason === 'stop' || reason === 'length'
        this.#end(live, ok ? 'ok' : 'failed', tMs, null)
        if (lane.inFlight === 0 && lane.drains.length > 0) this.#settleDrains(lane, tMs)
        // Filling the slot now is safe only from a completed step; an engine that is being killed
        // or paused is still iterating its queues.
        if (ok) this.#pump(lane, tMs)
        else lane.dirty = true
      },
    }
  }

  #pump(lane: Lane, tMs: number): void {
    if (lane.drained || !routable(lane.replica)) return
    while (lane.queue.length > 0 && !this.#atCap(lane)) {
      const live = lane.queue.shift() as Live
      this.#stats.queued--
      this.#dispatch(lane, live, tMs)
    }
  }

  #expire(lane: Lane, tMs: number): void {
    const keep: Live[] = []
    for (const live of lane.queue) {
      if (live.deadlineMs > tMs) {
        keep.push(live)
        continue
      }
      this.#stats.queued--
      this.#end(live, 'queue-timeout', live.deadlineMs, Math.ceil(this.#options.queueTimeoutMs / 1e3))
    }
    lane.queue = keep
  }

  /** Requests waiting for a replica that stopped serving or drains go elsewhere, if anywhere. */
  #reroute(lane: Lane, tMs: number): void {
    if (this.#leastLoaded(lane) === null) return
    const moved = lane.queue
    lane.queue = []
    this.#stats.queued -= moved.length
    for (const live of moved) {
      const other = this.#leastLoaded(lane)
      if (other === null) this.#lose(live, tMs)
      else this.#admit(other, live, tMs)
    }
  }

  #settleDrains(lane: Lane, tMs: number): void {
    const done = lane.inFlight === 0
    lane.drains = lane.drains.filter((d) => {
      if (done) d.resolve(true)
      else if (d.deadlineMs <= tMs) d.resolve(false)
      else return true
      return false
    })
  }

  #lose(live: Live, tMs: number): void {
    live.lane = null
    ;(this.#fleet as SimFleet).droppedArrivals++
    this.#end(live, 'failed', tMs, null)
  }

  #end(live: Live, outcome: SimRequestOutcome, tMs: number, retryAfterS: number | null): void {
    this.#live.delete(live)
    if (live.firstTokenMs < 0 && outcome !== 'ok' && outcome !== 'shed')
      this.#unanswered.push(live.arrivalMs, tMs)
    const s = this.#stats
    if (outcome === 'ok') s.ok++
    else if (outcome === 'shed') s.shed++
    else if (outcome === 'queue-timeout') {
      s.queueTimeout++
      // Its client waited the whole queue timeout for a 429: that wait broke the SLO.
      this.#minute(tMs).failed++
    } else {
      if (live.lane === null) s.lost++
      else s.failed++
      this.#minute(tMs).failed++
    }
    this.#onRequest?.({
      arrivalMs: live.arrivalMs,
      priority: live.priority,
      pinned: live.pinned,
      replica: live.lane?.replica.name ?? null,
      firstTokenMs: live.firstTokenMs >= 0 ? live.firstTokenMs : null,
      finishMs: tMs,
      outcome,
      retryAfterS,
    })
  }

  #minute(tMs: number): Minute {
    const i = Math.max(0, Math.floor((tMs - this.#firstArrivalMs) / kMinuteMs))
    let m = this.#minutes[i]
    if (m === undefined) {
      m = { ttft: new Map(), itl: new Map(), failed: 0 }
      this.#minutes[i] = m
    }
    return m
  }

  // --- what the benchmark reads ----------------------------------------------------------------

  stats(): SimGatewayStats {
    return { ...this.#stats }
  }

  /**
   * Simulated minutes, counted from the first arrival, in which the p99 TTFT (from arrival at the
   * gateway, so its queueing counts) of the requests that got their first token in that minute
   * exceeded `sloTtftMs`, or the p99 inter-token gap exceeded `sloItlMs`, or any request failed
   * (its replica failed it, or none could take it), or waited out the queue timeout for a 429, or
   * is still waiting for its first token past the SLO. `fromMs`: only minutes ending after it (a
   * fleet still booting is nobody's SLO). Latencies are kept in 1 %-wide buckets: a
   * p99 within 1 % above the SLO does not count.
   */
  sloMinutes(sloTtftMs: number, sloItlMs?: number, options: { fromMs?: number } = {}): number {
    if (!(sloTtftMs > 0))
      throw new InvalidArgumentError('sloTtftMs must be a positive number of milliseconds')
    if (sloItlMs !== undefined && !(sloItlMs > 0))
      throw new InvalidArgumentError('sloItlMs must be a positive number of milliseconds')
    const ttftBar = bucketOf(sloTtftMs)
    const itlBar = sloItlMs === undefined ? Number.POSITIVE_INFINITY : bucketOf(sloItlMs)
    const now = this.#fleet === null ? 0 : this.#now()
    // Requests still without a first token past the SLO (stuck on a hung engine, queued behind a
    // cap) break it in the minute their deadline passed, though no TTFT was ever observed.
    const stuck = new Set<number>()
    const minuteOf = (t: number) => Math.max(0, Math.floor((t - this.#firstArrivalMs) / kMinuteMs))
    for (const live of this.#live) {
      const due = live.arrivalMs + sloTtftMs
      if (live.firstTokenMs < 0 && due < now) stuck.add(minuteOf(due))
    }
    // So do requests that ended without one after waiting past it (a hung engine's, failed when
    // its watchdog fired ten minutes later; a queue timeout).
    const u = this.#unanswered
    for (let i = 0; i < u.length; i += 2) {
      const due = (u[i] as number) + sloTtftMs
      if ((u[i + 1] as number) > due) stuck.add(minuteOf(due))
    }
    const first =
      options.fromMs === undefined ? 0 : Math.floor((options.fromMs - this.#firstArrivalMs) / kMinuteMs)
    let n = 0
    const last = Math.max(this.#minutes.length, stuck.size === 0 ? 0 : Math.max(...stuck) + 1)
    for (let i = Math.max(0, first); i < last; i++) {
      const m = this.#minutes[i]
      const bad =
        stuck.has(i) ||
        (m !== undefined && (m.failed > 0 || p99Bucket(m.ttft) > ttftBar || p99Bucket(m.itl) > itlBar))
      if (bad) n++
    }
    return n
  }

  /** Requests sent to the replica and not finished. */
  inFlight(replica: string): number {
    return this.#lane(replica).inFlight
  }

  /** Requests waiting at the gateway for the replica. */
  queued(replica: string): number {
    return this.#lane(replica).queue.length
  }

  // --- AdmissionActuator, RoutingActuator, ShedActuator ----------------------------------------

  cap(replica: string, limit: number, _reason: string): void {
    const lane = this.#lane(replica)
    if (typeof limit !== 'number' || !(limit >= 0) || !Number.isFinite(limit))
      throw new InvalidArgumentError('limit must be a non-negative number')
    lane.cap = Math.floor(limit)
    lane.replica.admissionCap = lane.cap
    this.#pump(lane, this.#now())
  }

  release(replica: string): void {
    const lane = this.#lane(replica)
    lane.cap = null
    lane.replica.admissionCap = null
    this.#pump(lane, this.#now())
  }

  drain(replica: string, timeoutMs: number): Promise<boolean> {
    let lane: Lane
    try {
      lane = this.#lane(replica)
    } catch (err) {
      return Promise.reject(err)
    }
    if (typeof timeoutMs !== 'number' || !(timeoutMs >= 0))
      return Promise.reject(new InvalidArgumentError('timeoutMs must be a non-negative number'))
    lane.drained = true
    const now = this.#now()
    if (lane.queue.length > 0) this.#reroute(lane, now)
    if (lane.inFlight === 0) return Promise.resolve(true)
    // Settled from the fleet's advance loop (a finish, or the tick past the deadline), never a timer.
    return new Promise((resolve) => lane.drains.push({ deadlineMs: now + timeoutMs, resolve }))
  }

  undrain(replica: string): void {
    const lane = this.#lane(replica)
    lane.drained = false
    this.#pump(lane, this.#now())
  }

  setWeight(replica: string, multiplier: number): void {
    const lane = this.#lane(replica)
    if (typeof multiplier !== 'number' || !(multiplier >= 0) || !Number.isFinite(multiplier))
      throw new InvalidArgumentError('multiplier must be a non-negative number')
    lane.weight = multiplier
  }

  weight(replica: string): number {
    return this.#lane(replica).weight
  }

  shed(replica: string, belowPriority: number, _reason: string): void {
    const lane = this.#lane(replica)
    if (typeof belowPriority !== 'number' || Number.isNaN(belowPriority))
      throw new InvalidArgumentError('belowPriority must be a number')
    lane.shedBelow = belowPriority
    const now = this.#now()
    const keep: Live[] = []
    for (const live of lane.queue) {
      if (live.priority >= belowPriority) keep.push(live)
      else {
        this.#stats.queued--
        this.#end(live, 'shed', now, 1)
      }
    }
    lane.queue = keep
  }

  unshed(replica: string): void {
    this.#lane(replica).shedBelow = null
  }

  #lane(replica: string): Lane {
    this.#attached()
    const lane = this.#lanes.get(replica)
    if (lane === undefined)
      throw new InvalidArgumentError(`SimGateway: unknown replica ${JSON.stringify(replica)}`)
    return lane
  }

  #now(): number {
    return (this.#fleet as SimFleet).now
  }

  #attached(): void {
    if (this.#fleet === null)
      throw new InvalidArgumentError('SimGateway: not attached (call fleet.attachGateway)')
  }
}
