/**
 * Windowed quantiles of Prometheus histograms: what `histogram_quantile(q, rate(x_bucket[60s]))`
 * would say, computed in-process from the cumulative bucket counts seen at each scrape.
 *
 * A {@link HistogramWindow} keeps one histogram's bucket vectors in a ring preallocated at
 * construction: after that, a push and a quantile allocate nothing. The ring holds one vector per
 * `windowMs / (slots - 2)` ms (1 s for the default 60 s window) rather than one per scrape, so its
 * size does not depend on the scrape interval (10 Hz, or 50 Hz at the 20 ms minimum); the newest
 * vector is always kept. The quantile is taken over the difference between the newest vector and
 * the oldest one still inside the window, so the window actually covered is between
 * `windowMs - windowMs / (slots - 2)` and `windowMs` once that much history exists, and the history
 * seen so far before that.
 */
import { InvalidArgumentError } from '../errors.js'
import type { EngineReading } from '../telemetry/types.js'

export const DEFAULT_QUANTILE_WINDOW_MS = 60_000
/** Default ring size: 60 stored vectors per window plus the two ends. */
export const DEFAULT_WINDOW_SLOTS = 62
/**
 * Most finite buckets a window takes. vLLM's largest default has 22, and its custom buckets are
 * a handful more; a server exposing thousands would cost slots x buckets x 8 bytes per family.
 */
export const MAX_BUCKETS = 1024

/**
 * Prometheus' `histogram_quantile` over one histogram (promql/quantile.go `bucketQuantile`):
 * linear interpolation inside the bucket that holds rank `q * total`, the first bucket starting at
 * 0; a rank in the +Inf bucket gives the highest finite bound; counts that go down from one bucket
 * to the next are raised to the previous one (Prometheus' `ensureMonotonic`). `cumulative[i]` is the
 * count of observations `<= bounds[i]`, with the +Inf bucket last (`bounds.length + 1` values).
 *
 * Returns null where Prometheus returns NaN (no observations, no finite bound, q outside [0, 1]).
 * One deliberate difference: for q = 0 with an empty first bucket Prometheus computes 0/0 (NaN);
 * this returns the lower edge of the first non-empty bucket. Results never exceed the bucket's
 * upper bound (interpolation can round one ulp above it).
 */
export function histogramQuantile(
  q: number,
  bounds: ArrayLike<number>,
  cumulative: ArrayLike<number>,
): number | null {
  const nb = bounds.length
  if (!(q >= 0 && q <= 1) || nb === 0 || cumulative.length !== nb + 1) return null
  let total = 0
  for (let i = 0; i <= nb; i++) {
    const c = cumulative[i]!
    if (c > total) total = c
  }
  if (!Number.isFinite(total) || total <= 0) return null
  const rank = q * total
  let prev = 0
  for (let i = 0; i < nb; i++) {
    let c = cumulative[i]!
    if (!(c >= prev)) c = prev
    if (c >= rank && c > 0) {
      const hi = bounds[i]!
      if (i === 0 && hi <= 0) return hi
      const lo = i === 0 ? 0 : bounds[i - 1]!
      return Math.min(hi, lo + (hi - lo) * ((rank - prev) / (c - prev)))
    }
    prev = c
  }
  return bounds[nb - 1]!
}

export interface HistogramWindowOptions {
  /** How far back the quantiles look, ms. Default 60 000. */
  windowMs?: number
  /** Ring size (>= 3); the window's resolution is `windowMs / (slots - 2)`. Default 62. */
  slots?: number
}

/** Throws InvalidArgumentError for options a window cannot use; returns them with defaults filled. */
export function checkWindowOptions(options: HistogramWindowOptions): Required<HistogramWindowOptions> {
  const { windowMs = DEFAULT_QUANTILE_WINDOW_MS, slots = DEFAULT_WINDOW_SLOTS } = options
  if (typeof windowMs !== 'number' || !Number.isFinite(windowMs) || windowMs <= 0)
    throw new InvalidArgumentError('HistogramWindow: windowMs must be a positive number')
  if (!Number.isInteger(slots) || slots < 3 || slots > 1 << 16)
    throw new InvalidArgumentError('HistogramWindow: slots must be an integer from 3 to 65536')
  return { windowMs, slots }
}

function sameBounds(a: ArrayLike<number>, b: ArrayLike<number>): boolean {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

function checkBounds(bounds: ArrayLike<number>): void {
  if (bounds.length === 0 || bounds.length > MAX_BUCKETS)
    throw new InvalidArgumentError(`HistogramWindow: bounds must hold 1 to ${MAX_BUCKETS} values`)
  for (let i = 0; i < bounds.length; i++) {
    const b = bounds[i]!
    if (!Number.isFinite(b) || (i > 0 && !(b > bounds[i - 1]!)))
      throw new InvalidArgumentError('HistogramWindow: bounds must be finite and strictly increasing')
  }
}

/** One histogram's recent cumulative bucket counts, and quantiles over them. */
export class HistogramWindow {
  readonly windowMs: number
  readonly bounds: Float64Array
  readonly #width: number
  readonly #slots: number
  readonly #stepMs: number
  readonly #times: Float64Array
  readonly #ring: Float64Array
  #head = 0
  #size = 0
  #latest: Float64Array
  #scratch: Float64Array
  #latestT = Number.NaN
  readonly #delta: Float64Array
  #deltaValid = false
  #resets = 0

  /** `bounds`: the finite upper bounds, ascending (the +Inf bucket is implied). */
  constructor(bounds: ArrayLike<number>, options: HistogramWindowOptions = {}) {
    checkBounds(bounds)
    const { windowMs, slots } = checkWindowOptions(options)
    this.windowMs = windowMs
    this.bounds = Float64Array.from(bounds)
    this.#width = bounds.length + 1
    this.#slots = slots
    this.#stepMs = windowMs / (slots - 2)
    this.#times = new Float64Array(slots)
    this.#ring = new Float64Array(slots * this.#width)
    this.#latest = new Float64Array(this.#width)
    this.#scratch = new Float64Array(this.#width)
    this.#delta = new Float64Array(this.#width)
  }

  /** Whether `bounds` are this window's (a server restarted with other buckets needs a new one). */
  hasBounds(bounds: ArrayLike<number>): boolean {
    return sameBounds(this.bounds, bounds)
  }

  /** Counter resets seen (each one restarted the window). */
  get resets(): number {
    return this.#resets
  }

  /** Observations between the window's two ends (0 before two pushes). */
  get count(): number {
    if (this.#size === 0) return 0
    this.#computeDelta()
    return this.#delta[this.#width - 1]!
  }

  /**
   * Records the histogram as scraped at `tMs`. `counts` has one value per bound plus the +Inf
   * bucket; cumulative (Prometheus' `_bucket` series) unless `cumulative` is false (per-bucket
   * counts, as `SimHistogram` keeps them). A count below the previous push's, or a time before
   * it, is a counter reset (a restarted server): the window restarts from this push. Returns false,
   * changing nothing, when the push is unusable (wrong length, a count or time not finite, a
   * negative count).
   */
  push(tMs: number, counts: ArrayLike<number>, cumulative = true): boolean {
    const w = this.#width
    if (!Number.isFinite(tMs) || counts.length !== w) return false
    const next = this.#scratch
    let run = 0
    for (let i = 0; i < w; i++) {
      const c = counts[i]!
      if (!(c >= 0) || c === Number.POSITIVE_INFINITY) return false
      run = cumulative ? c : run + c
      next[i] = run
    }
    const latest = this.#latest
    if (this.#size > 0) {
      let reset = tMs < this.#latestT
      for (let i = 0; !reset && i < w; i++) if (next[i]! < latest[i]!) reset = true
      if (reset) {
        this.#size = 0
        this.#head = 0
        this.#resets++
      }
    }
    this.#scratch = latest
    this.#latest = next
    this.#latestT = tMs
    this.#deltaValid = false
    const slots = this.#slots
    if (this.#size === 0 || tMs - this.#times[(this.#head + this.#size - 1) % slots]! >= this.#stepMs) {
      if (this.#size === slots) {
        this.#head = (this.#head + 1) % slots
        this.#size--
      }
      const at = (this.#head + this.#size) % slots
      this.#times[at] = tMs
      this.#ring.set(next, at * w)
      this.#size++
    }
    // The newest stored vector is at most one step old, so at least one always stays.
    const from = tMs - this.windowMs
    while (this.#size > 1 && this.#times[this.#head]! < from) {
      this.#head = (this.#head + 1) % slots
      this.#size--
    }
    return true
  }

  /** The q-quantile (0-1) of the observations in the window, in the bounds' unit; null if none. */
  quantile(q: number): number | null {
    if (this.#size === 0) return null
    this.#computeDelta()
    return histogramQuantile(q, this.bounds, this.#delta)
  }

  /** Forgets everything pushed. */
  clear(): void {
    this.#size = 0
    this.#head = 0
    this.#latestT = Number.NaN
    this.#deltaValid = false
  }

  #computeDelta(): void {
    if (this.#deltaValid) return
    const w = this.#width
    const base = this.#head * w
    const ring = this.#ring
    const latest = this.#latest
    const delta = this.#delta
    for (let i = 0; i < w; i++) delta[i] = latest[i]! - ring[base + i]!
    this.#deltaValid = true
  }
}

/** The four latency histograms vLLM exposes that the monitor turns into quantiles. */
export const LATENCY_FAMILIES = ['ttft', 'itl', 'e2e', 'queueTime'] as const
export type LatencyFamily = (typeof LATENCY_FAMILIES)[number]

/** One histogram as read at one instant: finite upper bounds (seconds) and bounds.length + 1 counts. */
export interface BucketCounts {
  bounds: ArrayLike<number>
  counts: ArrayLike<number>
  /** Prometheus `_bucket` counts are cumulative (the default); false for per-bucket counts. */
  cumulative?: boolean
}

/** An engine's latency histograms at one scrape; a family the server did not expose is absent or null. */
export type LatencyHistograms = { [K in LatencyFamily]?: BucketCounts | null }

/**
 * One histogram for a data-parallel server: the engines' cumulative counts summed bucket by bucket.
 * vLLM gives every engine the same buckets; a family whose engines disagree on them (or that an
 * engine lacks) cannot be summed and is null.
 */
export function mergeLatencyHistograms(list: readonly LatencyHistograms[]): LatencyHistograms {
  const out: LatencyHistograms = {}
  for (const f of LATENCY_FAMILIES) {
    let bounds: ArrayLike<number> | null = null
    let sum: number[] | null = null
    for (const h of list) {
      const b = h[f]
      if (
        b == null ||
        (bounds !== null && !sameBounds(bounds, b.bounds)) ||
        b.counts.length !== b.bounds.length + 1
      ) {
        sum = null
        break
      }
      if (bounds === null) {
        bounds = b.bounds
        sum = new Array<number>(b.counts.length).fill(0)
      }
      let run = 0
      for (let i = 0; i < b.counts.length; i++) {
        run = b.cumulative === false ? run + b.counts[i]! : b.counts[i]!
        sum![i]! += run
      }
    }
    out[f] = bounds === null || sum === null ? null : { bounds, counts: sum, cumulative: true }
  }
  return out
}

export type LatencyWindowsOptions = HistogramWindowOptions

/**
 * The latency windows of one replica (one per family), and the reading fields they fill:
 * `ttftP50Ms`, `ttftP90Ms`, `ttftP99Ms`, `itlP50Ms`, `itlP99Ms`, `e2eP50Ms`, `e2eP99Ms`,
 * `queueTimeP99Ms`. Used by the HTTP scraper (per replica, a DP server's engines merged first) and
 * by the simulator's readings, so live and simulated traces carry the same numbers.
 */
export class LatencyWindows {
  readonly #options: Required<LatencyWindowsOptions>
  readonly #windows: Record<LatencyFamily, HistogramWindow | null> = {
    ttft: null,
    itl: null,
    e2e: null,
    queueTime: null,
  }
  /** Families present in the latest update: an absent one reads null rather than its old window. */
  readonly #present: Record<LatencyFamily, boolean> = {
    ttft: false,
    itl: false,
    e2e: false,
    queueTime: false,
  }

  constructor(options: LatencyWindowsOptions = {}) {
    this.#options = checkWindowOptions(options)
  }

  /**
   * Pushes each family's counts at `tMs`; `cumulative` applies to families that do not say (false
   * for `SimHistogram`s, which keep per-bucket counts). Never throws: an unusable family reads null.
   */
  update(tMs: number, histograms: LatencyHistograms, cumulative = true): void {
    for (const f of LATENCY_FAMILIES) {
      const h = histograms[f]
      this.#present[f] = false
      if (h == null) continue
      let w = this.#windows[f]
      try {
        if (w === null || !w.hasBounds(h.bounds)) {
          w = new HistogramWindow(h.bounds, this.#options)
          this.#windows[f] = w
        }
      } catch {
        continue
      }
      this.#present[f] = w.push(tMs, h.counts, h.cumulative ?? cumulative)
    }
  }

  /** The q-quantile of a family over the window, ms; null without observations in the window. */
  quantileMs(family: LatencyFamily, q: number): number | null {
    const w = this.#windows[family]
    if (w === null || !this.#present[family]) return null
    const s = w.quantile(q)
    return s === null ? null : s * 1000
  }

  /** Sets the eight quantile fields of `reading` from the latest update; returns it. */
  fill(reading: EngineReading): EngineReading {
    reading.ttftP50Ms = this.quantileMs('ttft', 0.5)
    reading.ttftP90Ms = this.quantileMs('ttft', 0.9)
    reading.ttftP99Ms = this.quantileMs('ttft', 0.99)
    reading.itlP50Ms = this.quantileMs('itl', 0.5)
    reading.itlP99Ms = this.quantileMs('itl', 0.99)
    reading.e2eP50Ms = this.quantileMs('e2e', 0.5)
    reading.e2eP99Ms = this.quantileMs('e2e', 0.99)
    reading.queueTimeP99Ms = this.quantileMs('queueTime', 0.99)
    return reading
  }

  /** Forgets every window (a restarted engine whose counters start again). */
  clear(): void {
    for (const f of LATENCY_FAMILIES) {
      this.#windows[f]?.clear()
      this.#present[f] = false
    }
  }
}
