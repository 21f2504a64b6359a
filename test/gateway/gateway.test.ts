import { describe, expect, it } from 'vitest'
import { AdmissionRejectedError, Gateway, RequestHandle } from '../../src/gateway/gateway.js'
import { createMonitor } from '../../src/monitor/monitor.js'
import { nullDerived } from '../../src/telemetry/store.js'
import type { Checkpoint, EngineSnapshot, TelemetryRecord } from '../../src/telemetry/types.js'
import { engineReading } from '../helpers/records.js'

function clock() {
  let t = 0
  return { now: () => t, advance: (ms: number) => (t += ms) }
}

function snapshot(
  replica: string,
  over: Partial<EngineSnapshot> & { kv?: number; waiting?: number } = {},
): EngineSnapshot {
  return {
    replica,
    lifecycleState: 'SERVING',
    since: 0,
    reason: '',
    reading: engineReading(replica, { kvCacheUsage: over.kv ?? 0.1, requestsWaiting: over.waiting ?? 0 }),
    readingAt: 0,
    stale: false,
    derived: nullDerived(),
    ...over,
  }
}

function checkpoint(engines: EngineSnapshot[], predictions: Checkpoint['predictions'] = []): Checkpoint {
  return { t: 0, lifecycleState: 'SERVING', engines, gpus: [], events: [], errors: [], predictions }
}

const replicas = [
  { name: 'a', url: 'http://127.0.0.1:1' },
  { name: 'b', url: 'http://127.0.0.1:2' },
]

describe('Gateway', () => {
  it('refuses options without replicas or with a replica that has no URL', () => {
    expect(() => new Gateway({ replicas: [] })).toThrow(/replicas must be a non-empty array/)
    expect(() => new Gateway({ replicas: [{ name: 'a', url: 'nope' }] })).toThrow(
      /needs a name and an absolute URL/,
    )
    expect(() => new Gateway({ replicas, stallAfterMs: 0 })).toThrow(/stallAfterMs must be a positive number/)
  })

  it('routes to the replica whose checkpoint shows the emptier KV cache and queue', () => {
    const gw = new Gateway({ replicas })
    gw.refresh(checkpoint([snapshot('a', { kv: 0.9, waiting: 12 }), snapshot('b', { kv: 0.2, waiting: 0 })]))
    const h = gw.tryBegin()
    expect(h).toBeInstanceOf(RequestHandle)
    expect((h as RequestHandle).replica).toBe('b')
    expect((h as RequestHandle).url).toBe('http://127.0.0.1:2')
  })

  it('moves traffic away from the replica the forecaster says is at risk', () => {
    const gw = new Gateway({ replicas })
    gw.refresh(
      checkpoint(
        [snapshot('a'), snapshot('b')],
        [
          {
            failureType: 'kv-exhaustion',
            probability: 0.97,
            timeToFailureS: 30,
            horizonS: 120,
            target: { replica: 'a', gpu: 0 },
            evidence: [],
            model: 'forecaster-v1',
          },
        ],
      ),
    )
    const picks = new Set<string>()
    for (let i = 0; i < 6; i++) {
      const h = gw.tryBegin() as RequestHandle
      picks.add(h.replica)
      h.end(200)
    }
    expect([...picks]).toEqual(['b'])
  })

  it("caps a replica at what it runs while vLLM's own queue is not empty, and lifts the cap when it is", () => {
    const gw = new Gateway({ replicas })
    const withQueue = (waiting: number, running: number) => {
      const a = snapshot('a', { waiting })
      a.reading!.requestsRunning = running
      return checkpoint([a, snapshot('b')])
    }
    gw.refresh(withQueue(7, 12))
    expect(gw.admission.state('a')).toMatchObject({ cap: 12, capReason: 'vLLM queue: 7 waiting' })
    expect(gw.admission.state('b').cap).toBeNull()
    gw.refresh(withQueue(0, 12))
    expect(gw.admission.state('a').cap).toBeNull()
    // A cap someone else set (a mitigation) is theirs to lift.
    gw.admission.cap('a', 3, 'ReduceBatchSize')
    gw.refresh(withQueue(5, 12))
    gw.refresh(withQueue(0, 12))
    expect(gw.admission.state('a')).toMatchObject({ cap: 3, capReason: 'ReduceBatchSize' })
  })

  it('does not route to a replica that is not serving, and answers 503 when none is', async () => {
    const gw = new Gateway({ replicas })
    gw.refresh(
      checkpoint([
        snapshot('a', { lifecycleState: 'ERROR' }),
        snapshot('b', { lifecycleState: 'LOADING_MODEL' }),
      ]),
    )
    expect(gw.tryBegin()).toMatchObject({ reason: 'no-replica', status: 503, retryAfterS: 5 })
    await expect(gw.begin()).rejects.toBeInstanceOf(AdmissionRejectedError)
  })

  it('counts a request from admission to its end, with its time to first token and its tokens', () => {
    const c = clock()
    const gw = new Gateway({ replicas: [replicas[0]!], now: c.now })
    const h = gw.tryBegin() as RequestHandle
    expect(gw.inFlight()).toBe(1)
    c.advance(120)
    h.firstByte()
    for (let i = 0; i < 4; i++) {
      c.advance(20)
      h.chunk()
    }
    h.end(200, { completionTokens: 5, promptTokens: 10 })
    expect(gw.inFlight()).toBe(0)
    expect(gw.requestStats('a')).toMatchObject({
      requests: 1,
      errors: 0,
      stalls: 0,
      ttftMs: 120,
      completionTokens: 5,
    })
    expect(gw.requestStats('a')!.interTokenMs).toBeCloseTo(20, 5)
    // A second end is ignored.
    h.end(500)
    expect(gw.requestStats('a')!.requests).toBe(1)
  })

  it('reports a stream that goes silent mid-response as a stall event, once', () => {
    const c = clock()
    const records: TelemetryRecord[] = []
    const gw = new Gateway({
      replicas: [replicas[0]!],
      now: c.now,
      stallAfterMs: 1000,
      push: (r) => records.push(r),
    })
    const h = gw.tryBegin() as RequestHandle
    h.firstByte()
    h.chunk()
    c.advance(1500)
    gw.checkStalls()
    c.advance(1500)
    gw.checkStalls()
    expect(records.filter((r) => r.kind === 'event' && r.type === 'gateway-stream-stall')).toHaveLength(1)
    expect(gw.requestStats('a')!.stalls).toBe(1)
    h.abort()
    expect(gw.inFlight()).toBe(0)
  })

  it('does not call a slow non-streaming response, or one still waiting for its first byte, a stall', () => {
    const c = clock()
    const records: TelemetryRecord[] = []
    const gw = new Gateway({
      replicas: [replicas[0]!],
      now: c.now,
      stallAfterMs: 1000,
      push: (r) => records.push(r),
    })
    const waiting = gw.tryBegin() as RequestHandle
    const generating = gw.tryBegin() as RequestHandle
    generating.firstByte()
    c.advance(5000)
    gw.checkStalls()
    expect(records).toEqual([])
    generating.end(200)
    waiting.end(200)
    expect(gw.requestStats('a')).toMatchObject({ stalls: 0, requests: 2 })
  })

  it("counts a refused connection against the replica's breaker and reports it, but not a client's 4xx", () => {
    const records: TelemetryRecord[] = []
    const gw = new Gateway({
      replicas: [replicas[0]!],
      push: (r) => records.push(r),
      picker: { breaker: { failureThreshold: 2 } },
    })
    for (let i = 0; i < 3; i++) (gw.tryBegin() as RequestHandle).end(400)
    expect(gw.picker.breakerState('a')).toBe('closed')
    for (let i = 0; i < 2; i++) (gw.tryBegin() as RequestHandle).fail('connect-error', 'ECONNREFUSED')
    expect(gw.picker.breakerState('a')).toBe('open')
    expect(records.filter((r) => r.kind === 'event' && r.type === 'gateway-upstream-error')).toHaveLength(2)
    expect(gw.requestStats('a')).toMatchObject({ requests: 5, errors: 2 })
  })

  it('is built by the monitor over its replicas, refreshed by its checkpoints, and reports into it', async () => {
    const m = createMonitor({
      replicas: ['http://127.0.0.1:9/'],
      http: false,
      gpu: 'none',
      predictive: false,
    })
    try {
      const gw = m.gateway()
      expect(m.gateway()).toBe(gw)
      expect(gw.replicas().map((r) => [r.name, r.url])).toEqual([['r0', 'http://127.0.0.1:9']])
      const h = gw.tryBegin() as RequestHandle
      h.fail('connect-error', 'ECONNREFUSED')
      await new Promise((r) => setTimeout(r, 250))
      expect(
        m.getCheckpoint()!.events.some((e) => e.type === 'gateway-upstream-error' && e.replica === 'r0'),
      ).toBe(true)
    } finally {
      await m.close()
    }
  })
})
