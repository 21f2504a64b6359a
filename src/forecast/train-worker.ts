/**
 * Piscina worker that fine-tunes a forecasting model on labelled rows (online.ts): it loads a copy
 * of the model, measures its loss on the held-back rows, trains it for a few epochs on the
 * training rows, measures again and returns both losses with the new weights. The caller decides
 * whether to swap. Normalisation stays the model's own: a fine-tune that moved it would silently
 * change what every other row means to the model.
 *
 * Training runs here, never on the monitor's thread (forecasting.md §5: 100–400 ms per step would
 * block inference). The pool runs one thread, reniced where the platform allows.
 */
import { workerData } from 'node:worker_threads'
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
  /** Seeds the per-epoch shuffle (default: the model's version), so a round can be replayed. */
  seed?: number
}

export interface FineTuneResult {
  artifacts: ModelArtifacts
  /** Mean binary cross-entropy over held-back rows x outputs, before and after. NaN if diverged. */
  oldLoss: number
  newLoss: number
  /** Live tensors in this worker after the task (for leak checks). */
  numTensors: number
  backend: string
}

/** Keras' epsilon: predictions are clipped to [eps, 1 - eps] before the log. */
const kEpsilon = 1e-7
const NO = MODEL_OUTPUTS.length

const ready = initBackend((workerData as { backend?: 'auto' | 'wasm' | 'cpu' } | null)?.backend ?? 'auto')

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
    const oldLoss = heldLoss(model, heldX, heldY, task.heldRows)
    const rand = mulberry32(task.seed ?? task.model.meta.version)
    const xs = new Float32Array(x.length)
    const ys = new Float32Array(task.rows * NO)
    const order = new Uint32Array(task.rows)
    for (let i = 0; i < task.rows; i++) order[i] = i
    for (let e = 0; e < task.epochs; e++) {
      // tfjs shuffles with Math.random; a seeded shuffle per epoch makes a round reproducible.
      shuffle(order, rand)
      for (let i = 0; i < task.rows; i++) {
        const r = order[i]!
        xs.set(x.subarray(r * FEATURE_COUNT, (r + 1) * FEATURE_COUNT), i * FEATURE_COUNT)
        ys.set(task.y.subarray(r * NO, (r + 1) * NO), i * NO)
      }
      const xt = tf.tensor2d(xs, [task.rows, FEATURE_COUNT])
      const yt = tf.tensor2d(ys, [task.rows, NO])
      try {
        await model.fit(xt, yt, { epochs: 1, batchSize: task.batchSize, shuffle: false, verbose: 0 })
      } finally {
        xt.dispose()
        yt.dispose()
      }
    }
    const newLoss = heldLoss(model, heldX, heldY, task.heldRows)
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
          heldRows: task.heldRows,
          oldLoss,
          newLoss,
          at: new Date().toISOString(),
        },
      },
    }
    delete meta.sha256
    out = { artifacts: await toArtifacts(model, meta), oldLoss, newLoss, numTensors: 0, backend }
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
}

/** Mean binary cross-entropy over rows x outputs, in float64, predicting in chunks. */
function heldLoss(
  model: Parameters<typeof predictRows>[0],
  x: Float32Array,
  y: Float32Array,
  rows: number,
): number {
  const chunk = 4096
  let sum = 0
  for (let r0 = 0; r0 < rows; r0 += chunk) {
    const n = Math.min(chunk, rows - r0)
    const p = predictRows(model, x.subarray(r0 * FEATURE_COUNT, (r0 + n) * FEATURE_COUNT), n)
    for (let i = 0; i < n * NO; i++) {
      const q = Math.min(1 - kEpsilon, Math.max(kEpsilon, p[i]!))
      sum -= y[r0 * NO + i]! >= 0.5 ? Math.log(q) : Math.log(1 - q)
    }
  }
  return sum / (rows * NO)
}

// mulberry32 (Tommy Ettinger, public domain): a small seeded PRNG for the shuffle.
function mulberry32(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

function shuffle(a: Uint32Array, rand: () => number): void {
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1))
    const v = a[i]!
    a[i] = a[j]!
    a[j] = v
  }
}
