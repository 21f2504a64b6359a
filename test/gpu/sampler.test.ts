import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterEach, describe, expect, it } from 'vitest'
import {
  GpuNotFoundError,
  InvalidArgumentError,
  NvmlDriverNotLoadedError,
  NvmlNotFoundError,
  SamplerClosedError,
  VllmMonitorError,
} from '../../src/errors.js'
import { loadBinding, probeNvml } from '../../src/gpu/native.js'
import { SampleBuffer } from '../../src/gpu/sample-buffer.js'
import { createGpuSampler, GpuSampler } from '../../src/gpu/sampler.js'
import type { GpuEvent, WatchAlert } from '../../src/gpu/types.js'
import { fakeNvmlPath, sleep, useScenario, waitFor } from '../helpers/fake-nvml.js'

const open: GpuSampler[] = []
function sampler(scenario: string, options: ConstructorParameters<typeof GpuSampler>[0] = {}) {
  useScenario(scenario)
  const s = createGpuSampler({ libraryPath: fakeNvmlPath, ...options })
  open.push(s)
  return s
}
afterEach(() => {
  for (const s of open.splice(0)) s.close()
})

const H200_TOTAL = 150754820096
const H200_RESERVED = 556793856
// h200.scenario: memory_used ramps linearly from 2e9 to 1.3e11 bytes over the first 2000 ms.
const ramp = (tMs: number) => 2e9 + (1.3e11 - 2e9) * Math.min(1, Math.max(0, tMs / 2000))

describe('GpuSampler against the fake libnvidia-ml', () => {
  it('drains memory rows as typed arrays that follow the scripted ramp', async () => {
    const s = sampler('h200', { intervalUs: 1_000 }).start()
    await sleep(300)
    const { fast } = s.drain()
    const n = fast.timestampNs.length
    expect(fast.timestampNs).toBeInstanceOf(Float64Array)
    expect(fast.device).toBeInstanceOf(Uint32Array)
    expect(n).toBeGreaterThan(150)
    for (let i = 0; i < n; i++) {
      expect(fast.device[i]).toBe(0)
      if (i > 0) {
        expect(fast.timestampNs[i]!).toBeGreaterThan(fast.timestampNs[i - 1]!)
        expect(fast.memoryUsedBytes[i]!).toBeGreaterThanOrEqual(fast.memoryUsedBytes[i - 1]!)
      }
      // The fake's clock starts at nvmlInit, a little before the sampler's epoch.
      const expected = ramp(fast.timestampNs[i]! / 1e6)
      expect(Math.abs(fast.memoryUsedBytes[i]! - expected)).toBeLessThan(0.02 * 1.28e11)
      expect(fast.memoryUsedBytes[i]! + fast.memoryFreeBytes[i]! + fast.memoryReservedBytes[i]!).toBe(
        H200_TOTAL,
      )
      expect(fast.memoryReservedBytes[i]).toBe(H200_RESERVED)
    }
    expect(s.drain().fast.timestampNs.length).toBeLessThan(n)
  })

  it('moves rows into preallocated columns with drainInto, leaving what does not fit', async () => {
    const s = sampler('h200', { intervalUs: 1_000 }).start()
    await sleep(100)
    s.stop()
    const buf = new SampleBuffer(32)
    s.drainInto(buf)
    expect(buf.fastRows).toBe(32)
    expect(buf.fast.timestampNs.length).toBe(32)
    const firstT = buf.fast.timestampNs[31]!
    let total = 32
    while (true) {
      s.drainInto(buf)
      if (buf.fastRows === 0) break
      expect(buf.fast.timestampNs[0]!).toBeGreaterThan(firstT)
      total += buf.fastRows
    }
    expect(total).toBe(s.stats().samplesTaken)
    const sum = buf.fast.memoryUsedBytes[0]! + buf.fast.memoryFreeBytes[0]! + buf.fast.memoryReservedBytes[0]!
    expect(sum).toBe(H200_TOTAL)
    expect(s.snapshot()[0]!.memoryUsedBytes).toBeGreaterThan(2e9)
  })

  it('reads the driver-cached counters on their own interval', async () => {
    const s = sampler('h200', { intervalUs: 1_000, cachedIntervalMs: 50 }).start()
    await sleep(320)
    const { cached } = s.drain()
    expect(cached.device.length).toBeGreaterThanOrEqual(4)
    expect(cached.device.length).toBeLessThanOrEqual(9)
    expect([...cached.gpuUtilizationPercent].every((v) => v === 87)).toBe(true)
    expect(cached.memoryUtilizationPercent[0]).toBe(40)
    expect(cached.temperatureCelsius[0]).toBe(62)
    expect(cached.powerMilliwatts[0]).toBe(512000)
    expect(cached.smClockMhz[0]).toBe(1980)
    expect(cached.memoryClockMhz[0]).toBe(3201)
    expect(cached.clockEventReasons[0]).toBe(0)
    expect(cached.performanceState[0]).toBe(0)
  })

  it('reads PCIe, ECC, pages, energy and per-process memory on the slow thread', async () => {
    const s = sampler('h200', { slowIntervalMs: 100 }).start()
    await sleep(250)
    const { slow } = s.drain()
    expect(slow.length).toBeGreaterThanOrEqual(2)
    const row = slow.at(-1)!
    expect(row.pcieTxBytesPerSec).toBe(1200000 * 1024)
    expect(row.pcieRxBytesPerSec).toBe(800000 * 1024)
    expect(row.eccUncorrectedVolatile).toBe(0)
    expect(row.remappedRowsPending).toBe(false)
    expect(row.retiredPagesDoubleBit).toBe(0)
    expect(row.energyMillijoules).toBeGreaterThan(0)
    expect(row.processes?.map((p) => p.pid).sort()).toEqual([4242, 4311])
    const snap = s.snapshot()[0]!
    expect(snap.processes).toHaveLength(2)
    expect(snap.memoryTotalBytes).toBe(H200_TOTAL)
  })

  it('describes several GPUs of different models', () => {
    const s = sampler('multi-gpu')
    const d = s.devices()
    expect(d.map((x) => x.name)).toEqual(['NVIDIA H200', 'NVIDIA H100 80GB HBM3', 'NVIDIA A10G'])
    expect(d.map((x) => x.memoryTotalBytes)).toEqual([150754820096, 85520809984, 23836098560])
    expect(d[2]).toMatchObject({
      index: 2,
      computeCapability: '8.6',
      driverVersion: '580.159.04',
      cudaDriverVersion: '13.0',
      pciBusId: '00000000:00:1E.0',
      eccEnabled: true,
      migEnabled: false,
      powerLimitMilliwatts: 300000,
    })
    expect(d[0]!.uuid).toMatch(/^GPU-/)
  })

  it('samples only the devices it is given', async () => {
    const s = sampler('multi-gpu', { devices: [0, 2] }).start()
    await sleep(100)
    const { fast } = s.drain()
    expect(new Set(fast.device)).toEqual(new Set([0, 2]))
    expect(s.devices().map((d) => d.index)).toEqual([0, 2])
  })

  it('gives null, never an exception, for counters a device does not support', async () => {
    const s = sampler('multi-gpu', { devices: [2], cachedIntervalMs: 20, slowIntervalMs: 50 }).start()
    await sleep(150)
    const { cached, slow } = s.drain()
    expect(cached.temperatureCelsius.length).toBeGreaterThan(0)
    expect(Number.isNaN(cached.temperatureCelsius[0]!)).toBe(true)
    expect(Number.isNaN(cached.powerMilliwatts[0]!)).toBe(true)
    expect(cached.gpuUtilizationPercent[0]).toBe(64)
    expect(slow.at(-1)).toMatchObject({ remappedRowsCorrectable: null, processes: null })
    expect(slow.at(-1)!.pcieTxBytesPerSec).toBe(310000 * 1024)
    const snap = s.snapshot()[0]!
    expect(snap).toMatchObject({ temperatureCelsius: null, powerMilliwatts: null, gpuUtilizationPercent: 64 })
    expect(s.stats().readErrors).toBe(0)
  })

  it('marks a GPU lost mid-run, reports it once and keeps sampling the others', async () => {
    const s = sampler('multi-gpu', { intervalUs: 1_000 })
    const lost: GpuEvent[] = []
    s.on('gpuLost', (e) => lost.push(e))
    s.start()
    await sleep(700)
    const { fast } = s.drain()
    expect(lost).toHaveLength(1)
    expect(lost[0]).toMatchObject({ kind: 'gpuLost', device: 1 })
    expect(lost[0]!.message).toContain('GPU 1 has fallen off the bus')
    expect(s.stats().lostDevices).toEqual([1])
    let last1 = 0
    let last0 = 0
    for (let i = 0; i < fast.device.length; i++) {
      if (fast.device[i] === 1) last1 = fast.timestampNs[i]!
      if (fast.device[i] === 0) last0 = fast.timestampNs[i]!
    }
    expect(last1 / 1e6).toBeLessThan(420)
    expect(last0 / 1e6).toBeGreaterThan(600)
    expect(s.snapshot()[1]!.lost).toBe(true)
    expect(s.snapshot()[0]!.lost).toBe(false)
  })

  it('delivers Xid and ECC events from the event thread as they happen', async () => {
    const s = sampler('multi-gpu')
    const xids: GpuEvent[] = []
    const ecc: GpuEvent[] = []
    s.on('xid', (e) => xids.push(e))
    s.on('ecc', (e) => ecc.push(e))
    s.start()
    await waitFor(() => xids.length >= 2)
    expect(xids.map((e) => [e.device, e.xid])).toEqual([
      [0, 48],
      [1, 79],
    ])
    expect(xids[1]!.message).toBe('Xid 79 on GPU 1: GPU has fallen off the bus')
    expect(xids[0]!.timestampNs / 1e6).toBeGreaterThan(150)
    expect(ecc).toHaveLength(1)
    expect(ecc[0]).toMatchObject({ kind: 'eccDoubleBit', device: 0 })
  })

  it('keeps events for drain() when no listener is set', async () => {
    useScenario('multi-gpu')
    const b = loadBinding()
    const raw = new b.GpuSampler({ intervalUs: 1_000, libraryPath: fakeNvmlPath })
    try {
      raw.start()
      await sleep(450)
      const kinds = raw.drain().events.map((e) => `${e.kind}:${e.device}`)
      expect(kinds).toEqual(['xid:0', 'eccDoubleBit:0', 'xid:1', 'gpuLost:1'])
    } finally {
      raw.close()
    }
  })

  it('calls a watch callback from the sampler thread each time memory crosses a fraction', async () => {
    // sawtooth.scenario: memory goes from 10 % to 95 % of total every 20 ms.
    const s = sampler('sawtooth', { intervalUs: 500 })
    const alerts: WatchAlert[] = []
    const unwatch = s.watch({ device: 0, memoryUsedFraction: 0.8 }, (a) => alerts.push(a))
    s.start()
    await waitFor(() => alerts.length >= 5)
    for (const a of alerts) {
      expect(a.reason).toBe('memoryUsedFraction')
      expect(a.usedFraction).toBeGreaterThanOrEqual(0.8)
      expect(a.memoryTotalBytes).toBe(85520809984)
    }
    // Edge-triggered: one alert per sawtooth period, not one per tick above the line.
    const gaps = alerts.slice(1).map((a, i) => (a.timestampNs - alerts[i]!.timestampNs) / 1e6)
    expect(Math.min(...gaps)).toBeGreaterThan(10)
    unwatch()
    await sleep(30)
    const count = alerts.length
    await sleep(100)
    expect(alerts.length).toBe(count)
  })

  it('fires a growth watch when memory grows faster than its threshold, and not otherwise', async () => {
    // h200.scenario grows 6.4e10 bytes/s.
    const s = sampler('h200', { intervalUs: 1_000 })
    const fast: WatchAlert[] = []
    const slow: WatchAlert[] = []
    s.watch({ device: 0, growthBytesPerSec: 3e10, growthWindowMs: 50 }, (a) => fast.push(a))
    s.watch({ device: 0, growthBytesPerSec: 1e11, growthWindowMs: 50 }, (a) => slow.push(a))
    s.start()
    await waitFor(() => fast.length >= 1)
    await sleep(100)
    expect(fast).toHaveLength(1)
    expect(fast[0]!.reason).toBe('growthBytesPerSec')
    expect(fast[0]!.growthBytesPerSec! / 6.4e10).toBeCloseTo(1, 1)
    expect(slow).toHaveLength(0)
  })

  it('reports a throwing watch callback as a warning instead of crashing the host', async () => {
    const s = sampler('sawtooth', { intervalUs: 500 })
    const warnings: Error[] = []
    const onWarning = (w: Error) => warnings.push(w)
    process.on('warning', onWarning)
    try {
      s.watch({ device: 0, memoryUsedFraction: 0.5 }, () => {
        throw new Error('user bug')
      })
      s.start()
      await waitFor(() => warnings.length >= 1)
      expect((warnings[0] as Error & { code: string }).code).toBe('VLLM_MONITOR_CALLBACK_THREW')
      expect(warnings[0]!.message).toContain('user bug')
    } finally {
      process.off('warning', onWarning)
    }
  })

  it('falls back to the v1 memory call on drivers without nvmlDeviceGetMemoryInfo_v2', async () => {
    const s = sampler('old-driver', { intervalUs: 1_000 }).start()
    await sleep(100)
    const { fast } = s.drain()
    expect(fast.timestampNs.length).toBeGreaterThan(50)
    // v1 has no reserved field; its `used` includes the reserved part.
    expect(Number.isNaN(fast.memoryReservedBytes[0]!)).toBe(true)
    expect(fast.memoryUsedBytes[0]! + fast.memoryFreeBytes[0]!).toBe(34359738368)
    expect(fast.memoryUsedBytes[0]!).toBeGreaterThan(1e9)
    expect(s.stats().readErrors).toBe(0)
    expect(s.snapshot()[0]!.memoryReservedBytes).toBeNull()
  })

  it('samples a device listed twice only once', async () => {
    const s = sampler('multi-gpu', { devices: [0, 2, 0] }).start()
    await sleep(50)
    s.stop()
    expect(s.devices().map((d) => d.index)).toEqual([0, 2])
    const { fast } = s.drain()
    const perDevice = [0, 2].map((d) => fast.device.filter((x) => x === d).length)
    expect(perDevice[0]).toBe(perDevice[1])
  })

  it('stops at once even with a long interval', async () => {
    const s = sampler('h200', { intervalUs: 10_000_000 }).start()
    await sleep(30)
    const t0 = Date.now()
    s.stop()
    expect(Date.now() - t0).toBeLessThan(1_000)
    expect(s.drain().fast.timestampNs.length).toBe(1)
  })

  it('refuses overlapping or undersized drainInto buffers instead of crashing', () => {
    useScenario('h200')
    const raw = new (loadBinding().GpuSampler)({ intervalUs: 1_000, libraryPath: fakeNvmlPath })
    try {
      const shared = new Float64Array(64)
      const n = new Uint32Array(3)
      expect(() =>
        raw.drainInto(shared, new Uint32Array(4), shared.subarray(20), new Uint32Array(2), n),
      ).toThrow('drainInto: the five buffers must not overlap')
      expect(() =>
        raw.drainInto(new Float64Array(3), new Uint32Array(4), new Float64Array(0), new Uint32Array(0), n),
      ).toThrow('drainInto: buffers are smaller than their device columns imply')
      raw.drainInto(new Float64Array(0), new Uint32Array(0), new Float64Array(0), new Uint32Array(0), n)
      expect([...n]).toEqual([0, 0, 0])
    } finally {
      raw.close()
    }
  })

  it('counts rows dropped when nobody drains in time, keeping the newest', async () => {
    const s = sampler('h200', { intervalUs: 1_000, ringCapacity: 16 }).start()
    await sleep(150)
    s.stop()
    const stats = s.stats()
    expect(stats.samplesDropped).toBeGreaterThan(50)
    const { fast } = s.drain()
    expect(fast.timestampNs.length).toBe(16)
    expect(stats.samplesTaken - stats.samplesDropped).toBe(16)
  })

  it('reports its rate, NVML latency and CPU in stats()', async () => {
    const s = sampler('h200', { intervalUs: 1_000 }).start()
    await sleep(250)
    s.stop()
    const st = s.stats()
    expect(st.running).toBe(false)
    expect(st.requestedHz).toBe(1000)
    expect(st.achievedHz).toBeGreaterThan(500)
    expect(st.samplesTaken).toBe(st.ticks)
    expect(st.nvmlLatencyP50Ns).toBeGreaterThan(0)
    expect(st.nvmlLatencyP99Ns!).toBeGreaterThanOrEqual(st.nvmlLatencyP50Ns!)
    expect(st.samplerCpuSeconds).toBeGreaterThan(0)
    expect(st.samplerCpuFraction).toBeLessThan(1)
  })

  it('can stop and start again, keeping undrained samples', async () => {
    const s = sampler('h200').start()
    await sleep(50)
    s.stop()
    expect(s.running).toBe(false)
    const before = s.drain().fast.timestampNs.length
    expect(before).toBeGreaterThan(0)
    s.start()
    await sleep(50)
    expect(s.running).toBe(true)
    expect(s.drain().fast.timestampNs.length).toBeGreaterThan(0)
  })

  it('is closed once and for all by close()', () => {
    const s = sampler('h200').start()
    s.close()
    s.close()
    expect(s.running).toBe(false)
    expect(() => s.drain()).toThrow(SamplerClosedError)
    expect(() => s.start()).toThrow('this GpuSampler was closed')
  })
})

describe('GpuSampler errors', () => {
  it('throws NvmlNotFoundError naming the path when the library cannot be loaded', () => {
    const err = (() => {
      try {
        createGpuSampler({ libraryPath: '/nonexistent/libnvidia-ml.so.1' })
      } catch (e) {
        return e
      }
    })()
    expect(err).toBeInstanceOf(NvmlNotFoundError)
    expect(err).toBeInstanceOf(VllmMonitorError)
    expect((err as NvmlNotFoundError).code).toBe('VLLM_MONITOR_NVML_NOT_FOUND')
    expect((err as Error).message).toContain('/nonexistent/libnvidia-ml.so.1 could not be loaded')
  })

  it('throws NvmlDriverNotLoadedError when the driver is not running', () => {
    useScenario('driver-not-loaded')
    expect(() => createGpuSampler({ libraryPath: fakeNvmlPath })).toThrow(NvmlDriverNotLoadedError)
  })

  it('throws GpuNotFoundError for a device that does not exist', () => {
    useScenario('h200')
    expect(() => createGpuSampler({ libraryPath: fakeNvmlPath, devices: [3] })).toThrow(
      new GpuNotFoundError('options.devices: GPU 3 does not exist (NVML reports 1)'),
    )
  })

  it('validates its options at the boundary with exact messages', () => {
    expect(() => createGpuSampler({ intervalUs: -1 })).toThrow(
      new InvalidArgumentError('options.intervalUs must be an integer between 0 and 10000000'),
    )
    expect(() => createGpuSampler({ ringCapacity: 2 })).toThrow(
      'options.ringCapacity must be an integer between 16 and 16777216',
    )
    expect(() => createGpuSampler({ devices: [] })).toThrow(
      'options.devices must be a non-empty array of GPU indices',
    )
    useScenario('h200')
    const s = sampler('h200')
    expect(() => s.watch({ device: 0 }, () => {})).toThrow(
      'watch: give memoryUsedFraction and/or growthBytesPerSec',
    )
    expect(() => s.watch({ device: 0, memoryUsedFraction: 1.5 }, () => {})).toThrow(
      'watch: memoryUsedFraction must be in (0, 1]',
    )
    expect(() => s.watch({ device: 4, memoryUsedFraction: 0.5 }, () => {})).toThrow(InvalidArgumentError)
  })

  it('probes NVML without throwing', () => {
    useScenario('multi-gpu')
    expect(probeNvml(fakeNvmlPath)).toMatchObject({
      available: true,
      deviceCount: 3,
      driverVersion: '580.159.04',
    })
    expect(probeNvml('/nonexistent/libnvidia-ml.so.1')).toMatchObject({
      available: false,
      code: 'VLLM_MONITOR_NVML_NOT_FOUND',
    })
    expect(loadBinding().available('/nonexistent/libnvidia-ml.so.1')).toBe(false)
    expect(GpuSampler.available('/nonexistent/libnvidia-ml.so.1')).toBe(false)
    expect(GpuSampler.available(fakeNvmlPath)).toBe(true)
  })
})

describe('GpuSampler and the process lifetime', () => {
  it('does not keep the Node process alive while it samples', async () => {
    const script = `
      const b = await import(${JSON.stringify(join(import.meta.dirname, '../../native/binding.js'))})
      const s = new b.GpuSampler({ intervalUs: 1000, libraryPath: ${JSON.stringify(fakeNvmlPath)} })
      s.onEvent(() => {})
      s.watch({ device: 0, memoryUsedFraction: 0.5 }, () => {})
      s.start()
      setTimeout(() => console.log('ticks', s.stats().ticks > 0), 200)
    `
    const started = Date.now()
    const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script], {
      env: { ...process.env, FAKE_NVML_SCENARIO: useScenario('sawtooth') },
      timeout: 10_000,
    })
    expect(stdout.trim()).toBe('ticks true')
    expect(Date.now() - started).toBeLessThan(8_000)
  })

  it('stops its threads when dropped without close() and collected', async () => {
    // Runs the built package (npm install builds dist/) in a child with --expose-gc.
    const script = `
      import { readdirSync, readFileSync } from 'node:fs'
      const { createGpuSampler } = await import(${JSON.stringify(join(import.meta.dirname, '../../dist/index.js'))})
      const threads = () => readdirSync('/proc/self/task')
        .map((t) => { try { return readFileSync('/proc/self/task/' + t + '/comm', 'utf8').trim() } catch { return '' } })
        .filter((n) => n.startsWith('vllm-mon')).length
      ;(() => {
        const s = createGpuSampler({ libraryPath: ${JSON.stringify(fakeNvmlPath)} })
        s.on('xid', () => {})
        s.watch({ device: 0, memoryUsedFraction: 0.99 }, () => {})
        s.start()
        // Held until its threads are counted: an early GC must not take it before that.
        globalThis.keep = s
      })()
      await new Promise((r) => setTimeout(r, 100))
      const before = threads()
      delete globalThis.keep
      for (let i = 0; i < 20 && threads() > 0; i++) { globalThis.gc(); await new Promise((r) => setTimeout(r, 50)) }
      console.log(JSON.stringify({ before, after: threads() }))
    `
    const { stdout } = await promisify(execFile)(
      process.execPath,
      ['--expose-gc', '--input-type=module', '-e', script],
      { env: { ...process.env, FAKE_NVML_SCENARIO: useScenario('h200') }, timeout: 15_000 },
    )
    expect(JSON.parse(stdout)).toEqual({ before: 3, after: 0 })
  })
})
