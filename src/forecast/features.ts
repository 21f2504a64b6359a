/**
 * Feature vectors for the forecaster, read from the telemetry store's roll-ups: per replica, the
 * last 60 s at 1 s (and the freshest 100 ms) of each vLLM signal, fused with the NVML signals of
 * the replica's GPUs (the worst of them, element by element) and its lifecycle state.
 *
 * vLLM pre-reserves its GPU memory, so NVML memory stays flat while the KV cache fills: KV
 * pressure reaches the features only through vLLM's own gauges (KV usage, queue, preemptions);
 * memory growth in NVML means something outside the pool (activations, a leak, a co-tenant).
 *
 * Every channel gives seven statistics (last, 5 s mean, change over 10/30/60 s, 60 s max, 60 s
 * slope), plus a few physical estimates a linear layer cannot easily form: seconds until KV or
 * memory fill at the current slope, until 87 °C, and how long the queue takes to drain.
 * Extraction allocates nothing: it writes into the caller's Float32Array.
 */
import { engineKey, gpuKey, type Series, type TelemetryStore } from '../telemetry/store.js'
import type { Checkpoint, LifecycleState } from '../telemetry/types.js'

/** Bumped whenever the vector's layout or meaning changes; a model trained on another is refused. */
export const FEATURE_SCHEMA_VERSION = 4

/**
 * A channel's transform: v / scale, then log1p when `log` (counts and latencies span orders of
 * magnitude), then / post. Statistics are taken on the raw window and transformed afterwards
 * (a log per statistic, not per sample: the extraction runs on the main thread every tick).
 */
interface Channel {
  name: string
  /** Store signal. */
  signal: string
  log: boolean
  scale: number
  post: number
}

const ENGINE_CHANNELS: readonly Channel[] = [
  { name: 'kv', signal: 'kvCacheUsage', log: false, scale: 1, post: 1 },
  { name: 'waiting', signal: 'requestsWaiting', log: true, scale: 1, post: 1 },
  { name: 'running', signal: 'requestsRunning', log: true, scale: 1, post: 1 },
  { name: 'preemptions', signal: 'preemptionsPerSec', log: true, scale: 1, post: 1 },
  { name: 'promptTps', signal: 'promptTokensPerSec', log: true, scale: 1, post: 10 },
  { name: 'genTps', signal: 'generationTokensPerSec', log: true, scale: 1, post: 10 },
  { name: 'finished', signal: 'requestsFinishedPerSec', log: true, scale: 1, post: 1 },
  { name: 'ttftP99', signal: 'ttftP99Ms', log: true, scale: 100, post: 1 },
  { name: 'itlP99', signal: 'itlP99Ms', log: true, scale: 10, post: 1 },
  { name: 'queueP99', signal: 'queueTimeP99Ms', log: true, scale: 100, post: 1 },
  { name: 'stalled', signal: 'stalledForMs', log: true, scale: 1000, post: 1 },
]

/** GPU channels, computed per GPU and then combined with max (the worst GPU of the replica). */
const GPU_CHANNELS = ['memFrac', 'temp', 'powerFrac', 'clockRel', 'thermal', 'eccRise'] as const
/** GPU channel transforms, in GPU_CHANNELS order (temperature in °C / 100; ECC growth logged). */
const GPU_TRANSFORMS: readonly Channel[] = GPU_CHANNELS.map((name) => ({
  name,
  signal: '',
  log: name === 'eccRise',
  scale: 1,
  post: name === 'temp' ? 100 : 1,
}))

const STATS = ['last', 'mean5s', 'd10', 'd30', 'd60', 'max60', 'slope60'] as const
const EXTRAS = ['kvFullIn', 'memFullIn', 'tempLimitIn', 'queueDrain', 'degraded', 'hasGpu'] as const

/** Feature names in vector order: `<channel>.<stat>`, then the extras. */
export const FEATURE_NAMES: readonly string[] = [
  ...ENGINE_CHANNELS.flatMap((c) => STATS.map((s) => `${c.name}.${s}`)),
  ...GPU_CHANNELS.flatMap((c) => STATS.map((s) => `${c}.${s}`)),
  ...EXTRAS,
]
export const FEATURE_COUNT = FEATURE_NAMES.length

const N1S = 60
/**
 * 100 ms buckets read per channel: only the freshest value comes from them. Every statistic over
 * time comes from the 1 s roll-ups: reading 50 fine buckets per channel made extraction four
 * times slower on a cold cache, on the main thread, for a 5 s mean the 1 s buckets give as well.
 */
const N100 = 3
/** The slowdown threshold the simulated and real H100/H200 share (sim-calibration.md). */
const THERMAL_LIMIT_C = 87
/** Time-to-limit features saturate here: anything further is "not soon". */
const FAR_S = 240

/** A replica and the GPUs its process holds. */
export interface ForecastTarget {
  replica: string
  gpus: number[]
}

/**
 * The replicas worth forecasting in a checkpoint (serving, or serving degraded) and their GPUs.
 * A GPU with no owner belongs to the only replica when there is one.
 */
export function forecastTargets(
  checkpoint: Checkpoint,
  options: { includeFailed?: boolean } = {},
): ForecastTarget[] {
  const out: ForecastTarget[] = []
  const single = checkpoint.engines.length === 1 ? checkpoint.engines[0]!.replica : null
  for (const e of checkpoint.engines) {
    const ok =
      options.includeFailed === true
        ? hasServed(e.lifecycleState)
        : isForecastable(e.lifecycleState) && !e.stale
    if (!ok) continue
    const gpus: number[] = []
    for (const g of checkpoint.gpus)
      if (g.replica === e.replica || (g.replica === null && single !== null)) gpus.push(g.gpu)
    out.push({ replica: e.replica, gpus })
  }
  return out
}

/** Past start-up: serving, or failed or stopping after it (what detection is scored on). */
export function hasServed(state: LifecycleState): boolean {
  return state !== 'NOT_STARTED' && state !== 'INITIALIZING' && state !== 'LOADING_MODEL'
}

/** Forecasting makes sense while a replica serves: before that nothing is loaded, after it it is dead. */
export function isForecastable(state: LifecycleState): boolean {
  return state === 'SERVING' || state === 'DEGRADED' || state === 'READY'
}

/** The store signals a GPU's channels read, in the order GpuSeries holds them. */
const GPU_SIGNALS = [
  'memoryUsedBytes',
  'memoryTotalBytes',
  'temperatureCelsius',
  'powerWatts',
  'powerLimitWatts',
  'smClockMhz',
  'thermalThrottle',
  'eccCorrectedVolatile',
] as const
const G_USED = 0
const G_TOTAL = 1
const G_TEMP = 2
const G_POWER = 3
const G_LIMIT = 4
const G_CLOCK = 5
const G_THERMAL = 6
const G_ECC = 7

/**
 * A replica's or a GPU's series, looked up once rather than by key on every tick. A series not
 * there yet is looked up again once the store has created more (series are never removed, so a
 * series found stays valid).
 */
interface SeriesSet {
  /** Store keys, computed once. */
  keys: readonly string[]
  series: (Series | undefined)[]
  /** The store's seriesCount when the missing ones were last looked up; -1 once all are found. */
  seenCount: number
}

function newSeriesSet(keys: readonly string[]): SeriesSet {
  return { keys, series: keys.map(() => undefined), seenCount: 0 }
}

export class FeatureExtractor {
  readonly store: TelemetryStore
  private readonly engineSets = new Map<string, SeriesSet>()
  private readonly gpuSets = new Map<number, SeriesSet>()
  private readonly w1 = new Float64Array(N1S)
  private readonly w100 = new Float64Array(N100)
  private readonly acc1 = new Float64Array(N1S * GPU_CHANNELS.length)
  private readonly acc100 = new Float64Array(N100 * GPU_CHANNELS.length)
  private readonly tmp1 = new Float64Array(N1S)
  private readonly tmp100 = new Float64Array(N100)
  /** Raw (untransformed) values the extras need: kv, memFrac, temperature, waiting, finished. */
  private readonly raw = new Float64Array(8)

  constructor(store: TelemetryStore) {
    this.store = store
  }

  /**
   * Writes the target's FEATURE_COUNT features at `tMs` into `out` from `offset`. Missing data
   * reads as 0 (a replica with no GPU telemetry gets zero GPU channels and `hasGpu` 0).
   */
  extract(
    tMs: number,
    target: ForecastTarget,
    state: LifecycleState,
    out: Float32Array,
    offset: number,
  ): void {
    let o = offset
    const raw = this.raw
    const engine = this.engineSeries(target.replica)
    for (let c = 0; c < ENGINE_CHANNELS.length; c++) {
      const ch = ENGINE_CHANNELS[c]!
      this.read(engine[c], tMs, this.w1, this.w100)
      if (c === 0) {
        raw[0] = lastFinite(this.w1)
        raw[5] = slopePerSec(this.w1, 30)
      } else if (c === 1) raw[3] = lastFinite(this.w1)
      else if (c === 6) raw[4] = lastFinite(this.w1)
      o = writeStats(this.w1, this.w100, ch, out, o)
    }
    // GPU channels: worst GPU per bucket.
    const acc1 = this.acc1
    const acc100 = this.acc100
    acc1.fill(Number.NaN)
    acc100.fill(Number.NaN)
    let haveGpu = 0
    for (const g of target.gpus) {
      haveGpu |= this.gpuChannels(g, tMs) ? 1 : 0
    }
    for (let c = 0; c < GPU_CHANNELS.length; c++) {
      const w1 = this.w1
      const w100 = this.w100
      for (let i = 0; i < N1S; i++) w1[i] = acc1[c * N1S + i]!
      for (let i = 0; i < N100; i++) w100[i] = acc100[c * N100 + i]!
      if (c === 0) {
        raw[1] = lastFinite(w1)
        // A minute: a leak of a few MiB/s is lost in 30 s of allocator noise.
        raw[6] = slopePerSec(w1, 60)
      } else if (c === 1) {
        raw[2] = lastFinite(w1)
        raw[7] = slopePerSec(w1, 60)
      }
      o = writeStats(w1, w100, GPU_TRANSFORMS[c]!, out, o)
    }
    out[o++] = timeToLimit(raw[0]!, raw[5]!, 1)
    out[o++] = timeToLimit(raw[1]!, raw[6]!, 1)
    out[o++] = timeToLimit(raw[2]!, raw[7]!, THERMAL_LIMIT_C)
    const waiting = raw[3]!
    const finished = raw[4]!
    out[o++] = Number.isFinite(waiting) ? Math.min(4, waiting / Math.max(0.05, finished || 0) / 30) : 0
    out[o++] = state === 'DEGRADED' ? 1 : 0
    out[o++] = haveGpu
  }

  /** Reads one series' 1 s and 100 ms mean windows ending at tMs (all NaN when absent). */
  private read(s: Series | undefined, tMs: number, w1: Float64Array, w100: Float64Array): void {
    if (s === undefined) {
      w1.fill(Number.NaN)
      w100.fill(Number.NaN)
      return
    }
    s.windowValues('1s', 'mean', N1S, w1, tMs)
    s.windowValues('100ms', 'mean', N100, w100, tMs)
  }

  /** The replica's ENGINE_CHANNELS series, in that order. */
  private engineSeries(replica: string): (Series | undefined)[] {
    let set = this.engineSets.get(replica)
    if (set === undefined) {
      set = newSeriesSet(ENGINE_CHANNELS.map((c) => engineKey(replica, c.signal)))
      this.engineSets.set(replica, set)
    }
    return this.refresh(set)
  }

  /** GPU g's GPU_SIGNALS series, in that order. */
  private gpuSeries(g: number): (Series | undefined)[] {
    let set = this.gpuSets.get(g)
    if (set === undefined) {
      set = newSeriesSet(GPU_SIGNALS.map((sig) => gpuKey(g, sig)))
      this.gpuSets.set(g, set)
    }
    return this.refresh(set)
  }

  /** Looks up the set's missing series again if the store has created any since the last time. */
  private refresh(set: SeriesSet): (Series | undefined)[] {
    const count = this.store.seriesCount
    if (set.seenCount === -1 || set.seenCount === count) return set.series
    set.seenCount = count
    let all = true
    for (let c = 0; c < set.keys.length; c++) {
      set.series[c] ??= this.store.get(set.keys[c]!)
      if (set.series[c] === undefined) all = false
    }
    if (all) set.seenCount = -1
    return set.series
  }

  /** Folds GPU g's channels into the accumulators with max; false when it has no data. */
  private gpuChannels(g: number, tMs: number): boolean {
    const gs = this.gpuSeries(g)
    const used = gs[G_USED]
    if (used === undefined) return false
    const total = gs[G_TOTAL]?.latest() ?? null
    const t1 = this.tmp1
    const t100 = this.tmp100
    // memFrac
    this.read(used, tMs, t1, t100)
    this.fold(0, t1, t100, total !== null && total > 0 ? 1 / total : Number.NaN, 0, 0)
    // temperature, °C (scaled with the statistics)
    this.read(gs[G_TEMP], tMs, t1, t100)
    this.fold(1, t1, t100, 1, 0, 0)
    // powerFrac
    const limit = gs[G_LIMIT]?.latest() ?? null
    this.read(gs[G_POWER], tMs, t1, t100)
    this.fold(2, t1, t100, limit !== null && limit > 0 ? 1 / limit : 1 / 700, 0, 0)
    // clockRel: 1 - clock / the highest it reached in the window (a drop is throttling; folded
    // with max like the others, so the worst GPU wins).
    this.read(gs[G_CLOCK], tMs, t1, t100)
    let peak = 0
    for (let i = 0; i < N1S; i++) if (t1[i]! > peak) peak = t1[i]!
    this.fold(3, t1, t100, peak > 0 ? -1 / peak : Number.NaN, 0, 1)
    // thermal reason bit
    this.read(gs[G_THERMAL], tMs, t1, t100)
    this.fold(4, t1, t100, 1, 0, 0)
    // eccRise: corrected errors gained since the start of the window.
    this.read(gs[G_ECC], tMs, t1, t100)
    let base = Number.NaN
    for (let i = 0; i < N1S; i++)
      if (Number.isFinite(t1[i]!)) {
        base = t1[i]!
        break
      }
    this.fold(5, t1, t100, 1, -base, 0)
    return true
  }

  /** acc[c] = max(acc[c], (v + add) * mul + off), element by element. */
  private fold(c: number, t1: Float64Array, t100: Float64Array, mul: number, add: number, off: number): void {
    const a1 = this.acc1
    const a100 = this.acc100
    for (let i = 0; i < N1S; i++) {
      const v = (t1[i]! + add) * mul + off
      const k = c * N1S + i
      if (Number.isFinite(v) && !(a1[k]! >= v)) a1[k] = v
    }
    for (let i = 0; i < N100; i++) {
      const v = (t100[i]! + add) * mul + off
      const k = c * N100 + i
      if (Number.isFinite(v) && !(a100[k]! >= v)) a100[k] = v
    }
  }
}

function lastFinite(w: Float64Array): number {
  for (let i = w.length - 1; i >= 0; i--) if (Number.isFinite(w[i]!)) return w[i]!
  return Number.NaN
}

/** Forward-fills gaps (a missed scrape keeps the last value); leading gaps take the first value, all-gap reads 0. */
function fillGaps(w: Float64Array): boolean {
  let first = -1
  for (let i = 0; i < w.length; i++)
    if (Number.isFinite(w[i]!)) {
      first = i
      break
    }
  if (first < 0) {
    w.fill(0)
    return false
  }
  for (let i = 0; i < first; i++) w[i] = w[first]!
  for (let i = first + 1; i < w.length; i++) if (!Number.isFinite(w[i]!)) w[i] = w[i - 1]!
  return true
}

/** OLS slope per bucket over the newest n buckets (NaN-tolerant: gaps are skipped). */
function slopePerSec(w: Float64Array, n: number): number {
  let sx = 0
  let sy = 0
  let sxx = 0
  let sxy = 0
  let k = 0
  for (let i = w.length - n; i < w.length; i++) {
    const y = w[i]!
    if (!Number.isFinite(y)) continue
    sx += i
    sy += y
    sxx += i * i
    sxy += i * y
    k++
  }
  if (k < 3) return Number.NaN
  const d = k * sxx - sx * sx
  return d === 0 ? Number.NaN : (k * sxy - sx * sy) / d
}

function tf(ch: Channel, v: number): number {
  const x = v / ch.scale
  return (ch.log ? Math.log1p(Math.max(x, 0)) : x) / ch.post
}

/**
 * The seven statistics of one channel, from its raw windows: last, 5 s mean, change over 10, 30
 * and 60 s, 60 s max, and the slope per minute (for a logged channel, the raw slope over
 * 1 + the window mean: the slope of the log near the mean, without a log per sample).
 */
function writeStats(w1: Float64Array, w100: Float64Array, ch: Channel, out: Float32Array, o: number): number {
  const have100 = fillGaps(w100)
  fillGaps(w1)
  const n = w1.length
  const lastRaw = have100 ? w100[w100.length - 1]! : w1[n - 1]!
  let mean5 = 0
  for (let i = n - 5; i < n; i++) mean5 += w1[i]!
  mean5 /= 5
  let max = lastRaw
  let mean60 = 0
  for (let i = 0; i < n; i++) {
    const v = w1[i]!
    if (v > max) max = v
    mean60 += v
  }
  mean60 /= n
  const last = tf(ch, lastRaw)
  out[o] = last
  out[o + 1] = tf(ch, mean5)
  out[o + 2] = last - tf(ch, w1[n - 11]!)
  out[o + 3] = last - tf(ch, w1[n - 31]!)
  out[o + 4] = last - tf(ch, w1[0]!)
  out[o + 5] = tf(ch, max)
  const sl = slopePerSec(w1, n)
  const scaled = ch.log
    ? sl / ch.scale / (1 + Math.max(0, mean60) / ch.scale) / ch.post
    : sl / ch.scale / ch.post
  out[o + 6] = Number.isFinite(scaled) ? scaled * 60 : 0
  return o + 7
}

/** Seconds until `value` reaches `limit` at `slopePerSec`, scaled so 1 = FAR_S or more. */
function timeToLimit(value: number, slope: number, limit: number): number {
  if (!Number.isFinite(value)) return 1
  // At (or past) the limit is "now", whatever the slope says.
  if (value >= limit) return 0
  if (!Number.isFinite(slope) || slope <= 1e-9) return 1
  const s = (limit - value) / slope
  return s <= 0 ? 0 : Math.min(FAR_S, s) / FAR_S
}
