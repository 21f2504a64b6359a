/**
 * The live forecaster: at each forecast tick it reads every serving replica's features from the
 * telemetry store on the main thread (into the task's own buffer, one replica per turn of the
 * event loop; the extraction itself allocates nothing), sends them to the worker pool as one
 * batched, transferred task, and turns the probabilities into predictions with a time to failure
 * and the evidence behind them (those objects and strings are the tick's allocations). Hardware
 * and network detectors run here: they are a handful of multiply-adds.
 *
 * Whenever the model cannot answer (still loading, refused at load, a worker crashed, still
 * starting, or a task ran past its deadline) the tick is answered by the baselines instead, and a
 * failure becomes an error entry: the monitor never goes without predictions and never waits on a
 * worker longer than `taskTimeoutMs`. Failing three times in a row sets the model aside for 30 s
 * (doubling up to 10 min) before it is tried again.
 *
 * With `learning` on, every tick's feature rows also feed the online trainer (online.ts), which
 * labels them from what happens next and fine-tunes the model in its own worker.
 */
import { fileURLToPath } from 'node:url'
import type { TelemetryStore } from '../telemetry/store.js'
import type { Checkpoint, FailureType, LifecycleState, Prediction } from '../telemetry/types.js'
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
import { LocalForecaster } from './local.js'
import { checkMeta, loadModelArtifacts, type ModelArtifacts, type ModelMeta } from './model-io.js'
import { OnlineTrainer, type OutcomeReport } from './online.js'
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
   * Ticks whose batch costs at most this many multiply-adds run the model on this thread, with the
   * Dense loops a worker checked against tfjs (ForecastPoolOptions.inlineMaxMacs; default 250,000,
   * about 24 replicas of the shipped model). 0: every tick goes to a worker.
   */
  inlineMaxMacs?: number
  /**
   * The baseline that answers while the model cannot (default `threshold`: predict_linear would
   * extrapolate every replica's model-loading memory ramp into an OOM alarm at each start).
   */
  fallback?: BaselineName
  slo?: SloOptions
  /** Fine-tune the model online from what happens (the monitor's `learning` option). */
  learning?: boolean | { intervalMs?: number; minSamples?: number }
  onError?: (code: string, message: string) => void
  /** The worker module (default: the package's compiled forecast worker); for tests and custom runtimes. */
  workerFilename?: string
  /** How long the model is set aside after the workers failed three times in a row (default 30 s, doubling up to 10 min). */
  retryAfterMs?: number
  /**
   * Run the model on this thread instead of in workers (default false). For simulations that run
   * faster than real time, where a worker's wall-clock start-up and scheduling would change the
   * result from run to run.
   */
  inProcess?: boolean
}

export interface PredictiveStatus {
  /** `name-vN` of the model answering, or null while the baselines do. */
  model: string | null
  /** `suspended`: the workers kept failing; the baselines answer until the model is retried. */
  state: 'loading' | 'ready' | 'suspended' | 'fallback'
  /** Why the baselines answer, when they do. */
  reason: string | null
  fallback: BaselineName
  ticks: number
  fallbackTicks: number
  /** Ticks whose model batch ran on this thread (`inlineMaxMacs`) rather than in a worker. */
  inlineTicks: number
  onlineRounds: number
  onlineSwaps: number
}

const yieldTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve))

interface PendingAlarm {
  type: FailureType
  replica: string
  t: number
  horizonMs: number
  minLeadMs: number
}

const NO = MODEL_OUTPUTS.length
const MAX_FAILURES_IN_A_ROW = 3
const BACKOFF_MS = 30_000
const MAX_BACKOFF_MS = 600_000
const F = FEATURE_COUNT
const IDX = (name: string) => FEATURE_NAMES.indexOf(name)
const I_KV = IDX('kv.last')
const I_KV_D30 = IDX('kv.d30')
const I_WAIT = IDX('waiting.last')
const I_WAIT_D30 = IDX('waiting.d30')
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
  private baselines: Baselines
  private readonly fallbackName: BaselineName
  private readonly ecc = new EccHistory()
  private readonly hw = new Float32Array(4)
  private readonly net = new Float32Array(4)
  private readonly onError: (code: string, message: string) => void
  private tracker: OnsetTracker
  private pool: Pick<ForecastPool, 'predict' | 'setModel' | 'close' | 'starting' | 'inlinePredicts'> | null =
    null
  /** Inline predicts of pools closed before this one (suspended after failures). */
  private inlineBefore = 0
  private startPool: (() => void) | null = null
  private current: ModelArtifacts | null = null
  private meta: ModelMeta | null = null
  private state: PredictiveStatus['state'] = 'loading'
  private reason: string | null = 'model loading'
  private ticks = 0
  private failuresInARow = 0
  private suspensions = 0
  private retryAt = 0
  private readonly retryAfterMs: number
  private raised = new Set<string>()
  private pending: PendingAlarm[] = []
  private alarmsRight = 0
  private alarmsWrong = 0
  private lastT = 0
  private fallbackTicks = 0
  private closed = false
  private online: OnlineTrainer | null = null
  /** `name-vN` of `labelMeta`, the model field of every prediction: formatted once per model. */
  private label = ''
  private labelMeta: ModelMeta | null = null
  readonly ready: Promise<void>

  constructor(store: TelemetryStore, options: PredictiveDetectorOptions = {}) {
    this.store = store
    this.extractor = new FeatureExtractor(store)
    const slo = options.slo ?? DEFAULT_SLO
    this.baselines = new Baselines(store, slo)
    this.tracker = new OnsetTracker({ slo })
    this.fallbackName = options.fallback ?? 'threshold'
    this.retryAfterMs = options.retryAfterMs ?? BACKOFF_MS
    const onError = options.onError ?? (() => {})
    // The host's callback may throw; that must not become a rejection nobody handles.
    this.onError = (code, message) => {
      try {
        onError(code, message)
      } catch {
        // reported nowhere else: the host asked for this callback and it failed
      }
    }
    const model = options.model === undefined ? DEFAULT_MODEL_DIR : options.model
    this.ready = this.load(model, options).catch((err: unknown) =>
      this.toFallback('VLLM_MONITOR_MODEL_LOAD', `model not loaded: ${(err as Error).message}`),
    )
  }

  private async load(model: string | ModelArtifacts | null, o: PredictiveDetectorOptions): Promise<void> {
    if (model === null) {
      this.state = 'fallback'
      this.reason = 'no model configured'
      return
    }
    let artifacts: ModelArtifacts
    try {
      if (typeof model === 'string') artifacts = await loadModelArtifacts(model)
      else {
        checkMeta(model.meta, `"${String(model.meta?.name)}" (passed as artifacts)`)
        artifacts = model
      }
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
      if (o.inProcess === true) {
        this.pool = new LocalForecaster(this.current ?? artifacts)
        return
      }
      try {
        this.pool = new ForecastPool({
          model: this.current ?? artifacts,
          ...(o.threads === undefined ? {} : { threads: o.threads }),
          ...(o.taskTimeoutMs === undefined ? {} : { taskTimeoutMs: o.taskTimeoutMs }),
          ...(o.backend === undefined ? {} : { backend: o.backend }),
          ...(o.inlineMaxMacs === undefined ? {} : { inlineMaxMacs: o.inlineMaxMacs }),
          ...(o.workerFilename === undefined ? {} : { workerFilename: o.workerFilename }),
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
    // Onsets and baselines judge by the SLO the model was trained for, unless told otherwise.
    if (o.slo === undefined && artifacts.meta.slo !== undefined) {
      this.baselines = new Baselines(this.store, artifacts.meta.slo)
      this.tracker = new OnsetTracker({ slo: artifacts.meta.slo })
    }
    if (o.learning !== undefined && o.learning !== false) {
      const lo = typeof o.learning === 'object' ? o.learning : {}
      try {
        this.online = this.newOnlineTrainer(artifacts, lo)
      } catch (err) {
        this.onError('VLLM_MONITOR_ONLINE_TRAINING', `online retraining off: ${(err as Error).message}`)
      }
    }
  }

  private newOnlineTrainer(
    artifacts: ModelArtifacts,
    lo: { intervalMs?: number; minSamples?: number },
  ): OnlineTrainer {
    return new OnlineTrainer({
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

  /**
   * What the mitigation side saw after acting on a prediction, for online retraining: a failure
   * that `occurred`, one `avoided` (its rows leave training: nobody knows what would have
   * happened), or a `false-alarm`. Ignored unless `learning` is on.
   */
  reportOutcome(outcome: OutcomeReport): void {
    this.online?.reportOutcome(outcome)
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
      inlineTicks: this.inlineBefore + (this.pool?.inlinePredicts ?? 0),
      onlineRounds: s?.rounds ?? 0,
      onlineSwaps: s?.swaps ?? 0,
    }
  }

  /**
   * Predictions for every serving replica at the checkpoint's time, from the store's windows.
   * Never rejects: without a model answer, the fallback baseline's predictions come back.
   */
  async analyzeCheckpoint(cp: Checkpoint): Promise<Prediction[]> {
    this.ticks++
    const targets = forecastTargets(cp)
    const onsets = this.tracker.observe(cp)
    this.lastT = cp.t
    this.scoreAlarms(cp.t, onsets)
    const out: Prediction[] = []
    const det = this.meta?.detectors ?? DEFAULT_DETECTORS
    for (const target of targets) {
      hardwareFeatures(cp, target, this.hw, 0, this.ecc)
      networkFeatures(cp, target, this.net, 0)
      for (const p of detectorPredictions(det, target, this.hw, this.net)) out.push(p)
    }
    if (targets.length === 0) return out
    const x = new Float32Array(targets.length * F)
    for (let i = 0; i < targets.length; i++) {
      // One replica per turn of the event loop: a host's requests wait for one replica's features,
      // never for the whole fleet's.
      if (i > 0) await yieldTurn()
      const state = lifecycleOf(cp, targets[i]!.replica)
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
    if (this.state === 'suspended' && performance.now() >= this.retryAt && !this.closed) {
      this.state = 'ready'
      this.reason = null
      this.onError('VLLM_MONITOR_FORECAST_WORKER', 'retrying the model after the forecast workers failed')
    }
    if (this.pool === null && this.startPool !== null && this.state === 'ready' && !this.closed)
      this.startPool()
    const pool = this.pool
    const meta = this.meta
    // After close() the pool is gone: answer with the baselines, quietly.
    if (this.state === 'ready' && pool !== null && meta !== null && !this.closed) {
      try {
        const probs = await pool.predict(x, targets.length)
        this.failuresInARow = 0
        this.suspensions = 0
        this.fromProbs(targets, probs, kept, this.online !== null ? F : EVIDENCE_WIDTH, meta, out)
        return out
      } catch (err) {
        if (this.closed) return this.fallbackPredictions(cp, targets, out)
        // A worker still starting (loading tfjs and the model) is not failing: the baseline
        // answers this tick, quietly, and nothing counts against the model.
        if (pool.starting) return this.fallbackPredictions(cp, targets, out)
        const code = (err as { code?: string }).code ?? 'VLLM_MONITOR_FORECAST_WORKER'
        // One crash or timeout is the workers' business (the pool replaces them). Failing again and
        // again means the model cannot run there now (an overloaded host, a broken backend): set it
        // aside for a while, doubling the wait each time (30 s .. 10 min), then try again.
        if (++this.failuresInARow >= MAX_FAILURES_IN_A_ROW) {
          const waitMs = Math.min(MAX_BACKOFF_MS, this.retryAfterMs * 2 ** this.suspensions++)
          this.state = 'suspended'
          this.reason = `the forecast workers failed ${this.failuresInARow} times in a row (last: ${(err as Error).message})`
          this.retryAt = performance.now() + waitMs
          this.failuresInARow = 0
          this.onError(code, `${this.reason}; forecasting with ${this.fallbackName} for ${waitMs / 1000} s`)
          this.inlineBefore += this.pool?.inlinePredicts ?? 0
          void this.pool?.close()
          this.pool = null
        } else this.onError(code, `${(err as Error).message}; this tick forecast with ${this.fallbackName}`)
      }
    }
    return this.fallbackPredictions(cp, targets, out)
  }

  private fallbackPredictions(cp: Checkpoint, targets: ForecastTarget[], out: Prediction[]): Prediction[] {
    this.fallbackTicks++
    for (const target of targets) {
      for (const p of this.baselines.predictions(cp.t, target, cp, this.fallbackName)) {
        // The detectors answer for hardware and network failures.
        if (p.failureType !== 'hardware-failure' && p.failureType !== 'network-failure') out.push(p)
      }
    }
    return out
  }

  /**
   * Appends the model's predictions to `out`. Runs every tick on the main thread: the head indices
   * and horizons per type are precomputed (TYPE_HEADS), the model label is cached per meta, and
   * each replica's evidence lines are formatted once (the KV line kv-exhaustion and queue-overflow
   * share is one string); what is left to allocate is the predictions, their evidence arrays and
   * strings, which the caller keeps.
   */
  private fromProbs(
    targets: ForecastTarget[],
    probs: Float32Array,
    kept: Float32Array,
    width: number,
    meta: ModelMeta,
    out: Prediction[],
  ): void {
    if (this.labelMeta !== meta) {
      this.labelMeta = meta
      this.label = `${meta.name}-v${meta.version}`
    }
    const model = this.label
    const full = width === F
    for (let i = 0; i < targets.length; i++) {
      const target = targets[i]!
      const tgt = { replica: target.replica, gpu: target.gpus[0] ?? null }
      const ev = evidenceLines(kept, i * width, full)
      for (let t = 0; t < MODEL_TYPES.length; t++) {
        const heads = TYPE_HEADS[t]!
        const n = heads.length
        if (n === 0) continue
        const type = MODEL_TYPES[t]!
        const hs = TYPE_HORIZONS[t]!
        const ps = TYPE_PROBS[t]!
        for (let j = 0; j < n; j++) ps[j] = probs[i * NO + heads[j]!]!
        const ttf = n > 1 ? timeToFailureS(hs, ps) : null
        const evidence = evidenceFor(type, ev)
        for (let j = 0; j < n; j++) {
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
      // A forecast of a failure already under way says nothing new (the lifecycle says it); the
      // evaluation does not count those either. Detections are the exception: they are the news.
      if (
        p.model !== 'detector' &&
        p.target.replica !== null &&
        this.tracker.ongoing(p.failureType, p.target.replica)
      )
        return false
      // The model's alarms release below ALARM_RELEASE x threshold, as the evaluation scores them.
      const on =
        p.probability >= thr || (model && this.raised.has(key) && p.probability >= thr * ALARM_RELEASE)
      if (on) raised.add(key)
      return on
    })
    // A newly raised alarm is scored once its horizon has passed (or its failure has started); a
    // detection raised while its failure is already under way is right at once.
    for (const key of raised) {
      if (this.raised.has(key)) continue
      const p = out.find((x) => `${x.target.replica}|${x.failureType}` === key)
      if (p === undefined || p.target.replica === null) continue
      const minLeadMs = SCORING[p.failureType].minLeadS * 1000
      if (minLeadMs < 0 && this.tracker.ongoing(p.failureType, p.target.replica)) this.alarmsRight++
      else if (this.pending.length < 1024)
        this.pending.push({
          type: p.failureType,
          replica: p.target.replica,
          t: this.lastT,
          horizonMs: p.horizonS * 1000,
          minLeadMs,
        })
    }
    this.raised = raised
    return out
  }

  /**
   * Fraction of the alarms raised so far that came true (a failure of the type on the replica
   * within the alarm's horizon, with at least its warning time, or detected within it), null
   * before the first alarm has been scored. The live counterpart of the evaluation's precision.
   */
  accuracy(): number | null {
    const n = this.alarmsRight + this.alarmsWrong
    return n === 0 ? null : this.alarmsRight / n
  }

  private scoreAlarms(t: number, onsets: readonly FailureOnset[]): void {
    if (this.pending.length === 0) return
    const left: PendingAlarm[] = []
    for (const a of this.pending) {
      const hit = onsets.some(
        (o) =>
          o.failureType === a.type &&
          o.replica === a.replica &&
          o.t >= a.t + a.minLeadMs &&
          o.t <= a.t + a.horizonMs,
      )
      if (hit) this.alarmsRight++
      else if (t > a.t + a.horizonMs) this.alarmsWrong++
      else left.push(a)
    }
    this.pending = left
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
const EVIDENCE_IDX = [
  I_KV,
  I_KV_D30,
  I_WAIT,
  I_WAIT_D30,
  I_PRE,
  I_MEM,
  I_MEM_D30,
  I_TEMP,
  I_TEMP_D60,
  I_TTFT,
  I_QDRAIN,
]
const EVIDENCE_WIDTH = EVIDENCE_IDX.length
// Positions in EVIDENCE_IDX (and so in a kept row) of what each evidence line quotes.
const E_KV = 0
const E_KV_D30 = 1
const E_WAIT = 2
const E_WAIT_D30 = 3
const E_PRE = 4
const E_MEM = 5
const E_MEM_D30 = 6
const E_TEMP = 7
const E_TEMP_D60 = 8
const E_TTFT = 9
const E_QDRAIN = 10

/** The failure types the model forecasts, in the order their predictions come out. */
const MODEL_TYPES: readonly FailureType[] = [
  'kv-exhaustion',
  'oom',
  'slo-violation',
  'thermal-throttle',
  'queue-overflow',
]
/** Per MODEL_TYPES entry: its heads (indices into MODEL_OUTPUTS), their horizons, a scratch for their probabilities. */
const TYPE_HEADS: readonly (readonly number[])[] = MODEL_TYPES.map((type) =>
  MODEL_OUTPUTS.flatMap((o, k) => (o.failureType === type ? [k] : [])),
)
const TYPE_HORIZONS: readonly (readonly number[])[] = TYPE_HEADS.map((h) =>
  h.map((k) => MODEL_OUTPUTS[k]!.horizonS),
)
const TYPE_PROBS: number[][] = TYPE_HEADS.map((h) => h.map(() => 0.5))

function keepEvidence(x: Float32Array, rows: number): Float32Array {
  const out = new Float32Array(rows * EVIDENCE_WIDTH)
  for (let r = 0; r < rows; r++)
    for (let j = 0; j < EVIDENCE_WIDTH; j++) out[r * EVIDENCE_WIDTH + j] = x[r * F + EVIDENCE_IDX[j]!]!
  return out
}

/**
 * One replica's evidence lines, formatted once per tick from its kept row (at `base`, a full
 * feature row when `full`, else an EVIDENCE_IDX row): the KV line serves kv-exhaustion and
 * queue-overflow alike.
 */
interface EvidenceLines {
  kv: string
  kvWaiting: string
  oom: string
  thermal: string
  slo: string
  queue: string
}

function evidenceLines(kept: Float32Array, base: number, full: boolean): EvidenceLines {
  const kv = keptAt(kept, base, full, E_KV)
  const kvD30 = keptAt(kept, base, full, E_KV_D30)
  const wait = keptAt(kept, base, full, E_WAIT)
  const kvLine = `KV cache ${pct(kv)} (${signed(kvD30 * 100, 1)} pts in 30 s)`
  const waiting = Math.round(Math.expm1(wait))
  return {
    kv: kvLine,
    kvWaiting: `${waiting} waiting, ${Math.expm1(keptAt(kept, base, full, E_PRE)).toFixed(1)} preemptions/s`,
    oom: `GPU memory ${pct(keptAt(kept, base, full, E_MEM))} of total (${signed(keptAt(kept, base, full, E_MEM_D30) * 100, 2)} pts in 30 s)`,
    thermal: `GPU at ${(keptAt(kept, base, full, E_TEMP) * 100).toFixed(0)} °C (${signed(keptAt(kept, base, full, E_TEMP_D60) * 100, 1)} °C in 60 s)`,
    slo: `TTFT p99 ${(Math.expm1(keptAt(kept, base, full, E_TTFT)) * 100).toFixed(0)} ms`,
    queue: `${waiting} waiting (${signedInt(Math.expm1(wait) - Math.expm1(wait - keptAt(kept, base, full, E_WAIT_D30)))} in 30 s), drain ${(keptAt(kept, base, full, E_QDRAIN) * 30).toFixed(0)} s`,
  }
}

/** The replica's lifecycle state in the checkpoint (SERVING when absent), without a closure per call. */
function lifecycleOf(cp: Checkpoint, replica: string): LifecycleState {
  for (const e of cp.engines) if (e.replica === replica) return e.lifecycleState
  return 'SERVING'
}

function keptAt(kept: Float32Array, base: number, full: boolean, j: number): number {
  return kept[base + (full ? EVIDENCE_IDX[j]! : j)]!
}

function evidenceFor(type: FailureType, ev: EvidenceLines): string[] {
  switch (type) {
    case 'kv-exhaustion':
      return [ev.kv, ev.kvWaiting]
    case 'oom':
      return [ev.oom]
    case 'thermal-throttle':
      return [ev.thermal]
    case 'slo-violation':
      return [ev.slo]
    case 'queue-overflow':
      return [ev.queue, ev.kv]
    default:
      return []
  }
}

function pct(v: number): string {
  return `${(v * 100).toFixed(0)}%`
}

function signed(v: number, d: number): string {
  return `${v >= 0 ? '+' : ''}${v.toFixed(d)}`
}

function signedInt(v: number): string {
  const r = Math.round(v)
  return r >= 0 ? `+${r}` : String(r)
}

function round3(v: number): number {
  return Math.round(v * 1000) / 1000
}
