/**
 * The core's probe and staleness rules, on synthetic records (deterministic), then on a hung
 * simulated replica over HTTP: `/health` keeps saying 200 while the engine answers nothing
 * (vllm.md §0 #3), so the end-to-end probe is what calls it ERROR.
 */
import { afterEach, describe, expect, it } from 'vitest'
import { MonitorCore as Core, type MonitorCore } from '../../src/monitor/core.js'
import { coreOptionsFromHeader } from '../../src/monitor/replay.js'
import type { EngineReading, TelemetryRecord } from '../../src/telemetry/types.js'
import { engineRecord } from '../helpers/records.js'
import { closeAllHarnesses, poll, startHarness } from './sim-harness.js'

afterEach(async () => {
  await closeAllHarnesses()
})

function engine(t: number, over: Partial<EngineReading> = {}): TelemetryRecord {
  return engineRecord(t, 'r0', over)
}

/** An end-to-end probe result as HealthProbeSource reports it. */
function e2e(t: number, ok: boolean, n: number, over: Record<string, unknown> = {}): TelemetryRecord {
  return {
    t,
    kind: 'event',
    type: 'probe',
    severity: ok ? 'info' : 'warning',
    replica: 'r0',
    gpu: null,
    message: ok ? 'e2e ok' : 'e2e timed out',
    data: {
      endpoint: '/v1/completions',
      ok,
      status: ok ? 200 : null,
      latencyMs: ok ? 40 : 1000,
      error: ok ? null : 'ETIMEDOUT',
      consecutiveFailures: ok ? 0 : n,
      ...over,
    },
  }
}

/** Feeds records in time order, ticking every 100 ms up to each record's time, then to `until`. */
function drive(core: MonitorCore, unordered: TelemetryRecord[], until?: number): void {
  const records = [...unordered].sort((a, b) => a.t - b.t)
  let next = core.lastTick === Number.NEGATIVE_INFINITY ? 0 : core.lastTick + 100
  for (const r of records) {
    while (next < r.t) {
      core.tick(next)
      next += 100
    }
    core.push(r)
  }
  const end = until ?? (records.at(-1)?.t ?? 0) + 100
  while (next <= end) {
    core.tick(next)
    next += 100
  }
}

/** Readings every 100 ms from `from` to `to` (inclusive). */
function readings(from: number, to: number, over: (t: number) => Partial<EngineReading> = () => ({})) {
  const out: TelemetryRecord[] = []
  for (let t = from; t <= to; t += 100) out.push(engine(t, over(t)))
  return out
}

const states = (core: MonitorCore) => core.history('r0').map((t) => t.to)
const snapshot = (core: MonitorCore) => core.checkpoint?.engines.find((e) => e.replica === 'r0')

describe('staleness', () => {
  it('marks a replica stale once its newest reading is older than staleAfterMs, and fresh again on the next', () => {
    const core = new Core({ staleAfterMs: 1000 })
    drive(core, readings(100, 1000), 2000)
    // 1000 ms after the last reading: not yet over the bound.
    expect(snapshot(core)?.stale).toBe(false)
    drive(core, [], 2100)
    expect(snapshot(core)?.stale).toBe(true)
    const staleEvent = core.checkpoint?.events.find((e) => e.type === 'stale')
    expect(staleEvent).toMatchObject({ severity: 'warning', replica: 'r0', t: 2100 })
    expect(staleEvent?.message).toMatch(/no reading for 1\.1 s .*stale/)
    drive(core, [engine(2550)], 2600)
    expect(snapshot(core)?.stale).toBe(false)
    expect(core.checkpoint?.events.at(-1)).toMatchObject({ type: 'fresh', t: 2600 })
  })

  it('is off by default (replays of traces recorded without it behave as before)', () => {
    const core = new Core()
    drive(core, readings(100, 500), 60_000)
    expect(snapshot(core)?.stale).toBe(false)
    expect(
      coreOptionsFromHeader({ meta: { staleAfterMs: 1200, e2eFailuresBeforeError: 2 } } as never),
    ).toEqual({
      staleAfterMs: 1200,
      e2eFailuresBeforeError: 2,
    })
  })

  it('does not recover a DEGRADED replica on stale data: recovery needs recoverAfterMs of fresh clear readings', () => {
    const core = new Core({ staleAfterMs: 500, recoverAfterMs: 1000 })
    // KV pressure (usage 0.99 with preemptions) until 1000, then one clear reading, then nothing.
    const pressure = readings(100, 1000, (t) => ({ kvCacheUsage: 0.99, preemptionsTotal: t / 20 }))
    drive(core, [...pressure, engine(1100, { kvCacheUsage: 0.2, preemptionsTotal: 50 })], 5000)
    expect(states(core).at(-1)).toBe('DEGRADED')
    expect(snapshot(core)?.stale).toBe(true)
    // Fresh clear readings again: recovery takes its full recoverAfterMs from then.
    drive(
      core,
      readings(5100, 7000, () => ({ kvCacheUsage: 0.2, preemptionsTotal: 50 })),
    )
    const back = core.history('r0').at(-1)
    expect(back?.to).toBe('SERVING')
    expect(back?.t).toBeGreaterThanOrEqual(6100)
    expect(back?.reason).toMatch(/recovered/)
  })

  it('does not call a hang on readings that stopped coming (the scraper, not the engine, stalled)', () => {
    const core = new Core({ staleAfterMs: 1000, hangAfterMs: 1000 })
    // Requests running, tokens flat for 900 ms, then the readings stop.
    drive(
      core,
      readings(100, 1000, () => ({ requestsRunning: 4, generationTokensTotal: 50, stepsTotal: 9 })),
      10_000,
    )
    expect(states(core)).not.toContain('ERROR')
    expect(snapshot(core)?.stale).toBe(true)
  })
})

describe('the end-to-end probe rule', () => {
  it('calls a replica whose probe times out 3 times in a row, /health 200 and no tokens, ERROR', () => {
    const core = new Core()
    drive(core, [...readings(100, 2000), e2e(500, false, 1), e2e(1000, false, 2)], 1500)
    expect(states(core).at(-1)).toBe('SERVING')
    drive(core, [...readings(2100, 2500), e2e(2200, false, 3)], 2600)
    const err = core.history('r0').at(-1)
    expect(err).toMatchObject({ to: 'ERROR', t: 2200 })
    expect(err?.reason).toBe(
      'engine not answering: end-to-end probe timed out 3 times in a row while /health says 200',
    )
    expect(
      core.checkpoint?.events.some((e) => e.type === 'engine-unresponsive' && e.severity === 'critical'),
    ).toBe(true)
    // The engine answers again: the replica walks back to SERVING.
    drive(core, [...readings(2600, 3000), e2e(2900, true, 0)])
    const walk = core.history('r0').slice(-4)
    expect(walk.map((t) => t.to)).toEqual(['INITIALIZING', 'LOADING_MODEL', 'READY', 'SERVING'])
    expect(walk.at(-1)?.reason).toMatch(/end-to-end probe answers again/)
  })

  it('treats failures while tokens flow as overload (DEGRADED), not death', () => {
    const core = new Core({ recoverAfterMs: 1000 })
    const flowing = readings(100, 4500, (t) => ({ requestsRunning: 8, generationTokensTotal: t }))
    drive(core, [...flowing, e2e(1000, false, 1), e2e(1500, false, 2), e2e(2000, false, 3)])
    expect(states(core)).not.toContain('ERROR')
    const degraded = core.history('r0').find((t) => t.to === 'DEGRADED')
    expect(degraded?.reason).toMatch(
      /end-to-end probe timed out 3 times in a row while tokens flow \(overloaded\)/,
    )
    expect(states(core).at(-1)).toBe('SERVING')
  })

  it('ignores failures of a server paused or asleep on purpose, 4xx answers, and a /health that is not 200', () => {
    const core = new Core()
    drive(core, [
      ...readings(100, 3000),
      e2e(500, false, 1, { suspended: true, suspendedBy: 'paused' }),
      e2e(600, false, 2, { suspended: true }),
      e2e(700, false, 3, { suspended: true }),
      e2e(800, false, 4, { status: 404, error: 'HTTP 404' }),
      e2e(900, false, 5, { status: 401, error: 'HTTP 401' }),
    ])
    expect(states(core)).not.toContain('ERROR')
    // /health unreachable (timeouts): trouble for the scraper rule, but no e2e verdict.
    const core2 = new Core()
    drive(core2, [
      ...readings(100, 1000),
      ...readings(1100, 2000, () => ({ reachable: false, healthStatus: null, error: 'ETIMEDOUT' })),
      e2e(1500, false, 3),
      e2e(1900, false, 4),
    ])
    expect(core2.history('r0').map((t) => t.to)).not.toContain('ERROR')
  })

  it('does not leave an ERROR it did not cause when the probe passes (a hang stays ERROR)', () => {
    const core = new Core({ hangAfterMs: 1000 })
    drive(core, [
      ...readings(100, 3000, () => ({ requestsRunning: 3, generationTokensTotal: 10, stepsTotal: 5 })),
      e2e(2800, true, 0),
    ])
    expect(core.history('r0').at(-1)).toMatchObject({ to: 'ERROR' })
    expect(core.history('r0').at(-1)?.reason).toMatch(/hung/)
  })

  it('needs e2eFailuresBeforeError failures, as configured', () => {
    const core = new Core({ e2eFailuresBeforeError: 1 })
    drive(core, [...readings(100, 1000), e2e(500, false, 1, { error: 'ECONNRESET' })])
    expect(core.history('r0').at(-1)?.reason).toBe(
      'engine not answering: end-to-end probe failed (ECONNRESET) 1 times in a row while /health says 200',
    )
  })
})

describe('a hung simulated replica over HTTP', () => {
  it('goes ERROR through the end-to-end probe while /health stays 200 (hang rule out of the way)', async () => {
    const h = await startHarness({
      fleet: { replicas: 1, maxModelLen: 4096, arrivals: null },
      speed: 20,
      monitor: {
        // Simulated ms: the counter-stall rule would need 10 min, so only the probe can call it.
        hangAfterMs: 600_000,
        probes: {
          intervalMs: 100,
          timeoutMs: 1000,
          summaryIntervalMs: 0,
          e2e: { intervalMs: 100, timeoutMs: 400, failuresBeforeError: 3 },
        },
      },
    })
    await h.waitForTransition('r0', 'SERVING', { timeoutMs: 15_000 })
    // Healthy: the probe passes.
    await poll(
      'a passing end-to-end probe',
      () =>
        h.monitor
          .getCheckpoint()
          ?.events.some(
            (e) => e.type === 'probe' && e.data?.endpoint === '/v1/completions' && e.data.ok === true,
          ),
      10_000,
    )
    expect((await h.control('/sim/faults', { fault: 'nccl-hang', replica: 'r0' })).status).toBe(200)
    // A batch to deadlock in.
    void fetch(`${h.url('r0')}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'x', max_tokens: 500 }),
      signal: AbortSignal.timeout(8000),
    }).catch(() => {})
    await h.waitForLabel('nccl-hang', 'failure', 10_000)
    const err = await h.waitForTransition('r0', 'ERROR', { timeoutMs: 15_000 })
    expect(err.from).toBe('SERVING')
    expect(err.reason).toMatch(
      /^engine not answering: end-to-end probe timed out 3 times in a row while \/health says 200$/,
    )
    expect((await fetch(`${h.url('r0')}/health`)).status).toBe(200)
    const failures = h.monitor
      .getCheckpoint()
      ?.events.filter(
        (e) => e.type === 'probe' && e.data?.endpoint === '/v1/completions' && e.data.ok === false,
      )
    expect(failures?.map((e) => e.data?.consecutiveFailures).slice(0, 3)).toEqual([1, 2, 3])
  })
})
