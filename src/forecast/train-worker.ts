/**
 * Piscina worker that fine-tunes a forecasting model on labelled rows (online.ts): it loads a copy
 * of the model, measures its loss on the held-back rows, trains it for a few epochs on the
 * training rows, measures again and returns both losses with the new weights. The caller decides
 * whether to swap. Normalisation stays the model's own: a fine-tune that moved it would silently
 * change what every other row means to the model.
 *
 * Failures are rare, so live rows are nearly all negative. Two things keep a fine-tune from
 * learning to say "no failure" everywhere: the positive rows are repeated until they make up
 * about `positiveShare` of each epoch, as offline training does (train.ts), and the held-back loss
 * is class-balanced: per head, the mean cross-entropy over the positive rows and the one over the
 * negative rows count alike, so a model that lowers every probability pays on the positives what
 * it gains on the negatives. Plain cross-entropy is returned as well, for information.
 *
 * Training runs here, never on the monitor's thread (forecasting.md §5: 100–400 ms per step would
 * block inference). The pool runs one thread, reniced where the platform allows.
 */

import { workerData } from 'node:worker_threads'
import { createRng } from '../sim/random.js'
import { FEATURE_COUNT } from './features.js'
import {
  fromArtifacts,
  initBackend,
  type ModelArtifacts,
  normalize,
  predictRows,
  tf,
  toArtifacts,
} from './model.js'
import { MODEL_OUTPUTS } from './spec.js'

export interface FineTuneTask {
  kind: 'fine-tune'
  model: ModelArtifacts
  /** rows x FEATURE_COUNT raw (unnormalised) features. */
  x: Float32Array
  /** rows x MODEL_OUTPUTS labels, 0 or 1. */
  y: Float32Array
  rows: number
  heldX: Float32Array
  heldY: Float32Array
  heldRows: number
  epochs: number
  learningRate: number
  batchSize: number
  /**
   * Share of the rows of an epoch that have a positive label on some head after the positive rows
   * are repeated (0 <= x < 1; default 0.1; 0 = as they come). Rows are only ever added: a share
   * already above it stays as it is.
   */
  positiveShare?: number
  /** Seeds the repeats and the per-epoch shuffle (default: the model's version), so a round can be replayed. */
  seed?: number
}

export interface FineTuneResult {
  artifacts: ModelArtifacts
  /**
   * Class-balanced held-back loss, before and after (see `heldLosses`): per head, the mean of the
   * mean cross-entropy over positive rows and the one over negative rows; averaged over the heads
   * with a positive held-back row. NaN if the model diverged or no head has a positive.
   */
  oldLoss: number
  newLoss: number
  /** Plain mean binary cross-entropy over held-back rows x outputs, before and after (for information). */
  oldBce: number
  newBce: number
  /** Rows of an epoch: training rows plus the repeats of positive rows. */
  epochRows: number
  /** Live tensors in this worker after the task (for leak checks). */
  numTensors: number
  backend: string
}

/** Keras' epsilon: predictions are clipped to [eps, 1 - eps] before the log. */
const kEpsilon = 1e-7
const NO = MODEL_OUTPUTS.length

// tfjs-node only when asked for by name: it is known to fail in worker threads (forecasting.md
// §4.2; tfjs#2079, #8388), and this is one. 'auto' means wasm, falling back to cpu.
const asked = (workerData as { backend?: 'auto' | 'wasm' | 'cpu' | 'tensorflow' } | null)?.backend ?? 'auto'
const ready = initBackend(asked === 'tensorflow' ? 'auto' : asked === 'cpu' ? 'cpu' : 'wasm')

export default async function fineTune(task: FineTuneTask): Promise<FineTuneResult> {
  const backend = await ready
  check(task)
  const norm = task.model.meta.normalization
  const x = task.x.slice(0, task.rows * FEATURE_COUNT)
  normalize(x, task.rows, norm)
  const heldX = task.heldX.slice(0, task.heldRows * FEATURE_COUNT)
  normalize(heldX, task.heldRows, norm)
  const heldY = task.heldY.subarray(0, task.heldRows * NO)

  const model = await fromArtifacts(task.model, task.learningRate)
  let out: FineTuneResult
  try {
    const before = heldLosses(model, heldX, heldY, task.heldRows)
    const rng = createRng(`online-round/${task.seed ?? task.model.meta.version}`)
    const order = epochRows(task.y, task.rows, task.positiveShare ?? 0.1, () => rng.next())
    const n = order.length
    const xs = new Float32Array(n * FEATURE_COUNT)
    const ys = new Float32Array(n * NO)
    for (let e = 0; e < task.epochs; e++) {
      // tfjs shuffles with Math.random; a seeded shuffle per epoch makes a round reproducible.
      rng.shuffle(order)
      for (let i = 0; i < n; i++) {
        const r = order[i]!
        xs.set(x.subarray(r * FEATURE_COUNT, (r + 1) * FEATURE_COUNT), i * FEATURE_COUNT)
        ys.set(task.y.subarray(r * NO, (r + 1) * NO), i * NO)
      }
      const xt = tf.tensor2d(xs, [n, FEATURE_COUNT])
      const yt = tf.tensor2d(ys, [n, NO])
      try {
        await model.fit(xt, yt, { epochs: 1, batchSize: task.batchSize, shuffle: false, verbose: 0 })
      } finally {
        xt.dispose()
        yt.dispose()
      }
    }
    const after = heldLosses(model, heldX, heldY, task.heldRows)
    const old = task.model.meta
    const meta = {
      ...old,
      version: old.version + 1,
      createdAt: new Date().toISOString(),
      training: {
        ...old.training,
        onlineRounds: Number(old.training?.onlineRounds ?? 0) + 1,
        lastRound: {
          rows: task.rows,
          epochRows: n,
          heldRows: task.heldRows,
          oldLoss: before.balanced,
          newLoss: after.balanced,
          oldBce: before.bce,
          newBce: after.bce,
          at: new Date().toISOString(),
        },
      },
    }
    delete meta.sha256
    out = {
      artifacts: await toArtifacts(model, meta),
      oldLoss: before.balanced,
      newLoss: after.balanced,
      oldBce: before.bce,
      newBce: after.bce,
      epochRows: n,
      numTensors: 0,
      backend,
    }
  } finally {
    // compile() hands the model an Adam instance it does not own: LayersModel.dispose() leaves
    // the optimizer's moment variables alive unless they are disposed here.
    model.optimizer?.dispose()
    model.dispose()
  }
  out.numTensors = tf.memory().numTensors
  return out
}

function check(t: FineTuneTask): void {
  if (t === null || typeof t !== 'object' || t.kind !== 'fine-tune')
    throw new TypeError('task.kind must be "fine-tune"')
  if (!Number.isInteger(t.rows) || t.rows < 1) throw new TypeError('task.rows must be a positive integer')
  if (!Number.isInteger(t.heldRows) || t.heldRows < 1)
    throw new TypeError('task.heldRows must be a positive integer')
  if (!(t.x instanceof Float32Array) || t.x.length < t.rows * FEATURE_COUNT)
    throw new TypeError(`task.x must be a Float32Array of rows x ${FEATURE_COUNT}`)
  if (!(t.y instanceof Float32Array) || t.y.length < t.rows * NO)
    throw new TypeError(`task.y must be a Float32Array of rows x ${NO}`)
  if (!(t.heldX instanceof Float32Array) || t.heldX.length < t.heldRows * FEATURE_COUNT)
    throw new TypeError(`task.heldX must be a Float32Array of heldRows x ${FEATURE_COUNT}`)
  if (!(t.heldY instanceof Float32Array) || t.heldY.length < t.heldRows * NO)
    throw new TypeError(`task.heldY must be a Float32Array of heldRows x ${NO}`)
  if (!Number.isInteger(t.epochs) || t.epochs < 1)
    throw new TypeError('task.epochs must be a positive integer')
  if (!Number.isInteger(t.batchSize) || t.batchSize < 1)
    throw new TypeError('task.batchSize must be a positive integer')
  if (!(t.learningRate > 0) || !Number.isFinite(t.learningRate))
    throw new TypeError('task.learningRate must be a positive number')
  if (
    t.positiveShare !== undefined &&
    !(typeof t.positiveShare === 'number' && t.positiveShare >= 0 && t.positiveShare < 1)
  )
    throw new TypeError('task.positiveShare must be a number >= 0 and < 1')
}

/**
 * The row indices of an epoch: every training row once, and the rows with a positive label on some
 * head repeated until they make up about `share` of the whole (as train.ts does offline). Where the
 * repeats do not divide evenly among the positive rows, `rand` picks which get one more.
 */
export function epochRows(y: Float32Array, rows: number, share: number, rand: () => number): Uint32Array {
  const pos: number[] = []
  for (let r = 0; r < rows; r++) {
    let any = false
    for (let k = 0; k < NO; k++) if (y[r * NO + k]! >= 0.5) any = true
    if (any) pos.push(r)
  }
  const neg = rows - pos.length
  // Positive rows wanted in all: share = P / (P + neg).
  const wanted = pos.length === 0 || share <= 0 ? 0 : Math.round((share * neg) / (1 - share))
  const extra = Math.max(0, wanted - pos.length)
  const order = new Uint32Array(rows + extra)
  for (let i = 0; i < rows; i++) order[i] = i
  if (extra === 0) return order
  const each = Math.floor(extra / pos.length)
  let at = rows
  for (let c = 0; c < each; c++) for (const r of pos) order[at++] = r
  // The remainder: a seeded partial Fisher-Yates draw without replacement.
  const rest = extra - each * pos.length
  for (let i = 0; i < rest; i++) {
    const j = i + Math.floor(rand() * (pos.length - i))
    const v = pos[j]!
    pos[j] = pos[i]!
    pos[i] = v
    order[at++] = v
  }
  return order
}

/**
 * Held-back losses of a model, in float64, predicting in chunks. `bce`: mean binary cross-entropy
 * over rows x outputs. `balanced`: per head, the mean cross-entropy over its positive rows and the
 * one over its negative rows, averaged (a head with only one kind counts that kind alone); then the
 * mean over the heads that have a positive row (NaN when none has). A NaN prediction makes both NaN.
 */
function heldLosses(
  model: Parameters<typeof predictRows>[0],
  x: Float32Array,
  y: Float32Array,
  rows: number,
): { balanced: number; bce: number } {
  const chunk = 4096
  const sum = [new Float64Array(NO), new Float64Array(NO)] as const
  const count = [new Float64Array(NO), new Float64Array(NO)] as const
  let total = 0
  for (let r0 = 0; r0 < rows; r0 += chunk) {
    const n = Math.min(chunk, rows - r0)
    const p = predictRows(model, x.subarray(r0 * FEATURE_COUNT, (r0 + n) * FEATURE_COUNT), n)
    for (let i = 0; i < n * NO; i++) {
      const q = Math.min(1 - kEpsilon, Math.max(kEpsilon, p[i]!))
      const pos = y[r0 * NO + i]! >= 0.5 ? 1 : 0
      const l = pos ? -Math.log(q) : -Math.log(1 - q)
      const k = i % NO
      sum[pos][k]! += l
      count[pos][k]!++
      total += l
    }
  }
  let heads = 0
  let balanced = 0
  for (let k = 0; k < NO; k++) {
    const np = count[1][k]!
    const nn = count[0][k]!
    if (np === 0) continue
    const lp = sum[1][k]! / np
    balanced += nn === 0 ? lp : (lp + sum[0][k]! / nn) / 2
    heads++
  }
  // A NaN on a head without positives would not reach `balanced` otherwise.
  if (heads === 0 || Number.isNaN(total)) balanced = Number.NaN
  else balanced /= heads
  return { balanced, bce: total / (rows * NO) }
}
