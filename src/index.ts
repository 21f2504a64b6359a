export {
  AddonNotFoundError,
  type ErrorCode,
  ErrorCodes,
  GpuLostError,
  GpuNotFoundError,
  InvalidArgumentError,
  NvidiaSmiError,
  NvmlDriverNotLoadedError,
  NvmlError,
  NvmlInitError,
  NvmlNoPermissionError,
  NvmlNotFoundError,
  SamplerClosedError,
  VllmMonitorError,
} from './errors.js'
export { addonAvailable, probeNvml } from './gpu/native.js'
export {
  type NvidiaSmiOptions,
  NvidiaSmiPoller,
  type NvidiaSmiPollerOptions,
  queryNvidiaSmi,
} from './gpu/nvidia-smi.js'
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
