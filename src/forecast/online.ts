/**
 * Online retraining: the live monitor's feature rows are labelled from what actually happened,
 * and the model is fine-tuned on them in a worker on a schedule. A fine-tuned model replaces the
 * current one only if its class-balanced loss on a held-back buffer is no worse.
 *
 * A row waits until its longest horizon (120 s) has passed, then gets the labels of
 * dataset.ts `labelRows`: 1 on a head when a failure of its type started on its replica within the
 * head's horizon, or was under way at the row. An alarm that did not come true thus becomes a
 * negative. Outcomes from the mitigation side: 'occurred' is an onset; 'avoided' means a
 * mitigation acted, so whether the failure would have come is unknown: rows of that replica from
 * the 120 s before it are not used as negatives of that type (for simplicity such a row is dropped
 * whole, unless all its heads of that type are positive anyway); 'false-alarm' confirms the
 * negatives the rule gives, so it changes nothing. An 'avoided' outcome reaches only rows still
 * pending: set `labelDelayMs` to how late the mitigation side reports.
 *
 * The held-back buffer takes whole blocks: per replica, the labelled rows are counted off in
 * blocks of `HELD_BACK_BLOCK_ROWS` (60, about a minute at 1 Hz) consecutive rows, and every
 * `heldBackEvery`-th block goes to the held-back buffer, the rest to training. Neighbouring seconds
 * are nearly the same row; held-back rows interleaved with training rows would score a fine-tune
 * that memorised its rows as better. Rows at the edges of a block still border training rows, so
 * the held-back loss remains somewhat optimistic as an accuracy figure; it serves to catch a
 * fine-tune that got worse.
 *
 * Failures are rare, so nearly every live row is negative. Left alone, fine-tuning would drift
 * toward "no failure" everywhere and a mean cross-entropy would call that an improvement, turning
 * alarms off without a word. So (train-worker.ts): positive rows are repeated to about
 * `positiveShare` of an epoch, as offline training does; the held-back score is class-balanced
 * (per head, positives and negatives weigh alike; heads with no positive held-back row are not
 * scored); and a round whose held-back buffer holds no positive at all is refused before it
 * starts, since nothing could show that the new model still sees a failure coming.
 *
 * `observe` and `advance` run on the monitor's thread at 1 Hz per replica: they write into
 * preallocated ring buffers and allocate nothing in the steady state.
 */
import { Piscina } from 'piscina'
import { ForecastWorkerError, InvalidOptionError } from '../errors.js'
import { FEATURE_COUNT } from './features.js'
import type { ModelArtifacts } from './model.js'
import type { FailureOnset } from './onsets.js'
import { resolveWorkerFile } from './pool.js'
import { FAILURE_TYPES, type FailureType, MODEL_OUTPUTS } from './spec.js'
import type { FineTuneResult, FineTuneTask } from './train-worker.js'

export type { FineTuneResult, FineTuneTask } from './train-worker.js'

/** Consecutive labelled rows of a replica that go to the same buffer (about a minute at 1 Hz). */
export const HELD_BACK_BLOCK_ROWS = 60

const F = FEATURE_COUNT
const NT = FAILURE_TYPES.length
const NO = MODEL_OUTPUTS.length
const OUT_TYPE = Uint8Array.from(MODEL_OUTPUTS, (o) => FAILURE_TYPES.indexOf(o.failureType))
const OUT_H_MS = Float64Array.from(MODEL_OUTPUTS, (o) => o.horizonS * 1000)
/** How long a row waits for its labels: the longest head's horizon. */
export const LABEL_HORIZON_MS = Math.max(...OUT_H_MS)

export interface RoundResult {
  swapped: boolean
  /** Why the model was or was not replaced, in words (names both losses when they were measured). */
  reason: string
  /**
   * Class-balanced held-back loss of the model before and after (FineTuneResult.oldLoss): what
   * the swap is decided on. null if the worker did not run.
   */
  oldLoss: number | null
  newLoss: number | null
  /** Plain mean binary cross-entropy on the held-back rows, before and after; for information. */
  oldBce: number | null
  newBce: number | null
  trainRows: number
  heldRows: number
  /** meta.version of the model swapped in; null when none was. */
  version: number | null
  durationMs: number
  /** Date.now() when the round ended. */
  at: number
  error?: Error
}

export interface OutcomeReport {
  t: number
  replica: string
  failureType: FailureType
  outcome: 'occurred' | 'avoided' | 'false-alarm'
}

export interface OnlineTrainerOptions {
  /** The model in use; must return the same object until the model changes. */
  getModel: () => ModelArtifacts
  /** Installs a better model; called once per swap, with artifacts of meta.version + 1. */
  onSwap: (artifacts: ModelArtifacts) => void
  /** Least time between rounds started by maybeRetrain, ms (default 600 000). */
  intervalMs?: number
  /** Training rows a round needs (default 256). */
  minSamples?: number
  /**
   * Every n-th block of `HELD_BACK_BLOCK_ROWS` (60) consecutive labelled rows of a replica goes to
   * the held-back buffer, the other blocks to training (default 5, at least 2). A replica's first
   * held-back block thus comes after (n - 1) x 60 labelled rows.
   */
  heldBackEvery?: number
  /**
   * Share of an epoch's rows that have a positive label, after repeating the positive training
   * rows (0 <= x < 1, default 0.1; 0 = as they come); as `positiveShare` of offline training.
   */
  positiveShare?: number
  /** Labelled rows kept, training and held-back together; the oldest go first (default 20 000). */
  maxRows?: number
  /** Extra time a row stays unlabelled, ms, so that late 'avoided' outcomes still reach it (default 0). */
  labelDelayMs?: number
  epochs?: number
  learningRate?: number
  batchSize?: number
  /** The worker's tfjs backend (default 'auto'); ignored with runTask. */
  backend?: 'auto' | 'wasm' | 'cpu'
  /** Runs one fine-tune task; default: a one-thread piscina pool over train-worker.js. */
  runTask?: (task: FineTuneTask) => Promise<FineTuneResult>
  onError?: (err: Error) => void
  onRound?: (result: RoundResult) => void
}

export interface OnlineTrainerStats {
  /** Rows waiting for their labels. */
  pending: number
  trainRows: number
  heldRows: number
  /**
   * Rounds that reached the worker: swaps + refusals + failures. A round turned away before it
   * (too few rows, no held-back rows or none positive) counts nowhere; see lastRound.
   */
  rounds: number
  swaps: number
  refusals: number
  failures: number
  /** Rows discarded: after an 'avoided' outcome, or pushed out of a full pending buffer. */
  dropped: number
  lastRound: RoundResult | null
}

const kDefaults = {
  intervalMs: 600_000,
  minSamples: 256,
  heldBackEvery: 5,
  positiveShare: 0.1,
  maxRows: 20_000,
  labelDelayMs: 0,
  epochs: 3,
  learningRate: 1e-4,
  batchSize: 64,
  backend: 'auto',
} as const

/**
 * Rows awaiting labels are 120 s x replicas; this bound only stops the buffer growing without end
 * when `advance` is never called (the oldest are dropped and counted).
 */
const kMaxPending = 65_536

/** Rows of features and labels in a ring that doubles up to `max`, then overwrites the oldest. */
class RowRing {
  x: Float32Array
  y: Uint8Array
  t: Float64Array
  rep: Uint16Array
  /** Bit per FAILURE_TYPES index: an 'avoided' outcome covers the row. */
  avoided: Uint8Array
  head = 0
  size = 0
  /** Rows lost because the ring was full. */
  overwrote = 0

  constructor(
    readonly max: number,
    private readonly width: number,
  ) {
    const n = Math.min(max, 1024)
    this.x = new Float32Array(n * F)
    this.y = new Uint8Array(n * width)
    this.t = new Float64Array(n)
    this.rep = new Uint16Array(n)
    this.avoided = new Uint8Array(n)
  }

  get capacity(): number {
    return this.t.length
  }

  /** The slot for a new row at the tail; when full at `max`, the oldest row is dropped. */
  push(): number {
    if (this.size === this.capacity && this.capacity < this.max)
      this.grow(Math.min(this.max, this.capacity * 2))
    if (this.size === this.capacity) {
      this.head = (this.head + 1) % this.capacity
      this.size--
      this.overwrote++
    }
    const i = (this.head + this.size) % this.capacity
    this.size++
    return i
  }

  slot(k: number): number {
    return (this.head + k) % this.capacity
  }

  shift(): void {
    this.head = (this.head + 1) % this.capacity
    this.size--
  }

  /** Contiguous copies for a task: features, and labels as float32. */
  copyOut(): { x: Float32Array; y: Float32Array } {
    const x = new Float32Array(this.size * F)
    const y = new Float32Array(this.size * this.width)
    for (let k = 0; k < this.size; k++) {
      const i = this.slot(k)
      x.set(this.x.subarray(i * F, (i + 1) * F), k * F)
      for (let j = 0; j < this.width; j++) y[k * this.width + j] = this.y[i * this.width + j]!
    }
    return { x, y }
  }

  private grow(n: number): void {
    const w = this.width
    const x = new Float32Array(n * F)
    const y = new Uint8Array(n * w)
    const t = new Float64Array(n)
    const rep = new Uint16Array(n)
    const avoided = new Uint8Array(n)
    for (let k = 0; k < this.size; k++) {
      const i = this.slot(k)
      x.set(this.x.subarray(i * F, (i + 1) * F), k * F)
      y.set(this.y.subarray(i * w, (i + 1) * w), k * w)
      t[k] = this.t[i]!
      rep[k] = this.rep[i]!
      avoided[k] = this.avoided[i]!
    }
    Object.assign(this, { x, y, t, rep, avoided, head: 0 })
  }
}

export class OnlineTrainer {
  readonly #o: Required<Omit<OnlineTrainerOptions, 'runTask' | 'onError' | 'onRound'>> & OnlineTrainerOptions
  /** Rows waiting for labels; `y` holds the ongoing flags per FAILURE_TYPES. */
  readonly #pending: RowRing
  readonly #train: RowRing
  readonly #held: RowRing
  readonly #replicas = new Map<string, number>()
  /** Per replica, per FAILURE_TYPES index: onset times, ascending. */
  readonly #onsets: number[][][] = []
  #onsetCount = 0
  /** Per replica: labelled rows filed so far, which places the next one in its block. */
  readonly #filed: number[] = []
  readonly #labels = new Uint8Array(NO)
  #lastT = Number.NEGATIVE_INFINITY
  #avoidedDropped = 0
  #lastRoundT: number | null = null
  #running: Promise<RoundResult> | null = null
  #pool: Piscina | null = null
  #closed = false
  #closing: Promise<void> | null = null
  /** The last model swapped in, and what getModel() returned when it was. */
  #latest: ModelArtifacts | null = null
  #replaced: ModelArtifacts | null = null
  readonly #stats = { rounds: 0, swaps: 0, refusals: 0, failures: 0, lastRound: null as RoundResult | null }

  constructor(options: OnlineTrainerOptions) {
    if (options === null || typeof options !== 'object')
      throw new InvalidOptionError('OnlineTrainer: options must be an object')
    const given = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined))
    const o = { ...kDefaults, ...(given as OnlineTrainerOptions) }
    const fn = (k: keyof OnlineTrainerOptions, required: boolean) => {
      const v = o[k]
      if ((required || v !== undefined) && typeof v !== 'function')
        throw new InvalidOptionError(`OnlineTrainer: option "${k}" must be a function`)
    }
    fn('getModel', true)
    fn('onSwap', true)
    fn('runTask', false)
    fn('onError', false)
    fn('onRound', false)
    const int = (
      k: 'intervalMs' | 'minSamples' | 'maxRows' | 'epochs' | 'batchSize' | 'labelDelayMs',
      min: number,
    ) => {
      if (!Number.isInteger(o[k]) || o[k] < min)
        throw new InvalidOptionError(`OnlineTrainer: option "${k}" must be an integer >= ${min}`)
    }
    int('intervalMs', 0)
    int('minSamples', 1)
    int('maxRows', 2)
    int('epochs', 1)
    int('batchSize', 1)
    int('labelDelayMs', 0)
    if (!Number.isInteger(o.heldBackEvery) || o.heldBackEvery < 2)
      throw new InvalidOptionError('OnlineTrainer: option "heldBackEvery" must be an integer >= 2')
    if (
      typeof o.positiveShare !== 'number' ||
      !Number.isFinite(o.positiveShare) ||
      o.positiveShare < 0 ||
      o.positiveShare >= 1
    )
      throw new InvalidOptionError('OnlineTrainer: option "positiveShare" must be a number >= 0 and < 1')
    if (typeof o.learningRate !== 'number' || !(o.learningRate > 0) || !Number.isFinite(o.learningRate))
      throw new InvalidOptionError('OnlineTrainer: option "learningRate" must be a positive number')
    if (!['auto', 'wasm', 'cpu'].includes(o.backend))
      throw new InvalidOptionError('OnlineTrainer: option "backend" must be "auto", "wasm" or "cpu"')
    this.#o = o
    const heldMax = Math.ceil(o.maxRows / o.heldBackEvery)
    this.#held = new RowRing(heldMax, NO)
    this.#train = new RowRing(o.maxRows - heldMax, NO)
    this.#pending = new RowRing(kMaxPending, NT)
  }

  /**
   * Queues a feature row of `replica` at `t` (ms, non-decreasing) with the failures under way
   * (per FAILURE_TYPES, 0 or 1). The features are copied.
   */
  observe(t: number, replica: string, features: ArrayLike<number>, ongoing: ArrayLike<number>): void {
    if (this.#closed) return
    if (features.length !== F) throw new TypeError(`features must hold ${F} values, got ${features.length}`)
    if (ongoing.length !== NT) throw new TypeError(`ongoing must hold ${NT} values, got ${ongoing.length}`)
    const p = this.#pending
    const i = p.push()
    const o = i * F
    for (let j = 0; j < F; j++) p.x[o + j] = features[j]!
    for (let j = 0; j < NT; j++) p.y[i * NT + j] = ongoing[j]! ? 1 : 0
    p.t[i] = t
    p.rep[i] = this.#replica(replica)
    p.avoided[i] = 0
    if (t > this.#lastT) this.#lastT = t
  }

  /** A failure that started (onsets.ts). Call it before `advance` of the same tick. */
  onset(o: FailureOnset): void {
    if (this.#closed) return
    const ti = FAILURE_TYPES.indexOf(o.failureType)
    if (ti < 0 || !Number.isFinite(o.t)) return
    const times = this.#onsets[this.#replica(o.replica)]![ti]!
    let k = times.length
    while (k > 0 && times[k - 1]! > o.t) k--
    if (times[k - 1] === o.t) return
    times.splice(k, 0, o.t)
    this.#onsetCount++
  }

  /** What the mitigation side saw after acting; see the module comment. */
  reportOutcome(o: OutcomeReport): void {
    if (this.#closed) return
    if (o.outcome === 'occurred') {
      this.onset({ failureType: o.failureType, replica: o.replica, t: o.t, detail: 'reported by mitigation' })
      return
    }
    if (o.outcome !== 'avoided') return
    const ti = FAILURE_TYPES.indexOf(o.failureType)
    const ri = this.#replicas.get(o.replica)
    if (ti < 0 || ri === undefined) return
    const p = this.#pending
    for (let k = 0; k < p.size; k++) {
      const i = p.slot(k)
      if (p.rep[i] === ri && p.t[i]! >= o.t - LABEL_HORIZON_MS && p.t[i]! <= o.t)
        p.avoided[i] = p.avoided[i]! | (1 << ti)
    }
  }

  /** Labels the rows whose horizon has passed by `t` and files them as training or held-back rows. */
  advance(t: number): void {
    if (this.#closed) return
    const p = this.#pending
    const wait = LABEL_HORIZON_MS + this.#o.labelDelayMs
    while (p.size > 0 && p.t[p.head]! + wait <= t) {
      this.#file(p.head)
      p.shift()
    }
    if (this.#onsetCount > 0) this.#pruneOnsets(p.size > 0 ? p.t[p.head]! : this.#lastT)
  }

  /** Starts a round when `intervalMs` has passed since the last one (the clock starts at the first call). */
  maybeRetrain(t: number): Promise<RoundResult> | null {
    if (this.#closed) return null
    if (this.#lastRoundT === null) this.#lastRoundT = t
    if (t - this.#lastRoundT < this.#o.intervalMs) return null
    this.#lastRoundT = t
    return this.retrain()
  }

  /** One fine-tuning round; never rejects. A call while a round runs gets that round's promise. */
  retrain(): Promise<RoundResult> {
    if (this.#running !== null) return this.#running
    const p = this.#round().finally(() => {
      this.#running = null
    })
    this.#running = p
    return p
  }

  stats(): OnlineTrainerStats {
    return {
      pending: this.#pending.size,
      trainRows: this.#train.size,
      heldRows: this.#held.size,
      ...this.#stats,
      dropped: this.#avoidedDropped + this.#pending.overwrote,
    }
  }

  /** Stops labelling and terminates the worker; a round under way ends as 'trainer closed'. */
  close(): Promise<void> {
    if (this.#closing !== null) return this.#closing
    this.#closed = true
    const pool = this.#pool
    this.#pool = null
    this.#closing = (async () => {
      if (pool !== null) await pool.destroy().catch(() => {})
      await this.#running
    })()
    return this.#closing
  }

  #replica(name: string): number {
    let ri = this.#replicas.get(name)
    if (ri === undefined) {
      ri = this.#replicas.size
      if (ri > 0xffff) throw new RangeError('OnlineTrainer: more than 65 536 replicas')
      this.#replicas.set(name, ri)
      this.#onsets.push(FAILURE_TYPES.map(() => []))
      this.#filed.push(0)
    }
    return ri
  }

  #file(i: number): void {
    const p = this.#pending
    const t = p.t[i]!
    const ri = p.rep[i]!
    const on = this.#onsets[ri]!
    const y = this.#labels
    for (let k = 0; k < NO; k++) {
      const ti = OUT_TYPE[k]!
      let v = p.y[i * NT + ti]!
      if (v === 0) {
        const times = on[ti]!
        const end = t + OUT_H_MS[k]!
        for (let m = 0; m < times.length; m++) if (times[m]! > t && times[m]! <= end) v = 1
      }
      y[k] = v
    }
    const avoided = p.avoided[i]!
    if (avoided !== 0) {
      for (let k = 0; k < NO; k++) {
        if (y[k] === 0 && (avoided & (1 << OUT_TYPE[k]!)) !== 0) {
          this.#avoidedDropped++
          return
        }
      }
    }
    const n = this.#filed[ri]!++
    const held = (Math.floor(n / HELD_BACK_BLOCK_ROWS) + 1) % this.#o.heldBackEvery === 0
    const dst = held ? this.#held : this.#train
    const j = dst.push()
    dst.x.set(p.x.subarray(i * F, (i + 1) * F), j * F)
    dst.y.set(y, j * NO)
    dst.t[j] = t
    dst.rep[j] = ri
  }

  #heldHasPositive(): boolean {
    const h = this.#held
    for (let k = 0; k < h.size; k++) {
      const i = h.slot(k)
      for (let j = 0; j < NO; j++) if (h.y[i * NO + j] !== 0) return true
    }
    return false
  }

  /** Onsets at or before the oldest row still pending can label nothing more. */
  #pruneOnsets(oldest: number): void {
    for (const byType of this.#onsets) {
      for (const times of byType) {
        let n = 0
        while (n < times.length && times[n]! <= oldest) n++
        if (n > 0) {
          times.splice(0, n)
          this.#onsetCount -= n
        }
      }
    }
  }

  async #round(): Promise<RoundResult> {
    const started = performance.now()
    const trainRows = this.#train.size
    const heldRows = this.#held.size
    const result = (swapped: boolean, reason: string, extra: Partial<RoundResult> = {}): RoundResult => {
      const r: RoundResult = {
        swapped,
        reason,
        oldLoss: null,
        newLoss: null,
        oldBce: null,
        newBce: null,
        trainRows,
        heldRows,
        version: null,
        durationMs: performance.now() - started,
        at: Date.now(),
        ...extra,
      }
      this.#stats.lastRound = r
      if (!this.#closed) this.#call(this.#o.onRound, r)
      return r
    }
    if (this.#closed) return result(false, 'trainer closed')
    if (trainRows < this.#o.minSamples)
      return result(false, `not enough labelled rows (${trainRows} < ${this.#o.minSamples})`)
    if (heldRows === 0) return result(false, 'no held-back rows yet')
    if (!this.#heldHasPositive())
      return result(false, 'no failure in the held-back rows: nothing to judge a new model on')
    let current: ModelArtifacts
    try {
      current = this.#o.getModel()
    } catch (err) {
      return this.#fail(result, err, 'getModel() threw')
    }
    // A monitor that has not adopted our last swap still returns the model it replaced.
    const base = this.#latest !== null && current === this.#replaced ? this.#latest : current
    const train = this.#train.copyOut()
    const held = this.#held.copyOut()
    const task: FineTuneTask = {
      kind: 'fine-tune',
      model: base,
      x: train.x,
      y: train.y,
      rows: trainRows,
      heldX: held.x,
      heldY: held.y,
      heldRows,
      epochs: this.#o.epochs,
      learningRate: this.#o.learningRate,
      batchSize: this.#o.batchSize,
      positiveShare: this.#o.positiveShare,
    }
    this.#stats.rounds++
    let out: FineTuneResult
    try {
      out = await (this.#o.runTask ?? ((tk) => this.#runInPool(tk)))(task)
      if (out === null || typeof out !== 'object' || typeof out.artifacts?.meta !== 'object')
        throw new TypeError('the worker returned no model')
    } catch (err) {
      if (this.#closed) return result(false, 'trainer closed')
      this.#stats.failures++
      return this.#fail(result, err, 'online retraining failed')
    }
    if (this.#closed) return result(false, 'trainer closed')
    const { oldLoss, newLoss } = out
    const losses = { oldLoss, newLoss, oldBce: num(out.oldBce), newBce: num(out.newBce) }
    let now: ModelArtifacts | null = null
    try {
      now = this.#o.getModel()
    } catch {
      // reported below as a replaced model
    }
    if (now !== current) {
      this.#stats.refusals++
      return result(false, 'the model was replaced while the round ran', losses)
    }
    if (!Number.isFinite(oldLoss) || !Number.isFinite(newLoss)) {
      this.#stats.refusals++
      return result(
        false,
        `held-back loss is not finite (${fmt(oldLoss)} -> ${fmt(newLoss)}): kept the current model`,
        losses,
      )
    }
    if (!(newLoss <= oldLoss)) {
      this.#stats.refusals++
      return result(
        false,
        `held-back loss would rise from ${fmt(oldLoss)} to ${fmt(newLoss)}: kept the current model`,
        losses,
      )
    }
    try {
      this.#o.onSwap(out.artifacts)
    } catch (err) {
      this.#stats.failures++
      return this.#fail(result, err, 'onSwap() threw', losses)
    }
    this.#latest = out.artifacts
    this.#replaced = current
    this.#stats.swaps++
    return result(
      true,
      `held-back loss ${fmt(oldLoss)} -> ${fmt(newLoss)}: swapped in version ${out.artifacts.meta.version}`,
      {
        ...losses,
        version: out.artifacts.meta.version,
      },
    )
  }

  #fail(
    result: (s: boolean, r: string, e?: Partial<RoundResult>) => RoundResult,
    err: unknown,
    what: string,
    extra: Partial<RoundResult> = {},
  ): RoundResult {
    const msg = err instanceof Error ? err.message : String(err)
    const error = new ForecastWorkerError(`${what}: ${msg}`, { cause: err })
    this.#call(this.#o.onError, error)
    return result(false, `${what}: ${msg}`, { ...extra, error })
  }

  #runInPool(task: FineTuneTask): Promise<FineTuneResult> {
    if (this.#pool === null) {
      this.#pool = new Piscina({
        filename: resolveWorkerFile('train-worker.js'),
        minThreads: 0,
        maxThreads: 1,
        idleTimeout: 60_000,
        // piscina renices through the optional @napi-rs/nice and skips it when absent.
        ...(process.platform === 'win32' ? {} : { niceIncrement: 10 }),
        workerData: { backend: this.#o.backend },
      })
      this.#pool.on('error', (err: Error) =>
        this.#call(this.#o.onError, new ForecastWorkerError(err.message, { cause: err })),
      )
    }
    return this.#pool.run(task, {
      transferList: [task.x, task.y, task.heldX, task.heldY].map((a) => a.buffer as ArrayBuffer),
    })
  }

  #call<A>(fn: ((a: A) => void) | undefined, arg: A): void {
    if (fn === undefined) return
    try {
      fn(arg)
    } catch (err) {
      if (fn !== this.#o.onError)
        this.#call(this.#o.onError, err instanceof Error ? err : new Error(String(err)))
    }
  }
}

/** A loss from the worker, or null when it sent none. */
function num(v: unknown): number | null {
  return typeof v === 'number' ? v : null
}

function fmt(v: number): string {
  return Number.isFinite(v) ? v.toFixed(4) : String(v)
}
