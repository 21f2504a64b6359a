/**
 * One look at the GPUs through the native sampler: static facts, free memory, and the compute
 * processes (the slow tier lists them, so this waits for its first tick).
 */
import { probeNvml } from '../gpu/native.js'
import { createGpuSampler } from '../gpu/sampler.js'
import type { GpuDeviceInfo, GpuSnapshot } from '../gpu/types.js'
import type { GpuMemoryState } from './memory.js'

export interface GpuInventory {
  devices: GpuDeviceInfo[]
  snapshots: GpuSnapshot[]
  driverVersion: string | null
  cudaDriverVersion: string | null
}

export type InventoryResult =
  | { ok: true; inventory: GpuInventory }
  | { ok: false; code: string; message: string }

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

export async function readGpuInventory(
  libraryPath: string | null,
  timeoutMs = 3_000,
): Promise<InventoryResult> {
  const probe = probeNvml(libraryPath ?? undefined)
  if (!probe.available)
    return {
      ok: false,
      code: probe.code ?? 'VLLM_MONITOR_NVML_ERROR',
      message: probe.message ?? 'NVML failed',
    }
  if ((probe.deviceCount ?? 0) === 0) return { ok: true, inventory: empty(probe.driverVersion ?? null) }
  let sampler: ReturnType<typeof createGpuSampler>
  try {
    sampler = createGpuSampler({
      libraryPath: libraryPath ?? undefined,
      intervalUs: 10_000,
      cachedIntervalMs: 50,
      slowIntervalMs: 50,
      events: false,
    })
  } catch (err) {
    const e = err as { code?: string; message: string }
    return { ok: false, code: e.code ?? 'VLLM_MONITOR_NVML_ERROR', message: e.message }
  }
  try {
    const devices = sampler.devices()
    sampler.start()
    const end = Date.now() + timeoutMs
    let snapshots: GpuSnapshot[] = []
    for (;;) {
      await sleep(20)
      sampler.drain()
      snapshots = sampler.snapshot()
      const slowDone = sampler.stats().slowSamplesTaken >= devices.length
      const memDone = snapshots.every((s) => s.memoryFreeBytes !== null || s.lost)
      if ((slowDone && memDone) || Date.now() > end) break
    }
    const first = devices[0]
    return {
      ok: true,
      inventory: {
        devices,
        snapshots,
        driverVersion: first?.driverVersion ?? probe.driverVersion ?? null,
        cudaDriverVersion: first?.cudaDriverVersion ?? null,
      },
    }
  } finally {
    sampler.close()
  }
}

function empty(driverVersion: string | null): GpuInventory {
  return { devices: [], snapshots: [], driverVersion, cudaDriverVersion: null }
}

/**
 * NVML total of a device; where the driver only answers the v1 memory call (no total in the
 * snapshot, pre-R510) it is used + free.
 */
export function deviceTotalBytes(inv: GpuInventory, index: number): number | null {
  const d = inv.devices.find((x) => x.index === index)
  const s = inv.snapshots.find((x) => x.index === index)
  const total = s?.memoryTotalBytes ?? d?.memoryTotalBytes ?? null
  if (total !== null) return total
  if (s?.memoryUsedBytes == null || s.memoryFreeBytes === null) return null
  return s.memoryUsedBytes + s.memoryFreeBytes + (s.memoryReservedBytes ?? 0)
}

/** Total as CUDA counts it (NVML total less reserved) and free memory, per device. */
export function memoryStates(inv: GpuInventory): GpuMemoryState[] {
  return inv.devices.map((d) => {
    const s = inv.snapshots.find((x) => x.index === d.index)
    return {
      index: d.index,
      name: d.name,
      totalBytes: (deviceTotalBytes(inv, d.index) ?? 0) - (s?.memoryReservedBytes ?? 0),
      freeBytes: s?.memoryFreeBytes ?? null,
    }
  })
}
