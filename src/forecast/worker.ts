/**
 * The forecast worker: a piscina task handler that runs the forecasting model off the main thread.
 *
 * Tasks (see ForecastTask):
 *   { kind: 'ping' }                                   -> 'pong' (warm-up and health check)
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
import { FEATURE_COUNT } from './features.js'
import {
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

/** What `run()` resolves to: 'pong', the probabilities (rows × outputs), or a request for the model. */
export type ForecastReply = 'pong' | Float32Array | NeedModel

export interface ForecastWorkerData {
  backend?: 'auto' | 'wasm' | 'cpu'
}

interface Cached {
  version: number
  model: tfl.LayersModel
  meta: ModelMeta
}

// Initialised before the handler is exported (top-level await): piscina reports the worker ready
// only then, and between tasks it parks the thread in Atomics.wait, where a pending backend
// initialisation would never progress.
export const backend = await initBackend((workerData as ForecastWorkerData | null)?.backend ?? 'auto')

let cached: Cached | null = null

export default async function handle(task: ForecastTask): Promise<ForecastReply> {
  if (task?.kind === 'ping') return 'pong'
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
  const { model, meta } = cached!
  normalize(features, rows, meta.normalization)
  const probs = predictRows(model, features, rows)
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
  cached = { version, model, meta: artifacts.meta }
}
