/** The native reflex end to end: fake NVML memory crosses the bound, the sampler's watch fires, the gateway is capped. */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { GpuSampler } from '../../src/gpu/sampler.js'
import { type AuditEntry, readAuditLog } from '../../src/mitigation/audit.js'
import { createMonitor, type VLLMEngineMonitor } from '../../src/monitor/monitor.js'
import type { MonitorEvent } from '../../src/telemetry/types.js'
import { fakeNvmlPath, sleep, useScenario, waitFor } from '../helpers/fake-nvml.js'

const monitors: VLLMEngineMonitor[] = []
const dirs: string[] = []
afterEach(async () => {
  for (const m of monitors.splice(0)) await m.close()
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true })
  vi.restoreAllMocks()
})

// memory-exhaustion.scenario: memory fills from 50 % to 100 % between 200 and 600 ms, passing
// the default bound (0.98) at about 580 ms.
function monitor(autoMitigate: boolean, auditLog?: string) {
  useScenario('memory-exhaustion')
  const m = createMonitor({
    replicas: [{ name: 'r0', url: 'http://127.0.0.1:9' }],
    gpu: 'nvml',
    nvmlLibraryPath: fakeNvmlPath,
    http: false,
    predictive: false,
    autoMitigate,
    ...(auditLog === undefined ? {} : { mitigation: { auditLog } }),
  })
  monitors.push(m)
  return m
}

const memoryFraction = (m: VLLMEngineMonitor) => {
  const g = m.getCheckpoint()?.gpus[0]
  return g?.memoryUsedBytes == null || g.memoryTotalBytes == null ? 0 : g.memoryUsedBytes / g.memoryTotalBytes
}

const reflexEntries = async (path: string) =>
  (await readAuditLog(path).catch(() => ({ entries: [] as AuditEntry[] }))).entries.filter(
    (e) => e.strategy === 'native-reflex',
  )

describe('the native memory reflex', () => {
  it('caps the replica in the gateway once GPU memory passes the bound, audits it and responds', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vllm-monitor-reflex-'))
    dirs.push(dir)
    const auditLog = join(dir, 'audit.jsonl')
    const watch = vi.spyOn(GpuSampler.prototype, 'watch')
    const m = monitor(true, auditLog)
    const events: MonitorEvent[] = []
    m.on('event', (e) => events.push(e))
    const admission = m.gateway().admission
    const cap = vi.spyOn(admission, 'cap')
    expect(watch).toHaveBeenCalledTimes(1)
    expect(watch.mock.calls[0]?.[0]).toEqual({ device: 0, memoryUsedFraction: 0.98 })
    expect(admission.state('r0').cap).toBeNull()

    await waitFor(() => admission.state('r0').cap !== null, 5_000)
    // No scrape has succeeded, so the running count is unknown: 8 assumed, capped at half.
    expect(cap.mock.calls[0]).toEqual(['r0', 4, 'native memory watch'])
    await waitFor(async () => (await reflexEntries(auditLog)).length > 0, 3_000)
    const reflex = await reflexEntries(auditLog)
    expect(reflex).toHaveLength(1)
    expect(reflex[0]).toMatchObject({ kind: 'action', replica: 'r0', failureType: 'oom', outcome: 'SUCCESS' })
    expect(reflex[0]?.detail).toMatch(/^GPU 0 memory 9\d\.\d % \(native watch, bound 98 %\); capped r0 at 4$/)

    // The considered response follows on the normal path, without a forecaster too.
    await waitFor(() => events.some((e) => e.type === 'mitigation'), 3_000)
    const response = events.find((e) => e.type === 'mitigation')
    expect(response).toMatchObject({ replica: 'r0', data: { failureType: 'oom', trigger: 'native-alert' } })
  })

  it('keeps a tighter cap already held instead of loosening it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vllm-monitor-reflex-'))
    dirs.push(dir)
    const auditLog = join(dir, 'audit.jsonl')
    const m = monitor(true, auditLog)
    const admission = m.gateway().admission
    admission.cap('r0', 1, 'operator')
    await waitFor(async () => (await reflexEntries(auditLog)).length > 0, 5_000)
    const reflex = await reflexEntries(auditLog)
    expect(reflex[0]?.detail).toMatch(/; capped r0 at 1$/)
    expect(admission.state('r0').cap).toBe(1)
  })

  it('registers no watch and caps nothing when autoMitigate is off', async () => {
    const watch = vi.spyOn(GpuSampler.prototype, 'watch')
    const m = monitor(false)
    const admission = m.gateway().admission
    await waitFor(() => memoryFraction(m) >= 0.98, 5_000)
    // Time for an alert that had been queued to reach the JS thread.
    await sleep(50)
    expect(watch).not.toHaveBeenCalled()
    expect(m.mitigation?.orchestrator).toBeNull()
    expect(admission.state('r0').cap).toBeNull()
  })
})
