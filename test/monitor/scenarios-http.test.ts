/**
 * End to end over real sockets: every fault scenario of the simulator, served over HTTP, watched
 * by a monitor wired exactly as `vllm-monitor demo` wires it (HTTP scrape, the simulated GPU source,
 * the servers' log lines, the monitor's clock = the simulator's). The lifecycle must move as
 * vLLM's would (vllm.md §0, §3.2, §4), and the monitor must call each failure within a bound of
 * the ground-truth `failure` label (GET /sim/labels). Times are simulated ms; the scenarios run at
 * 40-200x, with fault parameters shortened where the default would take simulated minutes.
 */
import { afterAll, afterEach, describe, expect, it } from 'vitest'
import { poissonArrivals } from '../../src/sim/arrivals.js'
import type { FaultSpecInput } from '../../src/sim/faults.js'
import type { FleetOptions } from '../../src/sim/fleet.js'
import { scenario } from '../../src/sim/scenarios.js'
import type { FaultType, LifecycleState } from '../../src/telemetry/types.js'
import {
  closeAllHarnesses,
  type Harness,
  poll,
  probe,
  type ReplicaTransition,
  startHarness,
  type TimedLabel,
} from './sim-harness.js'

const START_UP: LifecycleState[] = ['NOT_STARTED', 'INITIALIZING', 'LOADING_MODEL', 'READY', 'SERVING']

/** Detection lags measured in this run (simulated s), printed at the end. */
const lags: Array<{ scenario: string; lagSec: number; transition: string; label: string }> = []

afterEach(async () => {
  await closeAllHarnesses()
})

afterAll(() => {
  const lines = lags.map(
    (l) => `  ${l.scenario.padEnd(17)} ${l.lagSec.toFixed(1).padStart(6)} s  (${l.label} -> ${l.transition})`,
  )
  console.log(
    `detection lag, monitor transition after the ground-truth failure label (simulated):\n${lines.join('\n')}`,
  )
})

interface Run {
  speed: number
  /** Merged over the scenario's fault spec. */
  params?: Record<string, unknown>
  fleet?: Partial<FleetOptions>
  hangAfterMs?: number
}

async function run(name: FaultType | 'kv-surge', o: Run): Promise<Harness> {
  const sc = scenario(name, { replicas: 2 })
  const faults = (sc.fleet.faults ?? []).map((f) => ({ ...f, ...o.params }) as FaultSpecInput)
  return startHarness({
    fleet: { ...sc.fleet, faults, ...o.fleet },
    speed: o.speed,
    ...(o.hangAfterMs === undefined ? {} : { monitor: { hangAfterMs: o.hangAfterMs } }),
  })
}

/** Both replicas walked the start-up chain vLLM logs, in order, before anything else. */
async function expectStartUp(h: Harness): Promise<void> {
  await h.waitForTransition('r0', 'SERVING', { timeoutMs: 20_000 })
  await h.waitForTransition('r1', 'SERVING', { timeoutMs: 20_000 })
  for (const r of ['r0', 'r1']) expect(h.states(r).slice(0, 5), r).toEqual(START_UP)
}

function recordLag(scenarioName: string, label: TimedLabel, tr: ReplicaTransition): number {
  const lagSec = (tr.t - label.t) / 1000
  lags.push({
    scenario: scenarioName,
    lagSec,
    transition: `${tr.replica} ${tr.from} -> ${tr.to}`,
    label: `${label.fault} failure at ${(label.t / 1000).toFixed(1)} s`,
  })
  return lagSec
}

function transitionsOf(h: Harness, replica: string, after = 0): ReplicaTransition[] {
  return h.transitions.slice(after).filter((t) => t.replica === replica)
}

function reasonOf(h: Harness, replica: string): string {
  return h.monitor.getStatus().replicas.find((r) => r.replica === replica)?.reason ?? ''
}

/** Waits until `simMs` of simulated time have passed. */
async function simWait(h: Harness, simMs: number): Promise<void> {
  const until = h.now() + simMs
  await poll(`simulated t=${until}`, () => h.now() >= until, simMs / h.server.speed + 10_000)
}

/** After the last 200: 503 (engine dead), then refused (the process exited). */
function expectDeathOnTheWire(seen: Array<{ health: number | string }>): void {
  const after = seen.slice(seen.map((s) => s.health).lastIndexOf(200))
  // A probe caught while uvicorn closes its connections may be reset, as with a real server.
  const codes = after.map((s) => s.health).filter((x) => x !== 'ECONNRESET')
  expect(codes, JSON.stringify(seen)).toEqual([200, 503, 'ECONNREFUSED'])
}

interface DeathCase {
  name: FaultType
  run: Run
  /** What the ERROR reason must name. */
  cause: RegExp
}

const DEATHS: DeathCase[] = [
  { name: 'gpu-oom-spike', run: { speed: 40 }, cause: /CUDA out of memory/ },
  // 512 MiB/s instead of 64: OOM ≈10 s after the co-tenant starts.
  {
    name: 'gpu-oom-cotenant',
    run: { speed: 40, params: { bytesPerSec: 512 * 1024 ** 2 } },
    cause: /CUDA out of memory/,
  },
  // 256 MiB/s instead of 24: OOM ≈20 s after the leak starts.
  {
    name: 'memory-leak',
    run: { speed: 40, params: { bytesPerSec: 256 * 1024 ** 2 } },
    cause: /CUDA out of memory/,
  },
  // 10 s of rising single-bit errors instead of 60.
  { name: 'xid-48', run: { speed: 40, params: { precursorMs: 10_000 } }, cause: /uncorrectable ECC|Xid 48/ },
  { name: 'xid-79', run: { speed: 40 }, cause: /Xid 79|fallen off the bus|GPU \d+ lost/ },
  { name: 'engine-death', run: { speed: 40 }, cause: /died unexpectedly|EngineDeadError|engine is dead/ },
]

describe('fault scenarios over HTTP, watched as the demo watches them', () => {
  for (const c of DEATHS) {
    it(`${c.name}: r0 goes ERROR naming the cause, /health 503 then refused, and stays ERROR while gone`, async () => {
      const h = await run(c.name, c.run)
      const health = h.watchHealth('r0')
      await expectStartUp(h)

      const failure = await h.waitForLabel(c.name, 'failure', 20_000)
      const err = await h.waitForTransition('r0', 'ERROR', { timeoutMs: 10_000 })
      const errIndex = h.transitions.indexOf(err)
      expect(err.from).toMatch(/^(SERVING|DEGRADED)$/)
      // The port closes ≈5 s (simulated) after the death, when uvicorn shuts down.
      await poll('r0 refusing', () => health.seen.at(-1)?.health === 'ECONNREFUSED', 10_000)
      // Nothing brings it back while the process is gone: another 30 s (simulated) of refusals.
      await simWait(h, 30_000)
      await health.stop()
      expectDeathOnTheWire(health.seen)

      const lag = recordLag(c.name, failure, err)
      expect(lag).toBeGreaterThanOrEqual(-0.5)
      expect(lag).toBeLessThan(15)
      expect(transitionsOf(h, 'r0', errIndex + 1), 'r0 moved after ERROR while its server was gone').toEqual(
        [],
      )
      expect(h.state('r0')).toBe('ERROR')
      expect(reasonOf(h, 'r0')).toMatch(c.cause)
      const state = (
        await h.control<{ replicas: Array<{ name: string; phase: string; exitCode: number | null }> }>(
          '/sim/state',
        )
      ).body
      // vLLM exits 0 after engine death (#48966): the exit code says nothing.
      expect(state.replicas[0]).toMatchObject({ name: 'r0', phase: 'exited', exitCode: 0 })
      // r1 was not hit: it never failed.
      expect(h.states('r1')).not.toContain('ERROR')
      // The fleet still serves through r1: DEGRADED, not ERROR.
      expect(h.monitor.getStatus().lifecycleState).toBe('DEGRADED')
    })
  }

  it('engine-death then POST /sim/restart: ERROR -> INITIALIZING -> LOADING_MODEL -> READY -> SERVING again', async () => {
    const h = await run('engine-death', { speed: 100 })
    await expectStartUp(h)
    const err = await h.waitForTransition('r0', 'ERROR', { timeoutMs: 20_000 })
    const errIndex = h.transitions.indexOf(err)
    // The fleet roll-up while r1 serves and r0 is in ERROR.
    const status = h.monitor.getStatus()
    expect(status.replicas.map((r) => r.lifecycleState)).toEqual([
      'ERROR',
      expect.stringMatching(/SERVING|DEGRADED/),
    ])
    expect(status.lifecycleState).toBe('DEGRADED')
    await poll('r0 refusing', async () => (await probe(`${h.url('r0')}/health`)) === 'ECONNREFUSED', 10_000)

    const res = await h.control<{ restarted: string }>('/sim/restart', { replica: 'r0' })
    expect(res.status).toBe(200)
    const back = await h.waitForTransition('r0', 'SERVING', { after: errIndex, timeoutMs: 20_000 })
    const walk = transitionsOf(h, 'r0', errIndex).map((t) => t.to)
    expect(walk).toEqual(['ERROR', 'INITIALIZING', 'LOADING_MODEL', 'READY', 'SERVING'])
    // SERVING only once the restarted server answered, not on its "startup complete" log line.
    expect(back.reason).toMatch(/answers/)
    expect(await probe(`${h.url('r0')}/health`)).toBe(200)
    await poll(
      'fleet SERVING',
      () => h.monitor.getStatus().lifecycleState === 'SERVING' || undefined,
      10_000,
    ).catch(() => {
      // r1 may be DEGRADED by the load it carried alone; the roll-up is then DEGRADED, never ERROR.
      expect(h.monitor.getStatus().lifecycleState).toBe('DEGRADED')
    })
  })

  it('nccl-hang: r0 ERROR as hung while /health still answers 200', async () => {
    // The NCCL watchdog fires after 5 min (simulated) instead of 10.
    const h = await run('nccl-hang', { speed: 100, params: { timeoutMs: 300_000 } })
    await expectStartUp(h)
    const failure = await h.waitForLabel('nccl-hang', 'failure', 20_000)
    const err = await h.waitForTransition('r0', 'ERROR', { timeoutMs: 20_000 })
    // The key case: /health says 200 and /metrics answers, yet the engine is hung.
    expect(await probe(`${h.url('r0')}/health`)).toBe(200)
    expect(await probe(`${h.url('r0')}/metrics`)).toBe(200)
    const state = (await h.control<{ replicas: Array<{ phase: string }> }>('/sim/state')).body
    expect(state.replicas[0]?.phase).toBe('hung')
    expect(err.from).toBe('SERVING')
    expect(err.reason).toMatch(/hung/)
    expect(err.reason).toMatch(/\/health still 200/)
    const lag = recordLag('nccl-hang', failure, err)
    // The rule needs hangAfterMs (30 s) of no progress with requests running.
    expect(lag).toBeGreaterThanOrEqual(30)
    expect(lag).toBeLessThan(45)
    expect(h.monitor.getCheckpoint()?.events.some((e) => e.type === 'hang' && e.replica === 'r0')).toBe(true)
    // Still hung, still 200: the monitor holds ERROR (no flip back to SERVING on a 200).
    await simWait(h, 20_000)
    expect(await probe(`${h.url('r0')}/health`)).toBe(200)
    expect(transitionsOf(h, 'r0', h.transitions.indexOf(err) + 1)).toEqual([])
    expect(h.states('r1')).not.toContain('ERROR')
  })

  it('kv-exhaustion: r0 DEGRADED for KV, never ERROR, recovers after the surge; r1 unaffected', async () => {
    // A 15 s surge (instead of 120 s); round-robin so r1 keeps only its own share of the base load
    // (a least-loaded router hands r1 all of it, and its queue then grows on the trace's bursts).
    const h = await run('kv-surge', {
      speed: 100,
      params: { durationMs: 15_000 },
      fleet: { router: 'round-robin' },
    })
    await expectStartUp(h)
    const failure = await h.waitForLabel('kv-exhaustion', 'failure', 20_000)
    const degraded = await h.waitForTransition('r0', 'DEGRADED', { timeoutMs: 20_000 })
    expect(degraded.reason).toMatch(/KV cache exhausted: \d+\.\d% used, \d+\.\d preemptions\/s/)
    const lag = recordLag('kv-exhaustion', failure, degraded)
    expect(lag).toBeGreaterThanOrEqual(-0.5)
    expect(lag).toBeLessThan(20)
    // KV exhaustion in V1 is not an OOM: the engine preempts and queues, and recovers when the
    // surge has drained.
    await h.waitForLabel('kv-exhaustion', 'cleared', 30_000)
    const recovered = await h.waitForTransition('r0', 'SERVING', {
      after: h.transitions.indexOf(degraded),
      timeoutMs: 20_000,
    })
    expect(recovered.reason).toMatch(/recovered/)
    expect(h.states('r0')).not.toContain('ERROR')
    expect(h.states('r1')).toEqual(START_UP)
    const r0 = h.monitor.getStatus().replicas[0]
    expect(r0?.preemptionsTotal).toBeGreaterThan(0)
  })

  it('thermal-throttle: r0 DEGRADED naming the thermal slowdown; r1 unaffected', async () => {
    // Prefill-heavy Poisson load (4 req/s of 6000-token prompts per replica) without the bursty
    // trace on top, whose queue spikes would degrade both replicas for reasons of their own;
    // cooling degrades to 3x over 30 s instead of 1.9x over 90 s.
    const h = await run('thermal-throttle', {
      speed: 200,
      params: { rampMs: 30_000, coolingFactor: 3 },
      fleet: {
        router: 'round-robin',
        arrivals: poissonArrivals({ ratePerSec: 8, seed: 'thermal', promptTokens: 6000, outputTokens: 8 }),
      },
    })
    await expectStartUp(h)
    const failure = await h.waitForLabel('thermal-throttle', 'failure', 20_000)
    const degraded = await h.waitForTransition('r0', 'DEGRADED', { timeoutMs: 20_000 })
    expect(degraded.reason).toMatch(/GPU 0 thermal slowdown at \d+ °C \(clock \d+ MHz\)/)
    const lag = recordLag('thermal-throttle', failure, degraded)
    expect(lag).toBeGreaterThanOrEqual(-0.5)
    expect(lag).toBeLessThan(15)
    const gpu0 = h.monitor.getStatus().gpus.find((g) => g.gpu === 0)
    expect(gpu0?.temperatureCelsius).toBeGreaterThanOrEqual(87)
    expect(h.states('r0')).not.toContain('ERROR')
    expect(h.states('r1')).toEqual(START_UP)
  })

  it('perf-drift: the label fires; the monitor shows no failure (drift is left to forecasting)', async () => {
    // 30x per hour instead of 2x: step time reaches 1.5x a minute (simulated) after the fault.
    const h = await run('perf-drift', {
      speed: 200,
      params: { slowdownPerHour: 30 },
      fleet: { router: 'round-robin' },
    })
    await expectStartUp(h)
    const failure = await h.waitForLabel('perf-drift', 'failure', 20_000)
    expect(failure.detail).toMatch(/step time 1\.5\dx/)
    await simWait(h, 20_000)
    // No lifecycle rule reads step-time drift: r0 serves (or is DEGRADED once its queue grows),
    // never ERROR.
    const after = h.states('r0').slice(5)
    expect(
      after.every((s) => s === 'SERVING' || s === 'DEGRADED'),
      after.join(','),
    ).toBe(true)
    expect(h.state('r0')).toMatch(/^(SERVING|DEGRADED)$/)
    lags.push({
      scenario: 'perf-drift',
      lagSec: Number.NaN,
      transition: `none; r0 ${h.state('r0')}: ${reasonOf(h, 'r0')}`,
      label: `perf-drift failure at ${(failure.t / 1000).toFixed(1)} s`,
    })
    expect(h.states('r1')).not.toContain('ERROR')
  })
})
