// The hardware and network detectors (src/forecast/detectors.ts): their features and their fit.
import { describe, expect, it } from 'vitest'
import {
  DEFAULT_DETECTORS,
  detectorPredictions,
  EccHistory,
  fitLogistic,
  HARDWARE_FEATURES,
  hardwareFeatures,
  logistic,
  NETWORK_FEATURES,
  networkFeatures,
  sigmoid,
} from '../../src/forecast/detectors.js'
import type { ForecastTarget } from '../../src/forecast/features.js'
import { nullDerived } from '../../src/telemetry/store.js'
import type {
  Checkpoint,
  EngineDerived,
  EngineReading,
  GpuReading,
  TimedEvent,
} from '../../src/telemetry/types.js'
import { engineReading, gpuReading } from '../helpers/records.js'

/** A small deterministic PRNG (LCG), uniform in [0, 1). */
function rng(seed: number): () => number {
  let s = seed >>> 0
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0
    return s / 4294967296
  }
}

describe('sigmoid and logistic', () => {
  it('sigmoid is 0.5 at 0 and symmetric', () => {
    expect(sigmoid(0)).toBe(0.5)
    expect(sigmoid(2) + sigmoid(-2)).toBeCloseTo(1, 12)
    expect(sigmoid(2)).toBeCloseTo(1 / (1 + Math.exp(-2)), 12)
  })

  it('logistic() is sigmoid(w·x + b), reading the row at the offset', () => {
    const m = { features: ['a', 'b', 'c'], weights: [0.5, -2, 1.5], bias: -0.25 }
    const x = Float32Array.from([9, 9, 1, 0.5, 2, 9])
    expect(logistic(m, x, 2)).toBeCloseTo(sigmoid(0.5 * 1 - 2 * 0.5 + 1.5 * 2 - 0.25), 7)
    expect(logistic(m, [0, 0, 0])).toBeCloseTo(sigmoid(-0.25), 12)
  })
})

describe('fitLogistic', () => {
  it('recovers the signs and ordering of a known logistic relationship', () => {
    // P(y) = sigmoid(2 a - b + 0 c - 0.5), a, b, c ~ U(-2, 2).
    const rows = 3000
    const r = rng(7)
    const x = new Float32Array(rows * 3)
    const y = new Uint8Array(rows)
    for (let i = 0; i < rows; i++) {
      const a = r() * 4 - 2
      const b = r() * 4 - 2
      const c = r() * 4 - 2
      x.set([a, b, c], i * 3)
      y[i] = r() < sigmoid(2 * a - b - 0.5) ? 1 : 0
    }
    const m = fitLogistic(['a', 'b', 'c'], x, y, rows)
    expect(m.features).toEqual(['a', 'b', 'c'])
    const [wa, wb, wc] = m.weights as [number, number, number]
    expect(wa).toBeGreaterThan(0)
    expect(wb).toBeLessThan(0)
    expect(Math.abs(wc)).toBeLessThan(Math.abs(wb))
    expect(wa).toBeGreaterThan(Math.abs(wb))
    // With 3000 rows the L2 penalty of 1 barely shrinks the estimate.
    expect(wa).toBeCloseTo(2, 0)
    expect(wb).toBeCloseTo(-1, 0)
    expect(Math.abs(wc)).toBeLessThan(0.2)
    expect(m.bias).toBeCloseTo(-0.5, 0)
  })

  it('stays finite on perfectly separable data, and still orders the classes', () => {
    // y = 1 exactly when the stall feature is above 0.5: unpenalised weights would diverge.
    const rows = 200
    const x = new Float32Array(rows)
    const y = new Uint8Array(rows)
    for (let i = 0; i < rows; i++) {
      x[i] = i / rows
      y[i] = i / rows > 0.5 ? 1 : 0
    }
    const m = fitLogistic(['stall'], x, y, rows)
    expect(Number.isFinite(m.weights[0]!)).toBe(true)
    expect(Number.isFinite(m.bias)).toBe(true)
    expect(m.weights[0]!).toBeGreaterThan(0)
    expect(Math.abs(m.weights[0]!)).toBeLessThan(100)
    expect(logistic(m, [0.9])).toBeGreaterThan(0.5)
    expect(logistic(m, [0.1])).toBeLessThan(0.5)
    // A stronger penalty shrinks the weight.
    expect(fitLogistic(['stall'], x, y, rows, 10).weights[0]!).toBeLessThan(m.weights[0]!)
  })

  it('fits a constant feature with zero weight and the base rate in the bias', () => {
    const rows = 400
    const x = new Float32Array(rows)
    const y = new Uint8Array(rows)
    for (let i = 0; i < rows; i++) y[i] = i % 4 === 0 ? 1 : 0
    const m = fitLogistic(['zero'], x, y, rows)
    expect(m.weights[0]).toBe(0)
    expect(sigmoid(m.bias)).toBeCloseTo(0.25, 6)
  })
})

const target: ForecastTarget = { replica: 'r0', gpus: [0] }

function checkpoint({
  t = 200_000,
  gpus = [gpuReading()],
  events = [],
  reading = {},
  derived = {},
}: {
  t?: number
  gpus?: GpuReading[]
  events?: TimedEvent[]
  reading?: Partial<EngineReading>
  derived?: Partial<EngineDerived>
}): Checkpoint {
  return {
    t,
    lifecycleState: 'SERVING',
    engines: [
      {
        replica: 'r0',
        lifecycleState: 'SERVING',
        since: 0,
        reason: '',
        reading: engineReading('r0', reading),
        readingAt: t,
        stale: false,
        derived: { ...nullDerived(), ...derived },
      },
    ],
    gpus,
    events,
    errors: [],
    predictions: [],
  }
}

function ev(t: number, type: string, over: Partial<TimedEvent> = {}): TimedEvent {
  return { t, type, severity: 'warning', replica: 'r0', gpu: null, message: type, ...over }
}
const xid = (t: number, code: number, over: Partial<TimedEvent> = {}) =>
  ev(t, 'xid', { gpu: 0, replica: null, data: { xid: code }, ...over })

function hw(cp: Checkpoint, ecc = new EccHistory()): number[] {
  const out = new Float32Array(HARDWARE_FEATURES.length)
  hardwareFeatures(cp, target, out, 0, ecc)
  return Array.from(out)
}

function net(cp: Checkpoint): number[] {
  const out = new Float32Array(NETWORK_FEATURES.length)
  networkFeatures(cp, target, out, 0)
  return Array.from(out)
}

describe('hardwareFeatures', () => {
  const T = 200_000

  it('reads a healthy GPU as all zeros', () => {
    expect(hw(checkpoint({}))).toEqual([0, 0, 0, 0])
  })

  it('marks a fatal Xid within 30 s as both an Xid and fatal', () => {
    expect(hw(checkpoint({ events: [xid(T - 10_000, 48)] }))).toEqual([0, 1, 1, 0])
    expect(hw(checkpoint({ events: [xid(T - 30_000, 79)] }))).toEqual([0, 1, 1, 0])
  })

  it('marks an older fatal Xid, or a non-fatal one, as an Xid only', () => {
    expect(hw(checkpoint({ events: [xid(T - 31_000, 79)] }))).toEqual([0, 1, 0, 0])
    expect(hw(checkpoint({ events: [xid(T - 1000, 92)] }))).toEqual([0, 1, 0, 0])
  })

  it('forgets Xids older than two minutes', () => {
    expect(hw(checkpoint({ events: [xid(T - 121_000, 48)] }))).toEqual([0, 0, 0, 0])
  })

  it("ignores another replica's GPU and events", () => {
    const events = [xid(T - 5000, 48, { gpu: 1 }), ev(T - 5000, 'gpu-lost', { replica: 'r1', gpu: 1 })]
    expect(hw(checkpoint({ events }))).toEqual([0, 0, 0, 0])
  })

  it('counts an Xid on its replica even when it names no GPU', () => {
    expect(hw(checkpoint({ events: [xid(T - 5000, 79, { gpu: null, replica: 'r0' })] }))).toEqual([
      0, 1, 1, 0,
    ])
  })

  it.each(['gpu-lost', 'ecc-double-bit', 'uncorrectable-ecc'])(
    'marks a %s event within 30 s as fatal',
    (type) => {
      expect(hw(checkpoint({ events: [ev(T - 20_000, type)] }))[2]).toBe(1)
      expect(hw(checkpoint({ events: [ev(T - 40_000, type)] }))[2]).toBe(0)
    },
  )

  it('marks a lost GPU or uncorrectable ECC in the reading as fatal', () => {
    expect(hw(checkpoint({ gpus: [gpuReading({ lost: true })] }))[2]).toBe(1)
    expect(hw(checkpoint({ gpus: [gpuReading({ eccUncorrectedVolatile: 1 })] }))[2]).toBe(1)
  })

  it('marks a GPU at 90 °C or more as hot', () => {
    expect(hw(checkpoint({ gpus: [gpuReading({ temperatureCelsius: 90 })] }))[3]).toBe(1)
    expect(hw(checkpoint({ gpus: [gpuReading({ temperatureCelsius: 89 })] }))[3]).toBe(0)
  })

  it('gives the log1p of the corrected-ECC rise over the last minute', () => {
    const ecc = new EccHistory()
    hw(checkpoint({ t: 0, gpus: [gpuReading({ eccCorrectedVolatile: 10 })] }), ecc)
    const f = hw(checkpoint({ t: 30_000, gpus: [gpuReading({ eccCorrectedVolatile: 17 })] }), ecc)
    expect(f[0]).toBeCloseTo(Math.log1p(7), 6)
  })
})

describe('networkFeatures', () => {
  const T = 200_000

  it('reads a progressing replica as all zeros', () => {
    expect(
      net(checkpoint({ reading: { requestsRunning: 3 }, derived: { stepsPerSec: 20, stalledForMs: 0 } })),
    ).toEqual([0, 0, 0, 0])
  })

  it('gives minutes stalled, capped at 2', () => {
    expect(net(checkpoint({ derived: { stalledForMs: 90_000 } }))[0]).toBe(1.5)
    expect(net(checkpoint({ derived: { stalledForMs: 600_000 } }))[0]).toBe(2)
  })

  it.each(['shm-broadcast-stall', 'rpc-timeout'])('marks a %s in the last minute', (type) => {
    expect(net(checkpoint({ events: [ev(T - 59_000, type)] }))).toEqual([0, 1, 0, 0])
    expect(net(checkpoint({ events: [ev(T - 61_000, type)] }))).toEqual([0, 0, 0, 0])
  })

  it.each(['nccl-timeout', 'nccl-error', 'hang'])('marks a %s in the last minute', (type) => {
    expect(net(checkpoint({ events: [ev(T - 1000, type)] }))).toEqual([0, 0, 1, 0])
  })

  it("ignores another replica's events", () => {
    expect(net(checkpoint({ events: [ev(T - 1000, 'shm-broadcast-stall', { replica: 'r1' })] }))).toEqual([
      0, 0, 0, 0,
    ])
  })

  it('marks steps stopped only with requests running and a step rate of 0', () => {
    expect(net(checkpoint({ reading: { requestsRunning: 2 }, derived: { stepsPerSec: 0 } }))[3]).toBe(1)
    expect(net(checkpoint({ reading: { requestsRunning: 0 }, derived: { stepsPerSec: 0 } }))[3]).toBe(0)
    expect(net(checkpoint({ reading: { requestsRunning: 2 }, derived: { stepsPerSec: null } }))[3]).toBe(0)
  })
})

describe('EccHistory.rise', () => {
  it('gives the growth of the counter over the last minute', () => {
    const h = new EccHistory()
    expect(h.rise(0, 0, 5)).toBe(0)
    expect(h.rise(0, 30_000, 8)).toBe(3)
    expect(h.rise(0, 60_000, 9)).toBe(4)
    // The sample at 0 s is now more than a minute old: the rise counts from the one at 30 s.
    expect(h.rise(0, 61_000, 9)).toBe(1)
  })

  it('starts again when the counter drops (a driver reload resets it)', () => {
    const h = new EccHistory()
    h.rise(0, 0, 100)
    h.rise(0, 1000, 120)
    expect(h.rise(0, 2000, 3)).toBe(0)
    expect(h.rise(0, 3000, 5)).toBe(2)
  })

  it('keeps each GPU apart and reads an unknown counter as no rise', () => {
    const h = new EccHistory()
    h.rise(0, 0, 0)
    h.rise(1, 0, 50)
    expect(h.rise(0, 1000, 4)).toBe(4)
    expect(h.rise(1, 1000, 51)).toBe(1)
    expect(h.rise(0, 2000, null)).toBe(0)
  })
})

describe('detectorPredictions', () => {
  it('gives both detectors with the evidence that drove them', () => {
    const p = detectorPredictions(
      DEFAULT_DETECTORS,
      target,
      Float32Array.from([Math.log1p(3), 1, 1, 0]),
      Float32Array.from([0.5, 0, 0, 0]),
    )
    expect(p.map((x) => [x.failureType, x.model, x.horizonS, x.target])).toEqual([
      ['hardware-failure', 'detector', 30, { replica: 'r0', gpu: 0 }],
      ['network-failure', 'detector', 30, { replica: 'r0', gpu: 0 }],
    ])
    expect(p[0]!.probability).toBeCloseTo(sigmoid(1.2 * Math.log1p(3) + 1.5 + 8 - 5), 6)
    expect(p[0]!.evidence).toEqual([
      'corrected ECC +3 in 60 s',
      'Xid in the last 2 min',
      'fatal Xid / lost GPU / uncorrectable ECC',
    ])
    expect(p[1]!.probability).toBeCloseTo(sigmoid(3 * 0.5 - 5), 6)
    expect(p[1]!.evidence).toEqual(['no progress for 30 s with requests running'])
  })
})
