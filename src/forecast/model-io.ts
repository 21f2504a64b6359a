/**
 * Model directories without TensorFlow.js: reading, checking and writing the files, so the main
 * thread can load and validate a model without importing tfjs (the workers run it).
 *
 *   model.json   topology + weights manifest (tfjs Layers format; the Python converter reads it)
 *   weights.bin  little-endian float32 weights in manifest order
 *   meta.json    what this monitor needs to trust it: format and feature-schema versions, the
 *                feature names and normalisation, the outputs, alarm thresholds, the calibrated
 *                detector coefficients, and the SHA-256 of the two files above
 *
 * meta.json is written last, through a temporary file and a rename, and names the checksums of
 * the others: a reader never accepts a half-written model. A model whose features, outputs or
 * shapes do not match this monitor is refused with a ModelMismatchError; one that cannot be read
 * or fails its checksum with a ModelLoadError. The caller then falls back to the baselines.
 */
import { createHash } from 'node:crypto'
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { ModelLoadError, ModelMismatchError } from '../errors.js'
import {
  DEFAULT_DETECTORS,
  type DetectorCoefficients,
  HARDWARE_FEATURES,
  type LogisticModel,
  NETWORK_FEATURES,
} from './detectors.js'
import { FEATURE_NAMES, FEATURE_SCHEMA_VERSION } from './features.js'
import { DEFAULT_SLO, type FailureType, MODEL_OUTPUTS, type ModelOutput, type SloOptions } from './spec.js'

/** One tensor of the weights manifest (tfjs' WeightsManifestEntry, the fields this monitor reads). */
export interface WeightEntry {
  name: string
  shape: number[]
  dtype: string
  [k: string]: unknown
}

export const MODEL_FORMAT = 'vllm-monitor-forecaster'
export const MODEL_FORMAT_VERSION = 1

export interface ModelMeta {
  format: typeof MODEL_FORMAT
  formatVersion: number
  name: string
  /** Increases with each retraining that replaced the previous model. */
  version: number
  featureSchemaVersion: number
  features: string[]
  outputs: ModelOutput[]
  normalization: { mean: number[]; std: number[] }
  /** Alarm threshold on each failure type's scoring-horizon head (spec.ts SCORING). */
  thresholds: Partial<Record<FailureType, number>>
  detectors: DetectorCoefficients
  slo: SloOptions
  createdAt: string
  /** Free-form: scenarios, seeds, sample counts, held-out metrics. */
  training?: Record<string, unknown>
  sha256?: { 'model.json': string; 'weights.bin': string }
}

/** A model in memory: what a worker needs to run it, and what a directory holds. */
export interface ModelArtifacts {
  meta: ModelMeta
  /** model.json's content. */
  modelJSON: {
    modelTopology: unknown
    format?: string
    generatedBy?: string
    convertedBy?: string | null
    trainingConfig?: unknown
    weightsManifest: { paths: string[]; weights: WeightEntry[] }[]
  }
  weights: ArrayBuffer
}

/** The default metadata for a model trained now on `normalization`. */
export function newMeta(name: string, normalization: ModelMeta['normalization']): ModelMeta {
  return {
    format: MODEL_FORMAT,
    formatVersion: MODEL_FORMAT_VERSION,
    name,
    version: 1,
    featureSchemaVersion: FEATURE_SCHEMA_VERSION,
    features: [...FEATURE_NAMES],
    outputs: MODEL_OUTPUTS.map((o) => ({ ...o })),
    normalization,
    thresholds: {},
    detectors: DEFAULT_DETECTORS,
    slo: { ...DEFAULT_SLO },
    createdAt: new Date().toISOString(),
  }
}

function sha256(buf: Uint8Array | string): string {
  return createHash('sha256').update(buf).digest('hex')
}

/** Writes a model directory; meta.json (with the checksums) last and atomically. */
export async function saveModel(dir: string, a: ModelArtifacts): Promise<void> {
  await mkdir(dir, { recursive: true })
  const modelJson = JSON.stringify(a.modelJSON)
  const weights = new Uint8Array(a.weights)
  await writeAtomic(join(dir, 'weights.bin'), weights)
  await writeAtomic(join(dir, 'model.json'), modelJson)
  const meta: ModelMeta = {
    ...a.meta,
    sha256: { 'model.json': sha256(modelJson), 'weights.bin': sha256(weights) },
  }
  await writeAtomic(join(dir, 'meta.json'), `${JSON.stringify(meta, null, 2)}\n`)
}

/** Writes a file through a temporary name and a rename: a reader sees the old file or the new one. */
export async function writeAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`
  await writeFile(tmp, data)
  await rename(tmp, path)
}

/**
 * Reads and checks a model directory. Throws ModelLoadError (missing, unreadable, bad JSON,
 * checksum mismatch) or ModelMismatchError (another format version, feature schema or outputs).
 */
export async function loadModelArtifacts(dir: string): Promise<ModelArtifacts> {
  const read = async (name: string): Promise<Buffer> => {
    try {
      return await readFile(join(dir, name))
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      throw new ModelLoadError(
        `model ${dir}: cannot read ${name} (${code === 'ENOENT' ? 'no such file' : (err as Error).message})`,
        { cause: err },
      )
    }
  }
  const metaBuf = await read('meta.json')
  const meta = parseJson(metaBuf, dir, 'meta.json') as ModelMeta
  checkMeta(meta, dir)
  const modelBuf = await read('model.json')
  const weightsBuf = await read('weights.bin')
  if (meta.sha256 !== undefined) {
    if (sha256(modelBuf) !== meta.sha256['model.json'])
      throw new ModelLoadError(
        `model ${dir}: model.json does not match the checksum in meta.json (corrupt or half-written)`,
      )
    if (sha256(weightsBuf) !== meta.sha256['weights.bin'])
      throw new ModelLoadError(
        `model ${dir}: weights.bin does not match the checksum in meta.json (corrupt or half-written)`,
      )
  }
  const modelJSON = parseJson(modelBuf, dir, 'model.json') as ModelArtifacts['modelJSON']
  if (typeof modelJSON !== 'object' || modelJSON === null || !Array.isArray(modelJSON.weightsManifest))
    throw new ModelLoadError(`model ${dir}: model.json has no weightsManifest (not a tfjs Layers model)`)
  const entries = modelJSON.weightsManifest.flatMap((g) => (Array.isArray(g?.weights) ? g.weights : [null]))
  const bad = entries.findIndex(
    (w) =>
      w === null ||
      typeof w !== 'object' ||
      !Array.isArray(w.shape) ||
      !(w.shape as unknown[]).every((d) => Number.isInteger(d) && (d as number) >= 0),
  )
  if (bad >= 0)
    throw new ModelLoadError(`model ${dir}: model.json weights manifest entry ${bad} has no valid shape`)
  const expected = modelJSON.weightsManifest
    .flatMap((g) => g.weights)
    .reduce((n, w) => n + 4 * (w.shape as number[]).reduce((a, b) => a * b, 1), 0)
  if (expected !== weightsBuf.byteLength)
    throw new ModelLoadError(
      `model ${dir}: weights.bin holds ${weightsBuf.byteLength} bytes but model.json describes ${expected}`,
    )
  const weights = weightsBuf.buffer.slice(
    weightsBuf.byteOffset,
    weightsBuf.byteOffset + weightsBuf.byteLength,
  ) as ArrayBuffer
  return { meta, modelJSON, weights }
}

function parseJson(buf: Buffer, dir: string, name: string): unknown {
  try {
    return JSON.parse(buf.toString('utf8'))
  } catch (err) {
    throw new ModelLoadError(`model ${dir}: ${name} is not valid JSON (${(err as Error).message})`, {
      cause: err,
    })
  }
}

/** Throws unless the metadata describes a model this monitor can feed and read. */
export function checkMeta(meta: ModelMeta, where: string): void {
  if (typeof meta !== 'object' || meta === null)
    throw new ModelLoadError(`model ${where}: meta.json is not an object`)
  if (meta.format !== MODEL_FORMAT)
    throw new ModelMismatchError(
      `model ${where}: format ${JSON.stringify(meta.format)}, expected "${MODEL_FORMAT}"`,
    )
  if (meta.formatVersion !== MODEL_FORMAT_VERSION)
    throw new ModelMismatchError(
      `model ${where}: format version ${meta.formatVersion}, this monitor reads version ${MODEL_FORMAT_VERSION}`,
    )
  if (meta.featureSchemaVersion !== FEATURE_SCHEMA_VERSION)
    throw new ModelMismatchError(
      `model ${where}: trained on feature schema ${meta.featureSchemaVersion}, this monitor computes schema ${FEATURE_SCHEMA_VERSION}; retrain it with \`vllm-monitor train\``,
    )
  if (!Array.isArray(meta.features) || meta.features.length !== FEATURE_NAMES.length)
    throw new ModelMismatchError(
      `model ${where}: ${Array.isArray(meta.features) ? meta.features.length : 'no'} features, this monitor computes ${FEATURE_NAMES.length}`,
    )
  const bad = meta.features.findIndex((f, i) => f !== FEATURE_NAMES[i])
  if (bad >= 0)
    throw new ModelMismatchError(
      `model ${where}: feature ${bad} is "${meta.features[bad]}", expected "${FEATURE_NAMES[bad]}"`,
    )
  if (
    !Array.isArray(meta.outputs) ||
    meta.outputs.length !== MODEL_OUTPUTS.length ||
    meta.outputs.some(
      (o, i) => o.failureType !== MODEL_OUTPUTS[i]!.failureType || o.horizonS !== MODEL_OUTPUTS[i]!.horizonS,
    )
  )
    throw new ModelMismatchError(
      `model ${where}: its outputs are not the ${MODEL_OUTPUTS.length} this monitor reads`,
    )
  const n = meta.normalization
  if (
    n === undefined ||
    !Array.isArray(n.mean) ||
    !Array.isArray(n.std) ||
    n.mean.length !== FEATURE_NAMES.length ||
    n.std.length !== FEATURE_NAMES.length ||
    ![...n.mean, ...n.std].every((v) => typeof v === 'number' && Number.isFinite(v))
  )
    throw new ModelLoadError(
      `model ${where}: meta.json normalization must hold ${FEATURE_NAMES.length} finite means and stds`,
    )
  if (meta.detectors === undefined || meta.detectors === null) meta.detectors = DEFAULT_DETECTORS
  for (const [which, names] of [
    ['hardware', HARDWARE_FEATURES],
    ['network', NETWORK_FEATURES],
  ] as const) {
    const d = (meta.detectors as unknown as Record<string, LogisticModel | undefined>)[which]
    if (
      typeof d !== 'object' ||
      d === null ||
      !Array.isArray(d.features) ||
      d.features.length !== names.length ||
      d.features.some((f, i) => f !== names[i]) ||
      !Array.isArray(d.weights) ||
      d.weights.length !== names.length ||
      ![...d.weights, d.bias].every((v) => typeof v === 'number' && Number.isFinite(v))
    )
      throw new ModelMismatchError(
        `model ${where}: meta.json detectors.${which} must have features [${names.join(', ')}] with as many finite weights and a finite bias`,
      )
  }
  if (meta.thresholds === undefined || meta.thresholds === null) meta.thresholds = {}
  for (const [type, v] of Object.entries(meta.thresholds))
    if (typeof v !== 'number' || !(v > 0 && v <= 1))
      throw new ModelLoadError(
        `model ${where}: meta.json thresholds.${type} must be a number in (0, 1], got ${JSON.stringify(v)}`,
      )
  if (meta.slo === undefined || meta.slo === null) meta.slo = { ...DEFAULT_SLO }
  const slo = meta.slo as unknown as Record<string, unknown>
  for (const k of ['ttftP99Ms', 'itlP99Ms', 'queueS'])
    if (typeof slo[k] !== 'number' || !((slo[k] as number) > 0))
      throw new ModelLoadError(`model ${where}: meta.json slo.${k} must be a positive number`)
}

/** Standardises rows in place with the model's normalisation (std floor 1e-6). */
export function normalize(x: Float32Array, rows: number, norm: ModelMeta['normalization']): void {
  const f = norm.mean.length
  for (let r = 0; r < rows; r++) {
    const o = r * f
    for (let j = 0; j < f; j++) {
      const v = (x[o + j]! - norm.mean[j]!) / Math.max(norm.std[j]!, 1e-6)
      x[o + j] = Number.isFinite(v) ? Math.max(-10, Math.min(10, v)) : 0
    }
  }
}

/**
 * Loads and checks a model directory for use with `forecast.model` / `--model`. Beyond the file
 * checks of loadModelArtifacts, `verify` (default true) builds the model in TensorFlow.js on this
 * thread once, so that a topology that does not load is refused here rather than in a worker.
 */
export async function loadModel(dir: string, options: { verify?: boolean } = {}): Promise<ModelArtifacts> {
  const a = await loadModelArtifacts(dir)
  if (options.verify !== false) {
    const tfModel = await import('./model.js')
    await tfModel.initBackend()
    const m = await tfModel.fromArtifacts(a)
    m.dispose()
  }
  return a
}
