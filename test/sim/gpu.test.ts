import { describe, expect, it } from 'vitest'
import type { Arrival } from '../../src/sim/arrivals.js'
import { type ArrivalStream, SimFleet } from '../../src/sim/fleet.js'
import {
  CLOCK_REASON_GPU_IDLE,
  CLOCK_REASON_HW_THERMAL,
  CLOCK_REASON_SW_POWER_CAP,
  CLOCK_REASON_SW_THERMAL,
  SimGpu,
} from '../../src/sim/gpu.js'
import { GPUS } from '../../src/sim/hardware.js'
import type { GpuReading } from '../../src/telemetry/types.js'

const GiB = 1024 ** 3
const H100 = GPUS['H100-80GB']!
const A100 = GPUS['A100-80GB']!
const TICK = 100

interface Load {
  /** Share of each tick the GPU runs kernels. */
  busy: number
  /** Share of the busy time that is compute-bound (prefill) rather than HBM-bound (decode). */
  intensity: number
}
const IDLE: Load = { busy: 0, intensity: 0 }
const DECODE: Load = { busy: 1, intensity: 0.1 }
const PREFILL: Load = { busy: 1, intensity: 1 }

/** Ticks the GPU for `seconds` under `load`; returns each tick's reading and the temperature it started from. */
function run(gpu: SimGpu, load: Load, seconds: number): Array<{ before: number; r: GpuReading }> {
  const out: Array<{ before: number; r: GpuReading }> = []
  for (let i = 0; i < (seconds * 1000) / TICK; i++) {
    const before = gpu.temperatureCelsius
    gpu.tick(TICK, load.busy * TICK, load.busy * load.intensity * TICK)
    out.push({ before, r: gpu.reading() })
  }
  return out
}

const last = <T>(xs: T[]): T => xs[xs.length - 1]!

/** A fixed list of arrivals as the fleet's stream. */
function arrivals(list: Arrival[]): ArrivalStream {
  let i = 0
  return { next: () => list[i++] ?? null }
}

describe('SimGpu, an NVML-like GPU', () => {
  it('idles at the reported idle draw and clocks, a few degrees above ambient (sim-calibration §5)', () => {
    const h = new SimGpu(0, H100, 'r0')
    const r = last(run(h, IDLE, 120)).r
    expect(r.powerWatts).toBe(75)
    expect(r.smClockMhz).toBe(345)
    expect(r.gpuUtilizationPercent).toBe(0)
    expect(r.clockEventReasons).toBe(CLOCK_REASON_GPU_IDLE)
    expect(r.temperatureCelsius).toBeGreaterThanOrEqual(31)
    expect(r.temperatureCelsius).toBeLessThanOrEqual(40)
    expect(r.powerLimitWatts).toBe(700)
    const a = last(run(new SimGpu(1, A100, 'r1'), IDLE, 120)).r
    expect(a.powerWatts).toBe(52)
    expect(a.powerLimitWatts).toBe(400)
  })

  it('reports memory as the sum of its owners plus the driver\u2019s reservation', () => {
    const g = new SimGpu(0, H100, 'r0')
    const idle = g.reading().memoryUsedBytes!
    expect(idle / GiB).toBeGreaterThan(0.2)
    expect(idle / GiB).toBeLessThan(1)
    g.contextBytes = 0.5 * GiB
    g.reservedBytes = 70 * GiB
    g.cotenantBytes = 2 * GiB
    expect(g.reading().memoryUsedBytes).toBe(Math.round(idle + 72.5 * GiB))
    expect(g.memoryFreeBytes).toBeCloseTo(H100.memoryTotalBytes - idle - 72.5 * GiB, 0)
    expect(g.reading().memoryTotalBytes).toBe(Math.round(H100.memoryTotalBytes))
  })

  it('draws well under the power limit on memory-bound decode, at full clocks with no throttle reason', () => {
    const readings = run(new SimGpu(0, H100, 'r0'), DECODE, 60)
    const r = last(readings).r
    expect(r.gpuUtilizationPercent).toBe(100)
    expect(r.powerWatts!).toBeLessThan(0.5 * 700)
    expect(r.powerWatts!).toBeGreaterThan(137)
    expect(r.smClockMhz).toBe(H100.maxSmClockMhz)
    expect(readings.every(({ r }) => (r.clockEventReasons! & CLOCK_REASON_SW_POWER_CAP) === 0)).toBe(true)
  })

  it('pins power at the limit on compute-bound prefill, with SW_POWER_CAP and a lower SM clock', () => {
    const r = last(run(new SimGpu(0, H100, 'r0'), PREFILL, 60)).r
    expect(r.powerWatts).toBe(700)
    expect(r.clockEventReasons).toBe(CLOCK_REASON_SW_POWER_CAP)
    expect(r.smClockMhz!).toBeLessThan(H100.maxSmClockMhz)
    expect(r.smClockMhz!).toBeGreaterThan(0.7 * H100.maxSmClockMhz)
  })

  it('stays below the 87 °C slowdown threshold at the power limit with healthy cooling', () => {
    const readings = run(new SimGpu(0, H100, 'r0'), PREFILL, 600)
    const hottest = Math.max(...readings.map(({ r }) => r.temperatureCelsius!))
    expect(hottest).toBeGreaterThan(60)
    expect(hottest).toBeLessThan(80)
    expect(readings.every(({ r }) => (r.clockEventReasons! & 0x60) === 0)).toBe(true)
  })

  it('passes 87 °C with degraded cooling and applies SW thermal slowdown (0x20) on top of the power cap', () => {
    const g = new SimGpu(0, H100, 'r0')
    run(g, PREFILL, 60)
    const capOnlyClock = g.smClockMhz
    g.coolingFactor = 1.9
    const readings = run(g, PREFILL, 600)
    const hot = readings.filter(({ before }) => before > 87)
    expect(hot.length).toBeGreaterThan(0)
    for (const { r } of hot) {
      expect(r.clockEventReasons! & CLOCK_REASON_SW_THERMAL).toBe(CLOCK_REASON_SW_THERMAL)
      expect(r.smClockMhz!).toBeLessThan(capOnlyClock)
    }
    // Below the threshold the driver does not slow the GPU for heat.
    for (const { before, r } of readings) {
      if (before <= 87) expect(r.clockEventReasons! & 0x60).toBe(0)
    }
    // The slowdown cuts power, so the temperature settles near the threshold instead of running away.
    expect(last(readings).r.temperatureCelsius).toBeLessThan(92)
    expect(last(readings).r.powerWatts!).toBeLessThan(700)
  })

  it('applies HW thermal slowdown (0x40) with a halved clock once it reaches 89 °C', () => {
    const g = new SimGpu(0, H100, 'r0')
    g.coolingFactor = 2.5
    const readings = run(g, PREFILL, 600)
    const slowdown = readings.filter(({ before }) => before >= 89)
    expect(slowdown.length).toBeGreaterThan(0)
    for (const { r } of slowdown) {
      expect(r.clockEventReasons! & CLOCK_REASON_HW_THERMAL).toBe(CLOCK_REASON_HW_THERMAL)
      expect(r.smClockMhz!).toBeLessThanOrEqual(H100.maxSmClockMhz / 2)
    }
    expect(Math.max(...readings.map(({ before }) => before))).toBeLessThan(92)
  })

  it('uses the A100\u2019s 85 °C max operating temperature for SW thermal slowdown', () => {
    const g = new SimGpu(0, A100, 'r0')
    g.coolingFactor = 2
    const readings = run(g, PREFILL, 600)
    const first = readings.find(({ r }) => (r.clockEventReasons! & CLOCK_REASON_SW_THERMAL) !== 0)
    expect(first).toBeDefined()
    expect(first!.before).toBeGreaterThan(85)
    expect(first!.before).toBeLessThan(87)
  })

  it('reads all-null when lost (fallen off the bus), keeping only its identity', () => {
    const g = new SimGpu(3, H100, 'r1')
    g.eccCorrectedVolatile = 12
    g.lost = true
    g.tick(TICK, TICK, TICK)
    const r = g.reading()
    expect(r).toMatchObject({ gpu: 3, replica: 'r1', uuid: g.uuid, name: H100.name, lost: true })
    for (const key of [
      'memoryUsedBytes',
      'memoryTotalBytes',
      'gpuUtilizationPercent',
      'powerWatts',
      'powerLimitWatts',
      'temperatureCelsius',
      'smClockMhz',
      'clockEventReasons',
      'eccCorrectedVolatile',
      'eccUncorrectedVolatile',
    ] as const) {
      expect(r[key], key).toBeNull()
    }
  })

  describe('driven by a simulated engine', () => {
    const BOOTED = 13_000

    it('draws at most ≈half the limit while decoding long contexts (decode draws 137-300 W on a 700 W part)', () => {
      // 100 requests of 1000 prompt tokens generating 3000 each: a minute of pure decode at ~100 sequences.
      const list = Array.from({ length: 100 }, (_, i) => ({
        atMs: BOOTED + i,
        promptTokens: 1000,
        maxTokens: 3000,
      }))
      const fleet = new SimFleet({ seed: 1, arrivals: arrivals(list) })
      fleet.start()
      const power: number[] = []
      for (let t = 0; t <= 60_000; t += TICK) {
        fleet.advanceTo(t)
        const r = fleet.gpuReadings()[0]!
        if (t >= 25_000) {
          expect(r.gpuUtilizationPercent).toBe(100)
          expect(r.clockEventReasons! & CLOCK_REASON_SW_POWER_CAP).toBe(0)
          power.push(r.powerWatts!)
        }
      }
      expect(fleet.engineReadings()[0]!.requestsRunning).toBe(100)
      expect(Math.max(...power)).toBeLessThan(0.5 * 700)
      expect(Math.min(...power)).toBeGreaterThan(137)
    })

    it('hits the power cap with SW_POWER_CAP under sustained long prefills', () => {
      const list = Array.from({ length: 600 }, (_, i) => ({
        atMs: BOOTED + i * 100,
        promptTokens: 6000,
        maxTokens: 8,
      }))
      const fleet = new SimFleet({ seed: 1, arrivals: arrivals(list) })
      fleet.start()
      fleet.advanceTo(40_000)
      const r = fleet.gpuReadings()[0]!
      expect(r.powerWatts).toBe(700)
      expect(r.clockEventReasons! & CLOCK_REASON_SW_POWER_CAP).toBe(CLOCK_REASON_SW_POWER_CAP)
      expect(r.smClockMhz!).toBeLessThan(H100.maxSmClockMhz)
    })
  })
})
