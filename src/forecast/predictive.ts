/**
 * The live forecaster: at each forecast tick it reads every serving replica's features from the
 * telemetry store (main thread, no allocation beyond the task's own buffer), sends them to the
 * worker pool as one batched, transferred task, and turns the probabilities into predictions
 * with a time to failure and the evidence behind them. Hardware and network detectors run here:
 * they are a handful of multiply-adds.
 *
 * Whenever the model cannot answer (still loading, refused at load, a worker crashed or a task ran
 * past its deadline) the tick is answered by the baselines instead, and the failure becomes an
 * error entry: the monitor never goes without predictions and never waits on a worker.
 *
 * With `learning` on, every tick's feature rows also feed the online trainer (online.ts), which
 * labels them from what happens next and fine-tunes the model in its own worker.
 */
import { fileURLToPath } from 'node:url'
import type { TelemetryStore } from '../telemetry/store.js'
import type { Checkpoint, FailureType, Prediction } from '../telemetry/types.js'
import { type BaselineName, Baselines } from './baselines.js'
import {
  DEFAULT_DETECTORS,
  detectorPredictions,
  EccHistory,
  hardwareFeatures,
  networkFeatures,
} from './detectors.js'
import {
  FEATURE_COUNT,
  FEATURE_NAMES,
  FeatureExtractor,
  type ForecastTarget,
  forecastTargets,
} from './features.js'
import { loadModelArtifacts, type ModelArtifacts, type ModelMeta } from './model-io.js'
import { OnlineTrainer } from './online.js'
import { type FailureOnset, OnsetTracker } from './onsets.js'
import { type ForecastBackend, ForecastPool } from './pool.js'
import {
  ALARM_RELEASE,
  DEFAULT_SLO,
  FAILURE_TYPES,
  MODEL_OUTPUTS,
  SCORING,
  type SloOptions,
  timeToFailureS,
} from './spec.js'

/** The model shipped with the package (trained by `vllm-monitor train`, see its MODEL_CARD.md). */
export const DEFAULT_MODEL_DIR = fileURLToPath(new URL('../../models/forecaster', import.meta.url))

export interface PredictiveDetectorOptions {
  /** A model directory, loaded artifacts, or null for baselines only (default: the shipped model). */
  model?: string | ModelArtifacts | null
  threads?: number
  taskTimeoutMs?: number
  backend?: ForecastBackend
  /**
   * The baseline that answers while the model cannot (default `threshold`: predict_linear would
   * extrapolate every replica's model-loading memory ramp into an OOM alarm at each start).
   */
  fallback?: BaselineName
  slo?: SloOptions
  /** Fine-tune the model online from what happens (the monitor's `learning` option). */
  learning?: boolean | { intervalMs?: number; minSamples?: number }
  onError?: (code: string, message: string) => void
}

export interface PredictiveStatus {
  /** `name-vN` of the model answering, or null while the baselines do. */
  model: string | null
  state: 'loading' | 'ready' | 'fallback'
  /** Why the baselines answer, when they do. */
  reason: string | null
  fallback: BaselineName
  ticks: number
  fallbackTicks: number
  onlineRounds: number
  onlineSwaps: number
}

const NO = MODEL_OUTPUTS.length
const MAX_FAILURES_IN_A_ROW = 3
const F = FEATURE_COUNT
const IDX = (name: string) => FEATURE_NAMES.indexOf(name)
const I_KV = IDX('kv.last')
const I_KV_D30 = IDX('kv.d30')
const I_WAIT = IDX('waiting.last')
const I_PRE = IDX('preemptions.last')
const I_MEM = IDX('memFrac.last')
const I_MEM_D30 = IDX('memFrac.d30')
const I_TEMP = IDX('temp.last')
const I_TEMP_D60 = IDX('temp.d60')
const I_TTFT = IDX('ttftP99.last')
const I_QDRAIN = IDX('queueDrain')

export class PredictiveDetector {
  readonly store: TelemetryStore
  private readonly extractor: FeatureExtractor
  private readonly baselines: Baselines
  private readonly fallbackName: BaselineName
  private readonly ecc = new EccHistory()
  private readonly hw = new Float32Array(4)
  private readonly net = new Float32Array(4)
  private readonly onError: (code: string, message: string) => void
  private readonly tracker: OnsetTracker
  private pool: ForecastPool | null = null
  private startPool: (() => void) | null = null
  private current: ModelArtifacts | null = null
  private meta: ModelMeta | null = null
  private state: PredictiveStatus['state'] = 'loading'
  private reason: string | null = 'model loading'
  private ticks = 0
  private failuresInARow = 0
  private raised = new Set<string>()
  private fallbackTicks = 0
  private closed = false
  private online: OnlineTrainer | null = null
  readonly ready: Promise<void>

  constructor(store: TelemetryStore, options: PredictiveDetectorOptions = {}) {
    this.store = store
    this.extractor = new FeatureExtractor(store)
    const slo = options.slo ?? DEFAULT_SLO
    this.baselines = new Baselines(store, slo)
    this.tracker = new OnsetTracker({ slo })
    this.fallbackName = options.fallback ?? 'threshold'
    this.onError = options.onError ?? (() => {})
    const model = options.model === undefined ? DEFAULT_MODEL_DIR : options.model
    this.ready = this.load(model, options)
  }

  private async load(model: string | ModelArtifacts | null, o: PredictiveDetectorOptions): Promise<void> {
    if (model === null) {
      this.state = 'fallback'
      this.reason = 'no model configured'
      return
    }
    let artifacts: ModelArtifacts
    try {
      artifacts = typeof model === 'string' ? await loadModelArtifacts(model) : model
    } catch (err) {
      this.toFallback((err as { code?: string }).code ?? 'VLLM_MONITOR_MODEL_LOAD', (err as Error).message)
      return
    }
    if (this.closed) {
      this.state = 'fallback'
      this.reason = 'closed'
      return
    }
    // Workers start at the first forecast with a replica to forecast, not here: a monitor that
    // never sees a serving replica (or a test) costs no thread and no tfjs.
    this.startPool = () => {
      try {
        this.pool = new ForecastPool({
          model: this.current ?? artifacts,
          ...(o.threads === undefined ? {} : { threads: o.threads }),
          ...(o.taskTimeoutMs === undefined ? {} : { taskTimeoutMs: o.taskTimeoutMs }),
          ...(o.backend === undefined ? {} : { backend: o.backend }),
          onError: (err) =>
            this.onError(
              (err as { code?: string }).code ?? 'VLLM_MONITOR_FORECAST_WORKER',
              `forecast worker: ${err.message}`,
            ),
        })
      } catch (err) {
        this.toFallback(
          'VLLM_MONITOR_FORECAST_WORKER',
          `forecast workers not started: ${(err as Error).message}`,
        )
      }
    }
    this.current = artifacts
    this.meta = artifacts.meta
    this.state = 'ready'
    this.reason = null
    if (o.learning !== undefined && o.learning !== false) {
      const lo = typeof o.learning === 'object' ? o.learning : {}
      this.online = new OnlineTrainer({
        getModel: () => this.current ?? artifacts,
        onSwap: (a) => {
          this.current = a
          this.meta = a.meta
          this.pool?.setModel(a)
        },
        ...(lo.intervalMs === undefined ? {} : { intervalMs: lo.intervalMs }),
        ...(lo.minSamples === undefined ? {} : { minSamples: lo.minSamples }),
        onError: (err) => this.onError('VLLM_MONITOR_ONLINE_TRAINING', `online retraining: ${err.message}`),
      })
    }
  }

  private toFallback(code: string, message: string): void {
    this.state = 'fallback'
    this.reason = message
    this.onError(code, `${message}; forecasting with ${this.fallbackName} instead`)
  }

  /** The model answering (with its version), or null while the baselines do. */
  get modelName(): string | null {
    return this.state === 'ready' && this.meta !== null ? `${this.meta.name}-v${this.meta.version}` : null
  }

  status(): PredictiveStatus {
    const s = this.online?.stats()
    return {
      model: this.modelName,
      state: this.state,
      reason: this.reason,
      fallback: this.fallbackName,
      ticks: this.ticks,
      fallbackTicks: this.fallbackTicks,
      onlineRounds: s?.rounds ?? 0,
      onlineSwaps: s?.swaps ?? 0,
    }
  }

  /** Failures that started, as seen by the detector's own tracker (fed to online retraining). */
  observeOnsets(cp: Checkpoint): FailureOnset[] {
    return this.tracker.observe(cp)
  }

  /**
   * Predictions for every serving replica at the checkpoint's time, from the store's windows.
   * Never rejects: without a model answer, the fallback baseline's predictions come back.
   */
  async analyzeCheckpoint(cp: Checkpoint): Promise<Prediction[]> {
    this.ticks++
    const targets = forecastTargets(cp)
    const onsets = this.tracker.observe(cp)
    const out: Prediction[] = []
    const det = this.meta?.detectors ?? DEFAULT_DETECTORS
    for (const target of targets) {
      hardwareFeatures(cp, target, this.hw, 0, this.ecc)
      networkFeatures(cp, target, this.net, 0)
      out.push(...detectorPredictions(det, target, this.hw, this.net))
    }
    if (targets.length === 0) return out
    const x = new Float32Array(targets.length * F)
    for (let i = 0; i < targets.length; i++) {
      const state = cp.engines.find((e) => e.replica === targets[i]!.replica)?.lifecycleState ?? 'SERVING'
      this.extractor.extract(cp.t, targets[i]!, state, x, i * F)
    }
    // What the evidence lines and the online trainer need survives the transfer of `x`.
    const kept = this.online !== null ? x.slice() : keepEvidence(x, targets.length)
    if (this.online !== null) {
      for (const o of onsets) this.online.onset(o)
      const ongoing = new Uint8Array(FAILURE_TYPES.length)
      for (let i = 0; i < targets.length; i++) {
        for (let k = 0; k < FAILURE_TYPES.length; k++)
          ongoing[k] = this.tracker.ongoing(FAILURE_TYPES[k]!, targets[i]!.replica) ? 1 : 0
        this.online.observe(cp.t, targets[i]!.replica, kept.subarray(i * F, (i + 1) * F), ongoing)
      }
      this.online.advance(cp.t)
      this.online.maybeRetrain(cp.t)
    }
    if (this.pool === null && this.startPool !== null && this.state === 'ready' && !this.closed) {
      this.startPool()
      this.startPool = null
    }
    const pool = this.pool
    const meta = this.meta
    // After close() the pool is gone: answer with the baselines, quietly.
    if (this.state === 'ready' && pool !== null && meta !== null && !this.closed) {
      try {
        const probs = await pool.predict(x, targets.length)
        this.failuresInARow = 0
        out.push(...this.fromProbs(targets, probs, kept, this.online !== null ? F : EVIDENCE_WIDTH, meta))
        return out
      } catch (err) {
        const code = (err as { code?: string }).code ?? 'VLLM_MONITOR_FORECAST_WORKER'
        // One crash or timeout is the workers' business (the pool replaces them); failing every
        // time means the model itself cannot run there: stop trying and say so once.
        if (++this.failuresInARow >= MAX_FAILURES_IN_A_ROW) {
          this.toFallback(
            code,
            `the forecast workers failed ${this.failuresInARow} times in a row (last: ${(err as Error).message})`,
          )
          void this.pool?.close()
          this.pool = null
        } else this.onError(code, `${(err as Error).message}; this tick forecast with ${this.fallbackName}`)
      }
    }
    this.fallbackTicks++
    for (const target of targets) {
      for (const p of this.baselines.predictions(cp.t, target, cp, this.fallbackName)) {
        // The detectors answer for hardware and network failures.
        if (p.failureType !== 'hardware-failure' && p.failureType !== 'network-failure') out.push(p)
      }
    }
    return out
  }

  private fromProbs(
    targets: ForecastTarget[],
    probs: Float32Array,
    kept: Float32Array,
    width: number,
    meta: ModelMeta,
  ): Prediction[] {
    const out: Prediction[] = []
    const model = `${meta.name}-v${meta.version}`
    for (let i = 0; i < targets.length; i++) {
      const target = targets[i]!
      const tgt = { replica: target.replica, gpu: target.gpus[0] ?? null }
      const ev = (k: number) => kept[i * width + k]!
      for (const type of [
        'kv-exhaustion',
        'oom',
        'slo-violation',
        'thermal-throttle',
        'queue-overflow',
      ] as FailureType[]) {
        const heads: number[] = []
        for (let k = 0; k < NO; k++) if (MODEL_OUTPUTS[k]!.failureType === type) heads.push(k)
        const hs = heads.map((k) => MODEL_OUTPUTS[k]!.horizonS)
        const ps = heads.map((k) => probs[i * NO + k]!)
        const ttf = heads.length > 1 ? timeToFailureS(hs, ps) : null
        const evidence = evidenceFor(type, ev, width === F)
        for (let j = 0; j < heads.length; j++) {
          out.push({
            failureType: type,
            probability: round3(ps[j]!),
            timeToFailureS: ttf === null ? null : Math.round(ttf),
            horizonS: hs[j]!,
            target: tgt,
            evidence,
            model,
          })
        }
      }
    }
    return out
  }

  /**
   * The predictions that raise an alarm: each failure type's scoring-horizon prediction at or
   * above the model's alarm threshold for it (chosen in training at <= 1 false alarm per
   * replica-hour; 0.5 for the detectors), or any firing baseline rule.
   */
  alarms(predictions: readonly Prediction[]): Prediction[] {
    const thresholds = this.meta?.thresholds ?? {}
    const raised = new Set<string>()
    const out = predictions.filter((p) => {
      if (p.horizonS !== SCORING[p.failureType].horizonS) return false
      const model = p.model !== 'detector' && p.model !== this.fallbackName
      const thr = p.model === 'detector' ? 0.5 : model ? (thresholds[p.failureType] ?? 0.5) : 1
      const key = `${p.target.replica}|${p.failureType}`
      // The model's alarms release below ALARM_RELEASE x threshold, as the evaluation scores them.
      const on =
        p.probability >= thr || (model && this.raised.has(key) && p.probability >= thr * ALARM_RELEASE)
      if (on) raised.add(key)
      return on
    })
    this.raised = raised
    return out
  }

  close(): Promise<void> {
    this.closed = true
    const p = Promise.allSettled([this.pool?.close(), this.online?.close()]).then(() => {})
    return p
  }
}

/** SCORING re-exported for callers choosing which horizon to alarm on. */
export { SCORING }

// The raw values evidence lines quote, copied out of a row before the row is transferred.
const EVIDENCE_IDX = [I_KV, I_KV_D30, I_WAIT, I_PRE, I_MEM, I_MEM_D30, I_TEMP, I_TEMP_D60, I_TTFT, I_QDRAIN]
const EVIDENCE_WIDTH = EVIDENCE_IDX.length

function keepEvidence(x: Float32Array, rows: number): Float32Array {
  const out = new Float32Array(rows * EVIDENCE_WIDTH)
  for (let r = 0; r < rows; r++)
    for (let j = 0; j < EVIDENCE_WIDTH; j++) out[r * EVIDENCE_WIDTH + j] = x[r * F + EVIDENCE_IDX[j]!]!
  return out
}

function evidenceFor(type: FailureType, ev: (k: number) => number, full: boolean): string[] {
  const at = (featureIdx: number) => ev(full ? featureIdx : EVIDENCE_IDX.indexOf(featureIdx))
  const pct = (v: number) => `${(v * 100).toFixed(0)}%`
  const signed = (v: number, d = 1) => `${v >= 0 ? '+' : ''}${v.toFixed(d)}`
  switch (type) {
    case 'kv-exhaustion':
      return [
        `KV cache ${pct(at(I_KV))} (${signed(at(I_KV_D30) * 100)} pts in 30 s)`,
        `${Math.round(Math.expm1(at(I_WAIT)))} waiting, ${Math.expm1(at(I_PRE)).toFixed(1)} preemptions/s`,
      ]
    case 'oom':
      return [`GPU memory ${pct(at(I_MEM))} of total (${signed(at(I_MEM_D30) * 100, 2)} pts in 30 s)`]
    case 'thermal-throttle':
      return [`GPU at ${(at(I_TEMP) * 100).toFixed(0)} °C (${signed(at(I_TEMP_D60) * 100)} °C in 60 s)`]
    case 'slo-violation':
      return [`TTFT p99 ${(Math.expm1(at(I_TTFT)) * 100).toFixed(0)} ms`]
    case 'queue-overflow':
      return [`queue drains in ${(at(I_QDRAIN) * 30).toFixed(0)} s at the current completion rate`]
    default:
      return []
  }
}

function round3(v: number): number {
  return Math.round(v * 1000) / 1000
}
