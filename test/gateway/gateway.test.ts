import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/errors.js'
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

  it("caps a replica at what it runs while vLLM's own queue is not empty, and raises the cap again step by step", () => {
    const c = clock()
    const gw = new Gateway({
      replicas,
      now: c.now,
      admission: { initialLimit: 16, minLimit: 4, maxLimit: 64 },
    })
    const withQueue = (waiting: number, running: number) => {
      const a = snapshot('a', { waiting })
      a.reading!.requestsRunning = running
      c.advance(100)
      gw.refresh(checkpoint([a, snapshot('b')]))
    }
    withQueue(7, 12)
    expect(gw.admission.state('a')).toMatchObject({ cap: 12, capReason: 'vLLM queue: 7 waiting' })
    expect(gw.admission.state('b').cap).toBeNull()
    // A queue seen in one scrape only is a passing one (a burst still being scheduled): the next
    // empty scrape restores the limit in force before (here the adaptive one: the cap is lifted).
    withQueue(0, 12)
    expect(gw.admission.state('a').cap).toBeNull()
    // A queue in two scrapes in a row is real: an empty queue no longer lifts the cap at once
    // (under overload that is often only the moment between a batch ending and the next requests
    // arriving); it rises one request per second and is lifted at the adaptive limit.
    withQueue(7, 12)
    withQueue(3, 12)
    withQueue(0, 12)
    expect(gw.admission.state('a')).toMatchObject({ cap: 12 })
    c.advance(900)
    withQueue(0, 12)
    expect(gw.admission.state('a')).toMatchObject({
      cap: 13,
      capReason: 'vLLM queue: empty, raising the cap',
    })
    withQueue(0, 13)
    expect(gw.admission.state('a').cap).toBe(13)
    // A queue right after that: back to what vLLM runs.
    withQueue(2, 12)
    expect(gw.admission.state('a').cap).toBe(12)
    for (let i = 0; i < 4; i++) {
      c.advance(1000)
      withQueue(0, 12)
    }
    // 13, 14, 15, then the adaptive limit (16): lifted.
    expect(gw.admission.state('a').cap).toBeNull()
    // A cap someone else set (a mitigation) is theirs to lift, also over one the gateway set.
    gw.admission.cap('a', 3, 'ReduceBatchSize')
    withQueue(5, 12)
    withQueue(0, 12)
    expect(gw.admission.state('a')).toMatchObject({ cap: 3, capReason: 'ReduceBatchSize' })
    gw.admission.release('a')
    withQueue(5, 12)
    gw.admission.cap('a', 2, 'ReduceBatchSize')
    withQueue(0, 12)
    withQueue(5, 12)
    expect(gw.admission.state('a')).toMatchObject({ cap: 2, capReason: 'ReduceBatchSize' })
  })

  it('admits requests queued for a replica as soon as its raised cap lets them in', async () => {
    const gw = new Gateway({ replicas: [replicas[0]!], admission: { initialLimit: 8, minLimit: 4 } })
    gw.admission.cap('a', 1, 'test')
    const first = gw.tryBegin() as RequestHandle
    const queued = gw.begin()
    expect(gw.admission.state('a').queued).toBe(1)
    gw.admission.cap('a', 2, 'test')
    const h = await queued
    expect(h).toBeInstanceOf(RequestHandle)
    first.end(200)
    h.end(200)
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

  it('refuses an SLO that is not { ttftMs: positive number }', () => {
    expect(() => new Gateway({ replicas, slo: { ttftMs: 0 } })).toThrow(InvalidOptionError)
    expect(() => new Gateway({ replicas, slo: { ttftMs: 0 } })).toThrow(
      'gateway: slo.ttftMs must be a positive number of ms (got 0)',
    )
    // A budget longer than a timer can wait would run out after 1 ms.
    expect(() => new Gateway({ replicas, slo: { ttftMs: 2 ** 31 } })).toThrow(
      'gateway: slo.ttftMs must be at most 2147483647 ms (got 2147483648)',
    )
    expect(() => new Gateway({ replicas, slo: 2000 as never })).toThrow(
      'gateway: slo must be an object like { ttftMs: 2000 }',
    )
    expect(new Gateway({ replicas, slo: { ttftMs: 1500 } }).slo?.ttftMs).toBe(1500)
    expect(new Gateway({ replicas }).slo).toBeNull()
  })

  describe('with a TTFT SLO', () => {
    const oneSlot = { initialLimit: 1, minLimit: 1, maxLimit: 1 }

    it('answers 429 + Retry-After to a queued request once it can no longer make the SLO', async () => {
      const gw = new Gateway({ replicas: [replicas[0]!], admission: oneSlot, slo: { ttftMs: 120 } })
      const first = gw.tryBegin() as RequestHandle
      const t0 = performance.now()
      const err = await gw.begin().catch((e: unknown) => e)
      const waited = performance.now() - t0
      expect(err).toBeInstanceOf(AdmissionRejectedError)
      expect((err as AdmissionRejectedError).rejection).toMatchObject({
        reason: 'queue-timeout',
        status: 429,
      })
      expect((err as AdmissionRejectedError).rejection.retryAfterS).toBeGreaterThanOrEqual(1)
      expect((err as AdmissionRejectedError).message).toMatch(/can no longer make the 120 ms TTFT SLO/)
      // Before any first byte was seen, a request may queue for half the SLO.
      expect(waited).toBeGreaterThanOrEqual(55)
      expect(waited).toBeLessThan(120)
      expect(gw.admission.state('a').queued).toBe(0)
      expect(gw.requestStats('a')!.rejected).toBe(1)
      first.end(200)
      expect(gw.inFlight()).toBe(0)
    })

    it("keeps the replica's expected time to first byte out of the queue budget", async () => {
      const c = clock()
      const gw = new Gateway({
        replicas: [replicas[0]!],
        admission: oneSlot,
        slo: { ttftMs: 100 },
        now: c.now,
      })
      const h = gw.tryBegin() as RequestHandle
      c.advance(80)
      h.firstByte()
      h.end(200)
      expect(gw.slo!.expectedFirstByteMs('a')).toBe(160)
      const busy = gw.tryBegin() as RequestHandle
      // 80 ms +- 40 leaves no time to queue within 100 ms: rejected at once.
      await expect(gw.begin()).rejects.toMatchObject({
        rejection: { reason: 'overloaded', status: 429 },
        message: expect.stringMatching(/cannot queue a request within the 100 ms TTFT SLO/),
      })
      busy.end(200)
    })

    it('admits a queued request that gets a slot within its budget, and still honours its abort signal', async () => {
      const gw = new Gateway({ replicas: [replicas[0]!], admission: oneSlot, slo: { ttftMs: 5000 } })
      const first = gw.tryBegin() as RequestHandle
      const queued = gw.begin()
      first.end(200)
      const h = await queued
      expect(h).toBeInstanceOf(RequestHandle)
      const ac = new AbortController()
      const gone = gw.begin(0, ac.signal)
      ac.abort(new Error('client left'))
      await expect(gone).rejects.toThrow('client left')
      expect(gw.admission.state('a').queued).toBe(0)
      h.end(200)
    })
  })
})
