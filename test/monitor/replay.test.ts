import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { createMonitor, type VLLMEngineMonitor } from '../../src/monitor/monitor.js'
import { replayCheckpoints } from '../../src/monitor/replay.js'
import { SimFleet } from '../../src/sim/fleet.js'
import { writeSimulationTrace } from '../../src/sim/run.js'
import { scenario } from '../../src/sim/scenarios.js'
import { SimServer } from '../../src/sim/server.js'
import type { Checkpoint } from '../../src/telemetry/types.js'
import { waitFor } from '../helpers/fake-nvml.js'

const dirs: string[] = []
const closers: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c()
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true })
})

function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'vllm-monitor-replay-'))
  dirs.push(d)
  return d
}

describe('replay', () => {
  it('replays a trace recorded from a live monitor to the same checkpoints', async () => {
    const path = join(tmp(), 'run.jsonl')
    const sc = scenario('engine-death', { seed: 7, replicas: 2 })
    const fleet = new SimFleet(sc.fleet)
    let monitor: VLLMEngineMonitor | null = null
    const server = await SimServer.start({
      fleet,
      speed: 100,
      onLog: (r, _s, text) => monitor?.logLine(r, text),
    })
    closers.push(() => server.close())
    const live: Checkpoint[] = []
    monitor = createMonitor({
      replicas: Object.entries(server.urls).map(([name, url]) => ({ name, url })),
      gpu: { simUrl: server.controlUrl },
      http: false,
      now: () => server.simNow(),
      scrapeIntervalMs: 20,
      checkpointIntervalMs: 100,
      record: path,
      // Predictions come from the forecast workers, asynchronously, and are not records: a replay
      // recomputes them rather than reproducing them. Everything else must match exactly.
      predictive: false,
      plugins: [{ name: 'collect', onCheckpoint: (cp) => live.push(structuredClone(cp)) }],
    })
    const m = monitor
    closers.push(() => m.close())
    await waitFor(() => m.history('r0').some((t) => t.to === 'ERROR'), 20_000)
    await m.close()

    const replayed = new Map<number, Checkpoint>()
    for await (const cp of replayCheckpoints(path)) replayed.set(cp.t, cp)
    expect(live.length).toBeGreaterThan(100)
    let compared = 0
    for (const cp of live) {
      const r = replayed.get(cp.t)
      if (r === undefined) continue
      expect(JSON.parse(JSON.stringify(r))).toEqual(JSON.parse(JSON.stringify(cp)))
      compared++
    }
    // Live ticks go on after the last record; the replay ends one step past it.
    const lastReplayed = Math.max(...replayed.keys())
    expect(compared).toBe(live.filter((cp) => cp.t <= lastReplayed).length)
    expect(live.at(-1)?.engines.find((e) => e.replica === 'r0')?.lifecycleState).toBe('ERROR')
  }, 30_000)

  it('replays a simulator trace and sees the failure its labels describe', async () => {
    const path = join(tmp(), 'sim.jsonl.gz')
    await writeSimulationTrace(path, { scenario: 'xid-79', seed: 3, durationMs: 70_000 })
    let last: Checkpoint | null = null
    let labelled = false
    for await (const cp of replayCheckpoints(path)) last = cp
    const r0 = last?.engines.find((e) => e.replica === 'r0')
    expect(r0?.lifecycleState).toBe('ERROR')
    labelled = (last?.events ?? []).some((e) => e.type === 'xid' && e.data?.xid === 79)
    expect(labelled).toBe(true)
  })

  it('stops at a malformed line and names its line number', async () => {
    const path = join(tmp(), 'bad.jsonl')
    writeFileSync(
      path,
      [
        JSON.stringify({
          format: 'vllm-monitor-trace',
          version: 1,
          createdAt: new Date().toISOString(),
          source: 'test',
          replicas: [],
        }),
        '{"t":1,"kind":"event","type":"x","severity":"info","replica":null,"gpu":null,"message":"ok"}',
        '{"t":2,"kind":"engine"',
      ].join('\n'),
    )
    const run = async () => {
      for await (const _ of replayCheckpoints(path)) {
        // drain
      }
    }
    await expect(run()).rejects.toThrow(/line 3/)
  })
})
