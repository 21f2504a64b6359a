/**
 * The monitor's and the simulator's `/metrics` scraped by a real Prometheus server (Debian's
 * `prometheus` package; `.ci/run` installs it), queried back through its HTTP API.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createMonitor, type VLLMEngineMonitor } from '../../src/monitor/monitor.js'
import { SimFleet } from '../../src/sim/fleet.js'
import { scenario } from '../../src/sim/scenarios.js'
import { SimServer } from '../../src/sim/server.js'
import { waitFor } from '../helpers/fake-nvml.js'
import { freePort } from '../helpers/net.js'

const hasPrometheus = spawnSync('prometheus', ['--version']).status === 0

interface QueryResult {
  status: string
  data: { result: Array<{ metric: Record<string, string>; value: [number, string] }> }
}

describe('a real Prometheus server', () => {
  let dir = ''
  let prom: ChildProcess | null = null
  let promUrl = ''
  let server: SimServer | null = null
  let monitor: VLLMEngineMonitor | null = null

  beforeAll(async () => {
    if (!hasPrometheus)
      throw new Error('the prometheus binary is required (apt-get install prometheus; .ci/run does it)')
    dir = mkdtempSync(join(tmpdir(), 'vllm-monitor-prom-'))
    const fleet = new SimFleet(scenario('steady', { seed: 2 }).fleet)
    server = await SimServer.start({ fleet, speed: 20 })
    monitor = createMonitor({
      replicas: Object.entries(server.urls).map(([name, url]) => ({ name, url })),
      gpu: { simUrl: server.controlUrl },
      http: { host: '127.0.0.1', port: 0 },
      now: () => (server as SimServer).simNow(),
    })
    await monitor.ready
    const port = await freePort()
    promUrl = `http://127.0.0.1:${port}`
    const strip = (u: string) => u.replace(/^http:\/\//, '')
    writeFileSync(
      join(dir, 'prometheus.yml'),
      [
        'global:',
        '  scrape_interval: 1s',
        'scrape_configs:',
        '  - job_name: vllm-monitor',
        '    static_configs:',
        `      - targets: ['${strip(monitor.url as string)}']`,
        '  - job_name: vllm',
        '    static_configs:',
        `      - targets: ['${strip(server.urls.r0 as string)}']`,
      ].join('\n'),
    )
    prom = spawn(
      'prometheus',
      [
        `--config.file=${join(dir, 'prometheus.yml')}`,
        `--storage.tsdb.path=${join(dir, 'data')}`,
        `--web.listen-address=127.0.0.1:${port}`,
      ],
      { stdio: 'ignore' },
    )
  }, 30_000)

  afterAll(async () => {
    prom?.kill('SIGTERM')
    await monitor?.close()
    await server?.close()
    if (dir !== '') rmSync(dir, { recursive: true, force: true })
  })

  const query = async (q: string): Promise<QueryResult['data']['result']> => {
    const res = await fetch(`${promUrl}/api/v1/query?query=${encodeURIComponent(q)}`)
    const body = (await res.json()) as QueryResult
    return body.data.result
  }

  it('scrapes the monitor and the simulated vLLM without errors', async () => {
    await waitFor(async () => {
      try {
        const res = await fetch(`${promUrl}/api/v1/targets`)
        const body = (await res.json()) as {
          data: { activeTargets: Array<{ health: string; lastError: string; labels: { job: string } }> }
        }
        const t = body.data.activeTargets
        return t.length === 2 && t.every((x) => x.health === 'up' && x.lastError === '')
      } catch {
        return false
      }
    }, 25_000)
  }, 30_000)

  it('stores the monitor metrics the issue names, with their values', async () => {
    await waitFor(async () => {
      try {
        return (await query('vllm:monitor_lifecycle_state{replica="r0",state="SERVING"} == 1')).length === 1
      } catch {
        return false
      }
    }, 25_000)
    expect((await query('vllm:monitor_up'))[0]?.value[1]).toBe('1')
    await waitFor(async () => (await query('vllm:monitor_tokens_generated_total')).length > 0, 15_000)
    expect((await query('vllm:monitor_active_requests')).length).toBeGreaterThan(0)
    expect((await query('vllm:monitor_gpu_memory_used_bytes')).length).toBeGreaterThan(0)
    expect((await query('vllm:kv_cache_usage_perc')).length).toBe(1)
  }, 60_000)
})
