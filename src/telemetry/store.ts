/**
 * TelemetryStore: each signal's recent history at three resolutions, in rings preallocated when
 * the signal is first seen: raw samples, 100 ms roll-ups and 1 s roll-ups. Engine readings are
 * turned into per-replica rates and interval means here, because only the store sees consecutive
 * readings. After a series exists, ingesting into it allocates nothing.
 *
 * "Nothing" has one caveat that no JS API can remove: V8 boxes a non-integer number passed to a
 * call it did not inline, on the caller's side. Times in integer ms (as the trace format keeps
 * them) are never boxed; a fractional `tMs` may cost its caller 16 bytes per call. Inside, the
 * store hands numbers around in typed arrays only, so what V8 inlines does not matter there.
 */
import { InvalidArgumentError, InvalidOptionError } from '../errors.js'
import { type RollupField, RollupRing, SampleRing } from './ring.js'
import type { EngineDerived, EngineReading, GpuReading } from './types.js'

export type { RollupField } from './ring.js'
export type RollupResolution = '100ms' | '1s'

export interface TelemetryStoreOptions {
  /** Raw samples kept per signal (default 4096: seconds of data at NVML rates). */
  rawCapacity?: number
  /** 100 ms buckets kept per signal (default 3000 = 5 min). */
  rollup100msCapacity?: number
  /** 1 s buckets kept per signal (default 1800 = 30 min). */
  rollup1sCapacity?: number
}

export interface TelemetryStoreStats {
  /** Samples accepted, null readings included. */
  samples: number
  /** Samples dropped because their time was earlier than the series' newest. */
  dropped: number
  series: number
}

/** The series the store derives from each engine reading, under `engine/<replica>/<signal>`. */
export const ENGINE_SIGNALS = [
  'kvCacheUsage',
  'requestsRunning',
  'requestsWaiting',
  'preemptionsPerSec',
  'promptTokensPerSec',
  'generationTokensPerSec',
  'stepsPerSec',
  'errorsPerSec',
  'requestsFinishedPerSec',
  'ttftMeanMs',
  'itlMeanMs',
  'e2eMeanMs',
  'queueTimeMeanMs',
  'stalledForMs',
  'ttftP99Ms',
  'itlP99Ms',
  'queueTimeP99Ms',
] as const
export type EngineSignal = (typeof ENGINE_SIGNALS)[number]

/** The series the store keeps from each GPU reading, under `gpu/<index>/<signal>`. */
export const GPU_SIGNALS = [
  'memoryUsedBytes',
  'gpuUtilizationPercent',
  'powerWatts',
  'temperatureCelsius',
  'smClockMhz',
  'memoryTotalBytes',
  'powerLimitWatts',
  /** 1 while a thermal reason bit (THERMAL_REASONS_MASK) is set, else 0. */
  'thermalThrottle',
  'eccCorrectedVolatile',
  'eccUncorrectedVolatile',
] as const
export type GpuSignal = (typeof GPU_SIGNALS)[number]

/**
 * nvmlClocksEventReasons bits that may mean heat: SW thermal slowdown (0x20), HW thermal slowdown
 * (0x40), and HW slowdown (0x8), which NVML raises for thermal and power-brake events alike: the
 * core's DEGRADED rule counts it the same way, so a power brake reads as thermal here too.
 */
export const THERMAL_REASONS_MASK = 0x20 | 0x40 | 0x8

const kMaxCapacity = 1 << 24

// Keys are built once per (owner, signal) and then looked up, so steady-state callers that
// address series by key do not build a fresh string on every sample.
const engineKeys = new Map<string, Map<string, string>>()
const gpuKeys = new Map<number, Map<string, string>>()

/** `engine/<replica>/<signal>`, the same string instance on every call. */
export function engineKey(replica: string, signal: string): string {
  let bySignal = engineKeys.get(replica)
  if (bySignal === undefined) {
    bySignal = new Map()
    engineKeys.set(replica, bySignal)
  }
  let key = bySignal.get(signal)
  if (key === undefined) {
    key = `engine/${replica}/${signal}`
    bySignal.set(signal, key)
  }
  return key
}

/** `gpu/<index>/<signal>`, the same string instance on every call. */
export function gpuKey(gpu: number, signal: string): string {
  let bySignal = gpuKeys.get(gpu)
  if (bySignal === undefined) {
    bySignal = new Map()
    gpuKeys.set(gpu, bySignal)
  }
  let key = bySignal.get(signal)
  if (key === undefined) {
    key = `gpu/${gpu}/${signal}`
    bySignal.set(signal, key)
  }
  return key
}

/** One signal's history. Created by `TelemetryStore.series`; `push`/`pushFrom` never allocate. */
export class Series {
  readonly key: string
  private readonly raw: SampleRing
  private readonly r100ms: RollupRing
  private readonly r1s: RollupRing
  // [0] newest accepted time, [1] samples accepted, [2] samples dropped. Numbers that may be
  // fractional or outgrow a small integer live in a typed array rather than in fields: V8 may
  // box a number field on every write, depending on what the object's shape has seen.
  private readonly st = new Float64Array([Number.NEGATIVE_INFINITY, 0, 0])
  private readonly io = new Float64Array(2)

  constructor(key: string, rawCapacity: number, capacity100ms: number, capacity1s: number) {
    this.key = key
    this.raw = new SampleRing(rawCapacity)
    this.r100ms = new RollupRing(capacity100ms, 100)
    this.r1s = new RollupRing(capacity1s, 1000)
  }

  /**
   * Records `value` at `tMs`. A null (or non-finite) value is a reading that could not be
   * taken: it is kept as NaN in the raw ring and moves the roll-ups' clock on, but adds nothing
   * to any bucket. A time earlier than the newest accepted one is dropped and counted.
   * Returns whether the sample was accepted.
   */
  push(tMs: number, value: number | null): boolean {
    const io = this.io
    io[0] = tMs
    io[1] = value ?? Number.NaN
    return this.pushFrom(io)
  }

  /**
   * `push(io[0], io[1])`, for callers that keep their numbers in a typed array: nothing is
   * boxed on the way in, however V8 inlines the call (see ring.ts). A non-finite `io[1]` is
   * rewritten to NaN in place.
   */
  pushFrom(io: Float64Array): boolean {
    const t = io[0]!
    const st = this.st
    // `!(>=)` also drops a NaN time.
    if (!(t >= st[0]!)) {
      st[2]!++
      return false
    }
    st[0] = t
    st[1]!++
    if (!Number.isFinite(io[1]!)) io[1] = Number.NaN
    this.raw.pushFrom(io)
    this.r100ms.recordFrom(io)
    this.r1s.recordFrom(io)
    return true
  }

  /** The newest value, null when there is none or it was a null reading. */
  latest(): number | null {
    const v = this.raw.lastValue()
    return Number.isNaN(v) ? null : v
  }

  /** The newest sample's time (ms), null when the series is empty. */
  latestT(): number | null {
    const t = this.raw.lastTime()
    return Number.isNaN(t) ? null : t
  }

  /** Accepted samples so far (null readings included). */
  get samples(): number {
    return this.st[1]!
  }

  get dropped(): number {
    return this.st[2]!
  }

  /** Raw samples currently held. */
  get rawSize(): number {
    return this.raw.size
  }

  /** Buckets currently held at `resolution`, gaps included. */
  rollupSize(resolution: RollupResolution): number {
    return this.rollup(resolution).size
  }

  /** The most recent min(out.length, rawSize) raw values, oldest first (null readings as NaN). */
  copyRaw(out: Float64Array, outT?: Float64Array): number {
    return this.raw.copy(out, outT)
  }

  /** The raw samples taken at or after `tMs`, oldest first (the most recent if `out` is short). */
  rawSince(tMs: number, out: Float64Array, outT?: Float64Array): number {
    return this.raw.since(tMs, out, outT)
  }

  /**
   * The most recent held buckets of `field` at `resolution`, oldest first, gaps included (NaN,
   * 0 for `count`); `outT` gets bucket start times. Returns how many were copied.
   */
  copyRollup(
    resolution: RollupResolution,
    field: RollupField,
    out: Float64Array,
    outT?: Float64Array,
  ): number {
    return this.rollup(resolution).copy(field, out, outT)
  }

  /**
   * A fixed-length feature window: exactly `n` buckets of `field` ending at the newest bucket
   * (or at the bucket holding `endTMs`, to align several series on one "now"). Gaps and buckets
   * older than the ring read NaN (0 for `count`). Returns how many of the n buckets had values.
   */
  window(
    resolution: RollupResolution,
    field: RollupField,
    n: number,
    out: Float64Array,
    endTMs?: number,
  ): number {
    return this.rollup(resolution).window(field, n, out, endTMs)
  }

  /** `window(resolution, field, n, out, endTMs)` without counting the filled buckets (see RollupRing.windowValues). */
  windowValues(
    resolution: RollupResolution,
    field: RollupField,
    n: number,
    out: Float64Array,
    endTMs: number,
  ): void {
    this.rollup(resolution).windowValues(field, n, out, endTMs)
  }

  private rollup(resolution: RollupResolution): RollupRing {
    if (resolution === '100ms') return this.r100ms
    if (resolution === '1s') return this.r1s
    throw new InvalidArgumentError(`unknown roll-up resolution ${String(resolution)}`)
  }
}

// Counter baseline layout: the previous reading's totals (NaN = unknown). The first six are
// plain counters turned into rates; then (sum, count) pairs of the four latency histograms.
const kRateCounters = 6
const kHistograms = 4
const kCounters = kRateCounters + 2 * kHistograms
const C_GEN = 2
const C_STEPS = 3

// Values layout: one slot per ENGINE_SIGNALS entry, in that order (NaN = null). Gauges first,
// then the rates, the interval means and the stall clock, as in EngineDerived.
const V_KV = 0
const V_RUNNING = 1
const V_WAITING = 2
const V_RATES = 3
const V_MEANS = V_RATES + kRateCounters
const V_STALLED = V_MEANS + kHistograms
const V_P99 = V_STALLED + 1
const kValues = ENGINE_SIGNALS.length

const T_LAST = 0
const T_GEN = 1
const T_STEPS = 2
const T_PROGRESS = 3

/** Per-replica ingest state: series handles, the previous reading's counters, the stall clock. */
interface EngineState {
  /**
   * [T_LAST] the last reading's time; [T_GEN], [T_STEPS] the generation/steps totals last
   * seen in a reachable reading (the stall baseline, NaN = unknown); [T_PROGRESS] when
   * progress was last seen while requests were running (NaN = not tracking). In a typed array,
   * not fields, so that writing them never boxes a number (see Series).
   */
  clock: Float64Array
  prev: Float64Array
  /** The reading being ingested, same layout as `prev`. */
  cur: Float64Array
  values: Float64Array
  /** One per ENGINE_SIGNALS entry, in order. */
  series: Series[]
  /** [t, value] handed to `Series.pushFrom`. */
  io: Float64Array
  /** The object `derived()` hands out, refreshed from `values` when asked. */
  derived: EngineDerived
}

/** Per-GPU ingest state, laid out like EngineState's series and values. */
interface GpuState {
  /** [0] the last reading's time. */
  clock: Float64Array
  values: Float64Array
  series: Series[]
  io: Float64Array
}

/** Derived values when nothing could be derived yet. */
export function nullDerived(): EngineDerived {
  return {
    preemptionsPerSec: null,
    promptTokensPerSec: null,
    generationTokensPerSec: null,
    stepsPerSec: null,
    errorsPerSec: null,
    requestsFinishedPerSec: null,
    ttftMeanMs: null,
    itlMeanMs: null,
    e2eMeanMs: null,
    queueTimeMeanMs: null,
    stalledForMs: null,
  }
}

const orNull = (v: number): number | null => (Number.isNaN(v) ? null : v)

function capacityOption(options: TelemetryStoreOptions, name: keyof TelemetryStoreOptions, fallback: number) {
  const v = options[name] ?? fallback
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > kMaxCapacity)
    throw new InvalidOptionError(
      `TelemetryStore option ${name} must be an integer from 1 to ${kMaxCapacity}, got ${String(v)}`,
    )
  return v
}

export class TelemetryStore {
  readonly rawCapacity: number
  readonly rollup100msCapacity: number
  readonly rollup1sCapacity: number
  private readonly byKey = new Map<string, Series>()
  private readonly engines = new Map<string, EngineState>()
  private readonly gpus = new Map<number, GpuState>()
  // Whole readings refused for being older than their replica's/GPU's last: their samples never
  // reach a series, so they are counted here.
  private droppedReadingsSamples = 0

  constructor(options: TelemetryStoreOptions = {}) {
    if (options === null || typeof options !== 'object')
      throw new InvalidOptionError('TelemetryStore options must be an object')
    this.rawCapacity = capacityOption(options, 'rawCapacity', 4096)
    this.rollup100msCapacity = capacityOption(options, 'rollup100msCapacity', 3000)
    this.rollup1sCapacity = capacityOption(options, 'rollup1sCapacity', 1800)
  }

  /** The series under `key`, created (and its rings allocated) on first use. */
  series(key: string): Series {
    let s = this.byKey.get(key)
    if (s === undefined) {
      s = new Series(key, this.rawCapacity, this.rollup100msCapacity, this.rollup1sCapacity)
      this.byKey.set(key, s)
    }
    return s
  }

  /** The series under `key` if it exists; never creates one. */
  get(key: string): Series | undefined {
    return this.byKey.get(key)
  }

  /** Series created so far. Series are never removed, so a change means new ones exist. */
  get seriesCount(): number {
    return this.byKey.size
  }

  has(key: string): boolean {
    return this.byKey.has(key)
  }

  keys(): string[] {
    return [...this.byKey.keys()]
  }

  /** Replicas seen by `ingestEngine`. */
  replicas(): string[] {
    return [...this.engines.keys()]
  }

  /** GPU indices seen by `ingestGpu`. */
  gpuIndices(): number[] {
    return [...this.gpus.keys()]
  }

  stats(): TelemetryStoreStats {
    let samples = 0
    let dropped = this.droppedReadingsSamples
    for (const s of this.byKey.values()) {
      samples += s.samples
      dropped += s.dropped
    }
    return { samples, dropped, series: this.byKey.size }
  }

  // Creating state is kept out of the functions the ingest path calls: a function holding a
  // closure that captures its variables allocates a context on every call, taken branch or not.
  private newEngineState(replica: string): EngineState {
    const st: EngineState = {
      clock: new Float64Array([Number.NEGATIVE_INFINITY, Number.NaN, Number.NaN, Number.NaN]),
      prev: new Float64Array(kCounters).fill(Number.NaN),
      cur: new Float64Array(kCounters),
      values: new Float64Array(kValues).fill(Number.NaN),
      series: ENGINE_SIGNALS.map((sig) => this.series(engineKey(replica, sig))),
      io: new Float64Array(2),
      derived: nullDerived(),
    }
    this.engines.set(replica, st)
    return st
  }

  private newGpuState(gpu: number): GpuState {
    const st: GpuState = {
      clock: new Float64Array([Number.NEGATIVE_INFINITY]),
      values: new Float64Array(GPU_SIGNALS.length),
      series: GPU_SIGNALS.map((sig) => this.series(gpuKey(gpu, sig))),
      io: new Float64Array(2),
    }
    this.gpus.set(gpu, st)
    return st
  }

  /**
   * Stores one engine reading and derives the replica's rates and interval means from the
   * previous one. Read the result with `derived(replica)` or from the `engine/<replica>/...`
   * series. Assumes one reading per replica per scrape: data-parallel engines must be summed
   * into one reading or given distinct replica names, or their interleaved counters would look
   * like restarts. Returns false when the reading is older than the replica's last (dropped).
   */
  ingestEngine(tMs: number, reading: EngineReading): boolean {
    const st = this.engines.get(reading.replica) ?? this.newEngineState(reading.replica)
    const clock = st.clock
    if (!(tMs >= clock[T_LAST]!)) {
      this.droppedReadingsSamples += ENGINE_SIGNALS.length
      return false
    }
    const dtSec = (tMs - clock[T_LAST]!) / 1000
    clock[T_LAST] = tMs
    const prev = st.prev
    const cur = st.cur
    const vals = st.values

    if (!reading.reachable) {
      // Nothing can be said about this interval, and the server may restart before the next
      // answer with counters that have climbed past the old ones: forget the baseline so the
      // first rate after an outage is null rather than quietly wrong.
      // Loops, not `fill(NaN)`: TypedArray#fill is a builtin call, and passing it NaN boxes a number.
      for (let i = 0; i < kCounters; i++) prev[i] = Number.NaN
      for (let i = 0; i < kValues; i++) vals[i] = Number.NaN
    } else {
      cur[0] = reading.preemptionsTotal ?? Number.NaN
      cur[1] = reading.promptTokensTotal ?? Number.NaN
      cur[2] = reading.generationTokensTotal ?? Number.NaN
      cur[3] = reading.stepsTotal ?? Number.NaN
      cur[4] = reading.requestsErroredTotal ?? Number.NaN
      cur[5] = reading.requestsFinishedTotal ?? Number.NaN
      cur[6] = reading.ttftSecondsSum ?? Number.NaN
      cur[7] = reading.ttftCount ?? Number.NaN
      cur[8] = reading.itlSecondsSum ?? Number.NaN
      cur[9] = reading.itlCount ?? Number.NaN
      cur[10] = reading.e2eSecondsSum ?? Number.NaN
      cur[11] = reading.e2eCount ?? Number.NaN
      cur[12] = reading.queueTimeSecondsSum ?? Number.NaN
      cur[13] = reading.queueTimeCount ?? Number.NaN
      vals[V_KV] = reading.kvCacheUsage ?? Number.NaN
      vals[V_RUNNING] = reading.requestsRunning ?? Number.NaN
      vals[V_WAITING] = reading.requestsWaiting ?? Number.NaN
      // Traces written before the quantile fields existed lack them: undefined reads as null.
      vals[V_P99] = reading.ttftP99Ms ?? Number.NaN
      vals[V_P99 + 1] = reading.itlP99Ms ?? Number.NaN
      vals[V_P99 + 2] = reading.queueTimeP99Ms ?? Number.NaN
      // Written in place rather than through helpers returning numbers: a double returned
      // from a call that is not inlined is boxed, and this runs for every reading.
      for (let i = 0; i < kRateCounters; i++) {
        const p = prev[i]!
        const c = cur[i]!
        // NaN when either is unknown, time did not move, or the counter went down (a restart).
        vals[V_RATES + i] = c >= p && dtSec > 0 ? (c - p) / dtSec : Number.NaN
      }
      for (let h = 0; h < kHistograms; h++) {
        const sumI = kRateCounters + 2 * h
        const dSum = cur[sumI]! - prev[sumI]!
        const dN = cur[sumI + 1]! - prev[sumI + 1]!
        // Mean of the observations made since the last reading, seconds -> ms; NaN when there
        // were none, or a total went down (a restart).
        vals[V_MEANS + h] = dN > 0 && dSum >= 0 ? (dSum / dN) * 1000 : Number.NaN
      }
      // The stall clock. Progress is any change in the generation or step totals (a drop is a
      // restart, which is not a stall either). It runs only while requests are running and
      // starts at the first reading that shows them, so it never claims more than it saw. Its
      // baseline survives unreachable readings: unchanged totals on both sides of an outage
      // mean the engine made no progress through it.
      const gen = cur[C_GEN]!
      const steps = cur[C_STEPS]!
      const genKnown = !Number.isNaN(gen)
      const stepsKnown = !Number.isNaN(steps)
      const moved = (genKnown && gen !== clock[T_GEN]) || (stepsKnown && steps !== clock[T_STEPS])
      if (genKnown) clock[T_GEN] = gen
      if (stepsKnown) clock[T_STEPS] = steps
      if (!(vals[V_RUNNING]! > 0) || !(genKnown || stepsKnown)) {
        clock[T_PROGRESS] = Number.NaN
        vals[V_STALLED] = Number.NaN
      } else {
        if (moved || Number.isNaN(clock[T_PROGRESS]!)) clock[T_PROGRESS] = tMs
        vals[V_STALLED] = tMs - clock[T_PROGRESS]!
      }
      prev.set(cur)
    }
    const series = st.series
    const io = st.io
    io[0] = tMs
    for (let i = 0; i < kValues; i++) {
      io[1] = vals[i]!
      series[i]!.pushFrom(io)
    }
    return true
  }

  /**
   * The replica's latest derived values (null before its first reading). The object is reused:
   * it is refreshed on each call, so copy what must outlive the next one.
   */
  derived(replica: string): EngineDerived | null {
    const st = this.engines.get(replica)
    if (st === undefined) return null
    const v = st.values
    const d = st.derived
    d.preemptionsPerSec = orNull(v[V_RATES]!)
    d.promptTokensPerSec = orNull(v[V_RATES + 1]!)
    d.generationTokensPerSec = orNull(v[V_RATES + 2]!)
    d.stepsPerSec = orNull(v[V_RATES + 3]!)
    d.errorsPerSec = orNull(v[V_RATES + 4]!)
    d.requestsFinishedPerSec = orNull(v[V_RATES + 5]!)
    d.ttftMeanMs = orNull(v[V_MEANS]!)
    d.itlMeanMs = orNull(v[V_MEANS + 1]!)
    d.e2eMeanMs = orNull(v[V_MEANS + 2]!)
    d.queueTimeMeanMs = orNull(v[V_MEANS + 3]!)
    d.stalledForMs = orNull(v[V_STALLED]!)
    return d
  }

  /** Stores one GPU reading under `gpu/<index>/...`; a lost GPU pushes nulls. */
  ingestGpu(tMs: number, reading: GpuReading): boolean {
    const st = this.gpus.get(reading.gpu) ?? this.newGpuState(reading.gpu)
    if (!(tMs >= st.clock[0]!)) {
      this.droppedReadingsSamples += GPU_SIGNALS.length
      return false
    }
    st.clock[0] = tMs
    const vals = st.values
    if (reading.lost) {
      for (let i = 0; i < GPU_SIGNALS.length; i++) vals[i] = Number.NaN
    } else {
      vals[0] = reading.memoryUsedBytes ?? Number.NaN
      vals[1] = reading.gpuUtilizationPercent ?? Number.NaN
      vals[2] = reading.powerWatts ?? Number.NaN
      vals[3] = reading.temperatureCelsius ?? Number.NaN
      vals[4] = reading.smClockMhz ?? Number.NaN
      vals[5] = reading.memoryTotalBytes ?? Number.NaN
      vals[6] = reading.powerLimitWatts ?? Number.NaN
      const reasons = reading.clockEventReasons
      vals[7] =
        reasons === null || reasons === undefined
          ? Number.NaN
          : (reasons & THERMAL_REASONS_MASK) !== 0
            ? 1
            : 0
      vals[8] = reading.eccCorrectedVolatile ?? Number.NaN
      vals[9] = reading.eccUncorrectedVolatile ?? Number.NaN
    }
    const series = st.series
    const io = st.io
    io[0] = tMs
    for (let i = 0; i < GPU_SIGNALS.length; i++) {
      io[1] = vals[i]!
      series[i]!.pushFrom(io)
    }
    return true
  }
}
