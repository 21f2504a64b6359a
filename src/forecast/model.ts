/**
 * The forecasting model in TensorFlow.js: a small multi-task MLP (LayersModel), the backend it runs
 * on, and conversion between a LayersModel and the in-memory artifacts of a model directory
 * (model-io.ts reads and writes those without tfjs).
 *
 * Backends: wasm by default (SIMD, single thread on Node 20; forecasting.md §4.2), cpu when wasm
 * cannot start, and `@tensorflow/tfjs-node` when the user has installed it (an optional peer; its
 * install downloads libtensorflow, which many hosts cannot).
 */
import * as tf from '@tensorflow/tfjs-core'
import '@tensorflow/tfjs-backend-cpu'
import * as tfl from '@tensorflow/tfjs-layers'
import { ModelLoadError, ModelMismatchError } from '../errors.js'
import {
  DENSE_ACTIVATIONS,
  type DenseActivation,
  type DenseForward,
  type DenseLayer,
  denseForward,
} from './dense.js'
import { FEATURE_NAMES } from './features.js'
import type { ModelArtifacts, ModelMeta, WeightEntry } from './model-io.js'
import { MODEL_OUTPUTS } from './spec.js'

export * from './model-io.js'

let backendReady: Promise<string> | null = null

/**
 * Initialises the fastest backend available once per thread: tensorflow (tfjs-node, if the user
 * installed it), else wasm, else cpu. Returns the backend's name.
 */
export function initBackend(prefer: 'auto' | 'wasm' | 'cpu' = 'auto'): Promise<string> {
  backendReady ??= (async () => {
    if (prefer === 'auto') {
      try {
        // Optional peer: absent on most hosts. Importing it registers the 'tensorflow' backend.
        await import(/* @vite-ignore */ '@tensorflow/tfjs-node' as string)
        if (await tf.setBackend('tensorflow')) return 'tensorflow'
      } catch {
        // not installed, or its native library failed to load
      }
    }
    if (prefer !== 'cpu') {
      try {
        await import('@tensorflow/tfjs-backend-wasm')
        if (await tf.setBackend('wasm')) {
          await tf.ready()
          return 'wasm'
        }
      } catch {
        // wasm could not start: fall through to cpu
      }
    }
    await tf.setBackend('cpu')
    await tf.ready()
    return 'cpu'
  })()
  return backendReady
}

export interface BuildOptions {
  hidden?: number[]
  /** L2 penalty on the hidden kernels (default 1e-3). */
  l2?: number
  learningRate?: number
  seed?: number
}

/** A fresh, compiled model: features -> hidden ReLU layers -> one sigmoid per output. */
export function buildModel(options: BuildOptions = {}): tfl.LayersModel {
  const hidden = options.hidden ?? [64, 32]
  const seed = options.seed ?? 1
  const m = tfl.sequential()
  hidden.forEach((units, i) => {
    m.add(
      tfl.layers.dense({
        ...(i === 0 ? { inputShape: [FEATURE_NAMES.length] } : {}),
        units,
        activation: 'relu',
        kernelInitializer: tfl.initializers.glorotUniform({ seed: seed + i }),
        kernelRegularizer: tfl.regularizers.l2({ l2: options.l2 ?? 1e-3 }),
      }),
    )
    // No dropout: tfjs' seeded Dropout draws the same mask for every batch, and an unseeded one
    // would make training irreproducible. The L2 penalty and early stopping regularise instead.
  })
  m.add(
    tfl.layers.dense({
      units: MODEL_OUTPUTS.length,
      activation: 'sigmoid',
      kernelInitializer: tfl.initializers.glorotUniform({ seed: seed + 100 }),
    }),
  )
  compile(m, options.learningRate ?? 1e-3)
  return m
}

export function compile(m: tfl.LayersModel, learningRate: number): void {
  m.compile({ optimizer: tf.train.adam(learningRate), loss: 'binaryCrossentropy' })
}

/** Serialises a LayersModel (weights only, no optimizer state) with its metadata. */
export async function toArtifacts(model: tfl.LayersModel, meta: ModelMeta): Promise<ModelArtifacts> {
  let out: ModelArtifacts | null = null
  await model.save(
    tf.io.withSaveHandler(async (a) => {
      const wd = a.weightData
      const weights = Array.isArray(wd) ? tf.io.CompositeArrayBuffer.join(wd) : (wd as ArrayBuffer)
      out = {
        meta,
        modelJSON: {
          modelTopology: a.modelTopology,
          format: a.format ?? 'layers-model',
          generatedBy: a.generatedBy ?? `TensorFlow.js tfjs-layers v${tfl.version_layers}`,
          convertedBy: a.convertedBy ?? null,
          weightsManifest: [
            { paths: ['weights.bin'], weights: (a.weightSpecs ?? []) as unknown as WeightEntry[] },
          ],
        },
        weights: weights.slice(0),
      }
      return { modelArtifactsInfo: tf.io.getModelArtifactsInfoForJSON(a) }
    }),
  )
  if (out === null) throw new ModelLoadError('the model could not be serialised')
  return out
}

/** Rebuilds a compiled LayersModel from artifacts (shapes checked against the metadata). */
export async function fromArtifacts(a: ModelArtifacts, learningRate = 1e-3): Promise<tfl.LayersModel> {
  let model: tfl.LayersModel
  try {
    model = await tfl.loadLayersModel(
      tf.io.fromMemory({
        modelTopology: a.modelJSON.modelTopology as tf.io.ModelArtifacts['modelTopology'],
        weightSpecs: a.modelJSON.weightsManifest.flatMap(
          (g) => g.weights,
        ) as unknown as tf.io.WeightsManifestEntry[],
        weightData: a.weights,
      }),
    )
  } catch (err) {
    throw new ModelLoadError(
      `model "${a.meta.name}": the topology or weights do not load: ${(err as Error).message}`,
      {
        cause: err,
      },
    )
  }
  const inShape = model.inputs[0]?.shape
  const outShape = model.outputs[0]?.shape
  if (inShape?.[1] !== a.meta.features.length || outShape?.[1] !== a.meta.outputs.length) {
    model.dispose()
    throw new ModelMismatchError(
      `model "${a.meta.name}": its layers take ${inShape?.[1]} features and give ${outShape?.[1]} outputs, ` +
        `but its meta.json lists ${a.meta.features.length} and ${a.meta.outputs.length}`,
    )
  }
  compile(model, learningRate)
  return model
}

/** Runs the model on `rows` normalised feature rows; returns rows x outputs probabilities. */
export function predictRows(model: tfl.LayersModel, x: Float32Array, rows: number): Float32Array {
  const f = model.inputs[0]!.shape[1] as number
  return tf.tidy(() => {
    const input = tf.tensor2d(x, [rows, f])
    const y = model.predict(input) as tf.Tensor
    return y.dataSync() as Float32Array
  })
}

export type { DenseForward } from './dense.js'

/** A Dense stack compiled to loops (see compileDense): the forward pass and the layers it runs. */
export interface CompiledDense {
  forward: DenseForward
  layers: DenseLayer[]
}

/**
 * The forward pass of a stack of Dense layers, compiled to plain loops over its weights, or null
 * for any other architecture. For a model this small (about 10k multiply-adds a row) a tfjs
 * predict costs far more in op dispatch than in arithmetic: at a 1 Hz tick, each call meets a
 * cold engine and takes about a millisecond, where the loops take tens of microseconds. The
 * result is checked against tfjs on random rows; any disagreement above 1e-4 returns null, and
 * the caller keeps using tfjs.
 */
export function compileDense(model: tfl.LayersModel): CompiledDense | null {
  const layers: DenseLayer[] = []
  for (const layer of model.layers) {
    const cls = layer.getClassName()
    if (cls === 'Dropout') continue
    if (cls !== 'Dense') return null
    const cfg = layer.getConfig() as { activation?: string; useBias?: boolean }
    const act = (cfg.activation ?? 'linear') as DenseActivation
    if (!DENSE_ACTIVATIONS.includes(act)) return null
    const ws = layer.getWeights()
    const kernel = ws[0]
    if (kernel === undefined || kernel.shape.length !== 2) return null
    const [inDim, outDim] = kernel.shape as [number, number]
    const w = kernel.dataSync() as Float32Array
    const b = ws[1] !== undefined ? (ws[1].dataSync() as Float32Array) : new Float32Array(outDim)
    layers.push({ w: Float32Array.from(w), b: Float32Array.from(b), inDim, outDim, act })
  }
  if (layers.length === 0) return null
  const forward = denseForward(layers)
  // Checked against tfjs on random rows before it is trusted.
  const inDim = layers[0]!.inDim
  const probe = new Float32Array(8 * inDim)
  let seed = 12345
  for (let i = 0; i < probe.length; i++) {
    seed = (seed * 1103515245 + 12345) >>> 0
    probe[i] = (seed / 4294967296) * 4 - 2
  }
  const ref = predictRows(model, probe, 8)
  const got = forward(probe, 8)
  for (let i = 0; i < ref.length; i++) if (!(Math.abs(ref[i]! - got[i]!) <= 1e-4)) return null
  return { forward, layers }
}

export { tf, tfl }
