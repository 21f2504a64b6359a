/**
 * The built-in strategies against real actuators where they exist: the gateway's AdmissionController
 * and ReplicaPicker, the VllmControlClient against the simulated vLLM over HTTP; a recording
 * supervisor, process actuator and scalers where a real one would restart or kill something.
 */
import { afterEach, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/errors.js'
import { AdmissionController, AdmissionRejectedError } from '../../src/gateway/admission.js'
import { ReplicaPicker } from '../../src/gateway/picker.js'
import type { Permit, ReplicaView } from '../../src/gateway/types.js'
import { routingFromPicker } from '../../src/mitigation/actuators.js'
import {
  builtinStrategies,
  CapLedger,
  EmergencyGPUMemoryCleanup,
  RebalanceLoad,
  ReduceBatchSize,
  RestartNCCL,
  RestartReplica,
  RestartWithSmallerBatch,
  ScaleResources,
  ShedLoad,
} from '../../src/mitigation/strategies/index.js'
import type {
  ControlActuator,
  MitigationActuators,
  MitigationContext,
  ProcessActuator,
  RestartActuator,
  RoutingActuator,
  ScaleActuator,
  ScaleRequest,
} from '../../src/mitigation/types.js'
import type {
  Checkpoint,
  EngineReading,
  EngineSnapshot,
  FailureType,
  LifecycleState,
  Prediction,
} from '../../src/telemetry/types.js'
import { VllmControlClient } from '../../src/vllm/control.js'
import { derived, engineReading } from '../helpers/records.js'
import { closeSims, startSim, waitHealthy } from '../helpers/sim-http.js'

const clients: VllmControlClient[] = []
afterEach(async () => {
  for (const c of clients.splice(0)) c.close()
  await closeSims()
})

// ---- building contexts ---------------------------------------------------------------------------

interface EngineSpec {
  replica: string
  state?: LifecycleState
  running?: number | null
  kv?: number | null
}

function reading(replica: string, running: number | null, kv: number | null): EngineReading {
  return engineReading(replica, { engine: null, requestsRunning: running, kvCacheUsage: kv })
}

function engine(s: EngineSpec): EngineSnapshot {
  const r =
    s.running === undefined && s.kv === undefined ? null : reading(s.replica, s.running ?? null, s.kv ?? null)
  return {
    replica: s.replica,
    lifecycleState: s.state ?? 'SERVING',
    since: 0,
    reason: 'test',
    reading: r,
    readingAt: r === null ? null : 1000,
    stale: false,
    derived: derived(),
  }
}

function checkpoint(engines: EngineSpec[]): Checkpoint {
  return {
    t: 1000,
    lifecycleState: 'SERVING',
    engines: engines.map(engine),
    gpus: [],
    events: [],
    errors: [],
    predictions: [],
  }
}

const noActuators: MitigationActuators = {
  admission: null,
  routing: null,
  control: () => null,
  supervisor: () => null,
  processes: null,
  scalers: [],
  shedding: null,
}

interface CtxSpec {
  replica?: string
  failureType?: FailureType
  replicas?: string[]
  checkpoint?: Checkpoint | null
  actuators?: Partial<MitigationActuators>
  prediction?: Prediction | null
  now?: () => number
  signal?: AbortSignal
}

function context(o: CtxSpec = {}): MitigationContext {
  const failureType = o.failureType ?? 'kv-exhaustion'
  return {
    replica: o.replica ?? 'r0',
    failureType,
    prediction: o.prediction ?? null,
    trigger: { kind: 'prediction', detail: `${failureType} p=0.9 in 30 s` },
    checkpoint:
      o.checkpoint === undefined
        ? checkpoint([
            { replica: 'r0', running: 20, kv: 0.95 },
            { replica: 'r1', running: 5, kv: 0.3 },
          ])
        : o.checkpoint,
    replicas: o.replicas ?? ['r0', 'r1'],
    actuators: { ...noActuators, ...o.actuators },
    now: o.now ?? (() => 10_000),
    signal: o.signal ?? new AbortController().signal,
  }
}

// ---- recording actuators --------------------------------------------------------------------------

/** A supervisor that records restarts; `fail` makes restart reject, `holdMs` makes it slow. */
function recordingSupervisor(o: { maxNumSeqs?: number | null; fail?: string; holdMs?: number } = {}) {
  const calls: Array<{ reason: string; overrides: { maxNumSeqs?: number } | undefined }> = []
  let seqs = o.maxNumSeqs ?? null
  const sup: RestartActuator = {
    async restart(reason, overrides) {
      calls.push({ reason, overrides })
      if (o.holdMs !== undefined) await new Promise((r) => setTimeout(r, o.holdMs))
      if (o.fail !== undefined) throw new Error(o.fail)
      if (overrides?.maxNumSeqs !== undefined) seqs = overrides.maxNumSeqs
    },
    maxNumSeqs: () => seqs,
  }
  return { sup, calls }
}

function recordingProcesses(list: Array<{ pid: number; name: string; memoryUsedBytes: number | null }>) {
  const terminated: number[] = []
  const processes: ProcessActuator = {
    cotenants: async () => list.filter((p) => !terminated.includes(p.pid)),
    terminate: async (pid) => {
      terminated.push(pid)
      return true
    },
  }
  return { processes, terminated }
}

function scaler(
  name: string,
  answer: 'ok' | 'refuse' | 'throw' | 'hang',
): ScaleActuator & { got: ScaleRequest[] } {
  const got: ScaleRequest[] = []
  return {
    name,
    got,
    scale(req) {
      got.push(req)
      if (answer === 'throw') return Promise.reject(new Error('connect ECONNREFUSED'))
      if (answer === 'hang') return new Promise(() => {})
      return Promise.resolve({ ok: answer === 'ok', detail: answer === 'ok' ? 'HTTP 200' : 'HTTP 503' })
    },
  }
}

function view(name: string): ReplicaView {
  return {
    name,
    url: `http://${name}`,
    kvCacheUsage: 0.1,
    requestsWaiting: 0,
    requestsRunning: 0,
    stale: false,
    serving: true,
    risk: 0,
  }
}

function gateway(replicas = ['r0', 'r1']) {
  const admission = new AdmissionController({ initialLimit: 50, maxLimit: 100 })
  const picker = new ReplicaPicker()
  picker.update(replicas.map(view))
  const routing = routingFromPicker(picker)
  const weightOf = (r: string) => picker.snapshot().find((e) => e.name === r)?.weight
  return { admission, picker, routing, weightOf }
}

function permits(admission: AdmissionController, replica: string, n: number): Permit[] {
  return Array.from({ length: n }, () => {
    const p = admission.tryAcquire(replica)
    if (p === null) throw new Error('no permit')
    return p
  })
}

async function controlOf(o: { devMode: boolean; enableSleepMode?: boolean }) {
  const sim = await startSim(o)
  await waitHealthy(sim.url)
  const client = new VllmControlClient({ url: sim.url, timeoutMs: 5_000 })
  clients.push(client)
  return { sim, client }
}

const aborted = () => {
  const ac = new AbortController()
  ac.abort(new Error('orchestrator closed'))
  return ac.signal
}

// ---- the strategies -------------------------------------------------------------------------------

describe('EmergencyGPUMemoryCleanup', () => {
  it('caps admissions at half the running requests and resets the prefix cache over HTTP', async () => {
    const { admission } = gateway()
    const { sim, client } = await controlOf({ devMode: true })
    const s = new EmergencyGPUMemoryCleanup()
    const r = await s.execute(
      context({
        failureType: 'oom',
        actuators: { admission, control: (rep) => (rep === 'r0' ? client : null) },
      }),
    )
    expect(r.outcome).toBe('SUCCESS')
    expect(admission.state('r0')).toMatchObject({ cap: 10, limit: 10 })
    expect(admission.state('r0').capReason).toContain('EmergencyGPUMemoryCleanup')
    expect(r.actions).toEqual(['cap r0 at 10', 'POST /reset_prefix_cache'])
    expect(r.detail).toContain('capped r0 at 10 (20 running)')
    expect(sim.logs.some((l) => l.text.includes('Resetting prefix cache'))).toBe(true)
  })

  it('notes a prefix-cache reset that dev mode does not offer and still succeeds with the cap', async () => {
    const { admission } = gateway()
    const { client } = await controlOf({ devMode: false })
    const r = await new EmergencyGPUMemoryCleanup().execute(
      context({ failureType: 'oom', actuators: { admission, control: () => client } }),
    )
    expect(r.outcome).toBe('SUCCESS')
    expect(r.detail).toMatch(/prefix cache not reset: .*dev mode off/)
  })

  it('sleeps and wakes the engine only when sleepWake is configured', async () => {
    const { admission } = gateway()
    const { sim, client } = await controlOf({ devMode: true, enableSleepMode: true })
    const r = await new EmergencyGPUMemoryCleanup({ sleepWake: true }).execute(
      context({ failureType: 'oom', actuators: { admission, control: () => client } }),
    )
    expect(r.outcome).toBe('SUCCESS')
    expect(r.actions).toEqual([
      'cap r0 at 10',
      'POST /reset_prefix_cache',
      'POST /sleep?level=1',
      'POST /wake_up',
    ])
    expect(sim.fleet.replicas[0]?.sleepLevel).toBeNull()
    const asleep = await client.isSleeping()
    expect(asleep).toMatchObject({ ok: true, sleeping: false })
  })

  it('reports a failed sleep (no --enable-sleep-mode) as PARTIAL after waking to be sure', async () => {
    const { admission } = gateway()
    const { client } = await controlOf({ devMode: true, enableSleepMode: false })
    const r = await new EmergencyGPUMemoryCleanup({ sleepWake: true }).execute(
      context({ failureType: 'oom', actuators: { admission, control: () => client } }),
    )
    expect(r.outcome).toBe('PARTIAL')
    expect(r.detail).toContain(
      'sleep failed: POST /sleep answered HTTP 500: Internal Server Error (woke up to be sure)',
    )
    expect(r.actions).toContain('POST /wake_up')
  })

  it('leaves co-tenants running unless killCotenants is set, and says so (PARTIAL)', async () => {
    const { admission } = gateway()
    const { processes, terminated } = recordingProcesses([
      { pid: 4242, name: 'python3', memoryUsedBytes: 2 ** 30 },
    ])
    const r = await new EmergencyGPUMemoryCleanup().execute(
      context({ failureType: 'oom', actuators: { admission, processes } }),
    )
    expect(r.outcome).toBe('PARTIAL')
    expect(r.detail).toContain('co-tenants left running (killCotenants off): pid 4242 (python3, 1024 MiB)')
    expect(terminated).toEqual([])
  })

  it('ends co-tenants when killCotenants is set', async () => {
    const { admission } = gateway()
    const { processes, terminated } = recordingProcesses([
      { pid: 4242, name: 'python3', memoryUsedBytes: 2 ** 30 },
      { pid: 4343, name: 'stress', memoryUsedBytes: null },
    ])
    const r = await new EmergencyGPUMemoryCleanup({ killCotenants: true }).execute(
      context({ failureType: 'oom', actuators: { admission, processes } }),
    )
    expect(r.outcome).toBe('SUCCESS')
    expect(terminated).toEqual([4242, 4343])
    expect(r.actions).toEqual(['cap r0 at 10', 'terminate pid 4242 (python3)', 'terminate pid 4343 (stress)'])
  })

  it('caps at minCap when the running count is unknown', async () => {
    const { admission } = gateway()
    const r = await new EmergencyGPUMemoryCleanup().execute(
      context({ checkpoint: null, failureType: 'oom', actuators: { admission } }),
    )
    expect(r.outcome).toBe('SUCCESS')
    expect(admission.state('r0').cap).toBe(1)
    expect(r.detail).toContain('running unknown')
  })

  it('is SKIPPED without an admission, control or process actuator', async () => {
    const r = await new EmergencyGPUMemoryCleanup().execute(context({ failureType: 'oom' }))
    expect(r).toEqual({
      outcome: 'SKIPPED',
      detail: 'no admission, control or process actuator for r0: nothing to act through',
      actions: [],
    })
  })

  it('is a FAILURE, not a throw, when the cap and the reset both fail', async () => {
    const control: ControlActuator = {
      resetPrefixCache: async () => ({ ok: false, error: 'POST /reset_prefix_cache: ECONNREFUSED' }),
      sleep: async () => ({ ok: true, status: 200 }),
      wakeUp: async () => ({ ok: true, status: 200 }),
    }
    const admission = {
      cap: () => {
        throw new Error('cap refused')
      },
      release: () => {},
      drain: async () => true,
      undrain: () => {},
    }
    const r = await new EmergencyGPUMemoryCleanup().execute(
      context({ failureType: 'oom', actuators: { admission, control: () => control } }),
    )
    expect(r.outcome).toBe('FAILURE')
    expect(r.detail).toContain('cap r0 at 10 failed: cap refused')
    expect(r.detail).toContain('ECONNREFUSED')
  })

  it('releases the cap on rollback', async () => {
    const { admission } = gateway()
    const s = new EmergencyGPUMemoryCleanup()
    const ctx = context({ failureType: 'oom', actuators: { admission } })
    await s.execute(ctx)
    await s.rollback(ctx)
    expect(admission.state('r0')).toMatchObject({ cap: null, limit: 50 })
  })

  it('does nothing once the signal is aborted', async () => {
    const { admission } = gateway()
    const r = await new EmergencyGPUMemoryCleanup().execute(
      context({ failureType: 'oom', actuators: { admission }, signal: aborted() }),
    )
    expect(r.outcome).toBe('SKIPPED')
    expect(r.detail).toBe('aborted before acting: orchestrator closed')
    expect(admission.state('r0').cap).toBeNull()
  })

  it('stops between steps when aborted mid-way (PARTIAL, the cap stays)', async () => {
    const { admission } = gateway()
    const ac = new AbortController()
    const control: ControlActuator = {
      resetPrefixCache: async () => {
        ac.abort(new Error('deadline'))
        return { ok: true, status: 200 }
      },
      sleep: async () => ({ ok: true, status: 200 }),
      wakeUp: async () => ({ ok: true, status: 200 }),
    }
    const r = await new EmergencyGPUMemoryCleanup({ sleepWake: true }).execute(
      context({ failureType: 'oom', actuators: { admission, control: () => control }, signal: ac.signal }),
    )
    expect(r.outcome).toBe('PARTIAL')
    expect(r.detail).toContain('aborted: deadline')
    expect(r.actions).toEqual(['cap r0 at 10', 'POST /reset_prefix_cache'])
  })

  it('rejects invalid options with exact messages', () => {
    expect(() => new EmergencyGPUMemoryCleanup({ capFraction: 0 })).toThrow(InvalidOptionError)
    expect(() => new EmergencyGPUMemoryCleanup({ capFraction: 1.5 })).toThrow(
      'EmergencyGPUMemoryCleanup: option "capFraction" must be a number in (0, 1]',
    )
    expect(() => new EmergencyGPUMemoryCleanup({ sleepWake: 'yes' as unknown as boolean })).toThrow(
      'EmergencyGPUMemoryCleanup: option "sleepWake" must be a boolean',
    )
  })
})

describe('ReduceBatchSize', () => {
  it('caps a KV-exhausted replica at running × 0.85 / kv usage', async () => {
    const { admission } = gateway()
    const r = await new ReduceBatchSize().execute(context({ actuators: { admission } }))
    // 20 × 0.85 / 0.95 = 17.9
    expect(r).toMatchObject({ outcome: 'SUCCESS', actions: ['cap r0 at 17'] })
    expect(admission.state('r0').cap).toBe(17)
  })

  it('caps at running × factor when the KV cache is not what runs out', async () => {
    const { admission } = gateway()
    const r = await new ReduceBatchSize().execute(
      context({ failureType: 'slo-violation', actuators: { admission } }),
    )
    expect(r.actions).toEqual(['cap r0 at 14'])
    expect(r.detail).toBe('capped r0 at 14 (20 running × 0.7)')
  })

  it('sums the running requests of data-parallel engines', async () => {
    const { admission } = gateway()
    const cp = checkpoint([
      { replica: 'r0', running: 10, kv: null },
      { replica: 'r0', running: 30, kv: null },
    ])
    await new ReduceBatchSize().execute(context({ checkpoint: cp, actuators: { admission } }))
    expect(admission.state('r0').cap).toBe(28)
  })

  it('is SKIPPED without an admission actuator, without a reading, and with nothing running', async () => {
    const s = new ReduceBatchSize()
    expect((await s.execute(context())).detail).toBe(
      'no admission actuator (no gateway embedded): cannot cap r0',
    )
    const { admission } = gateway()
    const noReading = await s.execute(
      context({ checkpoint: checkpoint([{ replica: 'r0' }]), actuators: { admission } }),
    )
    expect(noReading).toMatchObject({ outcome: 'SKIPPED', actions: [] })
    expect(noReading.detail).toContain('no reading of the requests running on r0')
    const idle = await s.execute(
      context({ checkpoint: checkpoint([{ replica: 'r0', running: 0, kv: 0.9 }]), actuators: { admission } }),
    )
    expect(idle.outcome).toBe('SKIPPED')
    expect(admission.state('r0').cap).toBeNull()
  })

  it('is a FAILURE when the cap throws', async () => {
    const admission = {
      cap: () => {
        throw new Error('no such replica')
      },
      release: () => {},
      drain: async () => true,
      undrain: () => {},
    }
    const r = await new ReduceBatchSize().execute(context({ actuators: { admission } }))
    expect(r).toEqual({ outcome: 'FAILURE', detail: 'cap r0 at 17 failed: no such replica', actions: [] })
  })

  it('releases the cap and forgets it on rollback', async () => {
    const { admission } = gateway()
    const ledger = new CapLedger()
    const s = new ReduceBatchSize({ ledger })
    const ctx = context({ actuators: { admission } })
    await s.execute(ctx)
    expect(ledger.get('r0')).toEqual({ limit: 17, at: 10_000 })
    await s.rollback(ctx)
    expect(admission.state('r0').cap).toBeNull()
    expect(ledger.get('r0')).toBeNull()
  })
})

describe('RestartWithSmallerBatch', () => {
  it('is SKIPPED until ReduceBatchSize has capped the replica', async () => {
    const { sup, calls } = recordingSupervisor({ maxNumSeqs: 128 })
    const r = await new RestartWithSmallerBatch().execute(context({ actuators: { supervisor: () => sup } }))
    expect(r.outcome).toBe('SKIPPED')
    expect(r.detail).toBe('r0 was not capped by ReduceBatchSize in the last 600000 ms: cap it first')
    expect(calls).toEqual([])
  })

  it('escalates a cap that did not help: drains, restarts with half the --max-num-seqs, undrains', async () => {
    const strategies = builtinStrategies()
    const reduce = strategies.find((s) => s.name === 'ReduceBatchSize')!
    const restart = strategies.find((s) => s.name === 'RestartWithSmallerBatch')!
    const { admission, routing, weightOf } = gateway()
    const { sup, calls } = recordingSupervisor({ maxNumSeqs: 128 })
    let t = 0
    const ctx = context({ actuators: { admission, routing, supervisor: () => sup }, now: () => t })
    await reduce.execute(ctx)
    const inflight = permits(admission, 'r0', 2)
    t = 60_000
    const running = restart.execute(ctx)
    await new Promise((r) => setTimeout(r, 20))
    expect(admission.state('r0').draining).toBe(true)
    expect(weightOf('r0')).toBe(0)
    expect(calls).toEqual([])
    for (const p of inflight) p.success()
    const r = await running
    expect(r.outcome).toBe('SUCCESS')
    expect(calls).toHaveLength(1)
    expect(calls[0]?.overrides).toEqual({ maxNumSeqs: 64 })
    expect(calls[0]?.reason).toContain('--max-num-seqs 128 → 64')
    expect(r.actions).toEqual([
      'weight r0 0',
      'drain r0 (up to 30000 ms)',
      'restart r0 with --max-num-seqs 64',
      'undrain r0',
      'weight r0 1',
    ])
    expect(admission.state('r0').draining).toBe(false)
    expect(weightOf('r0')).toBe(1)
    // A second escalation needs a fresh cap that did not help either.
    expect((await restart.execute(ctx)).outcome).toBe('SKIPPED')
  })

  it('does not escalate a cap older than escalateAfterMs', async () => {
    const ledger = new CapLedger()
    ledger.record('r0', 12, 0)
    const { sup } = recordingSupervisor({ maxNumSeqs: 128 })
    const s = new RestartWithSmallerBatch({ ledger, escalateAfterMs: 60_000 })
    const r = await s.execute(context({ actuators: { supervisor: () => sup }, now: () => 60_001 }))
    expect(r.outcome).toBe('SKIPPED')
  })

  it('halves the cap when the arguments say nothing of --max-num-seqs', async () => {
    const ledger = new CapLedger()
    ledger.record('r0', 12, 9_000)
    const { sup, calls } = recordingSupervisor({ maxNumSeqs: null })
    const r = await new RestartWithSmallerBatch({ ledger }).execute(
      context({ actuators: { supervisor: () => sup } }),
    )
    expect(r.outcome).toBe('SUCCESS')
    expect(r.detail).toContain('no admission actuator: restarted without a drain')
    expect(calls[0]?.overrides).toEqual({ maxNumSeqs: 6 })
  })

  it('is SKIPPED without a supervisor', async () => {
    const r = await new RestartWithSmallerBatch({ requirePriorCap: false }).execute(context())
    expect(r).toEqual({
      outcome: 'SKIPPED',
      detail: 'no supervisor for r0: vLLM is not run by this monitor',
      actions: [],
    })
  })
})

describe('RestartNCCL', () => {
  it('restarts a hung replica once its drain times out, then routes to it again', async () => {
    const { admission, routing, weightOf } = gateway()
    const { sup, calls } = recordingSupervisor()
    permits(admission, 'r0', 1) // a request the hung engine never finishes
    const r = await new RestartNCCL({ drainTimeoutMs: 50 }).execute(
      context({ failureType: 'network-failure', actuators: { admission, routing, supervisor: () => sup } }),
    )
    expect(r.outcome).toBe('SUCCESS')
    expect(r.detail).toContain(
      'drain timed out after 50 ms with requests in flight (expected of a hung engine)',
    )
    expect(calls.map((c) => c.reason)).toEqual(['RestartNCCL: network-failure p=0.9 in 30 s'])
    expect(r.actions).toEqual([
      'weight r0 0',
      'drain r0 (up to 50 ms)',
      'restart r0',
      'undrain r0',
      'weight r0 1',
    ])
    expect(admission.state('r0').draining).toBe(false)
    expect(weightOf('r0')).toBe(1)
  })

  it('keeps the replica out until rollback when restoreAfterRestart is false', async () => {
    const { admission, routing, weightOf } = gateway()
    const { sup } = recordingSupervisor()
    const s = new RestartNCCL({ restoreAfterRestart: false })
    const ctx = context({
      failureType: 'network-failure',
      actuators: { admission, routing, supervisor: () => sup },
    })
    const r = await s.execute(ctx)
    expect(r.outcome).toBe('SUCCESS')
    expect(r.detail).toContain('stays drained until rollback')
    expect(admission.state('r0').draining).toBe(true)
    expect(weightOf('r0')).toBe(0)
    await expect(admission.acquire('r0')).rejects.toBeInstanceOf(AdmissionRejectedError)
    await s.rollback(ctx)
    expect(admission.state('r0').draining).toBe(false)
    expect(weightOf('r0')).toBe(1)
  })

  it('is SKIPPED without a supervisor, and drains nothing', async () => {
    const { admission, routing, weightOf } = gateway()
    const r = await new RestartNCCL().execute(
      context({ failureType: 'network-failure', actuators: { admission, routing } }),
    )
    expect(r).toEqual({
      outcome: 'SKIPPED',
      detail: 'no supervisor for r0: vLLM is not run by this monitor',
      actions: [],
    })
    expect(admission.state('r0').draining).toBe(false)
    expect(weightOf('r0')).toBe(1)
  })

  it('is a FAILURE when the restart fails, and undoes the drain', async () => {
    const { admission, routing, weightOf } = gateway()
    const { sup } = recordingSupervisor({ fail: 'vLLM is not running after the restart: cannot start vLLM' })
    const r = await new RestartNCCL().execute(
      context({ failureType: 'network-failure', actuators: { admission, routing, supervisor: () => sup } }),
    )
    expect(r.outcome).toBe('FAILURE')
    expect(r.detail).toContain('restart failed: vLLM is not running after the restart: cannot start vLLM')
    expect(admission.state('r0').draining).toBe(false)
    expect(weightOf('r0')).toBe(1)
  })

  it('undoes the drain when aborted while draining', async () => {
    const { admission, routing, weightOf } = gateway()
    const { sup, calls } = recordingSupervisor()
    permits(admission, 'r0', 1)
    const ac = new AbortController()
    setTimeout(() => ac.abort(new Error('deadline passed')), 30)
    const r = await new RestartNCCL({ drainTimeoutMs: 10_000 }).execute(
      context({
        failureType: 'network-failure',
        actuators: { admission, routing, supervisor: () => sup },
        signal: ac.signal,
      }),
    )
    expect(r.outcome).toBe('SKIPPED')
    expect(r.detail).toBe('aborted during the drain (deadline passed); undrained, weight back to 1')
    expect(calls).toEqual([])
    expect(admission.state('r0').draining).toBe(false)
    expect(weightOf('r0')).toBe(1)
  })

  it('answers PARTIAL when aborted while vLLM restarts, and routes to it once the restart is through', async () => {
    const { admission, routing, weightOf } = gateway()
    const { sup } = recordingSupervisor({ holdMs: 80 })
    const ac = new AbortController()
    setTimeout(() => ac.abort(new Error('deadline passed')), 20)
    const r = await new RestartNCCL().execute(
      context({
        failureType: 'network-failure',
        actuators: { admission, routing, supervisor: () => sup },
        signal: ac.signal,
      }),
    )
    expect(r.outcome).toBe('PARTIAL')
    expect(r.detail).toContain('aborted while vLLM restarts (deadline passed)')
    expect(admission.state('r0').draining).toBe(true)
    await new Promise((res) => setTimeout(res, 120))
    expect(admission.state('r0').draining).toBe(false)
    expect(weightOf('r0')).toBe(1)
  })
})

describe('RestartReplica', () => {
  it('drains a leaking replica and restarts it before the leak ends in CUDA OOM', async () => {
    const { admission, routing, weightOf } = gateway()
    const { sup, calls } = recordingSupervisor()
    const r = await new RestartReplica({ drainTimeoutMs: 50 }).execute(
      context({ failureType: 'oom', actuators: { admission, routing, supervisor: () => sup } }),
    )
    expect(r.outcome).toBe('SUCCESS')
    expect(calls.map((c) => c.reason)[0]).toMatch(/^RestartReplica: /)
    expect(r.actions).toEqual([
      'weight r0 0',
      'drain r0 (up to 50 ms)',
      'restart r0',
      'undrain r0',
      'weight r0 1',
    ])
    expect(admission.state('r0').draining).toBe(false)
    expect(weightOf('r0')).toBe(1)
  })

  it('is SKIPPED without a supervisor, and drains nothing', async () => {
    const { admission, routing } = gateway()
    const r = await new RestartReplica().execute(
      context({ failureType: 'oom', actuators: { admission, routing } }),
    )
    expect(r.outcome).toBe('SKIPPED')
    expect(admission.state('r0').draining).toBe(false)
  })

  it('handles OOM, SLO violations from a drifting step time and network failures', () => {
    const s = new RestartReplica()
    expect(s.disruptive).toBe(true)
    expect(s.handles).toEqual(['oom', 'slo-violation', 'network-failure'])
  })
})

describe('RebalanceLoad', () => {
  it('lowers the weight of the replica at risk while another one serves, and restores it on rollback', async () => {
    const { routing, weightOf } = gateway()
    const s = new RebalanceLoad()
    const ctx = context({ actuators: { routing } })
    const r = await s.execute(ctx)
    expect(r).toEqual({
      outcome: 'SUCCESS',
      detail: 'weight of r0 1 → 0.25; r1 takes the rest',
      actions: ['weight r0 0.25'],
    })
    expect(weightOf('r0')).toBe(0.25)
    await s.execute(ctx)
    await s.rollback(ctx)
    expect(weightOf('r0')).toBe(1)
  })

  it('takes a replica with a failed GPU out (weight 0)', async () => {
    const { routing, weightOf } = gateway()
    await new RebalanceLoad().execute(context({ failureType: 'hardware-failure', actuators: { routing } }))
    expect(weightOf('r0')).toBe(0)
  })

  it('is SKIPPED when no other replica serves (or all others are weighted out)', async () => {
    const { routing } = gateway(['r0', 'r1', 'r2'])
    const cp = checkpoint([
      { replica: 'r0', running: 20, kv: 0.95 },
      { replica: 'r1', state: 'ERROR' },
      { replica: 'r2', state: 'SERVING' },
    ])
    routing.setWeight('r2', 0)
    const r = await new RebalanceLoad().execute(
      context({ checkpoint: cp, replicas: ['r0', 'r1', 'r2'], actuators: { routing } }),
    )
    expect(r).toEqual({ outcome: 'SKIPPED', detail: 'no other replica to take the load', actions: [] })
    expect(
      (await new RebalanceLoad().execute(context({ replicas: ['r0'], actuators: { routing } }))).outcome,
    ).toBe('SKIPPED')
  })

  it('is SKIPPED without routing and a FAILURE when setting the weight throws', async () => {
    expect((await new RebalanceLoad().execute(context())).detail).toBe(
      'no routing actuator (no gateway embedded): cannot shift load off r0',
    )
    const routing: RoutingActuator = {
      weight: () => 1,
      setWeight: (r) => {
        if (r === 'r0') throw new Error('unknown replica')
      },
    }
    const r = await new RebalanceLoad().execute(context({ actuators: { routing } }))
    expect(r).toEqual({
      outcome: 'FAILURE',
      detail: 'setting the weight of r0 to 0.25 failed: unknown replica',
      actions: [],
    })
  })
})

describe('ScaleResources', () => {
  const prediction: Prediction = {
    failureType: 'queue-overflow',
    probability: 0.8,
    timeToFailureS: 45,
    horizonS: 60,
    target: { replica: 'r0', gpu: null },
    evidence: [],
    model: 'threshold',
  }

  it('asks every scaler for one more replica', async () => {
    const a = scaler('webhook', 'ok')
    const b = scaler('kubernetes:deployments/vllm', 'ok')
    const r = await new ScaleResources().execute(
      context({ failureType: 'queue-overflow', prediction, actuators: { scalers: [a, b] } }),
    )
    expect(r.outcome).toBe('SUCCESS')
    expect(a.got).toEqual([
      {
        replica: 'r0',
        failureType: 'queue-overflow',
        desiredReplicas: 3,
        reason: 'ScaleResources: queue-overflow p=0.9 in 30 s',
        probability: 0.8,
        timeToFailureS: 45,
      },
    ])
    expect(b.got).toHaveLength(1)
    expect(r.actions).toEqual(['scale via webhook to 3', 'scale via kubernetes:deployments/vllm to 3'])
  })

  it('is PARTIAL when some scalers refuse, a FAILURE when none accepts, SKIPPED without scalers', async () => {
    const s = new ScaleResources()
    const partial = await s.execute(
      context({ actuators: { scalers: [scaler('a', 'ok'), scaler('b', 'refuse')] } }),
    )
    expect(partial).toMatchObject({ outcome: 'PARTIAL', detail: 'a: HTTP 200; b: HTTP 503' })
    const none = await s.execute(
      context({ actuators: { scalers: [scaler('a', 'throw'), scaler('b', 'refuse')] } }),
    )
    expect(none).toMatchObject({ outcome: 'FAILURE', detail: 'a: connect ECONNREFUSED; b: HTTP 503' })
    expect((await s.execute(context())).outcome).toBe('SKIPPED')
  })

  it('stops waiting for a scaler once the signal aborts', async () => {
    const ac = new AbortController()
    setTimeout(() => ac.abort(new Error('deadline passed')), 20)
    const r = await new ScaleResources().execute(
      context({ actuators: { scalers: [scaler('a', 'ok'), scaler('slow', 'hang')] }, signal: ac.signal }),
    )
    expect(r).toMatchObject({ outcome: 'PARTIAL', detail: 'a: HTTP 200; slow: aborted (deadline passed)' })
  })

  it('handles the failure types it is given', () => {
    expect(new ScaleResources({ handles: ['oom'] }).handles).toEqual(['oom'])
    expect(() => new ScaleResources({ handles: ['meteor' as FailureType] })).toThrow(
      /ScaleResources: option "handles" must be a non-empty array of failure types/,
    )
  })
})

describe('ShedLoad', () => {
  it('sheds sheddable requests with a 429 and Retry-After through the admission controller, until rollback', async () => {
    const { admission } = gateway()
    const s = new ShedLoad()
    const ctx = context({ failureType: 'slo-violation', actuators: { shedding: admission } })
    const r = await s.execute(ctx)
    expect(r).toEqual({
      outcome: 'SUCCESS',
      detail: 'r0 answers 429 to requests with priority < 0',
      actions: ['shed r0 below priority 0'],
    })
    expect(admission.tryAcquire('r0', -1)).toBeNull()
    const err = await admission.acquire('r0', -1).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(AdmissionRejectedError)
    expect((err as AdmissionRejectedError).rejection).toMatchObject({ reason: 'overloaded', status: 429 })
    expect((err as AdmissionRejectedError).rejection.retryAfterS).toBeGreaterThanOrEqual(1)
    expect(admission.tryAcquire('r0', 0)).not.toBeNull()
    await s.rollback(ctx)
    expect(admission.tryAcquire('r0', -1)).not.toBeNull()
  })

  it('is SKIPPED without a shedding actuator and a FAILURE when shedding throws', async () => {
    expect((await new ShedLoad().execute(context())).outcome).toBe('SKIPPED')
    const shedding = {
      shed: () => {
        throw new Error('gateway closed')
      },
      unshed: () => {},
    }
    const r = await new ShedLoad({ belowPriority: 5 }).execute(context({ actuators: { shedding } }))
    expect(r).toEqual({ outcome: 'FAILURE', detail: 'shedding on r0 failed: gateway closed', actions: [] })
  })
})

describe('builtinStrategies', () => {
  it('makes one of each built-in strategy, disruptive ones marked', () => {
    const all = builtinStrategies()
    expect(all.map((s) => [s.name, s.disruptive])).toEqual([
      ['EmergencyGPUMemoryCleanup', false],
      ['ReduceBatchSize', false],
      ['RestartWithSmallerBatch', true],
      ['RestartNCCL', true],
      ['RestartReplica', true],
      ['RebalanceLoad', false],
      ['ScaleResources', false],
      ['ShedLoad', false],
    ])
    expect(all.find((s) => s.name === 'RestartNCCL')?.handles).toEqual(['network-failure'])
  })

  it('passes options by strategy name and leaves out those set to false', () => {
    const all = builtinStrategies({ RestartNCCL: false, ShedLoad: { belowPriority: 3 } })
    expect(all.map((s) => s.name)).not.toContain('RestartNCCL')
    expect((all.find((s) => s.name === 'ShedLoad') as ShedLoad).belowPriority).toBe(3)
  })

  it('rejects an unknown strategy name', () => {
    expect(() => builtinStrategies({ Reboot: {} } as never)).toThrow(
      'builtinStrategies: unknown strategy "Reboot" (known: EmergencyGPUMemoryCleanup, ReduceBatchSize, RestartWithSmallerBatch, RestartNCCL, RestartReplica, RebalanceLoad, ScaleResources, ShedLoad)',
    )
  })
})
