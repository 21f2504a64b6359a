import { describe, expect, it } from 'vitest'
import { InvalidArgumentError } from '../../src/errors.js'
import { poissonArrivals } from '../../src/sim/arrivals.js'
import { renderExposition } from '../../src/sim/exposition.js'
import { SimFleet } from '../../src/sim/fleet.js'
import { ITL_BUCKETS, REQUEST_LATENCY_BUCKETS, TTFT_BUCKETS } from '../../src/sim/histogram.js'
import { createRng, type Rng } from '../../src/sim/random.js'
import type { EngineReading } from '../../src/telemetry/types.js'
import {
  emptyEngineReading,
  LATENCY_QUANTILE_FIELDS,
  readEngineMetrics,
} from '../../src/vllm/engine-metrics.js'
import { parseExposition } from '../../src/vllm/exposition.js'
import {
  HistogramWindow,
  histogramQuantile,
  type LatencyHistograms,
  LatencyWindows,
  MAX_BUCKETS,
  mergeLatencyHistograms,
} from '../../src/vllm/histogram-window.js'
import { fixture } from './helpers.js'

const QUANTILE_FIELDS = LATENCY_QUANTILE_FIELDS

function quantilesOf(r: EngineReading): Record<string, number | null> {
  return Object.fromEntries(QUANTILE_FIELDS.map((f) => [f, r[f]]))
}

describe('histogramQuantile', () => {
  it("interpolates linearly inside the bucket that holds the rank, as Prometheus' histogram_quantile", () => {
    // 10 observations <= 0.1, 10 more in (0.1, 0.5], none above.
    const bounds = [0.1, 0.5, 1]
    const cum = [10, 20, 20, 20]
    expect(histogramQuantile(0.25, bounds, cum)).toBeCloseTo(0.05, 12)
    expect(histogramQuantile(0.5, bounds, cum)).toBeCloseTo(0.1, 12)
    expect(histogramQuantile(0.75, bounds, cum)).toBeCloseTo(0.3, 12)
    expect(histogramQuantile(1, bounds, cum)).toBeCloseTo(0.5, 12)
  })

  it('reads the sample exposition\u2019s TTFT p50 the way Prometheus would', () => {
    const h: LatencyHistograms[] = []
    readEngineMetrics(parseExposition(fixture('vllm-metrics-sample.txt')), 'r', h)
    const ttft = h[0]!.ttft!
    // 140 requests: rank 70 falls in (0.08, 0.1], which holds requests 63 to 76.
    expect(histogramQuantile(0.5, ttft.bounds, ttft.counts)).toBeCloseTo(0.08 + 0.02 * (8 / 14), 12)
  })

  it('gives the highest finite bound for a rank in the +Inf bucket', () => {
    expect(histogramQuantile(0.99, [0.1, 0.5], [1, 1, 10])).toBe(0.5)
    expect(histogramQuantile(0.5, [0.1, 0.5], [0, 0, 3])).toBe(0.5)
  })

  it('raises counts that go down from one bucket to the next (Prometheus ensureMonotonic)', () => {
    expect(histogramQuantile(0.5, [1, 2], [10, 5, 20])).toBe(histogramQuantile(0.5, [1, 2], [10, 10, 20]))
    expect(histogramQuantile(0.9, [1, 2], [10, Number.NaN, 20])).toBe(
      histogramQuantile(0.9, [1, 2], [10, 10, 20]),
    )
  })

  it('returns the lower edge of the first non-empty bucket for q = 0 (Prometheus: 0/0)', () => {
    expect(histogramQuantile(0, [1, 2, 3], [0, 0, 5, 5])).toBe(2)
    expect(histogramQuantile(0, [1, 2, 3], [4, 4, 5, 5])).toBe(0)
  })

  it('is null without observations, for q outside [0, 1], and for counts of the wrong length', () => {
    expect(histogramQuantile(0.5, [1, 2], [0, 0, 0])).toBeNull()
    expect(histogramQuantile(-0.1, [1, 2], [1, 1, 1])).toBeNull()
    expect(histogramQuantile(1.1, [1, 2], [1, 1, 1])).toBeNull()
    expect(histogramQuantile(Number.NaN, [1, 2], [1, 1, 1])).toBeNull()
    expect(histogramQuantile(0.5, [1, 2], [1, 1])).toBeNull()
    expect(histogramQuantile(0.5, [], [1])).toBeNull()
    expect(histogramQuantile(0.5, [1], [1, Number.POSITIVE_INFINITY])).toBeNull()
  })

  it('returns a bound <= 0 as is when the rank is in the first bucket (Prometheus)', () => {
    expect(histogramQuantile(0.5, [-1, 1], [4, 4, 4])).toBe(-1)
  })
})

/** Increasing bounds, like vLLM's: from ~1 ms, each 1.1-3x the last. */
function randomBounds(rng: Rng): number[] {
  const n = 1 + rng.int(25)
  const out = [rng.uniform(0.001, 0.5)]
  while (out.length < n) out.push(out.at(-1)! * rng.uniform(1.1, 3))
  return out
}

/** The piecewise-linear CDF through (0, 0) and (bounds[i], cum[i]) that histogram_quantile assumes. */
function cdf(bounds: readonly number[], cum: readonly number[], x: number): number {
  let lo = 0
  let prev = 0
  for (let i = 0; i < bounds.length; i++) {
    const hi = bounds[i]!
    if (x <= hi) return prev + ((cum[i]! - prev) * (x - lo)) / (hi - lo)
    lo = hi
    prev = cum[i]!
  }
  return prev
}

/**
 * Brute force: inverts the CDF by bisection. For rank > 0 the smallest x with F(x) >= rank; for
 * rank 0 the largest x with F(x) = 0; past the last finite bound, that bound.
 */
function bruteQuantile(q: number, bounds: readonly number[], cum: readonly number[]): number | null {
  const total = cum.at(-1)!
  if (total <= 0) return null
  const rank = q * total
  const top = bounds.at(-1)!
  if (cdf(bounds, cum, top) < rank) return top
  let lo = 0
  let hi = top
  for (let i = 0; i < 200; i++) {
    const mid = (lo + hi) / 2
    const f = cdf(bounds, cum, mid)
    if (rank > 0 ? f >= rank : f > 0) hi = mid
    else lo = mid
  }
  return rank > 0 ? hi : lo
}

describe('HistogramWindow, property-tested on seeded random histories', () => {
  it('gives quantiles monotone in q, inside the bucket holding the rank, equal to a brute-force inversion', () => {
    const rng = createRng('histogram-window-properties')
    let checked = 0
    for (let trial = 0; trial < 300; trial++) {
      const bounds = randomBounds(rng)
      const width = bounds.length + 1
      const windowMs = 1000 * (1 + rng.int(60))
      const slots = 3 + rng.int(60)
      const w = new HistogramWindow(bounds, { windowMs, slots })
      const step = windowMs / (slots - 2)
      // Pushes at least one ring step apart are all kept, so the window's baseline is known.
      const history: Array<{ t: number; cum: number[] }> = []
      const perBucket = new Array<number>(width).fill(0)
      let t = rng.int(1000)
      const pushes = 1 + rng.int(80)
      for (let p = 0; p < pushes; p++) {
        t += step * (1 + rng.next())
        const n = rng.chance(0.2) ? 0 : rng.int(30)
        // Skewed towards low buckets, as latencies are, with a few in +Inf.
        for (let k = 0; k < n; k++) perBucket[Math.min(width - 1, Math.floor(rng.exponential(0.3)))]! += 1
        let run = 0
        const cum = perBucket.map((c) => (run += c))
        expect(w.push(t, cum)).toBe(true)
        history.push({ t, cum })
      }
      const last = history.at(-1)!
      const base = history.find((h) => h.t >= last.t - windowMs)!
      const delta = last.cum.map((c, i) => c - base.cum[i]!)
      expect(w.count).toBe(delta.at(-1))
      const qs = [0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1]
      for (let k = 0; k < 5; k++) qs.push(rng.next())
      qs.sort((a, b) => a - b)
      let prev = Number.NEGATIVE_INFINITY
      for (const q of qs) {
        const v = w.quantile(q)
        const brute = bruteQuantile(q, bounds, delta)
        if (brute === null) {
          expect(v).toBeNull()
          continue
        }
        expect(v).not.toBeNull()
        expect(v!).toBeGreaterThanOrEqual(prev)
        prev = v!
        // Inside the bucket that holds the rank (the +Inf bucket reads as the last finite bound).
        const rank = q * delta.at(-1)!
        let b = delta.findIndex((c) => c >= rank && c > 0)
        b = Math.min(b, bounds.length - 1)
        expect(v!).toBeGreaterThanOrEqual(b === 0 ? 0 : bounds[b - 1]!)
        expect(v!).toBeLessThanOrEqual(bounds[b]!)
        expect(Math.abs(v! - brute)).toBeLessThanOrEqual(1e-9 * bounds.at(-1)!)
        checked++
      }
    }
    expect(checked).toBeGreaterThan(2000)
  })

  it('keeps its ring to `slots` vectors however fast it is fed, and covers windowMs - step to windowMs', () => {
    const w = new HistogramWindow([0.1, 1], { windowMs: 60_000, slots: 62 })
    // 50 Hz for 5 minutes, one observation per scrape.
    let min = Number.POSITIVE_INFINITY
    let max = 0
    for (let i = 0; i <= 15_000; i++) {
      w.push(i * 20, [i, i, i])
      if (i * 20 >= 61_000) {
        min = Math.min(min, w.count)
        max = Math.max(max, w.count)
      }
    }
    // The step is 60 s / 60 = 1 s: the baseline is 59-60 s old.
    expect(min).toBeGreaterThanOrEqual(59_000 / 20)
    expect(max).toBeLessThanOrEqual(60_000 / 20)
  })

  it('covers what it has seen before a whole window has passed', () => {
    const w = new HistogramWindow([1], { windowMs: 60_000 })
    expect(w.quantile(0.5)).toBeNull()
    w.push(0, [0, 0])
    expect(w.quantile(0.5)).toBeNull()
    w.push(100, [4, 4])
    w.push(200, [8, 8])
    expect(w.count).toBe(8)
    expect(w.quantile(0.5)).toBeCloseTo(0.5, 12)
  })

  it('restarts the window on a counter reset or a time that goes backwards', () => {
    const w = new HistogramWindow([1, 2], { windowMs: 10_000, slots: 12 })
    w.push(0, [0, 0, 0])
    w.push(1000, [10, 20, 20])
    expect(w.count).toBe(20)
    // The server restarted: its counts start again from zero.
    w.push(2000, [1, 1, 1])
    expect(w.resets).toBe(1)
    expect(w.quantile(0.5)).toBeNull()
    w.push(3000, [1, 3, 3])
    expect(w.count).toBe(2)
    expect(w.quantile(1)).toBe(2)
    w.push(2500, [1, 3, 3])
    expect(w.resets).toBe(2)
    expect(w.count).toBe(0)
  })

  it('ignores an unusable push and keeps its state', () => {
    const w = new HistogramWindow([1], { windowMs: 10_000 })
    w.push(0, [0, 0])
    w.push(1000, [2, 2])
    for (const [t, counts] of [
      [2000, [1]],
      [2000, [1, 2, 3]],
      [2000, [Number.NaN, 3]],
      [2000, [-1, 3]],
      [2000, [3, Number.POSITIVE_INFINITY]],
      [Number.NaN, [3, 3]],
    ] as const) {
      expect(w.push(t, counts)).toBe(false)
    }
    expect(w.count).toBe(2)
    expect(w.resets).toBe(0)
  })

  it('takes per-bucket counts as well as cumulative ones', () => {
    const a = new HistogramWindow([1, 2])
    const b = new HistogramWindow([1, 2])
    a.push(0, [0, 0, 0])
    b.push(0, [0, 0, 0], false)
    a.push(1000, [3, 5, 6])
    b.push(1000, [3, 2, 1], false)
    for (const q of [0.1, 0.5, 0.9, 0.99]) expect(b.quantile(q)).toBe(a.quantile(q))
  })

  it('validates its bounds and options', () => {
    const bad: Array<[ArrayLike<number>, object]> = [
      [[], {}],
      [[1, 1], {}],
      [[2, 1], {}],
      [[Number.NaN], {}],
      [[1, Number.POSITIVE_INFINITY], {}],
      [Array.from({ length: MAX_BUCKETS + 1 }, (_, i) => i + 1), {}],
      [[1], { windowMs: 0 }],
      [[1], { windowMs: Number.NaN }],
      [[1], { slots: 2 }],
      [[1], { slots: 10.5 }],
    ]
    for (const [bounds, options] of bad)
      expect(() => new HistogramWindow(bounds, options), JSON.stringify([bounds, options])).toThrow(
        InvalidArgumentError,
      )
  })
})

describe('mergeLatencyHistograms', () => {
  it('sums the engines of a data-parallel server bucket by bucket', () => {
    const m = mergeLatencyHistograms([
      { ttft: { bounds: [1, 2], counts: [1, 2, 3] }, itl: { bounds: [1], counts: [4, 4] } },
      { ttft: { bounds: [1, 2], counts: [1, 0, 1], cumulative: false }, itl: null },
    ])
    expect(m.ttft).toEqual({ bounds: [1, 2], counts: [2, 3, 5], cumulative: true })
    // An engine without the family (or with other buckets) makes the sum meaningless.
    expect(m.itl).toBeNull()
    expect(m.e2e).toBeNull()
    expect(
      mergeLatencyHistograms([
        { ttft: { bounds: [1, 2], counts: [1, 2, 3] } },
        { ttft: { bounds: [1, 3], counts: [1, 2, 3] } },
      ]).ttft,
    ).toBeNull()
  })
})

describe('LatencyWindows', () => {
  const h = (n: number): LatencyHistograms => ({
    ttft: { bounds: [0.1, 1], counts: [n, 2 * n, 2 * n] },
    itl: { bounds: [0.01, 0.1], counts: [n, n, n] },
  })

  it('fills the eight quantile fields in ms, null for families the server does not expose', () => {
    const w = new LatencyWindows()
    w.update(0, h(0))
    expect(quantilesOf(w.fill(emptyEngineReading('r')))).toEqual(quantilesOf(emptyEngineReading('r')))
    w.update(100, h(10))
    const r = w.fill(emptyEngineReading('r'))
    expect(r.ttftP50Ms).toBeCloseTo(100, 9)
    expect(r.ttftP90Ms).toBeCloseTo(820, 9)
    expect(r.ttftP99Ms).toBeCloseTo(982, 9)
    expect(r.itlP50Ms).toBeCloseTo(5, 9)
    expect(r.itlP99Ms).toBeCloseTo(9.9, 9)
    expect([r.e2eP50Ms, r.e2eP99Ms, r.queueTimeP99Ms]).toEqual([null, null, null])
    // A family that disappears reads null rather than its old window.
    w.update(200, { ttft: h(20).ttft })
    expect(w.fill(emptyEngineReading('r')).itlP99Ms).toBeNull()
  })

  it('starts a new window when the buckets change', () => {
    const w = new LatencyWindows()
    w.update(0, h(0))
    w.update(100, h(10))
    w.update(200, { ttft: { bounds: [0.5, 1], counts: [30, 30, 30] } })
    expect(w.quantileMs('ttft', 0.5)).toBeNull()
    w.update(300, { ttft: { bounds: [0.5, 1], counts: [40, 40, 40] } })
    expect(w.quantileMs('ttft', 0.5)).toBeCloseTo(250, 9)
  })

  it('never throws on unusable histograms: the family reads null', () => {
    const w = new LatencyWindows()
    const junk: LatencyHistograms = {
      ttft: { bounds: [2, 1], counts: [1, 1, 1] },
      itl: { bounds: [], counts: [1] },
      e2e: { bounds: [1], counts: [1] },
      queueTime: { bounds: [1], counts: [Number.NaN, 1] },
    }
    w.update(0, junk)
    w.update(100, junk)
    expect(quantilesOf(w.fill(emptyEngineReading('r')))).toEqual(quantilesOf(emptyEngineReading('r')))
    expect(() => new LatencyWindows({ windowMs: -1 })).toThrow(InvalidArgumentError)
  })
})

describe('readEngineMetrics with histograms', () => {
  const read = (text: string) => {
    const h: LatencyHistograms[] = [{ ttft: null }]
    const readings = readEngineMetrics(parseExposition(text), 'r', h)
    expect(h).toHaveLength(readings.length)
    return h
  }

  it('returns the four latency histograms of the sample with vLLM\u2019s buckets', () => {
    const [h] = read(fixture('vllm-metrics-sample.txt'))
    expect(h!.ttft!.bounds).toEqual(TTFT_BUCKETS)
    expect(h!.itl!.bounds).toEqual(ITL_BUCKETS)
    expect(h!.e2e!.bounds).toEqual(REQUEST_LATENCY_BUCKETS)
    expect(h!.queueTime!.bounds).toEqual(REQUEST_LATENCY_BUCKETS)
    expect(h!.ttft!.counts.length).toBe(TTFT_BUCKETS.length + 1)
    expect(h!.ttft!.counts[h!.ttft!.counts.length - 1]).toBe(140)
  })

  it('leaves out a family without its +Inf bucket (the partial 22227 capture)', () => {
    const hs = read(fixture('metrics-v1-22227.txt'))
    expect(hs).toEqual([
      { ttft: null, itl: null, e2e: null, queueTime: null },
      { ttft: null, itl: null, e2e: null, queueTime: null },
    ])
  })

  it('sums model names, reads V0 TPOT as ITL and ignores bad bucket samples', () => {
    const [h] = read(
      [
        'vllm:time_to_first_token_seconds_bucket{le="0.5",model_name="base"} 2',
        'vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="base"} 3',
        'vllm:time_to_first_token_seconds_bucket{le="0.5",model_name="lora"} 1',
        'vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="lora"} 1',
        'vllm:time_to_first_token_seconds_bucket{le="nan",model_name="lora"} 1',
        'vllm:time_to_first_token_seconds_bucket{le="0.7",model_name="lora"} -1',
        'vllm:time_to_first_token_seconds_bucket{model_name="lora"} 1',
        'vllm:time_per_output_token_seconds_bucket{le="0.01",model_name="base"} 7',
        'vllm:time_per_output_token_seconds_bucket{le="+Inf",model_name="base"} 9',
      ].join('\n'),
    )
    expect(h).toEqual({
      ttft: { bounds: [0.5], counts: [3, 4], cumulative: true },
      itl: { bounds: [0.01], counts: [7, 9], cumulative: true },
      e2e: null,
      queueTime: null,
    })
  })
})

describe('the simulator and the scraper agree', () => {
  it('gives the same quantiles from reading() as a scraper of the rendered /metrics every 100 ms', () => {
    const fleet = new SimFleet({
      seed: 11,
      arrivals: poissonArrivals({ ratePerSec: 6, seed: 'quantiles' }),
      faults: [{ fault: 'kv-exhaustion', atMs: 25_000, surgeRatePerSec: 15 }],
    })
    fleet.start()
    const replica = fleet.replicas[0]!
    const scraper = new LatencyWindows()
    let compared = 0
    let last: EngineReading | null = null
    for (let t = 0; t <= 50_000; t += 100) {
      fleet.advanceTo(t)
      const sim = replica.reading()
      const e = replica.engine
      if (!replica.listening || e === null) continue
      const h: LatencyHistograms[] = []
      const text = renderExposition({
        modelName: replica.config.model.name,
        engine: e,
        generation: 'v1',
        blockSize: 16,
        gpuMemoryUtilization: 0.92,
        startTimeSeconds: 1_795_000_000,
      })
      const [scraped] = readEngineMetrics(parseExposition(text), replica.name, h)
      scraper.update(t, h[0]!)
      expect(quantilesOf(scraper.fill(scraped!)), `t=${t}`).toEqual(quantilesOf(sim))
      compared++
      last = sim
    }
    expect(compared).toBeGreaterThan(300)
    // Under the surge every family has observations, ordered as quantiles must be.
    for (const f of QUANTILE_FIELDS) expect(last![f], f).not.toBeNull()
    expect(last!.ttftP50Ms!).toBeLessThanOrEqual(last!.ttftP90Ms!)
    expect(last!.ttftP90Ms!).toBeLessThanOrEqual(last!.ttftP99Ms!)
    expect(last!.itlP50Ms!).toBeLessThanOrEqual(last!.itlP99Ms!)
    expect(last!.e2eP50Ms!).toBeLessThanOrEqual(last!.e2eP99Ms!)
  })
})
