/**
 * The telemetry model: what sources push, what the store keeps and what a checkpoint shows.
 * Every reading that could not be taken is `null`, never 0 and never an exception.
 */

/** vLLM's lifecycle, as the monitor sees it (per replica, and rolled up for the fleet). */
export type LifecycleState =
  | 'NOT_STARTED'
  | 'INITIALIZING'
  | 'LOADING_MODEL'
  | 'READY'
  | 'SERVING'
  | 'DEGRADED'
  | 'ERROR'
  | 'SHUTTING_DOWN'

/**
 * One look at one vLLM engine (a replica; with data parallelism one per `engine` label):
 * what its `/metrics` and `/health` said at time `t`. Counters are the raw cumulative values;
 * rates are derived by the store, which sees consecutive readings.
 */
export interface EngineReading {
  /** The replica this engine belongs to (the monitor's name for one vLLM server). */
  replica: string
  /** vLLM's `engine` label (data-parallel index) or null on V0 servers that have none. */
  engine: string | null
  modelName: string | null
  /** The server answered `/metrics` (false: refused, timed out, reset, or a non-2xx status). */
  reachable: boolean
  /** Status code of `/health`, null when it was not probed or did not answer. */
  healthStatus: number | null
  /** Why the reading is incomplete (e.g. `ECONNREFUSED`), null when it is not. */
  error: string | null
  requestsRunning: number | null
  requestsWaiting: number | null
  /** `vllm:kv_cache_usage_perc` (or V0 `gpu_cache_usage_perc`): a fraction 0-1 despite the name. */
  kvCacheUsage: number | null
  preemptionsTotal: number | null
  promptTokensTotal: number | null
  generationTokensTotal: number | null
  /** Engine steps so far: `vllm:iteration_tokens_total_count`. */
  stepsTotal: number | null
  /** Finished requests, all reasons. */
  requestsFinishedTotal: number | null
  /** Requests that finished with `finished_reason="error"` (each an HTTP 500). */
  requestsErroredTotal: number | null
  /** `num_gpu_blocks` from `vllm:cache_config_info`; its presence marks an initialised engine. */
  numGpuBlocks: number | null
  /** Histogram sums and counts; windowed means come from deltas. */
  ttftSecondsSum: number | null
  ttftCount: number | null
  itlSecondsSum: number | null
  itlCount: number | null
  e2eSecondsSum: number | null
  e2eCount: number | null
  queueTimeSecondsSum: number | null
  queueTimeCount: number | null
  /**
   * Quantiles over the last `quantileWindowMs` (default 60 s) of the latency histograms, ms, as
   * Prometheus' `histogram_quantile` interpolates them; null without observations in the window
   * (or before the window has two scrapes). Absent in traces written before they existed.
   */
  ttftP50Ms: number | null
  ttftP90Ms: number | null
  ttftP99Ms: number | null
  itlP50Ms: number | null
  itlP99Ms: number | null
  e2eP50Ms: number | null
  e2eP99Ms: number | null
  queueTimeP99Ms: number | null
}

/** One look at one GPU. Mirrors the NVML sampler's snapshot in the units a checkpoint needs. */
export interface GpuReading {
  /** Host-wide device index. */
  gpu: number
  /** The replica whose process holds this GPU, when known. */
  replica: string | null
  uuid: string | null
  name: string | null
  lost: boolean
  memoryUsedBytes: number | null
  memoryTotalBytes: number | null
  gpuUtilizationPercent: number | null
  powerWatts: number | null
  powerLimitWatts: number | null
  temperatureCelsius: number | null
  smClockMhz: number | null
  /** nvmlClocksEventReasons bitmask (0x4 power cap, 0x20 SW thermal, 0x40 HW thermal...). */
  clockEventReasons: number | null
  eccCorrectedVolatile: number | null
  eccUncorrectedVolatile: number | null
}

export type EventSeverity = 'info' | 'warning' | 'critical'

/**
 * Something that happened at an instant: an Xid, a classified log line, a lifecycle transition,
 * a detector firing. `type` is a stable kebab-case identifier (`xid`, `gpu-lost`, `cuda-oom`,
 * `engine-dead`, `nccl-timeout`, `hang`, `kv-pressure`, `lifecycle`, `log`...).
 */
export interface MonitorEvent {
  type: string
  severity: EventSeverity
  replica: string | null
  gpu: number | null
  message: string
  /** Structured detail (Xid code, bytes requested, ...). JSON-serialisable. */
  data?: Record<string, unknown>
}

/** The kinds of fault the simulator injects, and that the predictors are scored against. */
export type FaultType =
  | 'kv-exhaustion'
  | 'gpu-oom-spike'
  | 'gpu-oom-cotenant'
  | 'memory-leak'
  | 'thermal-throttle'
  | 'xid-48'
  | 'xid-79'
  | 'nccl-hang'
  | 'engine-death'
  | 'perf-drift'

/**
 * Ground truth, written by the simulator: when a fault was injected and when it became a failure
 * (the instant a perfect monitor would call it: first preemption storm step, OOM, hang start...).
 */
export interface FaultLabel {
  fault: FaultType
  phase: 'injected' | 'failure' | 'cleared'
  replica: string
  gpu: number | null
  detail: string
}

/**
 * One telemetry record, exactly as the trace format stores it: `t` is ms since the start of the
 * run (the monitor's clock), `kind` says which payload follows, flattened into the record.
 */
export type TelemetryRecord =
  | ({ t: number; kind: 'engine' } & EngineReading)
  | ({ t: number; kind: 'gpu' } & GpuReading)
  | ({ t: number; kind: 'event' } & MonitorEvent)
  | ({ t: number; kind: 'label' } & FaultLabel)

export type RecordKind = TelemetryRecord['kind']

/** A lifecycle transition: from, to, when and why. */
export interface Transition {
  t: number
  from: LifecycleState
  to: LifecycleState
  reason: string
}

/** Rates and windowed means the store derives from consecutive engine readings. */
export interface EngineDerived {
  preemptionsPerSec: number | null
  promptTokensPerSec: number | null
  generationTokensPerSec: number | null
  stepsPerSec: number | null
  errorsPerSec: number | null
  /** Requests finished (any reason) per second: how fast the engine drains its queue. */
  requestsFinishedPerSec: number | null
  /** Mean over the last scrape interval (Δsum/Δcount); null without new observations. */
  ttftMeanMs: number | null
  itlMeanMs: number | null
  e2eMeanMs: number | null
  queueTimeMeanMs: number | null
  /** ms since generated tokens or engine steps last moved while requests were running; null if idle. */
  stalledForMs: number | null
}

export interface EngineSnapshot {
  replica: string
  lifecycleState: LifecycleState
  /** When `lifecycleState` was entered, and why. */
  since: number
  reason: string
  reading: EngineReading | null
  /** `t` of `reading`. */
  readingAt: number | null
  /** The newest reading is older than the monitor's `staleAfterMs`: rules do not fire on it. */
  stale: boolean
  derived: EngineDerived
}

export interface ErrorEntry {
  t: number
  code: string
  message: string
}

export interface TimedEvent extends MonitorEvent {
  t: number
}

/**
 * What the forecaster predicts. Load-driven failures (KV exhaustion, OOM, SLO, thermal, queue) are
 * predicted ahead; hardware and network failures mostly have no precursor and are detected fast.
 */
export type FailureType =
  | 'kv-exhaustion'
  | 'oom'
  | 'slo-violation'
  | 'thermal-throttle'
  | 'queue-overflow'
  | 'hardware-failure'
  | 'network-failure'

/** What a prediction is about: a replica, and the GPU of it most at risk when one is. */
export interface PredictionTarget {
  replica: string | null
  gpu: number | null
}

/** A forecast from the predictive layer. */
export interface Prediction {
  failureType: FailureType
  /** 0-1: probability that the failure happens (or is under way) within `horizonS`. */
  probability: number
  /** Expected seconds until the failure, null when the predictor gives none (or expects none). */
  timeToFailureS: number | null
  horizonS: number
  target: PredictionTarget
  /** Why, in words: the readings that drove the probability ("kv 0.91 rising 0.8 %/s"). */
  evidence: string[]
  /** Which predictor: a model name with its version, `predict_linear` or `threshold`. */
  model: string
}

/** The monitor's view at one instant: everything a renderer, exporter or strategy needs. */
export interface Checkpoint {
  t: number
  /** The fleet roll-up of the replicas' states. */
  lifecycleState: LifecycleState
  engines: EngineSnapshot[]
  gpus: GpuReading[]
  /** Newest last; bounded. */
  events: TimedEvent[]
  errors: ErrorEntry[]
  predictions: Prediction[]
}

/** Where telemetry comes from. A source pushes records; it never throws into the monitor. */
export interface TelemetrySource {
  readonly name: string
  start(push: (record: TelemetryRecord) => void): void | Promise<void>
  stop(): void | Promise<void>
}

/** Looks at each checkpoint and reports events (a hang, KV pressure...). Pure and synchronous. */
export interface Detector {
  readonly name: string
  detect(checkpoint: Checkpoint, emit: (event: MonitorEvent) => void): void
}

/** A plugin sees records and checkpoints; what it throws is caught, counted and reported. */
export interface MonitorPlugin {
  readonly name: string
  onRecord?(record: TelemetryRecord): void
  onCheckpoint?(checkpoint: Checkpoint): void
  close?(): void | Promise<void>
}
