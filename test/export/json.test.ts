import { describe, expect, it } from 'vitest'
import { jsonSafe, toExportJson } from '../../src/export/json.js'
import type { Transition } from '../../src/telemetry/types.js'
import { makeCheckpoint, makeStatus } from './fixture.js'

const transitions = new Map<string, Transition[]>([
  [
    'r0',
    [
      { t: 1_200, from: 'NOT_STARTED', to: 'INITIALIZING', reason: 'process spawned' },
      { t: 31_000, from: 'LOADING_MODEL', to: 'READY', reason: '/health 200' },
    ],
  ],
  ['r1', [{ t: 565_000, from: 'SERVING', to: 'DEGRADED', reason: 'KV cache above 95 %' }]],
])

describe('toExportJson', () => {
  it('builds the self-describing export document from the status, checkpoint and history', () => {
    const doc = toExportJson({
      exportedAt: Date.UTC(2026, 10, 3, 9, 30),
      status: makeStatus(),
      checkpoint: makeCheckpoint(),
      transitions,
    })
    expect(doc.format).toBe('vllm-monitor-export')
    expect(doc.version).toBe(1)
    expect(doc.exportedAt).toBe('2026-11-03T09:30:00.000Z')
    expect(doc.status).toEqual(makeStatus())
    expect(doc.checkpoint).toEqual(makeCheckpoint())
    expect(doc.history.transitions).toEqual(Object.fromEntries(transitions))
    expect(doc.history.events).toEqual(makeCheckpoint().events)
    expect(doc).not.toHaveProperty('series')
  })

  it('is a pure function: the same inputs give the same document, and the inputs are not touched', () => {
    const input = {
      exportedAt: new Date('2026-11-03T09:30:00Z'),
      status: makeStatus(),
      checkpoint: makeCheckpoint(),
      transitions,
      series: { r1: { t: [1, 2], kvCacheUsage: [0.9, Number.NaN] } },
    }
    const a = toExportJson(input)
    const b = toExportJson(input)
    expect(JSON.stringify(a)).toBe(JSON.stringify(b))
    expect(a.checkpoint).not.toBe(input.checkpoint)
    expect(input.series.r1.kvCacheUsage[1]).toBeNaN()
  })

  it('replaces NaN and infinities with null, so that the document survives JSON unchanged', () => {
    const checkpoint = makeCheckpoint()
    checkpoint.engines[1]!.derived.preemptionsPerSec = Number.POSITIVE_INFINITY
    const doc = toExportJson({
      exportedAt: 0,
      status: makeStatus({ predictionAccuracy: Number.NaN }),
      checkpoint,
      transitions: {},
      events: [],
      series: { r1: { t: [1, 2], kvCacheUsage: [0.9, Number.NaN] } },
    })
    expect(doc.status.predictionAccuracy).toBeNull()
    expect(doc.checkpoint.engines[1]!.derived.preemptionsPerSec).toBeNull()
    expect(doc.series).toEqual({ r1: { t: [1, 2], kvCacheUsage: [0.9, null] } })
    expect(JSON.parse(JSON.stringify(doc))).toEqual(doc)
  })

  it('rejects an export time that is not a time', () => {
    expect(() =>
      toExportJson({
        exportedAt: Number.NaN,
        status: makeStatus(),
        checkpoint: makeCheckpoint(),
        transitions: {},
      }),
    ).toThrow('exportedAt must be a valid Date or epoch ms')
  })
})

describe('jsonSafe', () => {
  it('turns what JSON cannot hold into what it can', () => {
    const d = new Date('2026-01-02T03:04:05Z')
    expect(
      jsonSafe({
        big: 12n,
        huge: 2n ** 64n,
        when: d,
        map: new Map([['a', 1]]),
        set: new Set([1, Number.NaN]),
        gone: undefined,
        fn: () => 1,
        list: [undefined, Number.NEGATIVE_INFINITY],
      }),
    ).toEqual({
      big: 12,
      huge: '18446744073709551616',
      when: '2026-01-02T03:04:05.000Z',
      map: { a: 1 },
      set: [1, null],
      list: [null, null],
    })
  })

  it('copies shared references but names the path that closes a cycle', () => {
    const gpu = { gpu: 0 }
    expect(jsonSafe({ a: gpu, b: [gpu] })).toEqual({ a: { gpu: 0 }, b: [{ gpu: 0 }] })
    const loop: Record<string, unknown> = { data: {} }
    ;(loop.data as Record<string, unknown>).self = loop
    expect(() => jsonSafe(loop, 'checkpoint')).toThrow(
      'cannot export a cycle: checkpoint.data.self refers back',
    )
  })
})
