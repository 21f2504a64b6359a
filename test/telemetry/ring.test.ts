import { describe, expect, it } from 'vitest'
import { InvalidArgumentError } from '../../src/errors.js'
import { RollupRing, SampleRing } from '../../src/telemetry/ring.js'

const arr = (a: Float64Array, n = a.length) => Array.from(a.subarray(0, n))

describe('SampleRing', () => {
  it('copies what it holds, oldest first, with the times alongside', () => {
    const r = new SampleRing(8)
    r.push(10, 1)
    r.push(20, 2)
    r.push(30, 3)
    const out = new Float64Array(8)
    const outT = new Float64Array(8)
    expect(r.copy(out, outT)).toBe(3)
    expect(arr(out, 3)).toEqual([1, 2, 3])
    expect(arr(outT, 3)).toEqual([10, 20, 30])
    expect(r.lastValue()).toBe(3)
    expect(r.lastTime()).toBe(30)
  })

  it('keeps only the newest `capacity` samples once it wraps around', () => {
    const r = new SampleRing(4)
    for (let i = 1; i <= 10; i++) r.push(i * 10, i)
    expect(r.size).toBe(4)
    const out = new Float64Array(4)
    const outT = new Float64Array(4)
    expect(r.copy(out, outT)).toBe(4)
    expect(arr(out)).toEqual([7, 8, 9, 10])
    expect(arr(outT)).toEqual([70, 80, 90, 100])
  })

  it('gives the most recent samples when the output is shorter than what it holds', () => {
    const r = new SampleRing(4)
    for (let i = 1; i <= 6; i++) r.push(i, i)
    const out = new Float64Array(2)
    expect(r.copy(out)).toBe(2)
    expect(arr(out)).toEqual([5, 6])
  })

  it('finds the samples taken since a time, across the wrap point', () => {
    const r = new SampleRing(5)
    for (let i = 1; i <= 8; i++) r.push(i * 100, i)
    // Held: 400..800.
    const out = new Float64Array(5)
    const outT = new Float64Array(5)
    expect(r.since(550, out, outT)).toBe(3)
    expect(arr(out, 3)).toEqual([6, 7, 8])
    expect(arr(outT, 3)).toEqual([600, 700, 800])
    expect(r.since(600, out)).toBe(3)
    expect(r.since(0, out)).toBe(5)
    expect(r.since(900, out)).toBe(0)
    const two = new Float64Array(2)
    expect(r.since(0, two)).toBe(2)
    expect(arr(two)).toEqual([7, 8])
  })

  it('reads NaN while empty', () => {
    const r = new SampleRing(3)
    expect(r.lastValue()).toBeNaN()
    expect(r.lastTime()).toBeNaN()
    expect(r.copy(new Float64Array(3))).toBe(0)
  })
})

describe('RollupRing', () => {
  it('keeps mean, min, max, last and count of the values in a bucket', () => {
    const r = new RollupRing(10, 100)
    r.record(1000, 4)
    r.record(1030, 1)
    r.record(1099, 7)
    const one = new Float64Array(1)
    const field = (f: 'mean' | 'min' | 'max' | 'last' | 'count') => {
      r.copy(f, one)
      return one[0]
    }
    expect(field('mean')).toBe(4)
    expect(field('min')).toBe(1)
    expect(field('max')).toBe(7)
    expect(field('last')).toBe(7)
    expect(field('count')).toBe(3)
    expect(r.newestStartMs()).toBe(1000)
  })

  it('starts a new bucket exactly at the boundary, aligned to floor(t / width) * width', () => {
    const r = new RollupRing(10, 100)
    r.record(1099.999, 1)
    r.record(1100, 2)
    r.record(1150, 4)
    const out = new Float64Array(10)
    const outT = new Float64Array(10)
    expect(r.copy('mean', out, outT)).toBe(2)
    expect(arr(out, 2)).toEqual([1, 3])
    expect(arr(outT, 2)).toEqual([1000, 1100])
  })

  it('records buckets with no values as gaps (count 0, NaN), not as zeros or old values', () => {
    const r = new RollupRing(10, 100)
    r.record(0, 5)
    r.record(350, 6)
    const mean = new Float64Array(4)
    const count = new Float64Array(4)
    expect(r.copy('mean', mean)).toBe(4)
    r.copy('count', count)
    expect(arr(mean)).toEqual([5, Number.NaN, Number.NaN, 6])
    expect(arr(count)).toEqual([1, 0, 0, 1])
  })

  it('moves its clock on a NaN value without adding to the bucket', () => {
    const r = new RollupRing(10, 100)
    r.record(0, 1)
    r.record(250, Number.NaN)
    expect(r.size).toBe(3)
    const count = new Float64Array(3)
    const mean = new Float64Array(3)
    r.copy('count', count)
    r.copy('mean', mean)
    expect(arr(count)).toEqual([1, 0, 0])
    expect(arr(mean)).toEqual([1, Number.NaN, Number.NaN])
  })

  it('forgets the oldest buckets when it wraps around, and never shows stale ones in a gap', () => {
    const r = new RollupRing(4, 100)
    for (let k = 0; k < 6; k++) r.record(k * 100, k)
    const out = new Float64Array(4)
    const outT = new Float64Array(4)
    expect(r.copy('last', out, outT)).toBe(4)
    expect(arr(out)).toEqual([2, 3, 4, 5])
    expect(arr(outT)).toEqual([200, 300, 400, 500])
    // A gap of two buckets reuses slots that held 2 and 3: they must read as gaps now.
    r.record(800, 8)
    r.copy('last', out, outT)
    expect(arr(out)).toEqual([5, Number.NaN, Number.NaN, 8])
    expect(arr(outT)).toEqual([500, 600, 700, 800])
  })

  it('clears everything on a jump longer than the ring', () => {
    const r = new RollupRing(4, 100)
    for (let k = 0; k < 4; k++) r.record(k * 100, k + 1)
    r.record(1_000_000, 9)
    const out = new Float64Array(4)
    const count = new Float64Array(4)
    r.copy('mean', out)
    r.copy('count', count)
    expect(arr(out)).toEqual([Number.NaN, Number.NaN, Number.NaN, 9])
    expect(arr(count)).toEqual([0, 0, 0, 1])
  })

  it('fills a fixed-length window ending at the newest bucket, gaps and unheld buckets as NaN', () => {
    const r = new RollupRing(4, 100)
    r.record(200, 2)
    r.record(400, 4)
    r.record(500, 5)
    // Held: 200 (2), 300 (gap), 400 (4), 500 (5). A window of 6 reaches back past the ring.
    const out = new Float64Array(6)
    expect(r.window('mean', 6, out)).toBe(3)
    expect(arr(out)).toEqual([Number.NaN, Number.NaN, 2, Number.NaN, 4, 5])
    const count = new Float64Array(6)
    r.window('count', 6, count)
    expect(arr(count)).toEqual([0, 0, 1, 0, 1, 1])
  })

  it('aligns a window to a given end time, past or future', () => {
    const r = new RollupRing(10, 100)
    for (let k = 0; k < 5; k++) r.record(k * 100, k)
    const out = new Float64Array(3)
    expect(r.window('mean', 3, out, 650)).toBe(1)
    expect(arr(out)).toEqual([4, Number.NaN, Number.NaN])
    expect(r.window('mean', 3, out, 250)).toBe(3)
    expect(arr(out)).toEqual([0, 1, 2])
  })

  it('fills an empty ring window with gaps and refuses an output too short', () => {
    const r = new RollupRing(10, 100)
    const out = new Float64Array(3).fill(7)
    expect(r.window('max', 3, out)).toBe(0)
    expect(arr(out)).toEqual([Number.NaN, Number.NaN, Number.NaN])
    expect(() => r.window('max', 4, out)).toThrow(InvalidArgumentError)
  })

  it('reads the same values without counting them, wherever the window ends and however it wraps', () => {
    // A window of 12 on a ring of 8: longer than the ring ever holds.
    const r = new RollupRing(8, 100)
    const counted = new Float64Array(12)
    const values = new Float64Array(12)
    expect(() => r.windowValues('mean', 13, values, 0)).toThrow(InvalidArgumentError)
    r.windowValues('mean', 12, values, 500)
    expect(arr(values)).toEqual(new Array(12).fill(Number.NaN))
    // Gaps (skipped buckets, NaN readings) and more buckets than the ring holds.
    let t = 0
    for (let k = 0; k < 60; k++) {
      t += k % 7 === 3 ? 350 : 100
      r.record(t, k % 5 === 0 ? Number.NaN : k)
      for (const end of [t - 2_500, t - 700, t - 100, t, t + 100, t + 900, t + 5_000, Number.NaN]) {
        for (const field of ['mean', 'count'] as const) {
          r.window(field, 12, counted, end)
          r.windowValues(field, 12, values, end)
          expect(arr(values)).toEqual(arr(counted))
        }
      }
    }
  })
})
