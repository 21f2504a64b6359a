import { afterEach, describe, expect, it, vi } from 'vitest'
import { InvalidArgumentError } from '../../src/errors.js'
import { createRng, lognormalParams, type Rng } from '../../src/sim/random.js'

const draws = (rng: Rng, n: number) => Array.from({ length: n }, () => rng.next())

function moments(xs: number[]): { mean: number; variance: number } {
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length
  const variance = xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (xs.length - 1)
  return { mean, variance }
}

function sample(n: number, f: () => number): number[] {
  return Array.from({ length: n }, f)
}

describe('a seeded Rng', () => {
  afterEach(() => vi.restoreAllMocks())

  it('gives the same sequence for the same seed, and a different one for another seed', () => {
    expect(draws(createRng(42), 100)).toEqual(draws(createRng(42), 100))
    expect(draws(createRng('scenario-a'), 100)).toEqual(draws(createRng('scenario-a'), 100))
    expect(draws(createRng(42), 100)).not.toEqual(draws(createRng(43), 100))
    // A number seed and its decimal string are the same seed.
    expect(draws(createRng(7), 5)).toEqual(draws(createRng('7'), 5))
  })

  it('pins its output, so a change to the generator (which would change every scenario) is noticed', () => {
    const rng = createRng(1)
    expect([rng.nextUint32(), rng.nextUint32(), rng.nextUint32()]).toEqual([
      1694655925, 1957244520, 1918528143,
    ])
    const child = createRng(1).fork('a')
    expect([child.nextUint32(), child.nextUint32()]).toEqual([1348662979, 625141217])
    expect(createRng(1).next()).toBe(1694655925 / 2 ** 32)
  })

  it('never calls Math.random', () => {
    const spy = vi.spyOn(Math, 'random')
    const rng = createRng(3)
    for (let i = 0; i < 1000; i++) {
      rng.next()
      rng.normal()
      rng.exponential(2)
      rng.poisson(i % 2 === 0 ? 3 : 300)
      rng.lognormal(1, 0.5)
      rng.int(10)
    }
    rng.fork('child').next()
    expect(spy).not.toHaveBeenCalled()
  })

  it('keeps next() in [0, 1) and int(n) in [0, n), hitting every value', () => {
    const rng = createRng(5)
    const xs = draws(rng, 10_000)
    expect(Math.min(...xs)).toBeGreaterThanOrEqual(0)
    expect(Math.max(...xs)).toBeLessThan(1)
    const seen = new Set(sample(1_000, () => rng.int(7)))
    expect([...seen].sort()).toEqual([0, 1, 2, 3, 4, 5, 6])
  })
})

describe('fork', () => {
  it('derives a child from the seed and label only, not from draws the parent made', () => {
    const fresh = createRng(9)
    const used = createRng(9)
    draws(used, 1_000)
    expect(draws(fresh.fork('replica-0'), 50)).toEqual(draws(used.fork('replica-0'), 50))
  })

  it('gives different labels independent streams', () => {
    const root = createRng(9)
    const a = draws(root.fork('replica-0'), 2_000)
    const b = draws(root.fork('replica-1'), 2_000)
    expect(a).not.toEqual(b)
    // Uncorrelated: the sample correlation of two independent uniform streams is near 0.
    const ma = moments(a).mean
    const mb = moments(b).mean
    let cov = 0
    for (let i = 0; i < a.length; i++) cov += (a[i]! - ma) * (b[i]! - mb)
    const corr = cov / (a.length - 1) / Math.sqrt(moments(a).variance * moments(b).variance)
    expect(Math.abs(corr)).toBeLessThan(0.06)
  })

  it('leaves existing streams alone when another replica is added', () => {
    const before = createRng(11)
    const r0Before = draws(before.fork('replica-0'), 20)
    const after = createRng(11)
    draws(after.fork('replica-new'), 500)
    expect(draws(after.fork('replica-0'), 20)).toEqual(r0Before)
  })

  it('nests, and records the path it came from', () => {
    const child = createRng(1).fork('fleet').fork('replica-0')
    expect(child.path).toBe('1/fleet/replica-0')
    expect(draws(child, 5)).toEqual(draws(createRng(1).fork('fleet').fork('replica-0'), 5))
    expect(draws(child, 5)).not.toEqual(draws(createRng(1).fork('fleet/replica-1'), 5))
  })
})

describe('distributions, with a fixed seed', () => {
  const rng = createRng(2024)
  const n = 40_000

  it('uniform has mean 1/2 and variance 1/12', () => {
    const { mean, variance } = moments(draws(rng, n))
    expect(mean).toBeCloseTo(0.5, 2)
    expect(variance).toBeCloseTo(1 / 12, 2)
  })

  it('normal(mean, sd) has that mean and sd', () => {
    const { mean, variance } = moments(sample(n, () => rng.normal(10, 3)))
    expect(mean).toBeCloseTo(10, 1)
    expect(Math.sqrt(variance)).toBeCloseTo(3, 1)
  })

  it('exponential(rate) has mean and sd 1/rate', () => {
    const { mean, variance } = moments(sample(n, () => rng.exponential(4)))
    expect(mean).toBeCloseTo(0.25, 2)
    expect(Math.sqrt(variance)).toBeCloseTo(0.25, 2)
  })

  it.each([0.5, 7, 29.9, 30, 250, 10_000])('poisson(%d) has mean and variance lambda', (lambda) => {
    const xs = sample(20_000, () => rng.poisson(lambda))
    expect(xs.every((x) => Number.isInteger(x) && x >= 0)).toBe(true)
    const { mean, variance } = moments(xs)
    expect(Math.abs(mean - lambda)).toBeLessThan(4 * Math.sqrt(lambda / xs.length) + 1e-9)
    expect(variance / lambda).toBeGreaterThan(0.95)
    expect(variance / lambda).toBeLessThan(1.05)
  })

  it('poisson(0) is always 0', () => {
    expect(sample(100, () => rng.poisson(0)).every((x) => x === 0)).toBe(true)
  })

  it('lognormal, fitted by lognormalParams, has the requested mean and median', () => {
    const { mu, sigma } = lognormalParams({ mean: 211, median: 129 })
    const xs = sample(n, () => rng.lognormal(mu, sigma)).sort((a, b) => a - b)
    expect(xs[n / 2]! / 129).toBeCloseTo(1, 1)
    expect(moments(xs).mean / 211).toBeCloseTo(1, 1)
  })

  it('uniform(min, max) stays in range; chance(p) comes true about p of the time', () => {
    const xs = sample(10_000, () => rng.uniform(-2, 3))
    expect(Math.min(...xs)).toBeGreaterThanOrEqual(-2)
    expect(Math.max(...xs)).toBeLessThan(3)
    expect(sample(10_000, () => (rng.chance(0.3) ? 1 : 0)).reduce((a, b) => a + b, 0) / 10_000).toBeCloseTo(
      0.3,
      1,
    )
    expect(['a', 'b']).toContain(rng.pick(['a', 'b']))
  })
})

describe('bad arguments', () => {
  it('are refused with an error that names them', () => {
    const rng = createRng(0)
    expect(() => createRng(Number.NaN)).toThrow(InvalidArgumentError)
    expect(() => rng.exponential(0)).toThrow(/exponential rate must be a positive number, got 0/)
    expect(() => rng.int(0)).toThrow(/int\(n\) needs an integer n between 1 and 2\^32, got 0/)
    expect(() => rng.poisson(-1)).toThrow(/poisson lambda/)
    expect(() => rng.lognormal(0, -1)).toThrow(/sigma >= 0/)
    expect(() => rng.fork('')).toThrow(/fork label/)
    expect(() => rng.pick([])).toThrow(/non-empty/)
    expect(() => lognormalParams({ mean: 10, median: 20 })).toThrow(/mean >= median/)
  })
})
