/**
 * HealthProbeSource against the simulated vLLM over loopback: what it reports (only changes, plus
 * summaries, so a healthy server stays quiet), severities, the end-to-end probe passing, failing on
 * a hung engine while `/health` says 200 (vllm.md §0 #3), and a server paused on purpose.
 */
import { afterEach, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/errors.js'
import type { MonitorEvent, TelemetryRecord } from '../../src/telemetry/types.js'
import { HealthProbeSource, type HealthProbeSourceOptions } from '../../src/vllm/probes.js'
import { sleep } from '../helpers/fake-nvml.js'
import { closeSims, complete, request, SIM_MODEL, startSim, until, waitHealthy } from '../helpers/sim-http.js'

type ProbeEvent = MonitorEvent & { t: number; data: Record<string, unknown> }

const sources: HealthProbeSource[] = []
afterEach(async () => {
  for (const s of sources.splice(0)) s.stop()
  await closeSims()
})

function probe(
  url: string,
  o: Partial<HealthProbeSourceOptions> = {},
): { source: HealthProbeSource; events: ProbeEvent[] } {
  const events: ProbeEvent[] = []
  const t0 = performance.now()
  const source = new HealthProbeSource({
    replicas: [{ name: 'r0', url }],
    now: () => performance.now() - t0,
    intervalMs: 50,
    timeoutMs: 2000,
    summaryIntervalMs: 0,
    ...o,
  })
  sources.push(source)
  source.start((r: TelemetryRecord) => {
    if (r.kind === 'event') events.push(r as ProbeEvent)
  })
  return { source, events }
}

const of = (events: ProbeEvent[], endpoint: string) => events.filter((e) => e.data.endpoint === endpoint)

describe('HealthProbeSource', () => {
  it('reports each endpoint once while nothing changes (no flood), with status and latency', async () => {
    const sim = await startSim()
    await waitHealthy(sim.url)
    const { events } = probe(sim.url)
    // ≈20 rounds of three probes.
    await sleep(1000)
    expect(events.map((e) => e.data.endpoint).sort()).toEqual(['/health', '/v1/models', '/version'])
    for (const e of events) {
      expect(e).toMatchObject({ kind: 'event', type: 'probe', severity: 'info', replica: 'r0', gpu: null })
      expect(e.data).toMatchObject({ ok: true, status: 200, error: null })
      expect(e.data.latencyMs).toBeGreaterThanOrEqual(0)
      expect(e.data.latencyMs).toBeLessThan(2000)
    }
  })

  it('calls a refused port before the first answer start-up (info), after it a warning', async () => {
    // At 2x, start-up takes ≈6 s of wall time: the port refuses meanwhile.
    const sim = await startSim({ speed: 2 })
    const { events } = probe(sim.url)
    await until('a refused /health', () => of(events, '/health').length > 0)
    expect(of(events, '/health')[0]).toMatchObject({
      severity: 'info',
      data: { ok: false, status: null, error: 'ECONNREFUSED' },
    })
    await sim.server.close()
    const sim2 = await startSim({ speed: 200 })
    const second = probe(sim2.url)
    await until('/health 200', () => of(second.events, '/health').some((e) => e.data.ok === true), 10_000)
    await sim2.server.close()
    const refused = await until('refused after serving', () =>
      of(second.events, '/health').find((e, i) => i > 0 && e.data.error === 'ECONNREFUSED'),
    )
    expect(refused.severity).toBe('warning')
    expect(refused.message).toMatch(/r0: GET \/health failed: ECONNREFUSED/)
  })

  it('runs the end-to-end probe (max_tokens 1, the served model) and reports it when it passes', async () => {
    const sim = await startSim()
    await waitHealthy(sim.url)
    const { events } = probe(sim.url, { e2e: { intervalMs: 50, timeoutMs: 2000 } })
    const ok = await until('an e2e result', () => of(events, '/v1/completions')[0], 5000)
    expect(ok).toMatchObject({ severity: 'info', data: { ok: true, status: 200, consecutiveFailures: 0 } })
    expect(ok.message).toMatch(/end-to-end probe \(POST \/v1\/completions, max_tokens 1\) answered 200/)
    // Passing probes are not repeated.
    await sleep(500)
    expect(of(events, '/v1/completions')).toHaveLength(1)
    // It used the model /v1/models named (the simulator 404s any other).
    expect(SIM_MODEL).toMatch(/Llama/)
  })

  it('reports every end-to-end failure on a hung engine, counting them, while /health stays 200', async () => {
    const sim = await startSim({ speed: 20 })
    await waitHealthy(sim.url)
    await sim.control('/sim/faults', { fault: 'nccl-hang', replica: 'r0' })
    void complete(sim.url, 500, 5000)
    await until('hung', () => sim.fleet.replicas[0]?.phase === 'hung')
    const { events } = probe(sim.url, { e2e: { intervalMs: 20, timeoutMs: 200 } })
    const fails = await until('3 failures', () => {
      const f = of(events, '/v1/completions').filter((e) => e.data.ok === false)
      return f.length >= 3 ? f : false
    })
    expect(fails.map((e) => e.data.consecutiveFailures).slice(0, 3)).toEqual([1, 2, 3])
    expect(fails[0]).toMatchObject({ severity: 'warning', data: { error: 'ETIMEDOUT', status: null } })
    expect(fails[2]?.message).toMatch(/timed out after \d+ ms \(3 in a row\)/)
    expect(of(events, '/health')).toHaveLength(1)
    expect(of(events, '/health')[0]?.data).toMatchObject({ ok: true, status: 200 })
  })

  it('reports a server paused on purpose as suspended, not failing', async () => {
    const sim = await startSim({ devMode: true })
    await waitHealthy(sim.url)
    expect((await request(`${sim.url}/pause?mode=keep`, 'POST')).status).toBe(200)
    const { events } = probe(sim.url, { e2e: { intervalMs: 20, timeoutMs: 200 } })
    const e = await until('an e2e result', () => of(events, '/v1/completions')[0], 5000)
    expect(e).toMatchObject({
      severity: 'info',
      data: {
        ok: false,
        error: 'ETIMEDOUT',
        suspended: true,
        suspendedBy: 'paused or asleep',
        consecutiveFailures: 0,
      },
    })
    expect(e.message).toMatch(/the server is paused or asleep on purpose/)
  })

  it('sends a summary per replica every summaryIntervalMs', async () => {
    const sim = await startSim()
    await waitHealthy(sim.url)
    const { events } = probe(sim.url, { summaryIntervalMs: 300 })
    const s = await until('a summary', () => of(events, 'summary')[0], 3000)
    expect(s.data).toMatchObject({ ok: true, summary: true })
    const health = (s.data.endpoints as Record<string, { probes: number; failures: number }>)['/health']
    expect(health?.probes).toBeGreaterThan(1)
    expect(health?.failures).toBe(0)
    expect(s.message).toMatch(/r0: probes over the last 0.3 s: \/health \d+\/\d+ ok/)
  })

  it('pushes nothing after stop()', async () => {
    const sim = await startSim()
    await waitHealthy(sim.url)
    const { source, events } = probe(sim.url)
    source.stop()
    await sleep(200)
    expect(events).toEqual([])
  })

  it('refuses invalid options naming them', () => {
    const now = () => 0
    expect(() => new HealthProbeSource({ replicas: [], now })).toThrow(InvalidOptionError)
    expect(() => new HealthProbeSource({ replicas: [{ name: 'a', url: 'nope' }], now })).toThrow(
      /options\.replicas\[0\]\.url is not a valid URL/,
    )
    expect(
      () => new HealthProbeSource({ replicas: [{ name: 'a', url: 'http://x' }], now, timeoutMs: 0 }),
    ).toThrow(/options\.timeoutMs/)
    expect(
      () =>
        new HealthProbeSource({ replicas: [{ name: 'a', url: 'http://x' }], now, e2e: { timeoutMs: -1 } }),
    ).toThrow(/options\.e2e\.timeoutMs/)
  })
})
