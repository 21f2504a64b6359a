/** The monitor embedded in a host: what must never happen to the host, whatever goes wrong. */
import { execFile } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterEach, describe, expect, it } from 'vitest'
import { createMonitor, type VLLMEngineMonitor } from '../../src/monitor/monitor.js'
import type { TelemetryRecord } from '../../src/telemetry/types.js'
import { fakeNvmlPath, useScenario, waitFor } from '../helpers/fake-nvml.js'
import { engineRecord } from '../helpers/records.js'

const monitors: VLLMEngineMonitor[] = []
const dirs: string[] = []
afterEach(async () => {
  for (const m of monitors.splice(0)) await m.close()
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true })
})

function manualClock() {
  let now = 0
  return { now: () => now, set: (t: number) => (now = t) }
}

function serving(t: number) {
  return engineRecord(t, 'r0', { kvCacheUsage: 0, numGpuBlocks: 10 })
}

describe('the monitor in a host process', () => {
  it('keeps checkpoints on the shared grid when exportData() is called before the first one', async () => {
    const clock = manualClock()
    const m = createMonitor({ gpu: 'none', http: false, now: clock.now, checkpointIntervalMs: 100 })
    monitors.push(m)
    clock.set(37)
    expect(m.exportData().checkpoint.t).toBe(37)
    clock.set(250)
    await waitFor(() => (m.getCheckpoint()?.t ?? 0) >= 200, 2_000)
    expect((m.getCheckpoint()?.t ?? 1) % 100).toBe(0)
  })

  it('drops a malformed record with an error and keeps taking checkpoints', async () => {
    const clock = manualClock()
    const m = createMonitor({ gpu: 'none', http: false, now: clock.now, checkpointIntervalMs: 100 })
    monitors.push(m)
    m.push({ t: 10, kind: 'event', type: 'lifecycle-hint', replica: 'r0' } as unknown as TelemetryRecord)
    m.push({ t: Number.NaN, kind: 'gpu' } as unknown as TelemetryRecord)
    m.push(serving(20))
    clock.set(300)
    await waitFor(() => (m.getCheckpoint()?.t ?? 0) >= 300, 2_000)
    const cp = m.getCheckpoint()
    expect(cp?.errors.filter((e) => e.code === 'VLLM_MONITOR_BAD_RECORD')).toHaveLength(2)
    expect(cp?.engines[0]?.lifecycleState).toBe('SERVING')
  })

  it('survives close() called from its own transition listener, recording each record once', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vllm-monitor-'))
    dirs.push(dir)
    const path = join(dir, 't.jsonl')
    const clock = manualClock()
    const m = createMonitor({ gpu: 'none', http: false, now: clock.now, record: path })
    let closed: Promise<void> | null = null
    m.on('transition', (_r, tr) => {
      if (tr.to === 'SERVING') closed = m.close()
    })
    m.push(serving(20))
    m.push({ ...serving(30), healthStatus: 503 })
    clock.set(200)
    await waitFor(() => closed !== null, 2_000)
    await closed
    const lines = readFileSync(path, 'utf8').trim().split('\n').slice(1)
    expect(lines.map((l) => JSON.parse(l).t)).toEqual([20, 30])
  })

  it('reports a trace it cannot write instead of rejecting close()', async () => {
    const m = createMonitor({ gpu: 'none', http: false, record: '/nonexistent-dir/trace.jsonl' })
    const errors: string[] = []
    m.on('error', (e) => errors.push(e.message))
    m.push(serving(1))
    await new Promise((r) => setTimeout(r, 250))
    await expect(m.close()).resolves.toBeUndefined()
    expect(errors.some((e) => /trace/.test(e))).toBe(true)
  })

  it('does not keep the host process alive with its HTTP surface and timers', async () => {
    const entry = join(import.meta.dirname, '../../dist/index.js')
    const script = `import { createMonitor } from ${JSON.stringify(entry)}
      const m = createMonitor({ replicas: ['http://127.0.0.1:1'], gpu: 'none', http: { host: '127.0.0.1', port: 0 } })
      await m.ready
      console.log(m.url ? 'listening' : 'no surface')`
    const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script], {
      timeout: 10_000,
    })
    expect(stdout.trim()).toBe('listening')
  })

  it("attributes a fatal Xid on the host's GPU to the only replica", async () => {
    useScenario('multi-gpu')
    const m = createMonitor({
      replicas: [{ name: 'solo', url: 'http://127.0.0.1:1' }],
      gpu: 'nvml',
      nvmlLibraryPath: fakeNvmlPath,
      http: false,
      scrapeIntervalMs: 20,
    })
    monitors.push(m)
    await waitFor(() => m.getStatus().replicas[0]?.lifecycleState === 'ERROR', 5_000)
    expect(m.getStatus().replicas[0]?.reason).toMatch(/Xid 48/)
    expect(m.getStatus().gpus.every((g) => g.replica === 'solo')).toBe(true)
  })
})
