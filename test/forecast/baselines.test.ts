// The threshold and predict_linear baselines (src/forecast/baselines.ts).
import { describe, expect, it } from 'vitest'
import { Baselines, predictLinear } from '../../src/forecast/baselines.js'
import type { ForecastTarget } from '../../src/forecast/features.js'
import { FAILURE_TYPES, type FailureType } from '../../src/forecast/spec.js'
import { nullDerived, TelemetryStore } from '../../src/telemetry/store.js'
import type {
  Checkpoint,
  EngineDerived,
  EngineReading,
  GpuReading,
  TimedEvent,
} from '../../src/telemetry/types.js'
import { engineReading, gpuReading } from '../helpers/records.js'

const K = (t: FailureType) => FAILURE_TYPES.indexOf(t)
const NT = FAILURE_TYPES.length

/** Ordinary least squares through (xs, ys), evaluated at xq. */
function leastSquaresAt(xs: number[], ys: number[], xq: number): number {
  const n = xs.length
  const mx = xs.reduce((a, b) => a + b, 0) / n
  const my = ys.reduce((a, b) => a + b, 0) / n
  let num = 0
  let den = 0
  for (let i = 0; i < n; i++) {
    num += (xs[i]! - mx) * (ys[i]! - my)
    den += (xs[i]! - mx) ** 2
  }
  const slope = num / den
  return my + slope * (xq - mx)
}

describe('predictLinear', () => {
  const buf = new Float64Array(300)

  it('extrapolates a linear series exactly', () => {
    const s = new TelemetryStore().series('x')
    // One sample mid-second, y = 2 + 0.5 t (t in s).
    for (let k = 0; k < 60; k++) s.push(k * 1000 + 500, 2 + 0.5 * (k + 0.5))
    const tMs = 59_700
    expect(predictLinear(s, tMs, 60, 120, buf)).toBeCloseTo(2 + 0.5 * (59.7 + 120), 9)
    expect(predictLinear(s, tMs, 30, 0, buf)).toBeCloseTo(2 + 0.5 * 59.7, 9)
  })

  it('matches an independent least-squares fit over the samples in the range', () => {
    const s = new TelemetryStore().series('x')
    const xs: number[] = []
    const ys: number[] = []
    const tMs = 60_300
    const rangeS = 40
    for (let k = 0; k < 60; k++) {
      const t = k * 1000 + 500
      const y = Math.sin(k / 3) * 10 + k * k * 0.01
      s.push(t, y)
      // The range holds the buckets of seconds 21..60; the sample of second 60 lies after tMs.
      if (k >= 60 - rangeS + 1) {
        xs.push(t / 1000)
        ys.push(y)
      }
    }
    expect(xs).toHaveLength(rangeS - 1)
    expect(predictLinear(s, tMs, rangeS, 30, buf)).toBeCloseTo(leastSquaresAt(xs, ys, tMs / 1000 + 30), 9)
  })

  it('skips the gaps of a series with missed readings', () => {
    const s = new TelemetryStore().series('x')
    const xs: number[] = []
    const ys: number[] = []
    for (let k = 0; k < 60; k++) {
      const t = k * 1000 + 500
      const y = k % 5 === 0 ? null : (k * 7) % 11
      s.push(t, y)
      if (y !== null) {
        xs.push(t / 1000)
        ys.push(y)
      }
    }
    expect(predictLinear(s, 59_999, 60, 10, buf)).toBeCloseTo(leastSquaresAt(xs, ys, 59.999 + 10), 9)
  })

  it('returns NaN with fewer than two samples in the range, or without a series', () => {
    const s = new TelemetryStore().series('x')
    expect(predictLinear(s, 10_000, 60, 120, buf)).toBeNaN()
    s.push(1500, 0.5)
    expect(predictLinear(s, 10_000, 60, 120, buf)).toBeNaN()
    // An old sample out of the range does not count.
    s.push(50_500, 0.6)
    expect(predictLinear(s, 50_500, 30, 120, buf)).toBeNaN()
    s.push(51_500, 0.7)
    expect(predictLinear(s, 51_500, 30, 120, buf)).toBeCloseTo(0.7 + 0.1 * 120, 9)
    expect(predictLinear(undefined, 51_500, 30, 120, buf)).toBeNaN()
  })
})

interface Scene {
  /** Engine readings one a second for t = 0..seconds (the last is the checkpoint's). */
  engine?: (s: number) => Partial<EngineReading>
  gpu?: (s: number) => Partial<GpuReading>
  derived?: Partial<EngineDerived>
  events?: TimedEvent[]
  seconds?: number
}

/** A store fed with a minute of readings and the checkpoint at its end. */
function scene({ engine = () => ({}), gpu, derived = {}, events = [], seconds = 60 }: Scene) {
  const store = new TelemetryStore()
  let reading = engineReading('r0')
  let g: GpuReading | null = null
  for (let s = 0; s <= seconds; s++) {
    reading = engineReading('r0', engine(s))
    store.ingestEngine(s * 1000, reading)
    if (gpu !== undefined) {
      g = gpuReading(gpu(s))
      store.ingestGpu(s * 1000, g)
    }
  }
  const t = seconds * 1000
  const cp: Checkpoint = {
    t,
    lifecycleState: 'SERVING',
    engines: [
      {
        replica: 'r0',
        lifecycleState: 'SERVING',
        since: 0,
        reason: '',
        reading,
        readingAt: t,
        stale: false,
        derived: { ...nullDerived(), ...derived },
      },
    ],
    gpus: g === null ? [] : [g],
    events,
    errors: [],
    predictions: [],
  }
  const target: ForecastTarget = { replica: 'r0', gpus: g === null ? [] : [0] }
  return { store, cp, target, t }
}

function score(sc: ReturnType<typeof scene>) {
  const threshold = new Float32Array(NT)
  const linear = new Float32Array(NT)
  const evidence = new Map<string, string>()
  new Baselines(sc.store).score(sc.t, sc.target, sc.cp, threshold, linear, 0, evidence)
  return { threshold, linear, evidence }
}

describe('Baselines.score', () => {
  it('writes the KV rule as the ratio of usage to 0.9', () => {
    expect(score(scene({ engine: () => ({ kvCacheUsage: 0.9 }) })).threshold[K('kv-exhaustion')]).toBe(1)
    expect(score(scene({ engine: () => ({ kvCacheUsage: 0.45 }) })).threshold[K('kv-exhaustion')]).toBe(0.5)
  })

  it.each([
    ['oom', 'GPU memory', { gpu: () => ({ memoryUsedBytes: 0.97 * 80e9, memoryTotalBytes: 80e9 }) }],
    ['thermal-throttle', 'GPU temperature', { gpu: () => ({ temperatureCelsius: 83 }) }],
    ['slo-violation', 'TTFT p99', { engine: () => ({ ttftP99Ms: 1500 }) }],
    ['queue-overflow', 'waiting', { engine: () => ({ requestsWaiting: 50 }) }],
  ] as [FailureType, string, Scene][])('fires the %s threshold at its limit', (type, words, sc) => {
    const r = score(scene(sc))
    expect(r.threshold[K(type)]).toBeCloseTo(1, 6)
    expect(r.evidence.get(`threshold/${type}`)).toContain(words)
  })

  it('fires predict_linear on a rising KV series and not on a flat one at the same level', () => {
    // 0.5 at 0 s, +0.005/s: 0.8 at 60 s, 1.4 predicted 120 s on.
    const rising = score(scene({ engine: (s) => ({ kvCacheUsage: 0.5 + 0.005 * s }) }))
    expect(rising.linear[K('kv-exhaustion')]).toBeCloseTo(1.4, 2)
    expect(rising.threshold[K('kv-exhaustion')]).toBeLessThan(1)
    expect(rising.evidence.get('predict_linear/kv-exhaustion')).toMatch(
      /^predict_linear\(kv\[60s\], 120\) = 1\.40 >= 1$/,
    )
    expect(rising.evidence.has('threshold/kv-exhaustion')).toBe(false)

    const flat = score(scene({ engine: () => ({ kvCacheUsage: 0.8 }) }))
    expect(flat.linear[K('kv-exhaustion')]).toBeCloseTo(0.8, 5)
    expect(flat.evidence.size).toBe(0)
  })

  it('names the rule in each evidence line', () => {
    const r = score(scene({ engine: () => ({ kvCacheUsage: 0.95 }) }))
    expect(r.evidence.get('threshold/kv-exhaustion')).toBe('KV usage 95% >= 90%')
    expect([...r.evidence.keys()]).toEqual(['threshold/kv-exhaustion'])
  })

  it('fires the hardware rules on a fatal Xid of the last 30 s, and not on an older or a non-fatal one', () => {
    const xid = (t: number, code: number): TimedEvent => ({
      t,
      type: 'xid',
      severity: 'critical',
      replica: 'r0',
      gpu: 0,
      message: `Xid ${code}`,
      data: { xid: code },
    })
    const gpu = () => ({})
    const recent = score(scene({ gpu, events: [xid(40_000, 79)] }))
    expect(recent.threshold[K('hardware-failure')]).toBe(1)
    expect(recent.linear[K('hardware-failure')]).toBe(1)
    expect(recent.evidence.get('threshold/hardware-failure')).toBe('Xid 79')
    expect(score(scene({ gpu, events: [xid(20_000, 79)] })).threshold[K('hardware-failure')]).toBe(0)
    expect(score(scene({ gpu, events: [xid(50_000, 92)] })).threshold[K('hardware-failure')]).toBe(0)
  })

  // Bug: the rule takes any Xid without a GPU index as this replica's, even one whose event names
  // another replica (a kernel-log Xid tailed by r1's supervisor); hardwareFeatures() does not.
  it('does not fire the hardware rules on a fatal Xid that names another replica and no GPU', () => {
    const other: TimedEvent = {
      t: 55_000,
      type: 'xid',
      severity: 'critical',
      replica: 'r1',
      gpu: null,
      message: 'NVRM: Xid (PCI:0000:41:00): 79',
      data: { xid: 79 },
    }
    expect(score(scene({ gpu: () => ({}), events: [other] })).threshold[K('hardware-failure')]).toBe(0)
  })

  it('fires the hardware rules on a fatal Xid of its own replica that names no GPU', () => {
    const own: TimedEvent = {
      t: 55_000,
      type: 'xid',
      severity: 'critical',
      replica: 'r0',
      gpu: null,
      message: 'NVRM: Xid (PCI:0000:41:00): 79',
      data: { xid: 79 },
    }
    expect(score(scene({ gpu: () => ({}), events: [own] })).threshold[K('hardware-failure')]).toBe(1)
  })

  it("does not fire the hardware rules on a fatal Xid of another replica's GPU", () => {
    const event: TimedEvent = {
      t: 55_000,
      type: 'xid',
      severity: 'critical',
      replica: 'r1',
      gpu: 1,
      message: 'Xid 79 on GPU 1',
      data: { xid: 79 },
    }
    expect(score(scene({ gpu: () => ({}), events: [event] })).threshold[K('hardware-failure')]).toBe(0)
  })

  it('fires the hardware rules on a lost GPU or uncorrectable ECC errors', () => {
    const lost = score(scene({ gpu: () => ({ lost: true }) }))
    expect(lost.threshold[K('hardware-failure')]).toBe(1)
    expect(lost.evidence.get('threshold/hardware-failure')).toBe('GPU 0 lost')
    const ecc = score(scene({ gpu: () => ({ eccUncorrectedVolatile: 2 }) }))
    expect(ecc.evidence.get('predict_linear/hardware-failure')).toBe('GPU 0 uncorrectable ECC errors')
  })

  it('writes the network rule as minutes without progress', () => {
    expect(score(scene({ derived: { stalledForMs: 30_000 } })).threshold[K('network-failure')]).toBe(0.5)
    const hung = score(scene({ derived: { stalledForMs: 60_000 } }))
    expect(hung.linear[K('network-failure')]).toBe(1)
    expect(hung.evidence.get('threshold/network-failure')).toBe('no progress for 60 s')
  })

  it('writes 0 for the rules it has no data for', () => {
    const r = score(scene({ engine: () => ({ kvCacheUsage: null, requestsWaiting: null }) }))
    expect(Array.from(r.threshold)).toEqual(new Array(NT).fill(0))
    expect(Array.from(r.linear)).toEqual(new Array(NT).fill(0))
  })

  it('writes its seven ratios at the offset and nothing else', () => {
    const sc = scene({ engine: () => ({ kvCacheUsage: 0.45 }) })
    const threshold = new Float32Array(3 * NT).fill(-1)
    const linear = new Float32Array(3 * NT).fill(-1)
    new Baselines(sc.store).score(sc.t, sc.target, sc.cp, threshold, linear, NT, undefined)
    expect(Array.from(threshold.subarray(0, NT))).toEqual(new Array(NT).fill(-1))
    expect(Array.from(threshold.subarray(2 * NT))).toEqual(new Array(NT).fill(-1))
    expect(threshold[NT + K('kv-exhaustion')]).toBe(0.5)
    expect(linear[NT + K('kv-exhaustion')]).toBeCloseTo(0.45, 5)
    expect(Array.from(linear.subarray(2 * NT))).toEqual(new Array(NT).fill(-1))
  })
})

describe('Baselines.predictions', () => {
  it('returns a probability-1 prediction for each firing rule of the baseline asked for, and none other', () => {
    const sc = scene({ engine: () => ({ kvCacheUsage: 0.95 }) })
    const b = new Baselines(sc.store)
    expect(b.predictions(sc.t, sc.target, sc.cp, 'threshold')).toEqual([
      {
        failureType: 'kv-exhaustion',
        probability: 1,
        timeToFailureS: null,
        horizonS: 120,
        target: { replica: 'r0', gpu: null },
        evidence: ['KV usage 95% >= 90%'],
        model: 'threshold',
      },
    ])
    // Flat at 0.95: predict_linear stays below 1.
    expect(b.predictions(sc.t, sc.target, sc.cp, 'predict_linear')).toEqual([])
  })

  it('returns predict_linear predictions for a rising series the threshold does not see yet', () => {
    const sc = scene({ engine: (s) => ({ kvCacheUsage: 0.5 + 0.005 * s }), gpu: () => ({}) })
    const b = new Baselines(sc.store)
    expect(b.predictions(sc.t, sc.target, sc.cp, 'threshold')).toEqual([])
    const p = b.predictions(sc.t, sc.target, sc.cp, 'predict_linear')
    expect(p.map((x) => [x.failureType, x.probability, x.model, x.target])).toEqual([
      ['kv-exhaustion', 1, 'predict_linear', { replica: 'r0', gpu: 0 }],
    ])
    expect(p[0]!.evidence).toEqual(['predict_linear(kv[60s], 120) = 1.40 >= 1'])
  })

  it('returns nothing for a quiet replica', () => {
    const sc = scene({ gpu: () => ({}) })
    const b = new Baselines(sc.store)
    expect(b.predictions(sc.t, sc.target, sc.cp, 'threshold')).toEqual([])
    expect(b.predictions(sc.t, sc.target, sc.cp, 'predict_linear')).toEqual([])
  })
})
