export {
  AddonNotFoundError,
  type ErrorCode,
  ErrorCodes,
  ForecastTimeoutError,
  ForecastWorkerError,
  GpuLostError,
  GpuNotFoundError,
  IllegalTransitionError,
  InvalidArgumentError,
  InvalidEnvError,
  InvalidOptionError,
  ModelLoadError,
  ModelMismatchError,
  MonitorClosedError,
  NvidiaSmiError,
  NvmlDriverNotLoadedError,
  NvmlError,
  NvmlInitError,
  NvmlNoPermissionError,
  NvmlNotFoundError,
  PluginError,
  SamplerClosedError,
  ScrapeError,
  SimScenarioError,
  TraceParseError,
  VllmMonitorError,
} from './errors.js'
export { type HttpSurface, type HttpSurfaceOptions, startHttpSurface } from './export/http.js'
export { EXPORT_FORMAT, EXPORT_VERSION, type MonitorExport, toExportJson } from './export/json.js'
export { MetricNames, MonitorMetrics, type MonitorMetricsOptions } from './export/registry.js'
export { writePrometheusTextfile } from './export/textfile.js'
export { BASELINE_NAMES, type BaselineName, Baselines, predictLinear } from './forecast/baselines.js'
export {
  datasetFromRecords,
  datasetFromScenario,
  datasetFromTrace,
  labelRows,
  type SuiteSplit,
  suiteDataset,
  type TraceDataset,
  traceSegment,
} from './forecast/dataset.js'
export { type AlarmSource, formatScores, scoreDatasets, type TypeScore } from './forecast/evaluate.js'
export {
  FEATURE_COUNT,
  FEATURE_NAMES,
  FEATURE_SCHEMA_VERSION,
  FeatureExtractor,
  type ForecastTarget,
} from './forecast/features.js'
export { evaluateRuns, train } from './forecast/lazy.js'
export {
  loadModel,
  loadModelArtifacts,
  type ModelArtifacts,
  type ModelMeta,
  saveModel,
} from './forecast/model-io.js'
export {
  OnlineTrainer,
  type OnlineTrainerOptions,
  type OutcomeReport,
  type RoundResult,
} from './forecast/online.js'
export { type FailureOnset, OnsetTracker } from './forecast/onsets.js'
export { ForecastPool, type ForecastPoolOptions } from './forecast/pool.js'
export {
  DEFAULT_MODEL_DIR,
  PredictiveDetector,
  type PredictiveDetectorOptions,
  type PredictiveStatus,
} from './forecast/predictive.js'
export type { Report } from './forecast/report.js'
export { DEFAULT_SLO, FAILURE_TYPES, MODEL_OUTPUTS, SCORING, type SloOptions } from './forecast/spec.js'
export { SUITE } from './forecast/suite.js'
export type { TrainOptions, TrainProgress, TrainResult } from './forecast/train.js'
export {
  createHttpHandler,
  expressMiddleware,
  fastifyPlugin,
  honoMiddleware,
  PRIORITY_HEADER,
  type VllmContext,
} from './gateway/adapters/index.js'
export {
  AdmissionController,
  type AdmissionOptions,
  AdmissionRejectedError,
  type AdmissionState,
} from './gateway/admission.js'
export {
  Gateway,
  type GatewayOptions,
  type GatewayReplica,
  type ReplicaRequestStats,
  RequestHandle,
} from './gateway/gateway.js'
export { Gradient2Limit } from './gateway/gradient2.js'
export { type OutcomeKind, type PickerOptions, ReplicaPicker } from './gateway/picker.js'
export { GatewayProxy, type GatewayProxyOptions, type GatewayUpstream } from './gateway/proxy.js'
export type { SloOptions as GatewaySloOptions } from './gateway/slo.js'
export type {
  AdmissionActuator,
  Permit,
  Priority,
  Rejection,
  RejectReason,
  ReplicaView,
  RequestObservation,
} from './gateway/types.js'
export { type WrapOptions, wrap } from './gateway/wrap.js'
export { addonAvailable, probeNvml } from './gpu/native.js'
export {
  type NvidiaSmiOptions,
  NvidiaSmiPoller,
  type NvidiaSmiPollerOptions,
  queryNvidiaSmi,
} from './gpu/nvidia-smi.js'
export { GpuReadingSource, type GpuReadingSourceOptions } from './gpu/reading-source.js'
export { SampleBuffer } from './gpu/sample-buffer.js'
export { createGpuSampler, GpuSampler, type GpuSamplerOptions } from './gpu/sampler.js'
export {
  GpuSource,
  type GpuSourceMode,
  type GpuSourceOptions,
  type GpuSourceStatus,
  openGpuSource,
} from './gpu/source.js'
export {
  type CachedSamples,
  describeClockEventReasons,
  type FastSamples,
  type GpuDeviceInfo,
  type GpuEvent,
  type GpuEventKind,
  type GpuSamplerStats,
  type GpuSamples,
  type GpuSnapshot,
  type SlowCounters,
  type SlowSample,
  type WatchAlert,
  type WatchOptions,
} from './gpu/types.js'
export {
  isLegalTransition,
  LEGAL_TRANSITIONS,
  LIFECYCLE_STATES,
  LifecycleMachine,
  type LifecycleMachineOptions,
} from './lifecycle/machine.js'
export { rollUpStates } from './lifecycle/rollup.js'
export {
  maxNumSeqsOf,
  restartFromSupervisor,
  routingFromPicker,
  withMaxNumSeqs,
} from './mitigation/actuators.js'
export {
  type AuditEntry,
  type AuditKind,
  AuditLog,
  type AuditLogOptions,
  readAuditLog,
} from './mitigation/audit.js'
export { ContinuousLearner } from './mitigation/learner.js'
export { contextKey, describeContext, type LearnerFeatures } from './mitigation/learner-context.js'
export {
  type ContinuousLearnerOptions,
  DEFAULT_RUNBOOK,
  type Decision,
  type LearnedRule,
  type Recommendation,
} from './mitigation/learner-options.js'
export type { LearnerState } from './mitigation/learner-state.js'
export {
  type ActionRecord,
  type MitigationCount,
  MitigationOrchestrator,
  type OrchestratorOptions,
} from './mitigation/orchestrator.js'
export {
  DEFAULT_JUDGE_WINDOW_MS,
  type Judgement,
  OutcomeJudge,
  rewardOf,
  type Verdict as OutcomeVerdict,
} from './mitigation/outcome.js'
export { type NvidiaSmiProcessesOptions, processesFromNvidiaSmi } from './mitigation/processes.js'
export { MitigationRuntime } from './mitigation/runtime.js'
export {
  type ApprovalRequest,
  SafetyGate,
  type SafetyOptions,
  type Verdict as SafetyVerdict,
} from './mitigation/safety.js'
export {
  type KubernetesScalerOptions,
  kubernetesScaler,
  type WebhookScalerOptions,
  webhookScaler,
} from './mitigation/scalers.js'
export {
  type ClosedLoopMode,
  type ClosedLoopOptions,
  type ClosedLoopResult,
  type FaultOutcome,
  PREVENTABLE_FAULTS,
  runClosedLoop,
  SCENARIO_FAILURE_TYPE,
  SIM_CANDIDATES,
} from './mitigation/simulate.js'
export * from './mitigation/strategies/index.js'
export type {
  ControlActuator,
  MitigationActuators,
  MitigationContext,
  MitigationOutcome,
  MitigationResult,
  MitigationStrategy,
  MitigationTrigger,
  ProcessActuator,
  RestartActuator,
  RoutingActuator,
  ScaleActuator,
  ScaleRequest,
  ShedActuator,
} from './mitigation/types.js'
export { MonitorCore, type MonitorCoreOptions } from './monitor/core.js'
export {
  createMonitor,
  type MonitorEvents,
  VLLMEngineMonitor,
  VLLMEngineMonitor as VllmEngineMonitor,
} from './monitor/monitor.js'
export { ENV_VARS, type MonitorOptions, optionsFromEnv, resolveOptions } from './monitor/options.js'
export { type ReplayOptions, replayCheckpoints } from './monitor/replay.js'
export type { MonitorStatus, ReplicaStatus } from './monitor/status.js'
export {
  type AutoFix,
  applyFixes,
  CHECK_IDS,
  type CheckId,
  type CheckResult,
  type CheckStatus,
  type FixOutcome,
  type PrestartupOptions,
  type PrestartupReport,
  type ProgressEvent,
  prestartupCheck,
} from './prestartup/index.js'
export { type SimActuatorOptions, simActuators } from './sim/actuators.js'
export {
  type Arrival,
  type ArrivalSource,
  burstArrivals,
  defaultTracePath,
  diurnalArrivals,
  loadTraceCsv,
  mergeArrivals,
  poissonArrivals,
  surge,
  traceArrivals,
} from './sim/arrivals.js'
export { FAULT_TYPES, type FaultSpec, type FaultSpecInput } from './sim/faults.js'
export { type FleetOptions, SimFleet } from './sim/fleet.js'
export {
  SimGateway,
  type SimGatewayOptions,
  type SimGatewayRequest,
  type SimGatewayStats,
} from './sim/gateway.js'
export { SimGpuSource, type SimGpuSourceOptions } from './sim/gpu-source.js'
export { GPUS, type GpuProfile, MODELS, type ModelProfile } from './sim/hardware.js'
export { createRng, Rng } from './sim/random.js'
export { runSimulation, type SimulationOptions, writeSimulationTrace } from './sim/run.js'
export { SCENARIO_NAMES, type Scenario, scenario } from './sim/scenarios.js'
export { SimServer, type SimServerOptions } from './sim/server.js'
export { engineKey, gpuKey, Series, TelemetryStore, type TelemetryStoreOptions } from './telemetry/store.js'
export type {
  Checkpoint,
  Detector,
  EngineDerived,
  EngineReading,
  EngineSnapshot,
  FailureType,
  FaultLabel,
  FaultType,
  GpuReading,
  LifecycleState,
  MonitorEvent,
  MonitorPlugin,
  Prediction,
  PredictionTarget,
  TelemetryRecord,
  TelemetrySource,
  TimedEvent,
  Transition,
} from './telemetry/types.js'
export { TRACE_FORMAT, TRACE_VERSION, type TraceHeader } from './trace/format.js'
export { readTrace, readTraceHeader } from './trace/reader.js'
export { createTraceWriter, TraceWriter } from './trace/writer.js'
export {
  type Capability,
  type ControlCapabilities,
  type ControlFailure,
  type ControlResult,
  type PauseMode,
  VllmControlClient,
  type VllmControlClientOptions,
} from './vllm/control.js'
export { readEngineMetrics } from './vllm/engine-metrics.js'
export { parseExposition } from './vllm/exposition.js'
export {
  type BucketCounts,
  HistogramWindow,
  type HistogramWindowOptions,
  histogramQuantile,
  type LatencyHistograms,
  LatencyWindows,
  mergeLatencyHistograms,
} from './vllm/histogram-window.js'
export { classifyLogLine, parseLogLine } from './vllm/log-lines.js'
export { LogLineSource } from './vllm/log-source.js'
export { LogTail, type LogTailOptions } from './vllm/log-tail.js'
export { HealthProbeSource, type HealthProbeSourceOptions, type ProbeEndpoint } from './vllm/probes.js'
export { fetchExposition, HttpScrapeSource, scrapeOnce } from './vllm/scraper.js'
export {
  type ExitInfo,
  type OutputStream,
  type RestartPolicy,
  type SupervisorEvents,
  type SupervisorState,
  type TailLine,
  VllmSupervisor,
  type VllmSupervisorOptions,
} from './vllm/supervisor.js'
