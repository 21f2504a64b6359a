/**
 * Error classes with stable codes. The native addon throws errors whose `code` is one of
 * these strings; `fromNative` turns them into the matching class. The `Symbol.for` brand keeps
 * `instanceof` working across worker threads and duplicate installs.
 */

const kBrand = Symbol.for('vllm-monitor.error')

export const ErrorCodes = {
  NVML_NOT_FOUND: 'VLLM_MONITOR_NVML_NOT_FOUND',
  NVML_DRIVER_NOT_LOADED: 'VLLM_MONITOR_NVML_DRIVER_NOT_LOADED',
  NVML_NO_PERMISSION: 'VLLM_MONITOR_NVML_NO_PERMISSION',
  NVML_INIT_FAILED: 'VLLM_MONITOR_NVML_INIT_FAILED',
  NVML_DEVICE_NOT_FOUND: 'VLLM_MONITOR_NVML_DEVICE_NOT_FOUND',
  NVML_GPU_LOST: 'VLLM_MONITOR_NVML_GPU_LOST',
  NVML_ERROR: 'VLLM_MONITOR_NVML_ERROR',
  ADDON_NOT_FOUND: 'VLLM_MONITOR_ADDON_NOT_FOUND',
  INVALID_ARG: 'VLLM_MONITOR_INVALID_ARG',
  SAMPLER_CLOSED: 'VLLM_MONITOR_SAMPLER_CLOSED',
  NVIDIA_SMI_FAILED: 'VLLM_MONITOR_NVIDIA_SMI_FAILED',
  INVALID_OPTION: 'VLLM_MONITOR_INVALID_OPTION',
  INVALID_ENV: 'VLLM_MONITOR_INVALID_ENV',
  ILLEGAL_TRANSITION: 'VLLM_MONITOR_ILLEGAL_TRANSITION',
  TRACE_PARSE: 'VLLM_MONITOR_TRACE_PARSE',
  SCRAPE_FAILED: 'VLLM_MONITOR_SCRAPE_FAILED',
  SIM_INVALID_SCENARIO: 'VLLM_MONITOR_SIM_INVALID_SCENARIO',
  MONITOR_CLOSED: 'VLLM_MONITOR_CLOSED',
  PLUGIN_FAILED: 'VLLM_MONITOR_PLUGIN_FAILED',
  MODEL_LOAD: 'VLLM_MONITOR_MODEL_LOAD',
  MODEL_MISMATCH: 'VLLM_MONITOR_MODEL_MISMATCH',
  FORECAST_WORKER: 'VLLM_MONITOR_FORECAST_WORKER',
  FORECAST_TIMEOUT: 'VLLM_MONITOR_FORECAST_TIMEOUT',
  /** Reported (not thrown): a forecast tick failed outright; the next tick tries again. */
  FORECAST_FAILED: 'VLLM_MONITOR_FORECAST_FAILED',
  /** Reported (not thrown): an online retraining round failed; the current model stays. */
  ONLINE_TRAINING: 'VLLM_MONITOR_ONLINE_TRAINING',
  /** Reported (not thrown): a mitigation strategy threw or its actuator failed; the monitor goes on. */
  MITIGATION_FAILED: 'VLLM_MONITOR_MITIGATION_FAILED',
  /** The learner's state file is unreadable or of another version; it is set aside and learning restarts. */
  LEARNER_STATE: 'VLLM_MONITOR_LEARNER_STATE',
  /** The audit log cannot be opened or written. */
  AUDIT_LOG: 'VLLM_MONITOR_AUDIT_LOG',
} as const

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes]

function brand(code: string): symbol {
  return Symbol.for(`vllm-monitor.error.${code}`)
}

export class VllmMonitorError extends Error {
  readonly code: string = 'VLLM_MONITOR_ERR'
  constructor(message: string, options?: ErrorOptions) {
    super(message, options)
    Object.defineProperty(this, kBrand, { value: true })
  }
  // Every subclass overrides this with its own brand, so here only the base brand matters.
  static override [Symbol.hasInstance](x: unknown): boolean {
    return (x as Record<symbol, unknown> | null)?.[kBrand] === true
  }
}

function defineError<C extends ErrorCode>(name: string, code: C) {
  const kOwn = brand(code)
  const Cls = class extends VllmMonitorError {
    override readonly name = name
    override readonly code: C = code
    constructor(message: string, options?: ErrorOptions) {
      super(message, options)
      Object.defineProperty(this, kOwn, { value: true })
    }
    static override [Symbol.hasInstance](x: unknown): boolean {
      return (x as Record<symbol, unknown> | null)?.[kOwn] === true
    }
  }
  Object.defineProperty(Cls, 'name', { value: name })
  return Cls
}

/** libnvidia-ml could not be loaded: no NVIDIA driver installed, or a wrong `libraryPath`. */
export const NvmlNotFoundError = defineError('NvmlNotFoundError', ErrorCodes.NVML_NOT_FOUND)
export type NvmlNotFoundError = InstanceType<typeof NvmlNotFoundError>
/** libnvidia-ml loaded but the kernel driver is not running. */
export const NvmlDriverNotLoadedError = defineError(
  'NvmlDriverNotLoadedError',
  ErrorCodes.NVML_DRIVER_NOT_LOADED,
)
export type NvmlDriverNotLoadedError = InstanceType<typeof NvmlDriverNotLoadedError>
export const NvmlNoPermissionError = defineError('NvmlNoPermissionError', ErrorCodes.NVML_NO_PERMISSION)
export type NvmlNoPermissionError = InstanceType<typeof NvmlNoPermissionError>
export const NvmlInitError = defineError('NvmlInitError', ErrorCodes.NVML_INIT_FAILED)
export type NvmlInitError = InstanceType<typeof NvmlInitError>
export const GpuNotFoundError = defineError('GpuNotFoundError', ErrorCodes.NVML_DEVICE_NOT_FOUND)
export type GpuNotFoundError = InstanceType<typeof GpuNotFoundError>
export const GpuLostError = defineError('GpuLostError', ErrorCodes.NVML_GPU_LOST)
export type GpuLostError = InstanceType<typeof GpuLostError>
export const NvmlError = defineError('NvmlError', ErrorCodes.NVML_ERROR)
export type NvmlError = InstanceType<typeof NvmlError>
/** The native addon is not built for this platform (run `npm install` in a clone to build it). */
export const AddonNotFoundError = defineError('AddonNotFoundError', ErrorCodes.ADDON_NOT_FOUND)
export type AddonNotFoundError = InstanceType<typeof AddonNotFoundError>
export const InvalidArgumentError = defineError('InvalidArgumentError', ErrorCodes.INVALID_ARG)
export type InvalidArgumentError = InstanceType<typeof InvalidArgumentError>
export const SamplerClosedError = defineError('SamplerClosedError', ErrorCodes.SAMPLER_CLOSED)
export type SamplerClosedError = InstanceType<typeof SamplerClosedError>
export const NvidiaSmiError = defineError('NvidiaSmiError', ErrorCodes.NVIDIA_SMI_FAILED)
export type NvidiaSmiError = InstanceType<typeof NvidiaSmiError>

/** A monitor option is missing, of the wrong type or out of range; the message names it. */
export const InvalidOptionError = defineError('InvalidOptionError', ErrorCodes.INVALID_OPTION)
export type InvalidOptionError = InstanceType<typeof InvalidOptionError>
/** An environment variable holds a value the monitor does not accept; the message names both. */
export const InvalidEnvError = defineError('InvalidEnvError', ErrorCodes.INVALID_ENV)
export type InvalidEnvError = InstanceType<typeof InvalidEnvError>
/** A lifecycle transition that vLLM cannot make (e.g. NOT_STARTED -> SERVING). */
export const IllegalTransitionError = defineError('IllegalTransitionError', ErrorCodes.ILLEGAL_TRANSITION)
export type IllegalTransitionError = InstanceType<typeof IllegalTransitionError>
/** A trace file line that is not a valid record; `line` is 1-based. */
export const TraceParseError = defineError('TraceParseError', ErrorCodes.TRACE_PARSE)
export type TraceParseError = InstanceType<typeof TraceParseError>
/** A `/metrics` or `/health` request failed or returned something unusable. */
export const ScrapeError = defineError('ScrapeError', ErrorCodes.SCRAPE_FAILED)
export type ScrapeError = InstanceType<typeof ScrapeError>
/** A simulator scenario or option that cannot be run; the message names the field. */
export const SimScenarioError = defineError('SimScenarioError', ErrorCodes.SIM_INVALID_SCENARIO)
export type SimScenarioError = InstanceType<typeof SimScenarioError>
/** A method was called on a monitor after `close()`. */
export const MonitorClosedError = defineError('MonitorClosedError', ErrorCodes.MONITOR_CLOSED)
export type MonitorClosedError = InstanceType<typeof MonitorClosedError>
/** A plugin threw; the monitor reports it and carries on. */
export const PluginError = defineError('PluginError', ErrorCodes.PLUGIN_FAILED)
export type PluginError = InstanceType<typeof PluginError>

/** A model directory is missing, unreadable or corrupt (bad JSON, checksum, truncated weights). */
export const ModelLoadError = defineError('ModelLoadError', ErrorCodes.MODEL_LOAD)
export type ModelLoadError = InstanceType<typeof ModelLoadError>
/** A readable model that does not fit this monitor: another feature schema, outputs or shapes. */
export const ModelMismatchError = defineError('ModelMismatchError', ErrorCodes.MODEL_MISMATCH)
export type ModelMismatchError = InstanceType<typeof ModelMismatchError>
/** A forecast worker failed to start, crashed or returned garbage; the monitor uses the baselines. */
export const ForecastWorkerError = defineError('ForecastWorkerError', ErrorCodes.FORECAST_WORKER)
export type ForecastWorkerError = InstanceType<typeof ForecastWorkerError>
/** A forecast task ran past its deadline; its worker is replaced. */
export const ForecastTimeoutError = defineError('ForecastTimeoutError', ErrorCodes.FORECAST_TIMEOUT)
export type ForecastTimeoutError = InstanceType<typeof ForecastTimeoutError>

const byCode: Record<string, new (m: string, o?: ErrorOptions) => VllmMonitorError> = {
  [ErrorCodes.NVML_NOT_FOUND]: NvmlNotFoundError,
  [ErrorCodes.NVML_DRIVER_NOT_LOADED]: NvmlDriverNotLoadedError,
  [ErrorCodes.NVML_NO_PERMISSION]: NvmlNoPermissionError,
  [ErrorCodes.NVML_INIT_FAILED]: NvmlInitError,
  [ErrorCodes.NVML_DEVICE_NOT_FOUND]: GpuNotFoundError,
  [ErrorCodes.NVML_GPU_LOST]: GpuLostError,
  [ErrorCodes.NVML_ERROR]: NvmlError,
  [ErrorCodes.INVALID_ARG]: InvalidArgumentError,
  [ErrorCodes.SAMPLER_CLOSED]: SamplerClosedError,
}

/** Rewraps an error thrown by the addon as the class its code names; others pass through. */
export function fromNative(err: unknown): unknown {
  const code = (err as { code?: unknown } | null)?.code
  if (typeof code !== 'string') return err
  const Cls = byCode[code]
  if (Cls === undefined) return err
  return new Cls((err as Error).message, { cause: err })
}

/** Builds the class for a code reported as data (e.g. by `probeNvml`). */
export function errorForCode(code: string, message: string): VllmMonitorError {
  const Cls = byCode[code] ?? NvmlError
  return new Cls(message)
}

/** A mitigation strategy threw or an actuator failed (reported as an error entry; the monitor goes on). */
export const MitigationError = defineError('MitigationError', ErrorCodes.MITIGATION_FAILED)
export type MitigationError = InstanceType<typeof MitigationError>
/** The learner's persisted state cannot be used (unreadable, corrupt, another version). */
export const LearnerStateError = defineError('LearnerStateError', ErrorCodes.LEARNER_STATE)
export type LearnerStateError = InstanceType<typeof LearnerStateError>
/** The audit log cannot be opened or appended to. */
export const AuditLogError = defineError('AuditLogError', ErrorCodes.AUDIT_LOG)
export type AuditLogError = InstanceType<typeof AuditLogError>
