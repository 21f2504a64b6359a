import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { SimScenarioError, TraceParseError } from '../../src/errors.js'
import {
  type Arrival,
  type ArrivalSource,
  burstArrivals,
  defaultTracePath,
  diurnalArrivals,
  loadTraceCsv,
  mergeArrivals,
  parseTraceCsv,
  poissonArrivals,
  rateArrivals,
  surge,
  takeUntil,
  traceArrivals,
} from '../../src/sim/arrivals.js'
import { createRng } from '../../src/sim/random.js'

const dir = mkdtempSync(join(tmpdir(), 'vllm-monitor-arrivals-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

const rows = loadTraceCsv()
const countIn = (xs: Arrival[], from: number, to: number) =>
  xs.filter((a) => a.atMs >= from && a.atMs < to).length
const first = (source: ArrivalSource, n: number) => Array.from({ length: n }, () => source.next()!)

function expectInOrder(xs: Arrival[]): void {
  for (let i = 1; i < xs.length; i++) expect(xs[i]!.atMs).toBeGreaterThanOrEqual(xs[i - 1]!.atMs)
}

describe('the Azure code trace', () => {
  it('ships in the repo at defaultTracePath()', () => {
    expect(defaultTracePath()).toMatch(/data[/\\]traces[/\\]azure-llm-inference-2023-code\.csv$/)
    expect(existsSync(defaultTracePath())).toBe(true)
    expect(existsSync(join(defaultTracePath(), '../README.md'))).toBe(true)
  })

  it('loads all 8,819 rows, the header skipped', () => {
    expect(rows).toHaveLength(8_819)
    expect(rows[0]).toEqual({ atMs: 0, promptTokens: 4808, outputTokens: 10 })
    expect(rows.at(-1)).toMatchObject({ promptTokens: 549, outputTokens: 173 })
  })

  it('keeps the 7-digit fractional timestamps exact: the first gaps are 52, 46.189 and 42.495 ms', () => {
    expect(rows[1]!.atMs).toBe(52)
    expect(rows[2]!.atMs).toBeCloseTo(98.189, 9)
    expect(rows[3]!.atMs).toBeCloseTo(140.684, 9)
  })

  it('averages 2.57 requests per second over its 57 minutes', () => {
    const spanSec = rows.at(-1)!.atMs / 1000
    expect(spanSec / 60).toBeCloseTo(57.27, 1)
    expect(rows.length / spanSec).toBeCloseTo(2.57, 2)
  })
})

describe('traceArrivals', () => {
  it('replays the rows in order, outputs as maxTokens', () => {
    const all = [...traceArrivals(rows)]
    expect(all).toHaveLength(rows.length)
    expect(all[1]).toEqual({ atMs: 52, promptTokens: 3180, maxTokens: 8 })
    expectInOrder(all)
  })

  it('with rateMultiplier 2 delivers arrivals twice as dense', () => {
    const normal = [...traceArrivals(rows)]
    const double = [...traceArrivals(rows, { rateMultiplier: 2 })]
    expect(double).toHaveLength(normal.length)
    expect(double.at(-1)!.atMs).toBeCloseTo(normal.at(-1)!.atMs / 2, 6)
    expect(countIn(double, 0, 600_000)).toBe(countIn(normal, 0, 1_200_000))
  })

  it('with loop wraps around after the hour, keeping the mean rate', () => {
    const src = traceArrivals(rows, { loop: true })
    const two = first(src, rows.length * 2 + 1)
    expectInOrder(two)
    const period = two[rows.length]!.atMs
    const span = rows.at(-1)!.atMs
    expect(period).toBeCloseTo(span + span / (rows.length - 1), 6)
    expect(two[rows.length + 1]!.atMs - period).toBe(52)
    expect(rows.length / (period / 1000)).toBeCloseTo(2.57, 2)
  })

  it('with startOffsetMs starts that far into the trace', () => {
    const src = traceArrivals(rows, { startOffsetMs: 60 })
    expect(src.peek()!.atMs).toBeCloseTo(98.189 - 60, 9)
    expect([...src]).toHaveLength(rows.length - 2)
  })

  it('refuses options that make no sense, naming the option', () => {
    expect(() => traceArrivals(rows, { rateMultiplier: 0 })).toThrow(
      /traceArrivals: option "rateMultiplier" must be a finite number > 0, got 0/,
    )
    expect(() => traceArrivals(rows, { startOffsetMs: 1e9 })).toThrow(/option "startOffsetMs" must be within/)
    expect(() => traceArrivals([])).toThrow(SimScenarioError)
  })
})

describe('a malformed trace CSV', () => {
  const good = 'TIMESTAMP,ContextTokens,GeneratedTokens\r\n2023-11-16 18:17:03.9799600,4808,10\r\n'
  const cases: [string, string, RegExp][] = [
    [
      'a bad timestamp',
      '2023-11-16 18:17:0x.1,1,1',
      /^bad.csv line 3: bad timestamp "2023-11-16 18:17:0x.1"/,
    ],
    [
      'an impossible date',
      '2023-02-30 18:17:04.0,1,1',
      /^bad.csv line 3: bad timestamp .* \(no such date or time\)$/,
    ],
    [
      'negative tokens',
      '2023-11-16 18:17:04.0,-5,1',
      /^bad.csv line 3: ContextTokens must be a non-negative integer, found "-5"$/,
    ],
    ['a missing column', '2023-11-16 18:17:04.0,5', /^bad.csv line 3: expected 3 columns .*, found 2$/],
    ['an extra column', '2023-11-16 18:17:04.0,5,6,7', /^bad.csv line 3: expected 3 columns .*, found 4$/],
    [
      'time going backwards',
      '2023-11-16 18:17:03.0,5,6',
      /^bad.csv line 3: timestamp .* is before the previous row's/,
    ],
  ]

  it.each(cases)('with %s names its 1-based line', (_name, row, message) => {
    const path = join(dir, 'bad.csv')
    writeFileSync(path, `${good}${row}\r\n`)
    let err: unknown
    try {
      loadTraceCsv(path)
    } catch (e) {
      err = e
    }
    expect(err).toBeInstanceOf(TraceParseError)
    expect((err as Error).message).toMatch(message)
    expect((err as { line: number }).line).toBe(3)
  })

  it('with no rows at all is an error too', () => {
    expect(() => parseTraceCsv('TIMESTAMP,ContextTokens,GeneratedTokens\n')).toThrow(/no rows/)
  })
})

describe('poissonArrivals', () => {
  it('arrives at the configured mean rate', () => {
    const xs = takeUntil(poissonArrivals({ ratePerSec: 5, seed: 1 }), 600_000)
    expect(xs.length / 600).toBeGreaterThan(5 * 0.95)
    expect(xs.length / 600).toBeLessThan(5 * 1.05)
    expectInOrder(xs)
  })

  it('is deterministic under a seed, and differs under another', () => {
    expect(first(poissonArrivals({ ratePerSec: 5, seed: 7 }), 100)).toEqual(
      first(poissonArrivals({ ratePerSec: 5, seed: 7 }), 100),
    )
    expect(first(poissonArrivals({ ratePerSec: 5, seed: 7 }), 100)).not.toEqual(
      first(poissonArrivals({ ratePerSec: 5, seed: 8 }), 100),
    )
    const rng = createRng('scenario')
    expect(first(poissonArrivals({ ratePerSec: 5, rng: rng.fork('a') }), 10)).toEqual(
      first(poissonArrivals({ ratePerSec: 5, rng: createRng('scenario').fork('a') }), 10),
    )
  })

  it('draws lengths from the conversation-trace fit by default, clipped to [1, maxModelLen]', () => {
    const xs = first(poissonArrivals({ ratePerSec: 5, seed: 2 }), 20_000)
    const median = (v: number[]) => v.sort((a, b) => a - b)[v.length / 2]!
    const mean = (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length
    expect(median(xs.map((a) => a.promptTokens)) / 1020).toBeCloseTo(1, 1)
    expect(mean(xs.map((a) => a.promptTokens)) / 1155).toBeCloseTo(1, 1)
    expect(median(xs.map((a) => a.maxTokens)) / 129).toBeCloseTo(1, 1)
    expect(mean(xs.map((a) => a.maxTokens)) / 211).toBeCloseTo(1, 1)
    const clipped = first(poissonArrivals({ ratePerSec: 5, seed: 2, maxModelLen: 512 }), 2_000)
    expect(Math.max(...clipped.map((a) => a.promptTokens))).toBe(512)
    expect(Math.min(...clipped.map((a) => a.maxTokens))).toBeGreaterThanOrEqual(1)
  })

  it('keeps the same arrival times when only the length distribution changes', () => {
    const a = first(poissonArrivals({ ratePerSec: 5, seed: 3 }), 50)
    const b = first(
      poissonArrivals({
        ratePerSec: 5,
        seed: 3,
        promptTokens: 100,
        outputTokens: { dist: 'uniform', min: 1, max: 9 },
      }),
      50,
    )
    expect(b.map((x) => x.atMs)).toEqual(a.map((x) => x.atMs))
    expect(b.every((x) => x.promptTokens === 100 && x.maxTokens >= 1 && x.maxTokens <= 9)).toBe(true)
  })

  it('honours startMs and endMs', () => {
    const xs = [...poissonArrivals({ ratePerSec: 50, seed: 4, startMs: 1_000, endMs: 2_000 })]
    expect(xs.length).toBeGreaterThan(20)
    expect(xs.every((a) => a.atMs >= 1_000 && a.atMs < 2_000)).toBe(true)
  })

  it('refuses a missing seed, a bad rate or a bad distribution, naming the option', () => {
    expect(() => poissonArrivals({ ratePerSec: 5 })).toThrow(/option "seed" or "rng" is required/)
    expect(() => poissonArrivals({ ratePerSec: -1, seed: 1 })).toThrow(
      /poissonArrivals: option "ratePerSec" must be a finite number > 0, got -1/,
    )
    expect(() =>
      poissonArrivals({ ratePerSec: 1, seed: 1, promptTokens: { dist: 'lognormal', mean: 10, median: 20 } }),
    ).toThrow(/option "promptTokens.mean" must be a finite number >= 20, got 10/)
    expect(() =>
      poissonArrivals({ ratePerSec: 1, seed: 1, outputTokens: { dist: 'zipf' } as never }),
    ).toThrow(/option "outputTokens.dist" must be "lognormal" or "uniform", got "zipf"/)
  })
})

describe('burstArrivals', () => {
  it('multiplies the rate inside each burst and keeps the base rate outside', () => {
    const xs = takeUntil(
      burstArrivals({ ratePerSec: 10, periodMs: 10_000, durationMs: 2_000, multiplier: 5, seed: 5 }),
      400_000,
    )
    let inside = 0
    for (const a of xs) if (a.atMs >= 10_000 && (a.atMs - 10_000) % 10_000 < 2_000) inside++
    const outside = xs.length - inside
    // 39 bursts of 2 s at 50/s; 400 s - 78 s at 10/s.
    expect(inside / 78).toBeCloseTo(50, -1)
    expect(outside / 322).toBeCloseTo(10, 0)
    expectInOrder(xs)
  })

  it('refuses a burst as long as its period', () => {
    expect(() =>
      burstArrivals({ ratePerSec: 1, periodMs: 1_000, durationMs: 1_000, multiplier: 2, seed: 1 }),
    ).toThrow(/option "durationMs" must be less than "periodMs"/)
  })
})

describe('diurnalArrivals', () => {
  it('follows the sinusoid: near the minimum at the trough, the maximum at the peak', () => {
    const xs = takeUntil(
      diurnalArrivals({ minRatePerSec: 2, maxRatePerSec: 20, periodMs: 200_000, seed: 6 }),
      2_000_000,
    )
    // Ten cycles; count 10 s windows around each trough (t = k*200 s) and peak (t = k*200 s + 100 s).
    let trough = 0
    let peak = 0
    for (const a of xs) {
      const phase = a.atMs % 200_000
      if (phase < 5_000 || phase >= 195_000) trough++
      if (Math.abs(phase - 100_000) < 5_000) peak++
    }
    expect(trough / 100).toBeGreaterThan(1.6)
    expect(trough / 100).toBeLessThan(3)
    expect(peak / 100).toBeGreaterThan(18)
    expect(peak / 100).toBeLessThan(21)
    // The mean of the sinusoid is the midpoint, 11/s.
    expect(xs.length / 2_000).toBeCloseTo(11, 0)
  })

  it('refuses max below min', () => {
    expect(() => diurnalArrivals({ minRatePerSec: 5, maxRatePerSec: 1, periodMs: 1, seed: 1 })).toThrow(
      /option "maxRatePerSec" must be a finite number >= 5, got 1/,
    )
  })
})

describe('rateArrivals', () => {
  it('refuses a rate above its declared maximum instead of silently thinning wrong', () => {
    const src = rateArrivals({ rate: () => 10, maxRatePerSec: 5, seed: 1 })
    expect(() => src.next()).toThrow(/rate\(.*\) is 10, outside \[0, maxRatePerSec = 5\]/)
  })
})

describe('surge', () => {
  const window = { atMs: 100_000, durationMs: 50_000 }

  it('multiplies the count inside the window (exactly, for an integer multiplier) and nothing outside', () => {
    const base = takeUntil(traceArrivals(rows), 400_000)
    const surged = takeUntil(surge(traceArrivals(rows), { ...window, multiplier: 3, seed: 1 }), 400_000)
    expectInOrder(surged)
    expect(countIn(surged, 100_000, 150_000)).toBe(3 * countIn(base, 100_000, 150_000))
    expect(surged.filter((a) => a.atMs < 100_000 || a.atMs >= 150_000)).toEqual(
      base.filter((a) => a.atMs < 100_000 || a.atMs >= 150_000),
    )
  })

  it('works on any source, fractional multipliers and lulls included', () => {
    const poisson = () => poissonArrivals({ ratePerSec: 20, seed: 9 })
    const base = countIn(takeUntil(poisson(), 200_000), 100_000, 150_000)
    const up = countIn(
      takeUntil(surge(poisson(), { ...window, multiplier: 2.5, seed: 2 }), 200_000),
      100_000,
      150_000,
    )
    const down = countIn(
      takeUntil(surge(poisson(), { ...window, multiplier: 0.25, seed: 2 }), 200_000),
      100_000,
      150_000,
    )
    expect(up / base).toBeCloseTo(2.5, 1)
    expect(down / base).toBeCloseTo(0.25, 1)
  })

  it('is deterministic under a seed', () => {
    const run = () =>
      takeUntil(
        surge(poissonArrivals({ ratePerSec: 20, seed: 9 }), { ...window, multiplier: 1.7, seed: 3 }),
        200_000,
      )
    expect(run()).toEqual(run())
  })

  it('refuses a negative multiplier and a missing seed', () => {
    const src = poissonArrivals({ ratePerSec: 1, seed: 1 })
    expect(() => surge(src, { ...window, multiplier: -1, seed: 1 })).toThrow(/surge: option "multiplier"/)
    expect(() => surge(src, { ...window, multiplier: 2 })).toThrow(/option "seed" or "rng" is required/)
  })
})

describe('mergeArrivals', () => {
  it('interleaves sources in time order', () => {
    const a = poissonArrivals({ ratePerSec: 3, seed: 1 })
    const b = traceArrivals(rows)
    const merged = takeUntil(mergeArrivals(a, b), 300_000)
    expectInOrder(merged)
    const alone =
      takeUntil(poissonArrivals({ ratePerSec: 3, seed: 1 }), 300_000).length +
      takeUntil(traceArrivals(rows), 300_000).length
    expect(merged).toHaveLength(alone)
  })

  it('ends when every source has ended', () => {
    const merged = mergeArrivals(traceArrivals(rows.slice(0, 3)), traceArrivals(rows.slice(0, 2)))
    expect([...merged]).toHaveLength(5)
    expect(merged.next()).toBeNull()
    expect(merged.peek()).toBeNull()
  })
})

describe('pulling lazily', () => {
  it('takeUntil takes only what is due and leaves the rest for the next step', () => {
    const src = traceArrivals(rows)
    expect(takeUntil(src, 100).map((a) => a.atMs)).toEqual([0, 52, 98.189])
    expect(src.peek()!.atMs).toBeCloseTo(140.684, 9)
  })
})
