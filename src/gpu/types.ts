/** Static facts about one GPU, read once when the sampler opens it. `null` = not reported. */
export interface GpuDeviceInfo {
  index: number
  uuid: string | null
  name: string | null
  memoryTotalBytes: number | null
  driverVersion: string | null
  /** CUDA driver API version, e.g. "13.0". */
  cudaDriverVersion: string | null
  pciBusId: string | null
  /** e.g. "9.0" (Hopper). */
  computeCapability: string | null
  migEnabled: boolean | null
  eccEnabled: boolean | null
  powerLimitMilliwatts: number | null
}

/** The latest known state of one GPU. Every reading that cannot be taken is `null`. */
export interface GpuSnapshot extends SlowCounters {
  index: number
  /** Where the values came from: the native sampler, nvidia-smi polling, or nowhere. */
  source: 'nvml' | 'nvidia-smi'
  lost: boolean
  /** ns since the source's epoch (CLOCK_MONOTONIC for nvml) of the newest memory reading. */
  timestampNs: number | null
  /** Allocated framebuffer memory, bytes (NVML v2: excludes `memoryReservedBytes`). */
  memoryUsedBytes: number | null
  memoryFreeBytes: number | null
  /** Memory the driver and firmware set aside. */
  memoryReservedBytes: number | null
  memoryTotalBytes: number | null
  /** Busy time over the driver's last sample period (1/6-1 s), 0-100. */
  gpuUtilizationPercent: number | null
  memoryUtilizationPercent: number | null
  temperatureCelsius: number | null
  /** Board power; a 1 s average on Ampere and newer except GA100. */
  powerMilliwatts: number | null
  smClockMhz: number | null
  memoryClockMhz: number | null
  /** nvmlClocksEventReasons bitmask; see `describeClockEventReasons`. */
  clockEventReasons: number | null
  performanceState: number | null
}

/** Fast rows (one per device per tick): one typed array per field, NaN where unreadable. */
export interface FastSamples {
  /** ns since the sampler's `epochNs`. */
  timestampNs: Float64Array
  device: Uint32Array
  memoryUsedBytes: Float64Array
  memoryFreeBytes: Float64Array
  memoryReservedBytes: Float64Array
}

/** Driver-cached counters, one row per device per cached interval; NaN = not supported. */
export interface CachedSamples {
  timestampNs: Float64Array
  device: Uint32Array
  gpuUtilizationPercent: Float64Array
  memoryUtilizationPercent: Float64Array
  temperatureCelsius: Float64Array
  powerMilliwatts: Float64Array
  smClockMhz: Float64Array
  memoryClockMhz: Float64Array
  clockEventReasons: Float64Array
  performanceState: Float64Array
}

/** The slow-tier counters (read every `slowIntervalMs` on their own thread); null = not supported. */
export interface SlowCounters {
  pcieTxBytesPerSec: number | null
  pcieRxBytesPerSec: number | null
  eccCorrectedVolatile: number | null
  eccUncorrectedVolatile: number | null
  remappedRowsCorrectable: number | null
  remappedRowsUncorrectable: number | null
  remappedRowsPending: boolean | null
  remappedRowsFailure: boolean | null
  retiredPagesSingleBit: number | null
  retiredPagesDoubleBit: number | null
  energyMillijoules: number | null
  /** Compute processes and the GPU memory each holds; null if the device cannot list them. */
  processes: Array<{ pid: number; usedMemoryBytes: number | null }> | null
}

export interface SlowSample extends SlowCounters {
  device: number
  timestampNs: number
}

export type GpuEventKind = 'xid' | 'eccSingleBit' | 'eccDoubleBit' | 'gpuLost' | 'eventError'

export interface GpuEvent {
  kind: GpuEventKind
  device: number
  timestampNs: number
  /** The Xid code of an `xid` event, else null. */
  xid: number | null
  message: string
}

export interface GpuSamples {
  fast: FastSamples
  cached: CachedSamples
  slow: SlowSample[]
  /** Events that no `event` listener received. */
  events: GpuEvent[]
}

export interface WatchOptions {
  device: number
  /** Fire when (total - free) / total reaches this fraction, in (0, 1]. */
  memoryUsedFraction?: number
  /** Fire when used memory grows at least this fast over `growthWindowMs`. */
  growthBytesPerSec?: number
  /** Default 100. */
  growthWindowMs?: number
}

export interface WatchAlert {
  watchId: number
  device: number
  reason: 'memoryUsedFraction' | 'growthBytesPerSec'
  /** The crossing tick, ns since the sampler's `epochNs`. */
  timestampNs: number
  memoryUsedBytes: number
  memoryTotalBytes: number
  usedFraction: number
  growthBytesPerSec: number | null
}

export interface GpuSamplerStats {
  running: boolean
  ticks: number
  samplesTaken: number
  samplesDropped: number
  cachedSamplesTaken: number
  cachedSamplesDropped: number
  slowSamplesTaken: number
  eventsDelivered: number
  loopOverruns: number
  readErrors: number
  requestedHz: number | null
  achievedHz: number
  runSeconds: number
  samplerCpuSeconds: number
  /** Sampler-thread CPU per second of wall time (0.01 = 1 % of one core). */
  samplerCpuFraction: number
  nvmlLatencyP50Ns: number | null
  nvmlLatencyP99Ns: number | null
  lostDevices: number[]
}

const kReasons: ReadonlyArray<[number, string]> = [
  [0x1, 'gpuIdle'],
  [0x2, 'applicationsClocksSetting'],
  [0x4, 'swPowerCap'],
  [0x8, 'hwSlowdown'],
  [0x10, 'syncBoost'],
  [0x20, 'swThermalSlowdown'],
  [0x40, 'hwThermalSlowdown'],
  [0x80, 'hwPowerBrakeSlowdown'],
  [0x100, 'displayClockSetting'],
]

/** Names the bits of an nvmlClocksEventReasons mask (the `clocks_event_reasons` of nvidia-smi). */
export function describeClockEventReasons(mask: number | null): string[] {
  if (mask === null || Number.isNaN(mask)) return []
  return kReasons.filter(([bit]) => Math.floor(mask / bit) % 2 === 1).map(([, name]) => name)
}
