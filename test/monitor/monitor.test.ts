import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { MonitorClosedError } from '../../src/errors.js'
import { createMonitor } from '../../src/monitor/monitor.js'
import { SimFleet } from '../../src/sim/fleet.js'
import { scenario } from '../../src/sim/scenarios.js'
import { SimServer } from '../../src/sim/server.js'
import { waitFor } from '../helpers/fake-nvml.js'

const cleanups: Array<() => unknown> = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

async function simAndMonitor(extra: Parameters<typeof createMonitor>[0] = {}) {
  const fleet = new SimFleet(scenario('steady', { seed: 5 }).fleet)
  const server = await SimServer.start({ fleet, speed: 50 })
  cleanups.push(() => server.close())
  const monitor = createMonitor({
    replicas: Object.entries(server.urls).map(([name, url]) => ({ name, url })),
    gpu: { simUrl: server.controlUrl },
    http: { host: '127.0.0.1', port: 0 },
    now: () => server.simNow(),
    scrapeIntervalMs: 20,
    ...extra,
  })
  cleanups.push(() => monitor.close())
  await monitor.ready
  await waitFor(() => monitor.getStatus().lifecycleState === 'SERVING', 15_000)
  return { server, monitor }
}

describe('createMonitor', () => {
  it('reports the status fields a vLLM integration expects', async () => {
    const { monitor } = await simAndMonitor()
    await waitFor(() => (monitor.getStatus().tokensGenerated ?? 0) > 0, 15_000)
    const s = monitor.getEngineStatus()
    expect(s).toMatchObject({ monitorActive: true, lifecycleState: 'SERVING', mitigationInProgress: false })
    expect(typeof s.activeRequests).toBe('number')
    expect(s.tokensGenerated).toBeGreaterThan(0)
    expect(s.gpus).toHaveLength(1)
    expect(s.gpus[0]?.memoryUsedBytes).toBeGreaterThan(60 * 2 ** 30)
    expect(s.replicas[0]?.url).toMatch(/^http:\/\/127\.0\.0\.1:/)
    expect(Array.isArray(s.predictions)).toBe(true)
  })

  it('serves /api/status, /api/export and /metrics on loopback', async () => {
    const { monitor } = await simAndMonitor()
    const status = (await (await fetch(`${monitor.url}/api/status`)).json()) as { lifecycleState: string }
    expect(status.lifecycleState).toBe('SERVING')
    const exp = (await (await fetch(`${monitor.url}/api/export`)).json()) as {
      format: string
      checkpoint: unknown
    }
    expect(exp.format).toBe('vllm-monitor-export')
    const text = await (await fetch(`${monitor.url}/metrics`)).text()
    expect(text).toContain('vllm:monitor_active_requests')
    expect(text).toContain('vllm:monitor_tokens_generated')
    expect(text).toContain('vllm:monitor_mitigation_triggered')
    expect(text).toContain('vllm:monitor_lifecycle_state{replica="r0",state="SERVING"} 1')
  })

  it('exports JSON and a node_exporter textfile', async () => {
    const { monitor } = await simAndMonitor()
    const data = monitor.exportData()
    expect(data.status.lifecycleState).toBe('SERVING')
    expect(JSON.parse(JSON.stringify(data)).checkpoint.engines[0].replica).toBe('r0')
    const dir = mkdtempSync(join(tmpdir(), 'vllm-monitor-'))
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }))
    await monitor.exportPrometheus(join(dir, 'vllm.prom'))
    expect(readFileSync(join(dir, 'vllm.prom'), 'utf8')).toContain('vllm:monitor_up 1')
    await expect(monitor.exportPrometheus(join(dir, 'vllm.txt'))).rejects.toThrow(/\.prom/)
    await monitor.close()
    await expect(monitor.exportPrometheus(join(dir, 'vllm.prom'))).rejects.toBeInstanceOf(MonitorClosedError)
  })

  it('does nothing and says so when VLLM_ENABLE_MONITORING is off', async () => {
    const saved = process.env.VLLM_ENABLE_MONITORING
    process.env.VLLM_ENABLE_MONITORING = '0'
    cleanups.push(() => {
      if (saved === undefined) delete process.env.VLLM_ENABLE_MONITORING
      else process.env.VLLM_ENABLE_MONITORING = saved
    })
    const monitor = createMonitor({ replicas: ['http://127.0.0.1:1'], gpu: 'none' })
    cleanups.push(() => monitor.close())
    await monitor.ready
    expect(monitor.url).toBeNull()
    expect(monitor.getStatus().monitorActive).toBe(false)
  })

  it('keeps running when its port is taken, a source throws and the upstream is dead', async () => {
    const blocker = createServer()
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r))
    cleanups.push(() => new Promise((r) => blocker.close(r)))
    const port = (blocker.address() as { port: number }).port
    const monitor = createMonitor({
      replicas: [{ name: 'dead', url: 'http://127.0.0.1:1' }],
      gpu: 'none',
      http: { host: '127.0.0.1', port },
      scrapeIntervalMs: 20,
      sources: [
        {
          name: 'broken',
          start() {
            throw new Error('cannot open')
          },
          stop() {},
        },
      ],
    })
    cleanups.push(() => monitor.close())
    await monitor.ready
    await waitFor(() => (monitor.getCheckpoint()?.errors.length ?? 0) >= 2, 5_000)
    const errors = monitor.getCheckpoint()?.errors.map((e) => `${e.code}: ${e.message}`) ?? []
    expect(errors.some((e) => /VLLM_MONITOR_HTTP_FAILED.*in use/.test(e))).toBe(true)
    expect(errors.some((e) => /source broken failed to start: cannot open/.test(e))).toBe(true)
    expect(monitor.getStatus().replicas[0]?.lifecycleState).toBe('INITIALIZING')
    expect(monitor.getStatus().monitorActive).toBe(true)
  })

  it('refuses unknown options at the boundary', () => {
    expect(() => createMonitor({ replica: 'x' } as never)).toThrow(/unknown option options\.replica/)
  })
})
