// Feature vectors (src/forecast/features.ts), read from a TelemetryStore fed by hand.
import { describe, expect, it } from 'vitest'
import {
  FEATURE_COUNT,
  FEATURE_NAMES,
  FeatureExtractor,
  type ForecastTarget,
  forecastTargets,
} from '../../src/forecast/features.js'
import { nullDerived, TelemetryStore } from '../../src/telemetry/store.js'
import type {
  Checkpoint,
  EngineReading,
  EngineSnapshot,
  GpuReading,
  LifecycleState,
} from '../../src/telemetry/types.js'
import { engineReading, gpuReading } from '../helpers/records.js'

function idx(name: string): number {
  const i = FEATURE_NAMES.indexOf(name)
  if (i < 0) throw new Error(`no feature ${name}`)
  return i
}

/** Feeds one engine reading a second for t = 0..seconds, `over(t)` giving the fields that vary. */
function engineRun(
  store: TelemetryStore,
  seconds: number,
  over: (s: number) => Partial<EngineReading>,
  replica = 'r0',
) {
  for (let s = 0; s <= seconds; s++) store.ingestEngine(s * 1000, engineReading(replica, over(s)))
}

function gpuRun(store: TelemetryStore, seconds: number, over: (s: number) => Partial<GpuReading>) {
  for (let s = 0; s <= seconds; s++) store.ingestGpu(s * 1000, gpuReading(over(s)))
}

function extract(
  store: TelemetryStore,
  tMs: number,
  target: ForecastTarget,
  state: LifecycleState = 'SERVING',
) {
  const out = new Float32Array(FEATURE_COUNT)
  new FeatureExtractor(store).extract(tMs, target, state, out, 0)
  return out
}

const GPU_FEATURES = FEATURE_NAMES.filter((n) =>
  /^(memFrac|temp|powerFrac|clockRel|thermal|eccRise)\./.test(n),
)

describe('FEATURE_NAMES', () => {
  it('has FEATURE_COUNT entries, all distinct', () => {
    expect(FEATURE_NAMES).toHaveLength(FEATURE_COUNT)
    expect(new Set(FEATURE_NAMES).size).toBe(FEATURE_COUNT)
  })

  it('gives 7 statistics for each of 11 engine and 6 GPU channels, then 6 extras', () => {
    expect(FEATURE_COUNT).toBe((11 + 6) * 7 + 6)
    expect(GPU_FEATURES).toHaveLength(6 * 7)
    expect(FEATURE_NAMES.slice(-6)).toEqual([
      'kvFullIn',
      'memFullIn',
      'tempLimitIn',
      'queueDrain',
      'degraded',
      'hasGpu',
    ])
  })
})

describe('FeatureExtractor.extract', () => {
  it.each([
    ['a store with a minute of data', true],
    ['an empty store', false],
  ])(
    'writes exactly FEATURE_COUNT finite values at the offset and nothing outside them, from %s',
    (_, fill) => {
      const store = new TelemetryStore()
      if (fill) {
        engineRun(store, 60, (s) => ({
          kvCacheUsage: 0.2 + s / 200,
          requestsWaiting: s % 7,
          requestsRunning: 4,
        }))
        gpuRun(store, 60, (s) => ({ temperatureCelsius: 60 + s / 10, eccCorrectedVolatile: s }))
      }
      const offset = 13
      const sentinel = -12345
      const out = new Float32Array(offset + FEATURE_COUNT + 9).fill(sentinel)
      new FeatureExtractor(store).extract(60_000, { replica: 'r0', gpus: [0] }, 'SERVING', out, offset)
      expect(Array.from(out.subarray(0, offset))).toEqual(new Array(offset).fill(sentinel))
      expect(Array.from(out.subarray(offset + FEATURE_COUNT))).toEqual(new Array(9).fill(sentinel))
      const written = Array.from(out.subarray(offset, offset + FEATURE_COUNT))
      expect(written.filter((v) => !Number.isFinite(v) || v === sentinel)).toEqual([])
    },
  )

  it('shows a climbing KV cache as positive change and slope, and a fill time under the horizon', () => {
    const store = new TelemetryStore()
    // 0.30 at 0 s, +0.01 per second: 0.90 at 60 s, full 10 s later.
    engineRun(store, 60, (s) => ({ kvCacheUsage: 0.3 + 0.01 * s }))
    const f = extract(store, 60_000, { replica: 'r0', gpus: [] })
    expect(f[idx('kv.last')]).toBeCloseTo(0.9, 5)
    expect(f[idx('kv.d10')]).toBeCloseTo(0.1, 5)
    expect(f[idx('kv.d30')]).toBeCloseTo(0.3, 5)
    expect(f[idx('kv.max60')]).toBeCloseTo(0.9, 5)
    expect(f[idx('kv.slope60')]).toBeCloseTo(0.6, 4)
    expect(f[idx('kvFullIn')]).toBeLessThan(1)
    expect(f[idx('kvFullIn')]).toBeCloseTo(10 / 240, 4)
  })

  it('reads a flat KV cache as no change and a fill time of "not soon" (1)', () => {
    const store = new TelemetryStore()
    engineRun(store, 60, () => ({ kvCacheUsage: 0.7 }))
    const f = extract(store, 60_000, { replica: 'r0', gpus: [] })
    expect(f[idx('kv.last')]).toBeCloseTo(0.7, 6)
    expect(f[idx('kv.d30')]).toBe(0)
    expect(f[idx('kv.slope60')]).toBeCloseTo(0, 9)
    expect(f[idx('kvFullIn')]).toBe(1)
  })

  it('estimates the time until the GPU memory fills and the temperature reaches 87 °C', () => {
    const store = new TelemetryStore()
    engineRun(store, 60, () => ({}))
    // +0.1 GB/s from 60 of 80 GB: 66 GB at 60 s, full 140 s later; +0.25 °C/s from 50 °C: 65 °C, 88 s to 87 °C.
    gpuRun(store, 60, (s) => ({ memoryUsedBytes: 60e9 + 0.1e9 * s, temperatureCelsius: 50 + 0.25 * s }))
    const f = extract(store, 60_000, { replica: 'r0', gpus: [0] })
    expect(f[idx('memFullIn')]).toBeCloseTo(140 / 240, 3)
    expect(f[idx('tempLimitIn')]).toBeCloseTo(88 / 240, 3)
  })

  it('reads a queue that drains in 30 s as queueDrain 1, capped at 4 when nothing finishes', () => {
    const draining = new TelemetryStore()
    engineRun(draining, 20, (s) => ({ requestsWaiting: 60, requestsFinishedTotal: 2 * s }))
    expect(extract(draining, 20_000, { replica: 'r0', gpus: [] })[idx('queueDrain')]).toBeCloseTo(1, 5)
    const stuck = new TelemetryStore()
    engineRun(stuck, 20, () => ({ requestsWaiting: 30, requestsFinishedTotal: 0 }))
    expect(extract(stuck, 20_000, { replica: 'r0', gpus: [] })[idx('queueDrain')]).toBe(4)
  })

  it('gives a replica with no GPUs hasGpu 0, zero GPU channels and no memory or temperature deadline', () => {
    const store = new TelemetryStore()
    engineRun(store, 60, (s) => ({ kvCacheUsage: 0.3 + 0.01 * s }))
    // Another replica's GPU telemetry must not leak into this one.
    gpuRun(store, 60, () => ({ memoryUsedBytes: 79e9, temperatureCelsius: 86 }))
    const f = extract(store, 60_000, { replica: 'r0', gpus: [] })
    expect(f[idx('hasGpu')]).toBe(0)
    expect(GPU_FEATURES.filter((n) => f[idx(n)] !== 0)).toEqual([])
    expect(f[idx('memFullIn')]).toBe(1)
    expect(f[idx('tempLimitIn')]).toBe(1)
  })

  it('gives a replica whose GPUs have no telemetry hasGpu 0', () => {
    const store = new TelemetryStore()
    engineRun(store, 10, () => ({}))
    const f = extract(store, 10_000, { replica: 'r0', gpus: [3] })
    expect(f[idx('hasGpu')]).toBe(0)
    expect(GPU_FEATURES.filter((n) => f[idx(n)] !== 0)).toEqual([])
  })

  it('gives a replica whose GPU has telemetry hasGpu 1', () => {
    const store = new TelemetryStore()
    engineRun(store, 10, () => ({}))
    gpuRun(store, 10, () => ({}))
    const f = extract(store, 10_000, { replica: 'r0', gpus: [0] })
    expect(f[idx('hasGpu')]).toBe(1)
    expect(f[idx('memFrac.last')]).toBeCloseTo(70 / 80, 5)
    expect(f[idx('temp.last')]).toBeCloseTo(0.6, 5)
  })

  it('reads a GPU whose telemetry starts after the first extraction, as a fresh extractor would', () => {
    const store = new TelemetryStore()
    engineRun(store, 10, () => ({}))
    const extractor = new FeatureExtractor(store)
    const target = { replica: 'r0', gpus: [0] }
    const out = new Float32Array(FEATURE_COUNT)
    extractor.extract(10_000, target, 'SERVING', out, 0)
    expect(out[idx('hasGpu')]).toBe(0)
    gpuRun(store, 10, () => ({}))
    extractor.extract(10_000, target, 'SERVING', out, 0)
    expect(out[idx('hasGpu')]).toBe(1)
    expect(Array.from(out)).toEqual(Array.from(extract(store, 10_000, target)))
  })

  it('reads each GPU channel from its own signal: memory, temperature, power, clock, thermal bit, ECC', () => {
    const store = new TelemetryStore()
    engineRun(store, 60, () => ({}))
    gpuRun(store, 60, (s) => ({
      memoryUsedBytes: 40e9,
      memoryTotalBytes: 80e9,
      temperatureCelsius: 70,
      powerWatts: 350,
      powerLimitWatts: 700,
      smClockMhz: s < 55 ? 1980 : 990,
      clockEventReasons: s < 55 ? 0 : 0x20,
      eccCorrectedVolatile: s < 55 ? 3 : 12,
    }))
    const f = extract(store, 60_000, { replica: 'r0', gpus: [0] })
    expect(f[idx('memFrac.last')]).toBeCloseTo(0.5, 5)
    expect(f[idx('temp.last')]).toBeCloseTo(0.7, 5)
    expect(f[idx('powerFrac.last')]).toBeCloseTo(0.5, 5)
    expect(f[idx('clockRel.last')]).toBeCloseTo(0.5, 5)
    expect(f[idx('thermal.last')]).toBe(1)
    expect(f[idx('eccRise.last')]).toBeCloseTo(Math.log1p(9), 5)
  })

  it('keeps the worst of two GPUs: memFrac.last is the fuller one, whichever it is', () => {
    const store = new TelemetryStore()
    engineRun(store, 30, () => ({}))
    for (let s = 0; s <= 30; s++) {
      store.ingestGpu(s * 1000, gpuReading({ gpu: 0, memoryUsedBytes: 40e9, temperatureCelsius: 75 }))
      store.ingestGpu(s * 1000, gpuReading({ gpu: 1, memoryUsedBytes: 72e9, temperatureCelsius: 65 }))
    }
    for (const gpus of [
      [0, 1],
      [1, 0],
    ]) {
      const f = extract(store, 30_000, { replica: 'r0', gpus })
      expect(f[idx('memFrac.last')]).toBeCloseTo(0.9, 5)
      expect(f[idx('temp.last')]).toBeCloseTo(0.75, 5)
    }
    expect(extract(store, 30_000, { replica: 'r0', gpus: [0] })[idx('memFrac.last')]).toBeCloseTo(0.5, 5)
  })

  it('marks a DEGRADED replica with degraded 1', () => {
    const store = new TelemetryStore()
    engineRun(store, 5, () => ({}))
    expect(extract(store, 5000, { replica: 'r0', gpus: [] }, 'DEGRADED')[idx('degraded')]).toBe(1)
    expect(extract(store, 5000, { replica: 'r0', gpus: [] }, 'SERVING')[idx('degraded')]).toBe(0)
  })
})

function snapshot(replica: string, lifecycleState: LifecycleState, stale = false): EngineSnapshot {
  return {
    replica,
    lifecycleState,
    since: 0,
    reason: '',
    reading: engineReading(replica),
    readingAt: 0,
    stale,
    derived: nullDerived(),
  }
}

function checkpoint(engines: EngineSnapshot[], gpus: GpuReading[] = []): Checkpoint {
  return { t: 1000, lifecycleState: 'SERVING', engines, gpus, events: [], errors: [], predictions: [] }
}

describe('forecastTargets', () => {
  const engines = [
    snapshot('serving', 'SERVING'),
    snapshot('degraded', 'DEGRADED'),
    snapshot('ready', 'READY'),
    snapshot('loading', 'LOADING_MODEL'),
    snapshot('stale', 'SERVING', true),
    snapshot('failed', 'ERROR'),
    snapshot('stopping', 'SHUTTING_DOWN'),
  ]

  it('lists the serving replicas and skips those starting, failed or stale', () => {
    expect(forecastTargets(checkpoint(engines)).map((t) => t.replica)).toEqual([
      'serving',
      'degraded',
      'ready',
    ])
  })

  it('with includeFailed also keeps the replicas that failed or stop after serving, and stale ones', () => {
    expect(forecastTargets(checkpoint(engines), { includeFailed: true }).map((t) => t.replica)).toEqual([
      'serving',
      'degraded',
      'ready',
      'stale',
      'failed',
      'stopping',
    ])
  })

  it('gives each replica the GPUs its process holds', () => {
    const cp = checkpoint(
      [snapshot('a', 'SERVING'), snapshot('b', 'SERVING')],
      [
        gpuReading({ gpu: 0, replica: 'a' }),
        gpuReading({ gpu: 1, replica: 'b' }),
        gpuReading({ gpu: 2, replica: 'a' }),
      ],
    )
    expect(forecastTargets(cp)).toEqual([
      { replica: 'a', gpus: [0, 2] },
      { replica: 'b', gpus: [1] },
    ])
  })

  it('gives unassigned GPUs to the only replica', () => {
    const cp = checkpoint(
      [snapshot('solo', 'SERVING')],
      [gpuReading({ gpu: 0, replica: null }), gpuReading({ gpu: 1, replica: null })],
    )
    expect(forecastTargets(cp)).toEqual([{ replica: 'solo', gpus: [0, 1] }])
  })

  it('leaves unassigned GPUs out when there are several replicas', () => {
    const cp = checkpoint(
      [snapshot('a', 'SERVING'), snapshot('b', 'SERVING')],
      [gpuReading({ gpu: 0, replica: null }), gpuReading({ gpu: 1, replica: 'b' })],
    )
    expect(forecastTargets(cp)).toEqual([
      { replica: 'a', gpus: [] },
      { replica: 'b', gpus: [1] },
    ])
  })
})
