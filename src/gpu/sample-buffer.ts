import { InvalidArgumentError } from '../errors.js'
import type { CachedSamples, FastSamples } from './types.js'

/** The columns behind a SampleBuffer, handed to the addon by `GpuSampler.drainInto`. */
export const kBuffers = Symbol('vllm-monitor.sampleBuffers')
const kFastFields = ['timestampNs', 'memoryUsedBytes', 'memoryFreeBytes', 'memoryReservedBytes'] as const
const kCachedFields = [
  'timestampNs',
  'gpuUtilizationPercent',
  'memoryUtilizationPercent',
  'temperatureCelsius',
  'powerMilliwatts',
  'smClockMhz',
  'memoryClockMhz',
  'clockEventReasons',
  'performanceState',
] as const

/**
 * Preallocated columns for `GpuSampler.drainInto`. Each field is a view of `capacity` entries;
 * only the first `fastRows` / `cachedRows` of them hold the last drain's rows.
 */
export class SampleBuffer {
  readonly capacity: number
  readonly fast: FastSamples
  readonly cached: CachedSamples
  fastRows = 0
  cachedRows = 0
  readonly [kBuffers]: {
    fastValues: Float64Array
    fastDevices: Uint32Array
    cachedValues: Float64Array
    cachedDevices: Uint32Array
    counts: Uint32Array
  }

  constructor(capacity = 65_536) {
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > 1 << 24)
      throw new InvalidArgumentError('SampleBuffer capacity must be an integer between 1 and 16777216')
    this.capacity = capacity
    const fastValues = new Float64Array(capacity * kFastFields.length)
    const cachedValues = new Float64Array(capacity * kCachedFields.length)
    const fastDevices = new Uint32Array(capacity)
    const cachedDevices = new Uint32Array(capacity)
    const view = (buf: Float64Array, k: number) => buf.subarray(k * capacity, (k + 1) * capacity)
    this.fast = Object.fromEntries([
      ...kFastFields.map((f, k) => [f, view(fastValues, k)]),
      ['device', fastDevices],
    ]) as unknown as FastSamples
    this.cached = Object.fromEntries([
      ...kCachedFields.map((f, k) => [f, view(cachedValues, k)]),
      ['device', cachedDevices],
    ]) as unknown as CachedSamples
    this[kBuffers] = { fastValues, fastDevices, cachedValues, cachedDevices, counts: new Uint32Array(3) }
  }
}
