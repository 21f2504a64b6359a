import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { NvmlNotFoundError } from '../../src/errors.js'
import { type GpuSource, openGpuSource } from '../../src/gpu/source.js'
import type { GpuSnapshot } from '../../src/gpu/types.js'
import { fakeNvmlPath, sleep, useScenario, waitFor } from '../helpers/fake-nvml.js'

const fakeSmi = join(import.meta.dirname, '../fixtures/nvidia-smi/nvidia-smi-h200')
const open: GpuSource[] = []
afterEach(() => {
  for (const s of open.splice(0)) s.close()
})
const track = (s: GpuSource) => {
  open.push(s)
  return s
}

describe('openGpuSource', () => {
  it('uses the native sampler when NVML loads, and drains it into snapshots', async () => {
    useScenario('multi-gpu')
    const src = track(openGpuSource({ libraryPath: fakeNvmlPath, drainIntervalMs: 20 }))
    expect(src.status).toEqual({ mode: 'nvml', slowPath: false, reasons: [] })
    const seen: GpuSnapshot[][] = []
    src.on('samples', (s) => seen.push(s))
    src.start()
    await waitFor(() => seen.length >= 3)
    const last = seen.at(-1)!
    expect(last.map((s) => s.index)).toEqual([0, 1, 2])
    expect(last[0]!.memoryUsedBytes).toBeGreaterThan(2e9)
    expect(last[0]!.source).toBe('nvml')
    expect(src.devices()[2]!.name).toBe('NVIDIA A10G')
  })

  it('falls back to nvidia-smi, flagged as the slow path, when NVML cannot be loaded', async () => {
    const src = track(
      openGpuSource({
        libraryPath: '/nonexistent/libnvidia-ml.so.1',
        nvidiaSmiPath: fakeSmi,
        nvidiaSmiIntervalMs: 100,
      }),
    )
    expect(src.status.mode).toBe('nvidia-smi')
    expect(src.status.slowPath).toBe(true)
    expect(src.status.reasons[0]).toMatchObject({ mode: 'nvml', code: 'VLLM_MONITOR_NVML_NOT_FOUND' })
    src.start()
    await waitFor(() => src.snapshot().length > 0)
    expect(src.snapshot()[0]!.source).toBe('nvidia-smi')
    expect(src.sampler).toBeNull()
  })

  it('gives up on nvidia-smi, naming why, on a host that does not have it', async () => {
    const src = track(
      openGpuSource({
        libraryPath: '/nonexistent/libnvidia-ml.so.1',
        nvidiaSmiPath: '/nonexistent/nvidia-smi',
        nvidiaSmiIntervalMs: 100,
      }),
    )
    src.start()
    await waitFor(() => src.status.mode === 'none')
    expect(src.status.slowPath).toBe(false)
    expect(src.status.reasons.map((r) => `${r.mode}:${r.code}`)).toEqual([
      'nvml:VLLM_MONITOR_NVML_NOT_FOUND',
      'nvidia-smi:VLLM_MONITOR_NVIDIA_SMI_FAILED',
    ])
    expect(src.snapshot()).toEqual([])
  })

  it('runs with no GPU data when asked to, without throwing', async () => {
    const src = track(openGpuSource({ mode: 'none' }))
    src.start()
    await sleep(20)
    expect(src.status).toEqual({ mode: 'none', slowPath: false, reasons: [] })
    expect(src.snapshot()).toEqual([])
    expect(src.devices()).toEqual([])
  })

  it('throws the typed error when the native mode is required but unavailable', () => {
    expect(() => openGpuSource({ mode: 'nvml', libraryPath: '/nonexistent/libnvidia-ml.so.1' })).toThrow(
      NvmlNotFoundError,
    )
  })

  it('re-emits Xid events from the sampler', async () => {
    useScenario('multi-gpu')
    const src = track(openGpuSource({ libraryPath: fakeNvmlPath }))
    const kinds: string[] = []
    src.on('event', (e) => kinds.push(`${e.kind}:${e.device}`))
    src.start()
    await waitFor(() => kinds.includes('gpuLost:1'))
    expect(kinds).toEqual(['xid:0', 'eccDoubleBit:0', 'xid:1', 'gpuLost:1'])
  })
})
