import v8 from 'node:v8'
import { runInNewContext } from 'node:vm'
import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/errors.js'
import { ENGINE_SIGNALS, engineKey, GPU_SIGNALS, gpuKey, TelemetryStore } from '../../src/telemetry/store.js'
import type { EngineReading, GpuReading } from '../../src/telemetry/types.js'
import { engineReading, gpuReading } from '../helpers/records.js'

const arr = (a: Float64Array, n = a.length) => Array.from(a.subarray(0, n))

function engine(over: Partial<EngineReading> = {}): EngineReading {
  return engineReading('r0', { requestsRunning: 4, requestsWaiting: 1, kvCacheUsage: 0.5, ...over })
}

function gpu(over: Partial<GpuReading> = {}): GpuReading {
  return gpuReading({ gpuUtilizationPercent: 95, powerWatts: 600.5, temperatureCelsius: 65, ...over })
}

const latest = (store: TelemetryStore, replica: string, signal: string) =>
  store.get(engineKey(replica, signal))?.latest()

describe('TelemetryStore options', () => {
  it('default to 4096 raw samples, 3000 100 ms buckets and 1800 1 s buckets', () => {
    const s = new TelemetryStore()
    expect([s.rawCapacity, s.rollup100msCapacity, s.rollup1sCapacity]).toEqual([4096, 3000, 1800])
  })

  it.each([
    ['rawCapacity', 0],
    ['rawCapacity', 1.5],
    ['rollup100msCapacity', -3],
    ['rollup1sCapacity', Number.NaN],
    ['rollup1sCapacity', '10'],
  ])('reject %s = %s, naming the option', (name, value) => {
    expect(() => new TelemetryStore({ [name]: value })).toThrow(InvalidOptionError)
    expect(() => new TelemetryStore({ [name]: value })).toThrow(name)
  })
})

describe('TelemetryStore series', () => {
  it('are created on first use and found again by key', () => {
    const store = new TelemetryStore({ rawCapacity: 8, rollup100msCapacity: 8, rollup1sCapacity: 8 })
    const s = store.series('custom/x')
    expect(store.series('custom/x')).toBe(s)
    expect(store.get('custom/y')).toBeUndefined()
    expect(store.stats()).toEqual({ samples: 0, dropped: 0, series: 1 })
  })

  it('are keyed engine/<replica>/<signal> and gpu/<index>/<signal>', () => {
    expect(engineKey('r0', 'kvCacheUsage')).toBe('engine/r0/kvCacheUsage')
    expect(gpuKey(3, 'powerWatts')).toBe('gpu/3/powerWatts')
  })

  it('keep a null reading as NaN in the raw ring, outside the roll-ups', () => {
    const s = new TelemetryStore().series('x')
    s.push(0, 2)
    s.push(10, null)
    s.push(20, 4)
    const raw = new Float64Array(3)
    expect(s.copyRaw(raw)).toBe(3)
    expect(arr(raw)).toEqual([2, Number.NaN, 4])
    const one = new Float64Array(1)
    s.copyRollup('100ms', 'mean', one)
    expect(one[0]).toBe(3)
    s.copyRollup('100ms', 'count', one)
    expect(one[0]).toBe(2)
    s.push(30, null)
    expect(s.latest()).toBeNull()
    expect(s.latestT()).toBe(30)
  })

  it('roll up at both resolutions, across bucket boundaries', () => {
    const s = new TelemetryStore().series('x')
    // 10 Hz for 2.5 s: value k at t = k * 100 + 50.
    for (let k = 0; k < 25; k++) s.push(k * 100 + 50, k)
    const means = new Float64Array(3)
    const times = new Float64Array(3)
    expect(s.copyRollup('1s', 'mean', means, times)).toBe(3)
    expect(arr(means)).toEqual([4.5, 14.5, 22])
    expect(arr(times)).toEqual([0, 1000, 2000])
    const counts = new Float64Array(3)
    s.copyRollup('1s', 'count', counts)
    expect(arr(counts)).toEqual([10, 10, 5])
    const mins = new Float64Array(3)
    const maxs = new Float64Array(3)
    s.copyRollup('1s', 'min', mins)
    s.copyRollup('1s', 'max', maxs)
    expect(arr(mins)).toEqual([0, 10, 20])
    expect(arr(maxs)).toEqual([9, 19, 24])
    expect(s.rollupSize('100ms')).toBe(25)
    const last100 = new Float64Array(2)
    s.copyRollup('100ms', 'last', last100, times)
    expect(arr(last100)).toEqual([23, 24])
    expect(arr(times, 2)).toEqual([2300, 2400])
  })

  it('give a fixed-length window with gaps as NaN, so features can tell a gap from a zero', () => {
    const s = new TelemetryStore().series('x')
    s.push(0, 0)
    s.push(100, 0)
    s.push(500, 1)
    const w = new Float64Array(8)
    expect(s.window('100ms', 'mean', 8, w)).toBe(3)
    expect(arr(w)).toEqual([Number.NaN, Number.NaN, 0, 0, Number.NaN, Number.NaN, Number.NaN, 1])
    // Aligned on a later "now": the series has said nothing since 500 ms.
    expect(s.window('1s', 'count', 3, w, 2500)).toBe(1)
    expect(arr(w, 3)).toEqual([3, 0, 0])
  })

  it('return the raw samples since a time', () => {
    const s = new TelemetryStore().series('x')
    for (let k = 0; k < 10; k++) s.push(k * 10, k)
    const out = new Float64Array(10)
    const outT = new Float64Array(10)
    expect(s.rawSince(65, out, outT)).toBe(3)
    expect(arr(out, 3)).toEqual([7, 8, 9])
    expect(arr(outT, 3)).toEqual([70, 80, 90])
  })

  it('drop and count samples older than the newest, keeping equal times', () => {
    const store = new TelemetryStore()
    const s = store.series('x')
    expect(s.push(100, 1)).toBe(true)
    expect(s.push(100, 2)).toBe(true)
    expect(s.push(99, 3)).toBe(false)
    expect(s.push(Number.NaN, 3)).toBe(false)
    expect(s.latest()).toBe(2)
    expect(store.stats()).toEqual({ samples: 2, dropped: 2, series: 1 })
  })
})

describe('TelemetryStore.ingestEngine', () => {
  it('stores the gauges and derives rates from consecutive counters', () => {
    const store = new TelemetryStore()
    store.ingestEngine(0, engine({ generationTokensTotal: 1000, stepsTotal: 50, promptTokensTotal: 10 }))
    expect(store.derived('r0')!.generationTokensPerSec).toBeNull()
    store.ingestEngine(
      2000,
      engine({ generationTokensTotal: 1600, stepsTotal: 90, promptTokensTotal: 410, preemptionsTotal: 4 }),
    )
    const d = store.derived('r0')!
    expect(d.generationTokensPerSec).toBe(300)
    expect(d.stepsPerSec).toBe(20)
    expect(d.promptTokensPerSec).toBe(200)
    expect(d.preemptionsPerSec).toBe(2)
    expect(d.errorsPerSec).toBe(0)
    expect(latest(store, 'r0', 'generationTokensPerSec')).toBe(300)
    expect(latest(store, 'r0', 'kvCacheUsage')).toBe(0.5)
    expect(latest(store, 'r0', 'requestsRunning')).toBe(4)
    expect(latest(store, 'r0', 'requestsWaiting')).toBe(1)
    expect(store.replicas()).toEqual(['r0'])
    expect(store.stats().series).toBe(ENGINE_SIGNALS.length)
  })

  it('treats a counter going down as a restart: null for that interval, never negative', () => {
    const store = new TelemetryStore()
    store.ingestEngine(0, engine({ generationTokensTotal: 5000, stepsTotal: 100 }))
    store.ingestEngine(1000, engine({ generationTokensTotal: 40, stepsTotal: 2 }))
    expect(store.derived('r0')!.generationTokensPerSec).toBeNull()
    expect(store.derived('r0')!.stepsPerSec).toBeNull()
    store.ingestEngine(2000, engine({ generationTokensTotal: 140, stepsTotal: 12 }))
    expect(store.derived('r0')!.generationTokensPerSec).toBe(100)
    expect(store.derived('r0')!.stepsPerSec).toBe(10)
  })

  it('derives interval latency means from Δsum/Δcount, null when nothing was observed', () => {
    const store = new TelemetryStore()
    store.ingestEngine(0, engine({ ttftSecondsSum: 1, ttftCount: 10, itlSecondsSum: 2, itlCount: 100 }))
    store.ingestEngine(
      1000,
      engine({
        ttftSecondsSum: 2,
        ttftCount: 20,
        itlSecondsSum: 2,
        itlCount: 100,
        e2eSecondsSum: 3,
        e2eCount: 1,
      }),
    )
    const d = store.derived('r0')!
    expect(d.ttftMeanMs).toBeCloseTo(100, 9)
    expect(d.itlMeanMs).toBeNull()
    expect(d.e2eMeanMs).toBeCloseTo(3000, 9)
    expect(d.queueTimeMeanMs).toBeNull()
  })

  it('gives null for a counter the reading does not have', () => {
    const store = new TelemetryStore()
    store.ingestEngine(0, engine({ preemptionsTotal: null }))
    store.ingestEngine(1000, engine({ preemptionsTotal: 3 }))
    expect(store.derived('r0')!.preemptionsPerSec).toBeNull()
    store.ingestEngine(2000, engine({ preemptionsTotal: 5 }))
    expect(store.derived('r0')!.preemptionsPerSec).toBe(2)
  })

  it('pushes nulls for an unreachable reading, and restarts the rates after it', () => {
    const store = new TelemetryStore()
    store.ingestEngine(0, engine({ generationTokensTotal: 0 }))
    store.ingestEngine(1000, engine({ generationTokensTotal: 100 }))
    store.ingestEngine(2000, engine({ reachable: false, error: 'ECONNREFUSED', requestsRunning: null }))
    for (const sig of ENGINE_SIGNALS) expect(latest(store, 'r0', sig)).toBeNull()
    expect(Object.values(store.derived('r0')!).every((v) => v === null)).toBe(true)
    store.ingestEngine(3000, engine({ generationTokensTotal: 300 }))
    expect(store.derived('r0')!.generationTokensPerSec).toBeNull()
    store.ingestEngine(4000, engine({ generationTokensTotal: 400 }))
    expect(store.derived('r0')!.generationTokensPerSec).toBe(100)
  })

  it('measures how long an engine with running requests has made no progress', () => {
    const store = new TelemetryStore()
    const at = (t: number, over: Partial<EngineReading>) => {
      store.ingestEngine(t, engine(over))
      return store.derived('r0')!.stalledForMs
    }
    expect(at(0, { generationTokensTotal: 100, stepsTotal: 10 })).toBe(0)
    expect(at(1000, { generationTokensTotal: 200, stepsTotal: 20 })).toBe(0)
    expect(at(2000, { generationTokensTotal: 200, stepsTotal: 20 })).toBe(1000)
    expect(at(3500, { generationTokensTotal: 200, stepsTotal: 20 })).toBe(2500)
    // A step alone (e.g. a prefill-only step) is progress.
    expect(at(4000, { generationTokensTotal: 200, stepsTotal: 21 })).toBe(0)
    expect(latest(store, 'r0', 'stalledForMs')).toBe(0)
  })

  it('says nothing about stalls when no request is running, and starts the clock when one is', () => {
    const store = new TelemetryStore()
    const at = (t: number, over: Partial<EngineReading>) => {
      store.ingestEngine(t, engine(over))
      return store.derived('r0')!.stalledForMs
    }
    expect(at(0, { requestsRunning: 0, generationTokensTotal: 100 })).toBeNull()
    expect(at(1000, { requestsRunning: 0, generationTokensTotal: 100 })).toBeNull()
    expect(at(2000, { requestsRunning: 2, generationTokensTotal: 100 })).toBe(0)
    expect(at(3000, { requestsRunning: 2, generationTokensTotal: 100 })).toBe(1000)
    expect(at(4000, { requestsRunning: null, generationTokensTotal: 100 })).toBeNull()
  })

  it('keeps the stall clock running through an outage when the totals have not moved', () => {
    const store = new TelemetryStore()
    store.ingestEngine(0, engine({ generationTokensTotal: 100, stepsTotal: 10 }))
    store.ingestEngine(1000, engine({ reachable: false }))
    expect(store.derived('r0')!.stalledForMs).toBeNull()
    store.ingestEngine(5000, engine({ generationTokensTotal: 100, stepsTotal: 10 }))
    expect(store.derived('r0')!.stalledForMs).toBe(5000)
    // A restart (totals drop) is not a stall.
    store.ingestEngine(6000, engine({ generationTokensTotal: 0, stepsTotal: 0 }))
    expect(store.derived('r0')!.stalledForMs).toBe(0)
  })

  it('drops a reading older than the replica’s last and counts its samples', () => {
    const store = new TelemetryStore()
    store.ingestEngine(1000, engine({ generationTokensTotal: 10 }))
    expect(store.ingestEngine(500, engine({ generationTokensTotal: 5 }))).toBe(false)
    expect(store.stats().dropped).toBe(ENGINE_SIGNALS.length)
    expect(latest(store, 'r0', 'kvCacheUsage')).toBe(0.5)
  })

  it('reuses one derived object per replica, and has none for an unknown replica', () => {
    const store = new TelemetryStore()
    store.ingestEngine(0, engine())
    store.ingestEngine(0, engine({ replica: 'r1' }))
    expect(store.derived('r0')).toBe(store.derived('r0'))
    expect(store.derived('r0')).not.toBe(store.derived('r1'))
    expect(store.derived('nope')).toBeNull()
  })
})

describe('TelemetryStore.ingestGpu', () => {
  it('stores the GPU signals under gpu/<index>/<signal>', () => {
    const store = new TelemetryStore()
    store.ingestGpu(0, gpu({ gpu: 1 }))
    expect(store.get(gpuKey(1, 'memoryUsedBytes'))!.latest()).toBe(70e9)
    expect(store.get(gpuKey(1, 'powerWatts'))!.latest()).toBe(600.5)
    expect(store.get(gpuKey(1, 'smClockMhz'))!.latest()).toBe(1980)
    expect(store.gpuIndices()).toEqual([1])
    expect(store.stats()).toEqual({ samples: GPU_SIGNALS.length, dropped: 0, series: GPU_SIGNALS.length })
  })

  it('pushes nulls for a lost GPU and for readings it could not take', () => {
    const store = new TelemetryStore()
    store.ingestGpu(0, gpu({ temperatureCelsius: null }))
    expect(store.get(gpuKey(0, 'temperatureCelsius'))!.latest()).toBeNull()
    store.ingestGpu(100, gpu({ lost: true }))
    for (const sig of GPU_SIGNALS) expect(store.get(gpuKey(0, sig))!.latest()).toBeNull()
    expect(store.ingestGpu(50, gpu())).toBe(false)
    expect(store.stats().dropped).toBe(GPU_SIGNALS.length)
  })
})

// Allocation checks. Bytes allocated over a run = heap growth + what every GC in between freed
// (GCProfiler reports both sides of each). Allocating even one boxed number per sample would be
// >= 16 B per sample; the bounds below are far under that and far over the noise of code that a
// background compile installs during the run.
//
// The loops must not allocate themselves, whatever V8 decides to inline: a non-integer number
// passed to a call that is not inlined is boxed by the caller, and so is a value that is
// sometimes null. So times and values passed as arguments are small integers (never boxed),
// and fractional values go through `pushFrom`'s typed-array cell, the way the store itself
// feeds its series. Readings are objects built beforehand, so passing them costs nothing.
const gc: () => void = (() => {
  v8.setFlagsFromString('--expose-gc')
  return (globalThis as { gc?: () => void }).gc ?? runInNewContext('gc')
})()

function allocatedBytes(run: () => void): number {
  gc()
  const profiler = new v8.GCProfiler()
  profiler.start()
  const before = process.memoryUsage().heapUsed
  run()
  const after = process.memoryUsage().heapUsed
  let freed = 0
  for (const s of profiler.stop().statistics)
    freed += s.beforeGC.heapStatistics.usedHeapSize - s.afterGC.heapStatistics.usedHeapSize
  return after - before + freed
}

/** Warms `loop` up, then measures it over `n` iterations, in many calls so it is optimised whole. */
function allocatedPerIteration(loop: (n: number) => void, n: number): number {
  for (let k = 0; k < 40; k++) loop(n / 100)
  return (
    allocatedBytes(() => {
      for (let k = 0; k < 100; k++) loop(n / 100)
    }) / n
  )
}

describe('steady-state ingest', () => {
  const small = { rawCapacity: 1024, rollup100msCapacity: 300, rollup1sCapacity: 60 }

  it('does not allocate in Series.push, nulls included', () => {
    const store = new TelemetryStore(small)
    let t = 0
    const loop = (n: number) => {
      for (let i = 0; i < n; i++) {
        t += 37
        const s = store.series(engineKey('r0', 'requestsRunning'))
        if (i % 7 === 0) s.push(t, null)
        else s.push(t, i & 63)
      }
    }
    expect(allocatedPerIteration(loop, 1_000_000)).toBeLessThan(1)
  })

  it('does not allocate in Series.pushFrom with fractional times and values', () => {
    const s = new TelemetryStore(small).series('x')
    const io = new Float64Array(2)
    const loop = (n: number) => {
      for (let i = 0; i < n; i++) {
        io[0] = io[0]! + 37.25
        io[1] = i % 11 === 0 ? Number.NaN : 0.25 + (i & 127) / 1000
        s.pushFrom(io)
      }
    }
    expect(allocatedPerIteration(loop, 1_000_000)).toBeLessThan(1)
  })

  it('does not allocate in ingestEngine and ingestGpu', () => {
    const store = new TelemetryStore(small)
    const pool = Array.from({ length: 64 }, (_, k) => ({
      e0: engine({
        generationTokensTotal: 100 * k + 0.5,
        stepsTotal: k % 9 === 0 ? 0 : 10 * k,
        ttftSecondsSum: k / 3,
        ttftCount: 2 * k,
      }),
      e1: engine({ replica: 'r1', reachable: k % 16 !== 3, kvCacheUsage: k / 70, requestsRunning: k % 5 }),
      g0: gpu({ powerWatts: 500 + k / 3 }),
      g1: gpu({ gpu: 1, lost: k % 32 === 5, temperatureCelsius: 60 + k / 7 }),
    }))
    let t = 0
    const loop = (n: number) => {
      for (let i = 0; i < n; i++) {
        const c = pool[i & 63]!
        t += 100
        store.ingestEngine(t, c.e0)
        store.ingestEngine(t, c.e1)
        store.ingestGpu(t, c.g0)
        store.ingestGpu(t, c.g1)
      }
    }
    // Per checkpoint of 36 samples.
    expect(allocatedPerIteration(loop, 100_000)).toBeLessThan(8)
  })
})
