import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/errors.js'
import { Gradient2Limit } from '../../src/gateway/gradient2.js'

/** Feeds `n` samples of `rtt` ms with the limiter fully used. */
function feed(g: Gradient2Limit, n: number, rtt: number): void {
  for (let i = 0; i < n; i++) g.onSample(rtt, g.limit, false)
}

describe('Gradient2Limit', () => {
  it('starts at its initial limit with the documented defaults', () => {
    const g = new Gradient2Limit()
    expect(g.limit).toBe(20)
    expect(g.minLimit).toBe(4)
    expect(g.maxLimit).toBe(200)
  })

  it('grows under a stable low RTT, by queueSize × smoothing per sample, up to maxLimit', () => {
    const g = new Gradient2Limit({ initialLimit: 20, maxLimit: 100 })
    g.onSample(50, 20, false)
    // gradient 1: 20 + (20 + 4 - 20) × 0.2 = 20.8
    expect(g.estimatedLimit).toBeCloseTo(20.8, 10)
    feed(g, 20, 50)
    expect(g.limit).toBeGreaterThan(30)
    feed(g, 1000, 50)
    expect(g.limit).toBe(100)
  })

  it('shrinks when the RTT rises well above the long-term average', () => {
    const g = new Gradient2Limit({ initialLimit: 100, maxLimit: 200 })
    feed(g, 50, 50)
    const before = g.limit
    feed(g, 10, 400)
    expect(g.limit).toBeLessThan(before)
    // Each step keeps at least half the limit before smoothing: at most a 10 % cut per sample.
    const one = new Gradient2Limit({ initialLimit: 100 })
    feed(one, 20, 50)
    const e = one.estimatedLimit
    one.onSample(10_000, one.limit, false)
    expect(one.estimatedLimit).toBeCloseTo(e * 0.8 + (e * 0.5 + 4) * 0.2, 6)
  })

  it('tolerates RTT up to rttTolerance × the long average without shrinking', () => {
    const g = new Gradient2Limit({ initialLimit: 50 })
    feed(g, 50, 100)
    const before = g.estimatedLimit
    g.onSample(140, g.limit, false)
    expect(g.estimatedLimit).toBeGreaterThan(before)
  })

  it('never goes below minLimit nor above maxLimit', () => {
    const g = new Gradient2Limit({ initialLimit: 10, minLimit: 5, maxLimit: 12 })
    feed(g, 200, 10)
    expect(g.limit).toBe(12)
    for (let i = 0; i < 100; i++) g.onSample(0, 0, true)
    expect(g.limit).toBe(5)
    // With no growth allowance, ever-rising latency drives the limit to the floor and no further.
    const h = new Gradient2Limit({ initialLimit: 10, minLimit: 5, maxLimit: 12, queueSize: 0 })
    for (let i = 0; i < 500; i++) h.onSample(10 * 1.5 ** i, h.limit, false)
    expect(h.limit).toBe(5)
    expect(h.estimatedLimit).toBe(5)
  })

  it('does not grow while app-limited (in flight below half the limit)', () => {
    const g = new Gradient2Limit({ initialLimit: 40 })
    for (let i = 0; i < 200; i++) g.onSample(50, 19, false)
    expect(g.limit).toBe(40)
    g.onSample(50, 20, false)
    expect(g.limit).toBe(40)
    expect(g.estimatedLimit).toBeGreaterThan(40)
  })

  it('backs off multiplicatively (×0.9) on a dropped sample, ignoring its RTT', () => {
    const g = new Gradient2Limit({ initialLimit: 100 })
    feed(g, 10, 50)
    const long = g.longRttMs
    const before = g.estimatedLimit
    g.onSample(60_000, g.limit, true)
    expect(g.estimatedLimit).toBeCloseTo(before * 0.9, 10)
    expect(g.longRttMs).toBe(long)
  })

  it('pulls the long RTT down faster once latency recovers (×0.95 when long/short > 2)', () => {
    const g = new Gradient2Limit({ initialLimit: 50, longWindow: 600 })
    feed(g, 10, 1000)
    const high = g.longRttMs
    g.onSample(100, g.limit, false)
    const ema = high + (100 - high) * (2 / 601)
    expect(g.longRttMs).toBeCloseTo(ema * 0.95, 6)
  })

  it('accepts queueSize as a function of the limit', () => {
    const g = new Gradient2Limit({ initialLimit: 16, queueSize: (l) => Math.sqrt(l) })
    g.onSample(10, 16, false)
    expect(g.estimatedLimit).toBeCloseTo(16 + 4 * 0.2, 10)
  })

  it('rejects invalid options, naming the option', () => {
    expect(() => new Gradient2Limit({ minLimit: 0 })).toThrow(InvalidOptionError)
    expect(() => new Gradient2Limit({ minLimit: 0 })).toThrow(/"minLimit"/)
    expect(() => new Gradient2Limit({ maxLimit: 2 })).toThrow(/"maxLimit"/)
    expect(() => new Gradient2Limit({ initialLimit: 300 })).toThrow(/"initialLimit"/)
    expect(() => new Gradient2Limit({ smoothing: 0 })).toThrow(/"smoothing"/)
    expect(() => new Gradient2Limit({ rttTolerance: 0.5 })).toThrow(/"rttTolerance"/)
    expect(() => new Gradient2Limit({ longWindow: 0 })).toThrow(/"longWindow"/)
    expect(() => new Gradient2Limit({ queueSize: -1 })).toThrow(/"queueSize"/)
  })
})
