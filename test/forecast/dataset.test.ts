import { describe, expect, it } from 'vitest'
import { traceSegment, withBursts } from '../../src/forecast/dataset.js'
import type { TraceRow } from '../../src/sim/arrivals.js'

/** One request a second for `seconds`, prompt lengths 1000 + i so that rows can be told apart. */
function steadyRows(seconds: number): TraceRow[] {
  return Array.from({ length: seconds }, (_, i) => ({
    atMs: i * 1000,
    promptTokens: 1000 + i,
    outputTokens: 20,
  }))
}

/** Runs of at least `min` rows whose arrivals are no more than `gapMs` apart. */
function clusters(rows: readonly TraceRow[], gapMs: number, min: number): TraceRow[][] {
  const out: TraceRow[][] = []
  let cur: TraceRow[] = []
  for (const r of rows) {
    if (cur.length > 0 && r.atMs - cur.at(-1)!.atMs > gapMs) {
      if (cur.length >= min) out.push(cur)
      cur = []
    }
    cur.push(r)
  }
  if (cur.length >= min) out.push(cur)
  return out
}

describe('withBursts', () => {
  it('keeps every row of the trace and adds bursts of 15-60 of its requests within 1.5 s', () => {
    const rows = steadyRows(3600)
    const out = withBursts(rows, 'steady/1')
    const kept = new Set(out)
    expect(rows.every((r) => kept.has(r))).toBe(true)
    const original = new Set(rows)
    const added = out.filter((r) => !original.has(r))
    expect(added.length).toBe(out.length - rows.length)
    const bursts = clusters(added, 1500, 1)
    // One every 100 s on average: about 36 in an hour of trace, each of 15-60 requests. (The
    // bursts of this key are all more than 1.5 s apart, so none merge into one cluster.)
    expect(bursts.length).toBeGreaterThan(20)
    expect(bursts.length).toBeLessThan(55)
    for (const b of bursts) {
      expect(b.length).toBeGreaterThanOrEqual(15)
      expect(b.length).toBeLessThanOrEqual(60)
      expect(b.at(-1)!.atMs - b[0]!.atMs).toBeLessThanOrEqual(1500)
    }
    // The burst requests are the trace's own lengths.
    const lengths = new Set(rows.map((r) => r.promptTokens))
    for (const r of out) expect(lengths.has(r.promptTokens)).toBe(true)
  })

  it('returns the rows in time order, the same for the same key and others for another', () => {
    const rows = steadyRows(1200)
    const a = withBursts(rows, 'kv-surge/3')
    for (let i = 1; i < a.length; i++) expect(a[i]!.atMs).toBeGreaterThanOrEqual(a[i - 1]!.atMs)
    expect(withBursts(rows, 'kv-surge/3')).toEqual(a)
    expect(withBursts(rows, 'kv-surge/4')).not.toEqual(a)
  })

  it('leaves a trace too short to burst from as it is, and never changes its input', () => {
    const few = steadyRows(5)
    expect(withBursts(few, 'x')).toEqual(few)
    const rows = steadyRows(600)
    const copy = rows.map((r) => ({ ...r }))
    withBursts(rows, 'x')
    expect(rows).toEqual(copy)
  })
})

describe('traceSegment', () => {
  it('gives training the first 60 % of the time span, validation the next 20 %, test the last 20 %, each from 0', () => {
    const rows = steadyRows(1001)
    const train = traceSegment(rows, 'train')
    const val = traceSegment(rows, 'val')
    const test = traceSegment(rows, 'test')
    expect(train.length + val.length + test.length).toBe(rows.length)
    expect([train[0]!.atMs, val[0]!.atMs, test[0]!.atMs]).toEqual([0, 0, 0])
    expect(train.at(-1)!.promptTokens).toBeLessThan(val[0]!.promptTokens)
    expect(val.at(-1)!.promptTokens).toBeLessThan(test[0]!.promptTokens)
  })
})
