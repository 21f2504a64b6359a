import { describe, expect, it } from 'vitest'
import { InvalidArgumentError, InvalidOptionError } from '../../src/errors.js'
import { SimFleet } from '../../src/sim/fleet.js'
import {
  SimGateway,
  type SimGatewayOptions,
  type SimGatewayRequest,
  simActuators,
} from '../../src/sim/gateway.js'
import { type ScenarioOptions, scenario } from '../../src/sim/scenarios.js'
import type { FaultLabel } from '../../src/telemetry/types.js'

interface Played {
  fleet: SimFleet
  gateway: SimGateway
  labels: FaultLabel[]
  requests: SimGatewayRequest[]
}

type Act = (t: number, p: Played) => void | Promise<void>

/**
 * Plays a named scenario with a gateway attached, 100 ms at a time; `act` runs before each step
 * (awaited, so a mitigation's promises settle in simulated time).
 */
async function play(
  name: string,
  act: Act = () => {},
  options: { scenario?: ScenarioOptions; gateway?: SimGatewayOptions; durationMs?: number } = {},
): Promise<Played> {
  const sc = scenario(name, options.scenario)
  const fleet = new SimFleet(sc.fleet)
  const requests: SimGatewayRequest[] = []
  const gateway = new SimGateway({ ...options.gateway, onRequest: (r) => requests.push(r) })
  fleet.attachGateway(gateway)
  const labels: FaultLabel[] = []
  fleet.on({ label: (l) => labels.push(l) })
  const p: Played = { fleet, gateway, labels, requests }
  fleet.start()
  const end = options.durationMs ?? sc.durationMs
  for (let t = 0; t <= end; t += 100) {
    await act(t, p)
    fleet.advanceTo(t)
  }
  return p
}

function failures(p: Played, fault: string): FaultLabel[] {
  return p.labels.filter((l) => l.fault === fault && l.phase === 'failure')
}

const kSteadyMs = 120_000

describe('SimGateway', () => {
  it('with no lever pulled, serves every request of a steady scenario ok, without a 429', async () => {
    const p = await play('steady')
    const s = p.gateway.stats()
    expect(s.arrived).toBeGreaterThan(1000)
    expect(s.shed).toBe(0)
    expect(s.queueTimeout).toBe(0)
    expect(s.failed).toBe(0)
    // Only the arrivals before vLLM bound its port found no replica (connection refused).
    const servingAt = p.requests.find((r) => r.outcome === 'ok')?.arrivalMs ?? 0
    expect(p.requests.filter((r) => r.replica === null).every((r) => r.arrivalMs < servingAt)).toBe(true)
    expect(s.lost).toBe(p.fleet.droppedArrivals)
    expect(s.ok + s.lost + s.inFlight + s.queued).toBe(s.arrived)
    expect(p.requests.filter((r) => r.priority === -1).length / s.arrived).toBeCloseTo(0.2, 1)
  })

  it('holds a capped replica running+waiting at or under the cap and queues the rest at the gateway', async () => {
    let maxInEngine = 0
    let maxQueued = 0
    const p = await play(
      'steady',
      (t, { fleet, gateway }) => {
        if (t === 0) gateway.cap('r0', 8, 'test')
        const e = fleet.replica('r0').engine
        if (e !== null) maxInEngine = Math.max(maxInEngine, e.numRunning + e.numWaiting)
        maxQueued = Math.max(maxQueued, gateway.queued('r0'))
      },
      { durationMs: kSteadyMs },
    )
    expect(maxInEngine).toBe(8)
    expect(maxQueued).toBeGreaterThan(0)
    expect(p.gateway.inFlight('r0')).toBeLessThanOrEqual(8)
    expect(p.gateway.stats().ok).toBeGreaterThan(100)
  })

  it('answers 429 counted as queue-timeout to requests that waited past the queue timeout', async () => {
    const p = await play(
      'steady',
      (t, { gateway }) => {
        if (t === 0) gateway.cap('r0', 1, 'test')
      },
      { gateway: { queueTimeoutMs: 2_000 }, durationMs: kSteadyMs },
    )
    const timedOut = p.requests.filter((r) => r.outcome === 'queue-timeout')
    expect(p.gateway.stats().queueTimeout).toBe(timedOut.length)
    expect(timedOut.length).toBeGreaterThan(10)
    for (const r of timedOut) {
      expect(r.finishMs - r.arrivalMs).toBeCloseTo(2_000, 6)
      expect(r.firstTokenMs).toBeNull()
      expect(r.retryAfterS).toBe(2)
    }
  })

  it('moves all base traffic and all pinned (surge) traffic elsewhere at weight 0', async () => {
    const p = await play(
      'kv-exhaustion',
      (t, { gateway }) => {
        if (t === 30_000) gateway.setWeight('r0', 0)
      },
      { scenario: { replicas: 2 } },
    )
    expect(p.gateway.weight('r0')).toBe(0)
    const after = p.requests.filter((r) => r.arrivalMs >= 30_000)
    expect(after.filter((r) => r.pinned === 'r0').length).toBeGreaterThan(100)
    expect(after.filter((r) => r.pinned === null).length).toBeGreaterThan(100)
    expect(after.some((r) => r.replica === 'r0')).toBe(false)
    expect(p.gateway.inFlight('r0')).toBe(0)
    expect(failures(p, 'kv-exhaustion')).toEqual([])
  })

  it('routes a share 1 - weight of pinned traffic elsewhere at a weight between 0 and 1', async () => {
    const p = await play(
      'kv-exhaustion',
      (t, { gateway }) => {
        if (t === 30_000) gateway.setWeight('r0', 0.5)
      },
      { scenario: { replicas: 2 } },
    )
    const pinned = p.requests.filter((r) => r.pinned === 'r0' && r.arrivalMs >= 30_000)
    const away = pinned.filter((r) => r.replica === 'r1').length / pinned.length
    expect(away).toBeGreaterThan(0.4)
    expect(away).toBeLessThan(0.6)
  })

  it('sheds only the requests below the priority bar, at once', async () => {
    const p = await play(
      'steady',
      (t, { gateway }) => {
        if (t === 30_000) gateway.shed('r0', 0, 'test')
      },
      { durationMs: kSteadyMs },
    )
    const after = p.requests.filter((r) => r.arrivalMs >= 30_000)
    const shed = after.filter((r) => r.outcome === 'shed')
    expect(shed.length).toBeGreaterThan(20)
    expect(shed.every((r) => r.priority === -1 && r.finishMs === r.arrivalMs && r.retryAfterS === 1)).toBe(
      true,
    )
    expect(after.filter((r) => r.priority === -1).every((r) => r.outcome === 'shed')).toBe(true)
    expect(after.filter((r) => r.priority === 0).every((r) => r.outcome === 'ok')).toBe(true)
    expect(p.requests.filter((r) => r.arrivalMs < 30_000).some((r) => r.outcome === 'shed')).toBe(false)
  })

  it('resolves a drain once the replica has nothing in flight, and admits nothing new to it meanwhile', async () => {
    let drained: boolean | null = null
    let drainedAt = -1
    let inFlightThen = -1
    const p = await play(
      'steady',
      (t, { fleet, gateway }) => {
        if (t === 40_000) {
          expect(gateway.inFlight('r0')).toBeGreaterThan(0)
          void gateway.drain('r0', 60_000).then((ok) => {
            drained = ok
            drainedAt = fleet.now
            inFlightThen = gateway.inFlight('r0')
          })
        }
        return new Promise((resolve) => setImmediate(resolve))
      },
      { scenario: { replicas: 2 }, durationMs: 90_000 },
    )
    expect(drained).toBe(true)
    expect(inFlightThen).toBe(0)
    expect(drainedAt).toBeGreaterThan(40_000)
    expect(drainedAt).toBeLessThan(100_000)
    expect(p.requests.some((r) => r.arrivalMs >= 40_000 && r.replica === 'r0')).toBe(false)
    expect(p.gateway.stats().failed).toBe(0)
  })

  it('resolves a drain false when the timeout passes first', async () => {
    let drained: boolean | null = null
    let settledAt = -1
    await play(
      'nccl-hang',
      (t, { fleet, gateway }) => {
        // A hung engine finishes nothing: its requests stay in flight.
        if (t === 50_000) {
          expect(gateway.inFlight('r0')).toBeGreaterThan(0)
          void gateway.drain('r0', 5_000).then((ok) => {
            drained = ok
            settledAt = fleet.now
          })
        }
        return new Promise((resolve) => setImmediate(resolve))
      },
      { durationMs: 60_000 },
    )
    expect(drained).toBe(false)
    // Asked at the fleet's time then (49 900 ms), settled by the tick at its deadline.
    expect(settledAt).toBe(54_900)
  })

  it('restarts a replica with the max_num_seqs it is given, failing the requests it had in flight', async () => {
    let maxRunning = 0
    const p = await play(
      'steady',
      async (t, { fleet, gateway }) => {
        const sup = simActuators(fleet, gateway).supervisor('r0')
        if (t === 30_000) {
          expect(sup?.maxNumSeqs()).toBe(1024)
          await sup?.restart('test', { maxNumSeqs: 4 })
          expect(sup?.maxNumSeqs()).toBe(4)
        }
        const e = fleet.replica('r0').engine
        if (t > 30_000 && e !== null) maxRunning = Math.max(maxRunning, e.numRunning)
      },
      { durationMs: 90_000 },
    )
    const r0 = p.fleet.replica('r0')
    expect(r0.restarts).toBe(1)
    expect(r0.engine?.config.maxNumSeqs).toBe(4)
    expect(maxRunning).toBe(4)
    const failed = p.requests.filter((r) => r.outcome === 'failed' && r.replica === 'r0')
    expect(failed.length).toBeGreaterThan(0)
    // The supervisor acted between two steps, at the fleet's time then.
    expect(failed.every((r) => r.finishMs === 29_900)).toBe(true)
  })

  it('stops a gpu-oom-cotenant scenario from reaching OOM when the co-tenant is terminated', async () => {
    const off = await play('gpu-oom-cotenant')
    expect(failures(off, 'gpu-oom-cotenant')).toHaveLength(1)
    const pids: number[] = []
    const on = await play('gpu-oom-cotenant', async (t, { fleet, gateway }) => {
      if (t !== 60_000) return
      const processes = simActuators(fleet, gateway).processes
      const cotenants = (await processes?.cotenants('r0')) ?? []
      expect(cotenants).toHaveLength(1)
      expect(cotenants[0]?.memoryUsedBytes).toBeGreaterThan(1024 ** 3)
      for (const c of cotenants) {
        pids.push(c.pid)
        expect(await processes?.terminate(c.pid)).toBe(true)
      }
      expect(await processes?.cotenants('r0')).toEqual([])
    })
    expect(pids).toHaveLength(1)
    expect(failures(on, 'gpu-oom-cotenant')).toEqual([])
    expect(on.labels.some((l) => l.fault === 'gpu-oom-cotenant' && l.phase === 'cleared')).toBe(true)
    expect(on.fleet.gpus[0]?.cotenantBytes).toBe(0)
    expect(on.fleet.replica('r0').phase).toBe('serving')
  })

  it('prevents the preemption storm of kv-exhaustion on 2 replicas with a strong cap on r0', async () => {
    const off = await play('kv-exhaustion', undefined, { scenario: { replicas: 2 } })
    expect(failures(off, 'kv-exhaustion')).toHaveLength(1)
    expect(off.fleet.replica('r0').engine?.preemptionsTotal).toBeGreaterThan(0)
    const on = await play(
      'kv-exhaustion',
      (t, { gateway }) => {
        if (t === 45_000) gateway.cap('r0', 16, 'kv-exhaustion predicted')
      },
      { scenario: { replicas: 2 } },
    )
    expect(failures(on, 'kv-exhaustion')).toEqual([])
    expect(on.fleet.replica('r0').engine?.preemptionsTotal).toBe(0)
    // The price: surge requests beyond the cap were turned away with 429s.
    const s = on.gateway.stats()
    expect(s.shed + s.queueTimeout).toBeGreaterThan(0)
    expect(s.failed).toBe(0)
  })

  it('avoids the OOM of gpu-oom-spike with a cap of a quarter of max_num_seqs', async () => {
    const off = await play('gpu-oom-spike')
    expect(failures(off, 'gpu-oom-spike')).toHaveLength(1)
    const on = await play('gpu-oom-spike', (t, { fleet, gateway }) => {
      // Activation memory scales with the batch the scheduler may form (1024 -> 256: a quarter of the spike).
      if (t === 50_000) gateway.cap('r0', 256, 'gpu-oom-spike predicted')
      if (t === 50_000) expect(fleet.replica('r0').batchMemoryFactor).toBe(0.25)
    })
    expect(failures(on, 'gpu-oom-spike')).toEqual([])
    expect(on.fleet.replica('r0').phase).toBe('serving')
    expect(on.gateway.stats().failed).toBe(0)
  })

  it('counts the SLO-violating minutes of a hand-made case', async () => {
    const fleet = new SimFleet({ seed: 5 })
    const gateway = new SimGateway()
    fleet.attachGateway(gateway)
    const sup = simActuators(fleet, gateway).supervisor('r0')
    fleet.start()
    fleet.advanceTo(20_000)
    expect(fleet.replica('r0').phase).toBe('serving')
    // Minute 0 (from the first arrival): short requests, TTFT of a few ms.
    for (let i = 0; i < 10; i++) fleet.submit(100, 20, 40)
    fleet.advanceTo(80_000)
    // Minute 1: one at a time, 400 tokens each: the last first token waits ~4 requests (> 2 s).
    gateway.cap('r0', 1, 'test')
    for (let i = 0; i < 5; i++) fleet.submit(100, 400, 800)
    fleet.advanceTo(140_000)
    // Minute 2: back to normal.
    gateway.release('r0')
    for (let i = 0; i < 3; i++) fleet.submit(100, 20, 40)
    fleet.advanceTo(200_000)
    // Minute 3: a request dies in a restart, another finds no replica.
    fleet.submit(100, 2_000, 4_000)
    fleet.advanceTo(201_000)
    await sup?.restart('test')
    fleet.advanceTo(205_000)
    expect(fleet.submit(100, 20, 40)).toBe(false)
    fleet.advanceTo(210_000)
    expect(gateway.stats()).toMatchObject({
      arrived: 20,
      ok: 18,
      failed: 1,
      lost: 1,
      shed: 0,
      queueTimeout: 0,
    })
    expect(gateway.sloMinutes(2_000)).toBe(2)
    expect(gateway.sloMinutes(60_000)).toBe(1)
    expect(gateway.sloMinutes(60_000, 1_000)).toBe(1)
    expect(gateway.sloMinutes(60_000, 1)).toBe(4)
  })

  it('keeps the fleet submit() and droppedArrivals working through the gateway', () => {
    const fleet = new SimFleet({ seed: 2 })
    fleet.attachGateway(new SimGateway())
    expect(fleet.submit(100, 10, 20)).toBe(false)
    expect(fleet.droppedArrivals).toBe(1)
    expect(() => fleet.attachGateway(new SimGateway())).toThrow('the fleet already has a gateway')
  })

  it('rejects invalid options and unknown replicas with exact messages', () => {
    expect(() => new SimGateway({ lowPriorityShare: 2 })).toThrow(InvalidOptionError)
    expect(() => new SimGateway({ lowPriorityShare: 2 })).toThrow(
      'options.lowPriorityShare must be a number from 0 to 1',
    )
    expect(() => new SimGateway({ maxQueue: -1 })).toThrow('options.maxQueue must be a non-negative integer')
    expect(() => new SimGateway({ queueTimeoutMs: 0 })).toThrow(
      'options.queueTimeoutMs must be a positive number of milliseconds',
    )
    const gateway = new SimGateway()
    expect(() => gateway.cap('r0', 1, 'x')).toThrow('SimGateway: not attached (call fleet.attachGateway)')
    new SimFleet().attachGateway(gateway)
    expect(() => gateway.cap('r9', 1, 'x')).toThrow(InvalidArgumentError)
    expect(() => gateway.cap('r9', 1, 'x')).toThrow('SimGateway: unknown replica "r9"')
    expect(() => gateway.setWeight('r0', -1)).toThrow('multiplier must be a non-negative number')
  })

  it('answers control calls as the sim server would: 404 without dev mode, 500 for sleep without sleep mode', async () => {
    const fleet = new SimFleet()
    const gateway = new SimGateway()
    fleet.attachGateway(gateway)
    fleet.start()
    expect(await simActuators(fleet, gateway).control('r0')?.resetPrefixCache()).toMatchObject({
      ok: false,
      error: 'POST /reset_prefix_cache: ECONNREFUSED',
    })
    fleet.advanceTo(20_000)
    const off = simActuators(fleet, gateway, { devMode: false }).control('r0')
    expect(await off?.resetPrefixCache()).toMatchObject({ ok: false, unavailable: true })
    const on = simActuators(fleet, gateway).control('r0')
    expect(await on?.resetPrefixCache()).toEqual({ ok: true, status: 200 })
    expect(await on?.sleep({ level: 1 })).toMatchObject({ ok: false })
    const sleepy = simActuators(fleet, gateway, { enableSleepMode: true }).control('r0')
    expect(await sleepy?.sleep({ level: 1 })).toEqual({ ok: true, status: 200 })
    expect(fleet.replica('r0').sleepLevel).toBe(1)
    expect(await sleepy?.wakeUp()).toEqual({ ok: true, status: 200 })
    expect(fleet.replica('r0').sleepLevel).toBeNull()
    expect(fleet.replica('r0').engine?.paused).toBe(false)
    expect(simActuators(fleet, gateway).control('r9')).toBeNull()
    expect(simActuators(fleet, gateway).scalers).toEqual([])
  })
})
