/**
 * The forecast worker: a piscina task handler that runs the forecasting model off the main thread.
 *
 * Tasks (see ForecastTask):
 *   { kind: 'ping', version?, model? }                 -> Pong (warm-up: loads `model` if sent; the
 *                                                         reply carries its Dense stack, if it has one)
 *   { kind: 'predict', version, rows, features, model? } -> Float32Array, rows × outputs, transferred
 *                                                         | { kind: 'need-model', version, features }
 *
 * The worker caches one model, keyed by the pool's model version. A predict task for a version it
 * does not hold, and without `model`, gets 'need-model' back (with its features, cloned: the pool
 * transferred them here) and the pool resends the task with the artifacts. The result is the bare
 * probabilities under `Piscina.move`, which transfers only a top-level value: the pool knows which
 * version it asked for, and the worker never answers a predict with another version's model.
 */
import { move, workerData } from 'piscina'
import type { DenseLayer } from './dense.js'
import { FEATURE_COUNT } from './features.js'
import {
  type CompiledDense,
  compileDense,
  fromArtifacts,
  initBackend,
  type ModelArtifacts,
  type ModelMeta,
  normalize,
  predictRows,
  type tfl,
} from './model.js'

export interface PingTask {
  kind: 'ping'
  /**
   * The pool's warm-up sends its current model, so that the first predict neither needs the
   * 'need-model' round trip nor spends its deadline on the load. Best effort: a model that fails
   * to load here is left for that predict, which reports the failure.
   */
  version?: number
  model?: ModelArtifacts
}

export interface PredictTask {
  kind: 'predict'
  /** The pool's model version; the worker reloads when it holds another. */
  version: number
  rows: number
  /** rows × FEATURE_COUNT raw (unnormalised) features, row-major. */
  features: Float32Array
  /** Sent only after the worker answered 'need-model' for this version. */
  model?: ModelArtifacts
}

export type ForecastTask = PingTask | PredictTask

export interface NeedModel {
  kind: 'need-model'
  version: number
  /** The task's features, handed back so that the pool can resend them. */
  features: Float32Array
}

/**
 * The answer to a ping. With a model loaded for the ping's version, `dense` holds its layers when
 * they compiled to loops that agree with tfjs (compileDense): the pool may then run cheap batches
 * itself (pool.ts, `inlineMaxMacs`) without ever loading tfjs on its own thread.
 */
export interface Pong {
  kind: 'pong'
  version: number | null
  dense: DenseLayer[] | null
}

/** What `run()` resolves to: a pong, the probabilities (rows × outputs), or a request for the model. */
export type ForecastReply = Pong | Float32Array | NeedModel

export interface ForecastWorkerData {
  /**
   * The pool's `backend` option. 'auto' means wasm (cpu when wasm cannot start) here: model.ts's
   * initBackend('auto') would try @tensorflow/tfjs-node first, which fails in worker threads
   * (tfjs#2079, tfjs#8388: from the second worker thread on), so only an explicit 'tensorflow'
   * asks for it (initBackend('auto'): tfjs-node when it loads, else wasm, else cpu).
   */
  backend?: 'auto' | 'wasm' | 'cpu' | 'tensorflow'
}

interface Cached {
  version: number
  model: tfl.LayersModel
  meta: ModelMeta
  /** The model's Dense stack compiled to loops, or null to predict with tfjs. */
  fast: CompiledDense | null
}

// Initialised before the handler is exported (top-level await): piscina reports the worker ready
// only then, and between tasks it parks the thread in Atomics.wait, where a pending backend
// initialisation would never progress.
export const backend = await initBackend(workerBackend((workerData as ForecastWorkerData | null)?.backend))

/** What the worker asks initBackend for (see ForecastWorkerData.backend). */
export function workerBackend(requested: ForecastWorkerData['backend'] | undefined): 'auto' | 'wasm' | 'cpu' {
  switch (requested) {
    case 'tensorflow':
      return 'auto'
    case 'cpu':
      return 'cpu'
    default:
      return 'wasm'
  }
}

let cached: Cached | null = null

export default async function handle(task: ForecastTask): Promise<ForecastReply> {
  if (task?.kind === 'ping') {
    const v = task.version
    // Versions only grow: a ping queued behind a newer model (quick swaps) would load a model no
    // predict will ask for, and the current one again after it.
    if (task.model !== undefined && Number.isSafeInteger(v) && v! >= 1 && !((cached?.version ?? 0) >= v!))
      await load(v!, task.model).catch(() => {})
    const held = cached !== null && cached.version === v ? cached : null
    return { kind: 'pong', version: held?.version ?? null, dense: held?.fast?.layers ?? null }
  }
  if (task?.kind !== 'predict')
    throw new TypeError(
      `forecast worker: unknown task kind ${JSON.stringify((task as { kind?: unknown })?.kind)}`,
    )
  const { version, rows, features } = task
  if (!Number.isSafeInteger(version) || version < 1)
    throw new RangeError(`forecast worker: version must be a positive integer, got ${version}`)
  if (!Number.isSafeInteger(rows) || rows < 1)
    throw new RangeError(`forecast worker: rows must be a positive integer, got ${rows}`)
  if (!(features instanceof Float32Array) || features.length !== rows * FEATURE_COUNT)
    throw new RangeError(
      `forecast worker: features must be a Float32Array of rows × ${FEATURE_COUNT} = ${rows * FEATURE_COUNT} values, got ${
        features instanceof Float32Array ? features.length : typeof features
      }`,
    )
  if (cached?.version !== version) {
    if (task.model === undefined) return { kind: 'need-model', version, features }
    await load(version, task.model)
  }
  const { model, meta, fast } = cached!
  normalize(features, rows, meta.normalization)
  // The model's own forward pass as plain loops where it is a Dense stack (verified against tfjs
  // when the model loaded), tfjs otherwise.
  const probs = fast !== null ? fast.forward(features, rows) : predictRows(model, features, rows)
  // move() transfers the whole underlying buffer: copy a view so that only the result leaves.
  const own = probs.byteOffset === 0 && probs.byteLength === probs.buffer.byteLength ? probs : probs.slice()
  // The pool receives the Float32Array itself; move() only wraps it for the transfer.
  return move(own) as Float32Array
}

async function load(version: number, artifacts: ModelArtifacts): Promise<void> {
  const old = cached
  cached = null
  old?.model.dispose()
  const model = await fromArtifacts(artifacts)
  cached = { version, model, meta: artifacts.meta, fast: compileDense(model) }
}
