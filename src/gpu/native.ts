/**
 * The only module that touches the native addon. The generated loader throws when no binary
 * matches this platform; that is caught here so the package still imports (and falls back to
 * nvidia-smi or "no GPU") where the addon is missing.
 */
import type * as Binding from '../../native/binding.js'
import { AddonNotFoundError, fromNative } from '../errors.js'

export type NativeBinding = typeof Binding
export type NativeSampler = Binding.GpuSampler
export type NativeSamplerOptions = Binding.SamplerOptions
export type NativeDrained = Binding.Drained
export type NativeDeviceInfo = Binding.DeviceInfo
export type NativeGpuEvent = Binding.GpuEvent
export type NativeWatchAlert = Binding.WatchAlert
export type NativeSamplerStats = Binding.SamplerStats
export type NativeNvmlProbe = Binding.NvmlProbe
export type NativeSlowSample = Binding.SlowSample

let binding: NativeBinding | null = null
let loadError: unknown = null
try {
  binding = await import('../../native/binding.js')
} catch (err) {
  loadError = err
}

/** The addon, or an AddonNotFoundError explaining why it could not be loaded. */
export function loadBinding(): NativeBinding {
  if (binding !== null) return binding
  throw new AddonNotFoundError(
    'the vllm-monitor native addon is not available for this platform ' +
      `(${process.platform}-${process.arch}); run \`npm install\` in a clone to build it with cargo`,
    { cause: loadError },
  )
}

export function addonAvailable(): boolean {
  return binding !== null
}

export function createNativeSampler(options: NativeSamplerOptions): NativeSampler {
  const b = loadBinding()
  try {
    return new b.GpuSampler(options)
  } catch (err) {
    throw fromNative(err)
  }
}

export function probeNvml(libraryPath?: string): NativeNvmlProbe {
  if (binding === null) {
    return {
      available: false,
      code: 'VLLM_MONITOR_ADDON_NOT_FOUND',
      message: `native addon not loaded: ${String((loadError as Error | null)?.message ?? loadError)}`,
    }
  }
  return binding.probeNvml(libraryPath)
}
