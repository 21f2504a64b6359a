/**
 * Fixed-capacity rings over preallocated Float64Array columns: the storage under a telemetry
 * series. Everything is allocated in the constructor; `push`/`add` and the copy methods never
 * allocate, so a steady-state ingest creates no garbage for the collector to chase.
 *
 * A value that could not be taken is stored as NaN. Times are ms on the monitor's clock.
 *
 * The hot entry points (`pushFrom`, `recordFrom`) take their time and value from a two-slot
 * Float64Array, `io[0]` and `io[1]`, rather than as arguments: V8 boxes a non-integer number
 * passed to a call it did not inline, so number arguments would allocate or not depending on
 * the optimiser's inlining budget. A typed array carries them by reference, boxed never.
 */
import { InvalidArgumentError } from '../errors.js'

/** The columns a roll-up bucket keeps. `count` is the number of real (non-NaN) values in it. */
export type RollupField = 'mean' | 'min' | 'max' | 'last' | 'count'
export const ROLLUP_FIELDS: readonly RollupField[] = ['mean', 'min', 'max', 'last', 'count']

function checkOut(out: Float64Array, n: number, what: string) {
  if (out.length < n) throw new InvalidArgumentError(`${what}: out has ${out.length} slots, ${n} are needed`)
}

/**
 * The last `capacity` raw samples, as parallel time and value columns. Overwrites the oldest
 * when full. Times are expected non-decreasing (the series drops out-of-order ones), which lets
 * `since` binary-search.
 */
export class SampleRing {
  readonly capacity: number
  private readonly t: Float64Array
  private readonly v: Float64Array
  /** Index of the next write. */
  private head = 0
  private n = 0
  private readonly io = new Float64Array(2)

  constructor(capacity: number) {
    this.capacity = capacity
    const buf = new Float64Array(capacity * 2)
    this.t = buf.subarray(0, capacity)
    this.v = buf.subarray(capacity)
  }

  /** How many samples the ring holds (at most `capacity`). */
  get size(): number {
    return this.n
  }

  push(tMs: number, value: number): void {
    this.io[0] = tMs
    this.io[1] = value
    this.pushFrom(this.io)
  }

  /** `push(io[0], io[1])`. */
  pushFrom(io: Float64Array): void {
    const h = this.head
    this.t[h] = io[0]!
    this.v[h] = io[1]!
    this.head = h + 1 === this.capacity ? 0 : h + 1
    if (this.n < this.capacity) this.n++
  }

  /** Slot of the k-th oldest sample held (k < size). */
  private slot(k: number): number {
    const s = this.head - this.n + k
    return s < 0 ? s + this.capacity : s
  }

  /** The newest value (NaN when empty or when the newest sample was a null reading). */
  lastValue(): number {
    return this.n === 0 ? Number.NaN : this.v[this.slot(this.n - 1)]!
  }

  /** The newest sample's time (NaN when empty). */
  lastTime(): number {
    return this.n === 0 ? Number.NaN : this.t[this.slot(this.n - 1)]!
  }

  /**
   * Copies the most recent min(out.length, size) samples into `out` (and their times into
   * `outT`), oldest first. Returns how many were copied.
   */
  copy(out: Float64Array, outT?: Float64Array): number {
    const m = Math.min(out.length, this.n, outT === undefined ? Number.POSITIVE_INFINITY : outT.length)
    this.copyFrom(this.n - m, m, out, outT)
    return m
  }

  /**
   * Copies the samples taken at or after `tMs`, oldest first; when more are held than `out` has
   * room for, the most recent ones. Returns how many were copied.
   */
  since(tMs: number, out: Float64Array, outT?: Float64Array): number {
    // First k whose time is >= tMs (times are non-decreasing).
    let lo = 0
    let hi = this.n
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (this.t[this.slot(mid)]! < tMs) lo = mid + 1
      else hi = mid
    }
    const avail = this.n - lo
    const m = Math.min(out.length, avail, outT === undefined ? Number.POSITIVE_INFINITY : outT.length)
    this.copyFrom(this.n - m, m, out, outT)
    return m
  }

  private copyFrom(k0: number, m: number, out: Float64Array, outT: Float64Array | undefined) {
    for (let i = 0; i < m; i++) {
      const s = this.slot(k0 + i)
      out[i] = this.v[s]!
      if (outT !== undefined) outT[i] = this.t[s]!
    }
  }

  clear(): void {
    this.head = 0
    this.n = 0
  }
}

/**
 * Fixed-width time buckets, dense in time: bucket `b` covers [b*widthMs, (b+1)*widthMs) and
 * lives in slot `b mod capacity`, so the ring always spans the `span` consecutive buckets ending
 * at the newest one. Buckets that no value fell into keep count 0 and NaN statistics: a gap
 * stays a gap and is never read as a zero or as the previous value.
 */
export class RollupRing {
  readonly capacity: number
  readonly widthMs: number
  private readonly mean: Float64Array
  private readonly min: Float64Array
  private readonly max: Float64Array
  private readonly last: Float64Array
  private readonly count: Float64Array
  /**
   * [0]: bucket index (floor(t / widthMs)) of the newest bucket, NaN while empty; [1]: the
   * bucket `recordFrom` hands to `moveHead`. Fractional-valued scalars live in a typed array,
   * not in fields: how V8 stores a number field depends on what the object's shape has seen,
   * and a boxed field allocates on every write.
   */
  private readonly buckets = new Float64Array([Number.NaN, Number.NaN])
  /** The newest bucket's slot, kept so the per-sample path does no modulo. */
  private headSlot = 0
  /** How many consecutive buckets, ending at the newest, the ring holds. */
  private span = 0
  private readonly io = new Float64Array(2)

  constructor(capacity: number, widthMs: number) {
    this.capacity = capacity
    this.widthMs = widthMs
    const buf = new Float64Array(capacity * 5)
    this.mean = buf.subarray(0, capacity)
    this.min = buf.subarray(capacity, 2 * capacity)
    this.max = buf.subarray(2 * capacity, 3 * capacity)
    this.last = buf.subarray(3 * capacity, 4 * capacity)
    this.count = buf.subarray(4 * capacity)
    this.mean.fill(Number.NaN)
    this.min.fill(Number.NaN)
    this.max.fill(Number.NaN)
    this.last.fill(Number.NaN)
  }

  /** Buckets held, gaps included (at most `capacity`). */
  get size(): number {
    return this.span
  }

  /** Start time (ms) of the newest bucket; NaN while empty. */
  newestStartMs(): number {
    return this.buckets[0]! * this.widthMs
  }

  private slotOf(bucket: number): number {
    const s = bucket % this.capacity
    return s < 0 ? s + this.capacity : s
  }

  private clearSlot(s: number) {
    this.mean[s] = Number.NaN
    this.min[s] = Number.NaN
    this.max[s] = Number.NaN
    this.last[s] = Number.NaN
    this.count[s] = 0
  }

  /**
   * Moves the head to the bucket holding `tMs` and adds `value` to it; a NaN value (a reading
   * that could not be taken) only moves the head. Buckets skipped on the way are emptied: a gap,
   * not a repeat of old values. Times before the head bucket are ignored (the series drops them
   * before they get here).
   */
  record(tMs: number, value: number): void {
    this.io[0] = tMs
    this.io[1] = value
    this.recordFrom(this.io)
  }

  /** `record(io[0], io[1])`. */
  recordFrom(io: Float64Array): void {
    const b = Math.floor(io[0]! / this.widthMs)
    const buckets = this.buckets
    if (b !== buckets[0]) {
      if (this.span > 0 && !(b > buckets[0]!)) return
      // Handed over in memory, not as an argument, for the same reason as `io`.
      buckets[1] = b
      this.moveHead()
    }
    const value = io[1]!
    if (Number.isNaN(value)) return
    const s = this.headSlot
    const c = this.count[s]! + 1
    this.count[s] = c
    this.last[s] = value
    if (c === 1) {
      this.mean[s] = value
      this.min[s] = value
      this.max[s] = value
      return
    }
    // Incremental mean: no running-sum column whose magnitude eats the precision of large counters.
    const m = this.mean[s]!
    this.mean[s] = m + (value - m) / c
    if (value < this.min[s]!) this.min[s] = value
    if (value > this.max[s]!) this.max[s] = value
  }

  /** The cold half of `recordFrom`: a new bucket (once per widthMs at most). */
  private moveHead(): void {
    const b = this.buckets[1]!
    const gap = b - this.buckets[0]!
    const cap = this.capacity
    if (this.span === 0 || gap >= cap) {
      // Every slot is overwritten by the jump: clear the lot in one pass. (A loop, not
      // `fill(NaN)`: NaN passed to that builtin is boxed.)
      if (this.span !== 0) for (let k = 0; k < cap; k++) this.clearSlot(k)
      this.span = this.span === 0 ? 1 : cap
      this.buckets[0] = b
      this.headSlot = this.slotOf(b)
      this.clearSlot(this.headSlot)
      return
    }
    // Walk slot by slot (gap < capacity) rather than taking `b mod capacity`, a floating-point
    // modulo on every new bucket.
    let s = this.headSlot
    for (let k = 0; k < gap; k++) {
      s = s + 1 === cap ? 0 : s + 1
      this.clearSlot(s)
    }
    this.span = Math.min(cap, this.span + gap)
    this.buckets[0] = b
    this.headSlot = s
  }

  /** Slot of the bucket `back` buckets before the head (0 <= back < capacity). */
  private slotBack(back: number): number {
    const s = this.headSlot - back
    return s < 0 ? s + this.capacity : s
  }

  private column(field: RollupField): Float64Array {
    switch (field) {
      case 'mean':
        return this.mean
      case 'min':
        return this.min
      case 'max':
        return this.max
      case 'last':
        return this.last
      case 'count':
        return this.count
      default:
        throw new InvalidArgumentError(`unknown roll-up field ${String(field)}`)
    }
  }

  /**
   * Copies the most recent min(out.length, size) buckets of `field`, oldest first, gaps
   * included (NaN, or 0 for `count`); `outT` gets each bucket's start time. Returns how many.
   */
  copy(field: RollupField, out: Float64Array, outT?: Float64Array): number {
    const col = this.column(field)
    const m = Math.min(out.length, this.span, outT === undefined ? Number.POSITIVE_INFINITY : outT.length)
    const b0 = this.buckets[0]! - m + 1
    for (let i = 0; i < m; i++) {
      out[i] = col[this.slotBack(m - 1 - i)]!
      if (outT !== undefined) outT[i] = (b0 + i) * this.widthMs
    }
    return m
  }

  /**
   * Fills exactly `n` slots of `out` with `field` for the n consecutive buckets ending at the
   * bucket holding `endTMs` (default: the newest bucket). Buckets the ring does not hold, or
   * that had no values, read NaN (0 for `count`). Returns how many of the n held values.
   */
  window(field: RollupField, n: number, out: Float64Array, endTMs?: number): number {
    checkOut(out, n, 'window')
    return this.fill(field, n, out, endTMs, true)
  }

  /**
   * `window(field, n, out, endTMs)` without the count of filled buckets: the forecaster's feature
   * read, every tick on the main thread, where reading the count column too doubled the cache
   * lines touched. `endTMs` is required (the caller aligns several series on one "now").
   */
  windowValues(field: RollupField, n: number, out: Float64Array, endTMs: number): void {
    checkOut(out, n, 'windowValues')
    this.fill(field, n, out, endTMs, false)
  }

  /** The walk behind `window` and `windowValues`; reads the count column only when `countFilled`. */
  private fill(
    field: RollupField,
    n: number,
    out: Float64Array,
    endTMs: number | undefined,
    countFilled: boolean,
  ): number {
    const col = this.column(field)
    const gapValue = field === 'count' ? 0 : Number.NaN
    const head = this.buckets[0]!
    const end = endTMs === undefined ? head : Math.floor(endTMs / this.widthMs)
    if (Number.isNaN(head) || Number.isNaN(end)) {
      for (let i = 0; i < n; i++) out[i] = gapValue
      return 0
    }
    // out[i] is the bucket `head - (first + i)` back from the head, held when that is in
    // [0, span): older buckets, then the held ones walking the slots forward, then newer ones.
    const first = end - n + 1
    let i = 0
    for (; i < n && head - (first + i) >= this.span; i++) out[i] = gapValue
    let s = this.slotBack(head - (first + i))
    const cap = this.capacity
    let filled = 0
    for (; i < n && first + i <= head; i++) {
      out[i] = col[s]!
      if (countFilled && this.count[s]! > 0) filled++
      s = s + 1 === cap ? 0 : s + 1
    }
    for (; i < n; i++) out[i] = gapValue
    return filled
  }

  clear(): void {
    this.buckets[0] = Number.NaN
    this.headSlot = 0
    this.span = 0
  }
}
