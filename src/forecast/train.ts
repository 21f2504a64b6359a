/**
 * Offline training: simulate the scenario suite (driven by the real request trace), build the
 * datasets, fit the feature normalisation, train the MLP, fit the detectors, choose each alarm
 * threshold on validation runs, score model and baselines on held-out runs, and write the model
 * directory with its card. Resumable: datasets are cached under `<out>/.cache`, and the model is
 * checkpointed after every epoch under `<out>/.checkpoint` (weights only: Adam's moments restart).
 */
import { existsSync } from 'node:fs'
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { deserialize, serialize } from 'node:v8'
import { InvalidOptionError, SimScenarioError } from '../errors.js'
import { loadTraceCsv, type TraceRow } from '../sim/arrivals.js'
import { createRng } from '../sim/random.js'
import { SCENARIO_NAMES } from '../sim/scenarios.js'
import { detectorLabels, labelRows, suiteDataset, type TraceDataset, trainableRows } from './dataset.js'
import { DEFAULT_DETECTORS, fitLogistic, HARDWARE_FEATURES, NETWORK_FEATURES } from './detectors.js'
import { scoreDatasets, type TypeScore } from './evaluate.js'
import { FEATURE_COUNT, FEATURE_SCHEMA_VERSION } from './features.js'
import {
  buildModel,
  fromArtifacts,
  initBackend,
  type ModelArtifacts,
  type ModelMeta,
  newMeta,
  saveModel,
  tf,
  type tfl,
  toArtifacts,
  writeAtomic,
} from './model.js'
import { alarmHead, modelSource, predictDataset } from './predictors.js'
import { evaluateRuns } from './report.js'
import { FAILURE_TYPES, type FailureType, MODEL_OUTPUTS } from './spec.js'
import { SUITE } from './suite.js'

export { SUITE }

export interface TrainProgress {
  phase: 'data' | 'train' | 'evaluate' | 'save'
  done: number
  total: number
  detail: string
}

export interface TrainOptions {
  outDir: string
  scenarios?: readonly string[]
  trainSeeds?: readonly number[]
  validationSeeds?: readonly number[]
  testSeeds?: readonly number[]
  /** Arrivals for the simulated load (default: the Azure code trace in data/traces). */
  arrivals?: readonly TraceRow[]
  arrivalsName?: string
  epochs?: number
  batchSize?: number
  learningRate?: number
  hidden?: number[]
  /** L2 penalty on the hidden kernels (default 1e-3). */
  l2?: number
  seed?: number
  name?: string
  /** Share of rows with a positive label after repeating them (default 0.1; 0 = as they come). */
  positiveShare?: number
  /** Start over instead of resuming from `<out>/.cache` and `<out>/.checkpoint`. */
  fresh?: boolean
  onProgress?: (p: TrainProgress) => void
}

export interface TrainResult {
  artifacts: ModelArtifacts
  heldOut: TypeScore[]
  table: string
  backend: string
  resumedFromEpoch: number
}

const NO = MODEL_OUTPUTS.length
/** Bumped when a dataset's content changes for the same scenario and seed: old caches are ignored. */
const DATASET_VERSION = 6

export async function train(options: TrainOptions): Promise<TrainResult> {
  const scenarios = options.scenarios ?? SUITE
  for (const s of scenarios)
    if (!SCENARIO_NAMES.includes(s))
      throw new SimScenarioError(
        `unknown scenario ${JSON.stringify(s)}; expected some of ${SCENARIO_NAMES.join(', ')}`,
      )
  const share = options.positiveShare ?? 0.1
  if (!(share >= 0 && share < 1))
    throw new InvalidOptionError(`positiveShare must be in [0, 1) (got ${share})`)
  const trainSeeds = options.trainSeeds ?? [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 21, 22]
  const valSeeds = options.validationSeeds ?? [11, 12, 13, 14, 15, 16, 17, 18, 19, 20]
  const testSeeds = options.testSeeds ?? [101, 102, 103, 104, 105]
  const epochs = options.epochs ?? 30
  const batchSize = options.batchSize ?? 256
  const lr = options.learningRate ?? 1e-3
  const progress = options.onProgress ?? (() => {})
  const out = options.outDir
  const cacheDir = join(out, '.cache')
  const ckptDir = join(out, '.checkpoint')
  if (options.fresh === true) {
    await rm(cacheDir, { recursive: true, force: true })
    await rm(ckptDir, { recursive: true, force: true })
  }
  await mkdir(cacheDir, { recursive: true })
  const backend = await initBackend()

  // 1. Data.
  const jobs = [
    ...trainSeeds.map((seed) => ({ split: 'train' as const, seed })),
    ...valSeeds.map((seed) => ({ split: 'val' as const, seed })),
    ...testSeeds.map((seed) => ({ split: 'test' as const, seed })),
  ].flatMap((j) => scenarios.map((s) => ({ ...j, scenario: s })))
  const sets = { train: [] as TraceDataset[], val: [] as TraceDataset[], test: [] as TraceDataset[] }
  const arrivalsTag = options.arrivalsName ?? 'default'
  const baseRows = options.arrivals ?? loadTraceCsv()
  let done = 0
  for (const j of jobs) {
    const file = join(
      cacheDir,
      // The split is part of the name: the same seed in two splits replays other traffic (and
      // only training and validation runs carry bursts).
      `${j.scenario}-${j.split}-seed${j.seed}-${safe(arrivalsTag)}-f${FEATURE_SCHEMA_VERSION}d${DATASET_VERSION}.v8`,
    )
    let ds: TraceDataset
    if (existsSync(file)) ds = deserialize(await readFile(file)) as TraceDataset
    else {
      ds = await suiteDataset(j.scenario, j.seed, { rows: baseRows, split: j.split })
      await writeFile(file, serialize(ds))
    }
    sets[j.split].push(ds)
    progress({ phase: 'data', done: ++done, total: jobs.length, detail: `${j.scenario} seed ${j.seed}` })
  }

  // 2. Normalisation over the serving rows of the training runs.
  const { x, y, rows } = trainingRows(sets.train)
  const mean = new Array<number>(FEATURE_COUNT).fill(0)
  const sq = new Array<number>(FEATURE_COUNT).fill(0)
  for (let r = 0; r < rows; r++)
    for (let j = 0; j < FEATURE_COUNT; j++) {
      const v = x[r * FEATURE_COUNT + j]!
      mean[j]! += v
      sq[j]! += v * v
    }
  for (let j = 0; j < FEATURE_COUNT; j++) {
    mean[j]! /= Math.max(rows, 1)
    sq[j] = Math.sqrt(Math.max(sq[j]! / Math.max(rows, 1) - mean[j]! ** 2, 0))
  }
  const std = sq.map((s) => (s < 1e-6 ? 1 : s))
  const meta = newMeta(options.name ?? 'forecaster', { mean, std })

  // 3. The model, resumed from the last finished epoch when a checkpoint matches this run.
  // Failures are rare. Repeating the positive rows helps the rarest heads learn at all, but every
  // repeat inflates the probabilities of rows that merely look like the start of a failure (and
  // the alarm thresholds then sit at 0.99): keep the share modest (`positiveShare`).
  const pos: number[] = []
  for (let r = 0; r < rows; r++) {
    let any = 0
    for (let k = 0; k < NO; k++) any |= y[r * NO + k]!
    if (any) pos.push(r)
  }
  const runKey = JSON.stringify({
    scenarios,
    trainSeeds,
    epochs,
    batchSize,
    lr,
    hidden: options.hidden,
    l2: options.l2,
    arrivalsTag,
    rows,
    share,
  })
  let model: tfl.LayersModel
  let startEpoch = 0
  const state = await readJson(join(ckptDir, 'state.json'))
  if (state !== null && state.runKey === runKey && typeof state.epoch === 'number') {
    const a = deserialize(await readFile(join(ckptDir, 'model.v8'))) as ModelArtifacts
    model = await fromArtifacts(a, lr)
    startEpoch = state.epoch
  } else {
    model = buildModel({
      ...(options.hidden ? { hidden: options.hidden } : {}),
      learningRate: lr,
      seed: options.seed ?? 1,
    })
  }
  const xn = x.slice()
  for (let r = 0; r < rows; r++)
    for (let j = 0; j < FEATURE_COUNT; j++) {
      const v = (xn[r * FEATURE_COUNT + j]! - mean[j]!) / std[j]!
      xn[r * FEATURE_COUNT + j] = Math.max(-10, Math.min(10, v))
    }
  const rep =
    pos.length === 0
      ? 0
      : Math.max(0, Math.round((share * (rows - pos.length)) / ((1 - share) * pos.length)) - 1)
  const total = rows + rep * pos.length
  const bx = new Float32Array(total * FEATURE_COUNT)
  const by = new Float32Array(total * NO)
  bx.set(xn)
  by.set(y)
  let at = rows
  for (let k = 0; k < rep; k++)
    for (const r of pos) {
      bx.set(xn.subarray(r * FEATURE_COUNT, (r + 1) * FEATURE_COUNT), at * FEATURE_COUNT)
      by.set(y.subarray(r * NO, (r + 1) * NO), at * NO)
      at++
    }
  await mkdir(ckptDir, { recursive: true })
  const val = normalizedRows(sets.val, mean, std)
  let bestLoss =
    typeof state?.bestLoss === 'number' && startEpoch > 0 ? state.bestLoss : Number.POSITIVE_INFINITY
  let bestEpoch = typeof state?.bestEpoch === 'number' && startEpoch > 0 ? state.bestEpoch : 0
  // Shuffled here with a seeded generator (tfjs shuffles with Math.random): the same command
  // trains the same model.
  const rng = createRng(`training-shuffle/${options.seed ?? 1}`)
  const order = new Uint32Array(total)
  const sx = new Float32Array(total * FEATURE_COUNT)
  const sy = new Float32Array(total * NO)
  for (let e = 0; e < epochs; e++) {
    for (let i = 0; i < total; i++) order[i] = i
    rng.shuffle(order)
    // Epochs before a resumed checkpoint still draw their permutation, so a resumed run matches.
    if (e < startEpoch) continue
    for (let i = 0; i < total; i++) {
      const r = order[i]!
      sx.set(bx.subarray(r * FEATURE_COUNT, (r + 1) * FEATURE_COUNT), i * FEATURE_COUNT)
      sy.set(by.subarray(r * NO, (r + 1) * NO), i * NO)
    }
    const xt = tf.tensor2d(sx, [total, FEATURE_COUNT])
    const yt = tf.tensor2d(sy, [total, NO])
    const h = await model.fit(xt, yt, { epochs: 1, batchSize, shuffle: false, verbose: 0 })
    xt.dispose()
    yt.dispose()
    const loss = Number(h.history.loss?.[0] ?? Number.NaN)
    const valLoss = validationLoss(model, val)
    const a = await toArtifacts(model, meta)
    await writeAtomic(join(ckptDir, 'model.v8'), serialize(a))
    if (valLoss < bestLoss) {
      bestLoss = valLoss
      bestEpoch = e + 1
      await writeAtomic(join(ckptDir, 'best.v8'), serialize(a))
    }
    await writeAtomic(
      join(ckptDir, 'state.json'),
      JSON.stringify({ runKey, epoch: e + 1, loss, bestLoss, bestEpoch }),
    )
    progress({
      phase: 'train',
      done: e + 1,
      total: epochs,
      detail: `epoch ${e + 1}/${epochs} loss ${loss.toFixed(4)} validation ${valLoss.toFixed(4)}`,
    })
  }
  val?.x.dispose()
  val?.y.dispose()
  // Early stopping: the epoch with the lowest validation loss is the model.
  if (bestEpoch > 0 && bestEpoch < epochs && existsSync(join(ckptDir, 'best.v8'))) {
    model.dispose()
    model = await fromArtifacts(deserialize(await readFile(join(ckptDir, 'best.v8'))) as ModelArtifacts, lr)
  }

  // 4. Detectors, fitted on every row (detection is scored after the failure too).
  meta.detectors = {
    hardware: fitDetector(sets.train, 'hardware-failure', 'hardware') ?? DEFAULT_DETECTORS.hardware,
    network: fitDetector(sets.train, 'network-failure', 'network') ?? DEFAULT_DETECTORS.network,
  }

  // 5. Thresholds on the validation runs.
  progress({ phase: 'evaluate', done: 0, total: 2, detail: 'choosing alarm thresholds' })
  const valProbs = new Map(sets.val.map((ds) => [ds, predictDataset(model, meta, ds)]))
  for (const type of FAILURE_TYPES) {
    if (alarmHead(type) < 0) continue
    meta.thresholds[type] = chooseThreshold(type, sets.val, meta, valProbs)
  }

  // 6. Held-out scores beside the baselines'.
  progress({ phase: 'evaluate', done: 1, total: 2, detail: 'scoring held-out runs' })
  const report = evaluateRuns(sets.test, model, meta)
  const heldOut = report.scores
  const table = report.table
  meta.training = {
    backend,
    scenarios,
    trainSeeds,
    validationSeeds: valSeeds,
    testSeeds,
    arrivals: arrivalsTag,
    trainingRows: rows,
    positiveRows: pos.length,
    epochs,
    batchSize,
    learningRate: lr,
    heldOut: heldOut.map(({ leadsS: _l, ...s }) => s),
  }
  const artifacts = await toArtifacts(model, meta)
  model.dispose()
  progress({ phase: 'save', done: 0, total: 1, detail: out })
  await saveModel(out, artifacts)
  await writeFile(join(out, 'MODEL_CARD.md'), modelCard(artifacts.meta, table, report.perRun, sets))
  progress({ phase: 'save', done: 1, total: 1, detail: out })
  return { artifacts, heldOut, table, backend, resumedFromEpoch: startEpoch }
}

/** The runs' trainable rows, normalised, as tensors (for the validation loss). */
function normalizedRows(
  sets: readonly TraceDataset[],
  mean: number[],
  std: number[],
): { x: tf.Tensor2D; y: tf.Tensor2D } | null {
  const { x, y, rows } = trainingRows(sets)
  if (rows === 0) return null
  for (let r = 0; r < rows; r++)
    for (let j = 0; j < FEATURE_COUNT; j++) {
      const v = (x[r * FEATURE_COUNT + j]! - mean[j]!) / std[j]!
      x[r * FEATURE_COUNT + j] = Math.max(-10, Math.min(10, v))
    }
  return { x: tf.tensor2d(x, [rows, FEATURE_COUNT]), y: tf.tensor2d(y, [rows, NO]) }
}

/**
 * The loss early stopping watches: per alarm head (each failure type's scoring horizon), the
 * class-balanced binary cross-entropy (the mean over positive rows and over negative rows,
 * averaged), then the mean over heads that have positives. Plain BCE would be ruled by the
 * frequent SLO and queue labels and stop before the rare OOM head has learned anything.
 */
function validationLoss(model: tfl.LayersModel, val: { x: tf.Tensor2D; y: tf.Tensor2D } | null): number {
  if (val === null) return Number.NaN
  const p = tf.tidy(
    () => tf.clipByValue(model.predict(val.x) as tf.Tensor, 1e-7, 1 - 1e-7).dataSync() as Float32Array,
  )
  const y = val.y.dataSync() as Float32Array
  const rows = val.y.shape[0]
  let sum = 0
  let heads = 0
  for (const type of FAILURE_TYPES) {
    const k = alarmHead(type)
    if (k < 0) continue
    let pos = 0
    let posN = 0
    let neg = 0
    let negN = 0
    for (let r = 0; r < rows; r++) {
      const v = p[r * NO + k]!
      if (y[r * NO + k]! > 0.5) {
        pos -= Math.log(v)
        posN++
      } else {
        neg -= Math.log(1 - v)
        negN++
      }
    }
    if (posN === 0) continue
    sum += negN === 0 ? pos / posN : (pos / posN + neg / negN) / 2
    heads++
  }
  return heads === 0 ? Number.NaN : sum / heads
}

/** Serving rows of the runs that are fit to train on (trainableRows), with their labels. */
export function trainingRows(sets: readonly TraceDataset[]): {
  x: Float32Array
  y: Float32Array
  rows: number
} {
  const labelled = sets.map((ds) => {
    const labels = labelRows(ds)
    const keep = trainableRows(ds, labels)
    for (let r = 0; r < ds.rows; r++) keep[r]! &= ds.serving[r]!
    return { ds, labels, keep }
  })
  let rows = 0
  for (const { keep } of labelled) for (const v of keep) rows += v
  const x = new Float32Array(rows * FEATURE_COUNT)
  const y = new Float32Array(rows * NO)
  let at = 0
  for (const { ds, labels, keep } of labelled) {
    for (let r = 0; r < ds.rows; r++) {
      if (keep[r] === 0) continue
      x.set(ds.features.subarray(r * FEATURE_COUNT, (r + 1) * FEATURE_COUNT), at * FEATURE_COUNT)
      for (let k = 0; k < NO; k++) y[at * NO + k] = labels[r * NO + k]!
      at++
    }
  }
  return { x, y, rows }
}

function fitDetector(sets: readonly TraceDataset[], type: FailureType, which: 'hardware' | 'network') {
  const names = which === 'hardware' ? HARDWARE_FEATURES : NETWORK_FEATURES
  const d = names.length
  let rows = 0
  for (const ds of sets) rows += ds.rows
  const x = new Float32Array(rows * d)
  const y = new Uint8Array(rows)
  let at = 0
  let positives = 0
  for (const ds of sets) {
    const lab = detectorLabels(ds, type)
    x.set(ds[which], at * d)
    y.set(lab, at)
    for (const v of lab) positives += v
    at += ds.rows
  }
  if (positives < 3) return null
  return fitLogistic(names, x, y, rows)
}

/**
 * The alarm threshold for a type: among those that keep validation false alarms at or under
 * 0.5 per replica-hour (half the target, for the margin a few validation runs need), the one with
 * the best recall + precision, then median lead; if none does, the one with the fewest.
 *
 * A threshold is judged by the worse of its own scores and those of the threshold THRESHOLD_MARGIN
 * below it: on traffic the model has not seen, its probabilities run higher or lower than on the
 * validation runs, and the lowest threshold that happens to make no false alarm there sits on the
 * edge of the ones that do. The lead is the threshold's own.
 */
function chooseThreshold(
  type: FailureType,
  val: readonly TraceDataset[],
  meta: ModelMeta,
  probs: Map<TraceDataset, Float32Array>,
): number {
  const ti = FAILURE_TYPES.indexOf(type)
  const scores = new Map<number, TypeScore>()
  const score = (thr: number): TypeScore => {
    let s = scores.get(thr)
    if (s === undefined) {
      s = scoreDatasets(val, [modelSource('m', meta, probs, { type, threshold: thr })])[ti]!
      scores.set(thr, s)
    }
    return s
  }
  let best: { thr: number; key: number[] } | null = null
  for (const thr of THRESHOLDS) {
    const s = score(thr)
    // Rounded to the grid's hundredths: 0.3 - 0.1 is 0.19999999999999998 in binary.
    const m = score(Math.max(0.01, Math.round((thr - THRESHOLD_MARGIN) * 100) / 100))
    const fa = Math.max(s.falseAlarmsPerHour, m.falseAlarmsPerHour)
    const rp = Math.min((s.recall ?? 0) + (s.precision ?? 0), (m.recall ?? 0) + (m.precision ?? 0))
    // Half the 1/h target: validation runs are few, and a held-out stretch of traffic differs.
    const key = fa <= 0.5 ? [1, rp, s.medianLeadS ?? 0] : [0, -fa, s.recall ?? 0]
    if (best === null || greater(key, best.key)) best = { thr, key }
  }
  return best?.thr ?? 0.5
}

/** How far a threshold's validation scores must hold below it (see chooseThreshold). */
const THRESHOLD_MARGIN = 0.1

const THRESHOLDS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99]

function greater(a: number[], b: number[]): boolean {
  for (let i = 0; i < a.length; i++) {
    if (a[i]! > b[i]! + 1e-9) return true
    if (a[i]! < b[i]! - 1e-9) return false
  }
  return false
}

async function readJson(path: string): Promise<Record<string, unknown> | null> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>
  } catch {
    return null
  }
}

function safe(s: string): string {
  return s.replace(/[^A-Za-z0-9_.-]/g, '_')
}

function modelCard(
  meta: ModelMeta,
  table: string,
  runs: string,
  sets: Record<'train' | 'val' | 'test', TraceDataset[]>,
): string {
  const t = meta.training ?? {}
  const hours = (ds: TraceDataset[]) => (ds.reduce((n, d) => n + d.rows, 0) / 3600).toFixed(2)
  const thr = FAILURE_TYPES.filter((x) => meta.thresholds[x] !== undefined)
    .map((x) => `| ${x} | ${meta.thresholds[x]} |`)
    .join('\n')
  return `# ${meta.name} v${meta.version}: failure forecaster for vLLM replicas

A multi-task MLP (TensorFlow.js LayersModel, ${FEATURE_COUNT} features, ${meta.outputs.length} sigmoid heads) that gives,
per serving replica, the probability of each load-driven failure within a horizon, plus two calibrated
logistic detectors for hardware and network failures. Created ${meta.createdAt} by \`vllm-monitor train\`
on the ${String(t.backend)} backend.

## Intended use
Early warning for KV-cache exhaustion (preemption storms), CUDA OOM outside vLLM's pre-reserved pool,
SLO violations, thermal throttling and queue overflow on vLLM V1 servers, so that admission caps,
rerouting or draining act before users see it. Not a capacity planner (horizons are seconds to minutes).

## Data
Simulated vLLM fleets (\`src/sim\`, calibrated in sim-calibration.md) serving the arrivals of
\`${String(t.arrivals)}\` (default: the Azure LLM code trace shipped in data/traces, replayed with a Poisson
background), with one fault injected per scenario.

- Scenarios: ${(t.scenarios as string[]).join(', ')}
- Training seeds ${(t.trainSeeds as number[]).join(', ')} (${hours(sets.train)} replica-hours, ${String(t.trainingRows)} serving rows, ${String(t.positiveRows)} with a positive label)
- Validation seeds ${(t.validationSeeds as number[]).join(', ')} (${hours(sets.val)} replica-hours): alarm thresholds
- Held-out seeds ${(t.testSeeds as number[]).join(', ')} (${hours(sets.test)} replica-hours): the metrics below

Labels come from what happened (src/forecast/onsets.ts): a head is positive when its failure starts
on the replica within its horizon, or is under way.

## Features
Per replica, from the monitor's telemetry store: the last 60 s at 1 s (and the freshest 100 ms) of
KV usage, waiting and running requests, preemptions, prompt and generation token rates, completions,
TTFT / inter-token / queue-time p99 and the stall clock, fused with the worst of the replica's GPUs for
memory fraction, temperature, power fraction, SM clock drop, thermal reason bits and corrected-ECC growth;
seven statistics each (last, 5 s mean, change over 10/30/60 s, 60 s max, slope), plus time-to-full
estimates for KV, memory and temperature, queue drain time and the DEGRADED flag. vLLM pre-reserves GPU
memory, so KV pressure enters only through vLLM's own gauges.

## Outputs and alarm thresholds
${meta.outputs.map((o) => `- P(${o.failureType} within ${o.horizonS} s)`).join('\n')}

| failure type | alarm threshold (validation: best recall + precision at <= 0.5 false alarms per replica-hour, holding 0.1 below the threshold too) |
|---|---|
${thr}

## Held-out results beside the baselines
Same runs, same scorer (src/forecast/evaluate.ts): a failure counts as predicted when an alarm covered
its prediction window with at least the warning time the mitigation needs (5 s for KV and OOM);
lead is capped at the horizon; false alarms are per monitored replica-hour.

\`\`\`
${table}
\`\`\`

Per held-out run (the model): predicted/failures, lead of each, false alarms.

\`\`\`
${runs}
\`\`\`

## Limits
- Trained on simulated fleets only. A step surge that fills the KV cache within seconds (\`kv-surge\`)
  cannot be forecast 30 s ahead by any predictor; the lead there is bounded by the physics.
- Xid 79 (GPU off the bus) and a killed worker have no precursor: detected, not forecast.
- Retrain on your own traffic: \`vllm-monitor train --arrivals your.csv --out DIR\`, then \`--model DIR\`.
`
}
