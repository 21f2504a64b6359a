import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { DEFAULT_SLO, SCORING } from '../../src/forecast/spec.js'
import { AdmissionController } from '../../src/gateway/admission.js'
import { AuditLog, readAuditLog } from '../../src/mitigation/audit.js'
import { ContinuousLearner } from '../../src/mitigation/learner.js'
import { MitigationOrchestrator, type OrchestratorOptions } from '../../src/mitigation/orchestrator.js'
import { SafetyGate } from '../../src/mitigation/safety.js'
import type {
  MitigationActuators,
  MitigationContext,
  MitigationResult,
  MitigationStrategy,
} from '../../src/mitigation/types.js'
import type {
  Checkpoint,
  EngineReading,
  EngineSnapshot,
  FailureType,
  MonitorEvent,
  Prediction,
} from '../../src/telemetry/types.js'
import { derived, engineReading, gpuReading } from '../helpers/records.js'

const dirs: string[] = []
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true })
})

function engine(
  replica: string,
  over: Partial<EngineReading> = {},
  state: EngineSnapshot['lifecycleState'] = 'SERVING',
): EngineSnapshot {
  return {
    replica,
    lifecycleState: state,
    since: 0,
    reason: '',
    reading: engineReading(replica, {
      requestsRunning: 40,
      requestsWaiting: 0,
      kvCacheUsage: 0.85,
      ttftP99Ms: 300,
      itlP99Ms: 30,
      ...over,
    }),
    readingAt: 0,
    stale: false,
    derived: derived({ preemptionsPerSec: 0, stalledForMs: 0 }),
  }
}

function checkpoint(
  t: number,
  engines: EngineSnapshot[] = [engine('r0'), engine('r1', { kvCacheUsage: 0.3 })],
): Checkpoint {
  return { t, lifecycleState: 'SERVING', engines, gpus: [], events: [], errors: [], predictions: [] }
}

function alarm(failureType: FailureType, replica = 'r0', probability = 0.95): Prediction {
  const horizonS = SCORING[failureType].horizonS
  return {
    failureType,
    probability,
    timeToFailureS: 20,
    horizonS,
    target: { replica, gpu: 0 },
    evidence: [],
    model: 'test-v1',
  }
}

/** A strategy that records its calls and answers what it is told. */
class Recorder implements MitigationStrategy {
  readonly calls: MitigationContext[] = []
  readonly rollbacks: string[] = []
  answer: (ctx: MitigationContext) => Promise<MitigationResult> = async () => ({
    outcome: 'SUCCESS',
    detail: 'done',
    actions: ['pulled a lever'],
  })
  constructor(
    readonly name: string,
    readonly handles: readonly FailureType[],
    readonly disruptive = false,
  ) {}
  execute(ctx: MitigationContext): Promise<MitigationResult> {
    this.calls.push(ctx)
    return this.answer(ctx)
  }
  async rollback(ctx: MitigationContext): Promise<void> {
    this.rollbacks.push(ctx.replica)
  }
}

function actuators(over: Partial<MitigationActuators> = {}): MitigationActuators {
  return {
    admission: null,
    routing: null,
    control: () => null,
    supervisor: () => null,
    processes: null,
    scalers: [],
    ...over,
  }
}

interface Setup {
  orch: MitigationOrchestrator
  clock: { t: number }
  events: MonitorEvent[]
  errors: Array<{ code: string; message: string }>
  outcomes: Array<{ failureType: FailureType; outcome: string }>
  learner: ContinuousLearner
  strategy: Recorder
}

function setup(
  over: Partial<OrchestratorOptions> = {},
  strategy = new Recorder('ReduceBatchSize', ['kv-exhaustion']),
): Setup {
  const clock = { t: 0 }
  const now = () => clock.t
  const learner = new ContinuousLearner({ seed: 1, now })
  learner.registerStrategy(strategy.name, strategy)
  const events: MonitorEvent[] = []
  const errors: Array<{ code: string; message: string }> = []
  const outcomes: Array<{ failureType: FailureType; outcome: string }> = []
  const orch = new MitigationOrchestrator({
    learner,
    actuators: actuators(),
    safety: new SafetyGate({ now }),
    slo: DEFAULT_SLO,
    now,
    emit: (e) => events.push(e),
    reportError: (code, message) => errors.push({ code, message }),
    reportOutcome: (o) => outcomes.push(o),
    judgeWindowMs: { 'kv-exhaustion': 10_000 },
    rollbackQuietMs: 5_000,
    ...over,
  })
  return { orch, clock, events, errors, outcomes, learner, strategy }
}

/** Advances the clock in 1 s forecast ticks, with the given alarms on each. */
async function run(
  s: Setup,
  untilMs: number,
  alarms: (t: number) => Prediction[] = () => [],
  cp = checkpoint,
) {
  while (s.clock.t < untilMs) {
    s.clock.t += 1000
    const a = alarms(s.clock.t)
    s.orch.observe(cp(s.clock.t), a, a)
    await s.orch.settle()
  }
}

describe('the mitigation orchestrator', () => {
  it('turns an alarm into one action through the chosen strategy, an event and a counted outcome', async () => {
    const s = setup()
    await run(s, 3000, (t) => (t === 1000 ? [alarm('kv-exhaustion')] : []))
    expect(s.strategy.calls).toHaveLength(1)
    const ctx = s.strategy.calls[0]!
    expect(ctx.replica).toBe('r0')
    expect(ctx.failureType).toBe('kv-exhaustion')
    expect(ctx.prediction?.probability).toBe(0.95)
    expect(ctx.replicas).toEqual(['r0', 'r1'])
    expect(s.orch.triggered()).toEqual([{ strategy: 'ReduceBatchSize', outcome: 'SUCCESS', count: 1 }])
    const ev = s.events.find((e) => e.type === 'mitigation')
    expect(ev?.message).toMatch(/ReduceBatchSize for kv-exhaustion on r0: SUCCESS/)
  })

  it('acts once per replica and failure type while the first action is in place, however long the alarm lasts', async () => {
    const s = setup()
    await run(s, 8000, () => [alarm('kv-exhaustion')])
    expect(s.strategy.calls).toHaveLength(1)
  })

  it('judges the outcome after the window, teaches the learner and labels the forecaster', async () => {
    const s = setup()
    await run(s, 12_000, (t) => (t <= 2000 ? [alarm('kv-exhaustion')] : []))
    const [record] = s.orch.actions()
    expect(record?.judgement?.verdict).toBe('avoided')
    expect(record?.judgement?.reward).toBe(1)
    expect(s.outcomes).toEqual([
      expect.objectContaining({ failureType: 'kv-exhaustion', outcome: 'avoided' }),
    ])
    const [score] = s.learner.scores('kv-exhaustion', {
      kvCacheUsage: 0.85,
      requestsWaiting: 0,
      requestsRunning: 40,
      memoryUsedFraction: null,
      memoryGrowthBytesPerSec: null,
      cotenantMemoryBytes: null,
      tempCelsius: null,
      fleetHeadroom: 0.7,
      probability: 0.95,
      timeToFailureS: 20,
    })
    expect(score?.trials).toBe(1)
    expect(
      s.events.some(
        (e) => e.type === 'mitigation-outcome' && /avoided after ReduceBatchSize/.test(e.message),
      ),
    ).toBe(true)
  })

  it('scores a failure that happened inside the window as occurred, with no reward', async () => {
    const s = setup()
    let preemptions = 0
    const cp = (t: number) => {
      if (t >= 5000) preemptions += 3
      return checkpoint(t, [
        engine('r0', { kvCacheUsage: 0.97, preemptionsTotal: preemptions }),
        engine('r1'),
      ])
    }
    await run(s, 12_000, (t) => (t <= 2000 ? [alarm('kv-exhaustion')] : []), cp)
    const [record] = s.orch.actions()
    expect(record?.judgement?.verdict).not.toBe('avoided')
    expect(s.outcomes[0]?.outcome).toBe('occurred')
  })

  it('rolls an action back once its alarm has been quiet, after it was judged', async () => {
    const s = setup()
    await run(s, 20_000, (t) => (t <= 2000 ? [alarm('kv-exhaustion')] : []))
    expect(s.strategy.rollbacks).toEqual(['r0'])
    expect(s.orch.actions()[0]?.rolledBack).toBe(true)
  })

  it('keeps an action in place while its alarm goes on past the window', async () => {
    const s = setup()
    await run(s, 20_000, () => [alarm('kv-exhaustion')])
    expect(s.strategy.rollbacks).toEqual([])
  })

  it('reports a strategy that throws as a FAILURE and goes on', async () => {
    const s = setup()
    s.strategy.answer = async () => {
      throw new Error('actuator exploded')
    }
    await run(s, 2000, () => [alarm('kv-exhaustion')])
    expect(s.orch.triggered()).toEqual([{ strategy: 'ReduceBatchSize', outcome: 'FAILURE', count: 1 }])
    expect(
      s.errors.some(
        (e) => e.code === 'VLLM_MONITOR_MITIGATION_FAILED' && /actuator exploded/.test(e.message),
      ),
    ).toBe(true)
  })

  it('gives up on a strategy that never answers at its deadline and aborts it', async () => {
    const s = setup({ actionTimeoutMs: 50 })
    let aborted = false
    s.strategy.answer = (ctx) =>
      new Promise(() => {
        ctx.signal.addEventListener('abort', () => {
          aborted = true
        })
      })
    await run(s, 1000, () => [alarm('kv-exhaustion')])
    expect(s.orch.actions()[0]?.result?.outcome).toBe('FAILURE')
    expect(s.orch.actions()[0]?.result?.detail).toMatch(/did not finish within 50 ms/)
    expect(aborted).toBe(true)
  })

  it('only logs in dry-run mode', async () => {
    const clock = { t: 0 }
    const s = setup({ safety: new SafetyGate({ dryRun: true, now: () => clock.t }), now: () => clock.t })
    s.clock.t = 0
    Object.assign(s, { clock })
    await run(s, 2000, () => [alarm('kv-exhaustion')])
    expect(s.strategy.calls).toHaveLength(0)
    expect(s.orch.triggered()).toEqual([expect.objectContaining({ outcome: 'SKIPPED' })])
    expect(s.events.some((e) => /dry run: would run ReduceBatchSize/.test(e.message))).toBe(true)
  })

  it('holds a decision out as the counterfactual: chosen, not executed, judged', async () => {
    const s = setup({ holdout: 1 })
    await run(s, 12_000, (t) => (t <= 2000 ? [alarm('kv-exhaustion')] : []))
    expect(s.strategy.calls).toHaveLength(0)
    const [record] = s.orch.actions()
    expect(record?.holdout).toBe(true)
    expect(record?.judgement?.strategy).toBeNull()
    // No action and no failure: the alarm was a false one.
    expect(s.outcomes[0]?.outcome).toBe('false-alarm')
  })

  it('asks the approval hook before a disruptive action and respects a denial', async () => {
    const asked: string[] = []
    const clock = { t: 0 }
    const restart = new Recorder('RestartNCCL', ['network-failure'], true)
    const s = setup(
      {
        safety: new SafetyGate({
          now: () => clock.t,
          approve: (r) => {
            asked.push(`${r.strategy} on ${r.replica}`)
            return false
          },
        }),
        now: () => clock.t,
      },
      restart,
    )
    Object.assign(s, { clock })
    // The denial holds: the next ticks' alarms do not ask again at once.
    await run(s, 5000, () => [alarm('network-failure')])
    expect(asked).toEqual(['RestartNCCL on r0'])
    expect(restart.calls).toHaveLength(0)
    expect(s.orch.triggered()).toEqual([{ strategy: 'RestartNCCL', outcome: 'SKIPPED', count: 1 }])
  })

  it('acts on predictions above the configured threshold when one is set, alarms or not', async () => {
    const s = setup({ threshold: 0.9 })
    s.clock.t += 1000
    const low = alarm('kv-exhaustion', 'r0', 0.85)
    s.orch.observe(checkpoint(s.clock.t), [low], [low])
    await s.orch.settle()
    expect(s.strategy.calls).toHaveLength(0)
    s.clock.t += 1000
    const high = alarm('kv-exhaustion', 'r0', 0.92)
    s.orch.observe(checkpoint(s.clock.t), [high], [])
    await s.orch.settle()
    expect(s.strategy.calls).toHaveLength(1)
  })

  it('caps the replica at once from the native fast path, before any await', async () => {
    const admission = new AdmissionController()
    const s = setup({ actuators: actuators({ admission }) })
    s.clock.t = 1000
    s.orch.observe(checkpoint(1000, [engine('r0', { requestsRunning: 30 })]), [], [])
    const limit = s.orch.nativeAlert('r0', 'GPU 0 memory 98.5 %')
    expect(limit).toBe(15)
    expect(admission.state('r0').cap).toBe(15)
  })

  it('does not cap from the native fast path in dry-run mode', async () => {
    const admission = new AdmissionController()
    const clock = { t: 1000 }
    const s = setup({
      actuators: actuators({ admission }),
      safety: new SafetyGate({ dryRun: true, now: () => clock.t }),
      now: () => clock.t,
    })
    s.orch.observe(checkpoint(1000, [engine('r0', { requestsRunning: 30 })]), [], [])
    expect(s.orch.nativeAlert('r0', 'GPU 0 memory 98.5 %')).toBeNull()
    expect(admission.state('r0').cap).toBeNull()
  })

  it('appends the decision, the action and the outcome to the audit log', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vllm-monitor-'))
    dirs.push(dir)
    const path = join(dir, 'audit.jsonl')
    const audit = await AuditLog.open(path)
    const s = setup({ audit })
    await run(s, 12_000, (t) => (t <= 2000 ? [alarm('kv-exhaustion')] : []))
    await audit.close()
    const { entries, torn } = await readAuditLog(path)
    expect(torn).toBe(0)
    // Judged at 11 s, then rolled back once the alarm had been quiet for 5 s.
    expect(entries.map((e) => e.kind)).toEqual(['decision', 'action', 'outcome', 'rollback'])
    expect(new Set(entries.map((e) => e.id)).size).toBe(1)
    expect(entries[0]).toMatchObject({ strategy: 'ReduceBatchSize', basis: 'runbook', replica: 'r0' })
    expect(entries[2]).toMatchObject({ verdict: 'avoided', reward: 1 })
  })
})

/** Lets queued microtasks and I/O callbacks run. */
const turn = () => new Promise<void>((resolve) => setImmediate(resolve))

/** A strategy whose rollback waits until the test lets it finish. */
class SlowRollback extends Recorder {
  rollbackStarted = false
  release: () => void = () => {}
  override rollback(ctx: MitigationContext): Promise<void> {
    this.rollbackStarted = true
    return new Promise((resolve) => {
      this.release = () => {
        this.rollbacks.push(ctx.replica)
        resolve()
      }
    })
  }
}

/** Ticks without waiting for actions, until `done` holds (or the clock reaches `untilMs`). */
async function tickUntil(s: Setup, untilMs: number, done: () => boolean): Promise<void> {
  while (s.clock.t < untilMs && !done()) {
    s.clock.t += 1000
    s.orch.observe(checkpoint(s.clock.t), [], [])
    await turn()
  }
}

describe('the mitigation orchestrator under faults and over time', () => {
  it.each([
    [{ actionTimeoutMs: Number.NaN }, 'option "actionTimeoutMs" must be a positive number of ms, got NaN'],
    [{ rollbackQuietMs: -1 }, 'option "rollbackQuietMs" must be a number >= 0 of ms, got -1'],
    [{ holdout: 1.5 }, 'option "holdout" must be a number in [0, 1], got 1.5'],
    [{ threshold: -0.1 }, 'option "threshold" must be a number in [0, 1], got -0.1'],
    [{ nativeCapFraction: 2 }, 'option "nativeCapFraction" must be a number in (0, 1], got 2'],
    [{ judgeWindowMs: { oom: 0 } }, 'option "judgeWindowMs["oom"]" must be a positive number of ms, got 0'],
    [{ judgeWindowMs: { leak: 1 } as never }, 'option "judgeWindowMs" has an unknown failure type "leak"'],
  ])('refuses %o, naming the option', (over, message) => {
    expect(() => setup(over as Partial<OrchestratorOptions>)).toThrow(
      expect.objectContaining({
        code: 'VLLM_MONITOR_INVALID_OPTION',
        message: `MitigationOrchestrator: ${message}`,
      }),
    )
  })

  it('gives up on a rollback that never finishes at the action deadline, so close() still resolves', async () => {
    const strategy = new SlowRollback('ReduceBatchSize', ['kv-exhaustion'])
    const s = setup({ actionTimeoutMs: 50 }, strategy)
    await run(s, 20_000, (t) => (t <= 2000 ? [alarm('kv-exhaustion')] : []))
    expect(strategy.rollbackStarted).toBe(true)
    expect(s.orch.inProgress).toBe(false)
    await s.orch.close()
    expect(s.orch.actions()[0]?.rolledBack).toBe(false)
    expect(s.errors).toContainEqual({
      code: 'VLLM_MONITOR_MITIGATION_FAILED',
      message: 'rolling back ReduceBatchSize on r0 failed: it did not finish within 50 ms',
    })
  })

  it('reports a rollback that rejects with no error at all instead of throwing it out', async () => {
    const s = setup()
    s.strategy.rollback = () => Promise.reject(undefined)
    await run(s, 20_000, (t) => (t <= 2000 ? [alarm('kv-exhaustion')] : []))
    expect(s.errors).toContainEqual({
      code: 'VLLM_MONITOR_MITIGATION_FAILED',
      message: 'rolling back ReduceBatchSize on r0 failed: undefined',
    })
    expect(s.orch.actions()[0]?.rolledBack).toBe(false)
  })

  it('starts no new action for a replica and failure type while its last rollback is still running', async () => {
    const strategy = new SlowRollback('ReduceBatchSize', ['kv-exhaustion'])
    const clock = { t: 0 }
    const s = setup(
      {
        safety: new SafetyGate({ cooldownMs: 0, failureTypeCooldownMs: 0, now: () => clock.t }),
        now: () => clock.t,
      },
      strategy,
    )
    Object.assign(s, { clock })
    await run(s, 2000, (t) => (t <= 2000 ? [alarm('kv-exhaustion')] : []))
    await tickUntil(s, 30_000, () => strategy.rollbackStarted)
    expect(strategy.rollbackStarted).toBe(true)
    s.clock.t += 1000
    s.orch.observe(checkpoint(s.clock.t), [alarm('kv-exhaustion')], [alarm('kv-exhaustion')])
    for (let i = 0; i < 5; i++) await turn()
    // A new cap set now would be lifted by the rollback finishing after it.
    expect(strategy.calls).toHaveLength(1)
    strategy.release()
    await s.orch.settle()
    await run(s, s.clock.t + 1000, () => [alarm('kv-exhaustion')])
    expect(strategy.calls).toHaveLength(2)
  })

  it('decides without the co-tenant reading when the process list never answers', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] })
    try {
      const processes = { cotenants: () => new Promise<never>(() => {}), terminate: async () => false }
      const s = setup({ actuators: actuators({ processes }) })
      s.clock.t = 1000
      s.orch.observe(checkpoint(1000), [alarm('kv-exhaustion')], [alarm('kv-exhaustion')])
      await vi.advanceTimersByTimeAsync(5_000)
      await s.orch.settle()
      expect(s.strategy.calls).toHaveLength(1)
      expect(s.orch.inProgress).toBe(false)
    } finally {
      vi.useRealTimers()
    }
  })

  it('makes no decision before the learner state is restored', async () => {
    let restored: () => void = () => {}
    const ready = new Promise<void>((resolve) => {
      restored = resolve
    })
    const s = setup({ ready })
    s.clock.t = 1000
    s.orch.observe(checkpoint(1000), [alarm('kv-exhaustion')], [alarm('kv-exhaustion')])
    for (let i = 0; i < 5; i++) await turn()
    expect(s.strategy.calls).toHaveLength(0)
    expect(s.learner.toJSON().decisions).toBe(0)
    restored()
    await s.orch.settle()
    expect(s.strategy.calls).toHaveLength(1)
  })

  it("does not act on a native alert's queued response once closed", async () => {
    const cleanup = new Recorder('EmergencyGPUMemoryCleanup', ['oom'])
    const s = setup({}, cleanup)
    s.clock.t = 1000
    s.orch.observe(checkpoint(1000), [], [])
    s.orch.nativeAlert('r0', 'GPU 0 memory 98.5 %')
    await s.orch.close()
    for (let i = 0; i < 5; i++) await turn()
    expect(cleanup.calls).toHaveLength(0)
  })

  it('reports an audit log that throws instead of rejecting, from the native reflex too', async () => {
    const audit = {
      append(): Promise<void> {
        throw new Error('disk gone')
      },
    }
    const s = setup({ audit })
    s.clock.t = 1000
    s.orch.observe(checkpoint(1000), [], [])
    s.orch.nativeAlert('r0', 'GPU 0 memory 98.5 %')
    for (let i = 0; i < 5; i++) await turn()
    await s.orch.settle()
    expect(s.errors).toContainEqual({ code: 'VLLM_MONITOR_AUDIT_LOG', message: 'disk gone' })
  })

  it('forgets the alarms, refusals and memory baselines of replicas that have left', async () => {
    const clock = { t: 0 }
    const s = setup({
      // Every action is refused (denied), so each replica leaves a refusal behind.
      safety: new SafetyGate({ now: () => clock.t, approveAll: true, approve: () => false }),
      now: () => clock.t,
    })
    Object.assign(s, { clock })
    // A rolling deployment: a new replica every minute for two hours, each alarming once.
    for (let i = 0; i < 120; i++) {
      const name = `pod-${i}`
      s.clock.t += 60_000
      const cp = checkpoint(s.clock.t, [engine(name), engine('r1')])
      cp.gpus = [gpuReading({ replica: name, gpu: 0 })]
      s.orch.observe(cp, [alarm('kv-exhaustion', name)], [alarm('kv-exhaustion', name)])
      await s.orch.settle()
    }
    await run(s, s.clock.t + 600_000)
    const maps = s.orch as unknown as Record<'lastAlarmAt' | 'deferUntil', Map<string, unknown>> & {
      memory: { gpus: Map<string, unknown> }
    }
    expect(maps.lastAlarmAt.size).toBe(0)
    expect(maps.deferUntil.size).toBe(0)
    expect(maps.memory.gpus.size).toBe(0)
  })
})

describe('the learner context the orchestrator builds', () => {
  it('reads memory growth over a sliding window, fresh at the moment of the alarm', async () => {
    const { MemoryGrowth } = await import('../../src/mitigation/context.js')
    const m = new MemoryGrowth()
    const MiB = 1024 ** 2
    const at = (t: number, used: number) =>
      m.observe({ ...checkpoint(t), gpus: [gpuReading({ replica: 'r0', gpu: 0, memoryUsedBytes: used })] })
    for (let t = 0; t <= 20_000; t += 100) at(t, 10_000 * MiB)
    expect(m.growth('r0', 0)).toBe(0)
    // A leak of 96 MiB/s starts; six seconds in, the growth already says so.
    for (let t = 20_100; t <= 26_000; t += 100) at(t, 10_000 * MiB + ((t - 20_000) / 1000) * 96 * MiB)
    expect(m.growth('r0', 0)).toBeGreaterThan(40 * MiB)
    expect(m.growth('r0', 0)).toBeLessThan(96 * MiB)
    // Ten seconds later only the leak is in the window.
    for (let t = 26_100; t <= 60_000; t += 100) at(t, 10_000 * MiB + ((t - 20_000) / 1000) * 96 * MiB)
    expect(m.growth('r0', 0)).toBeCloseTo(96 * MiB, -3)
  })

  it('releases a declined exploration so it stops holding the learner budget', async () => {
    const clock = { t: 0 }
    const s = setup({
      safety: new SafetyGate({ now: () => clock.t, approveAll: true, approve: () => false }),
      now: () => clock.t,
    })
    Object.assign(s, { clock })
    const calls: string[] = []
    const update = s.learner.update.bind(s.learner)
    s.learner.update = (d, r, o) => {
      calls.push(o)
      update(d, r, o)
    }
    await run(s, 2000, () => [alarm('kv-exhaustion')])
    expect(calls).toEqual(['SKIPPED'])
  })
})

describe('escalation', () => {
  it('runs the next step once when the failure starts under an action in place, and rolls each back on its own', async () => {
    const cap = new Recorder('ReduceBatchSize', ['kv-exhaustion'])
    Object.assign(cap, { escalatesTo: 'RestartWithSmallerBatch' })
    const restart = new Recorder('RestartWithSmallerBatch', ['kv-exhaustion'], true)
    const s = setup({ judgeWindowMs: { 'kv-exhaustion': 20_000 } }, cap)
    s.learner.registerStrategy(restart.name, restart)
    let preemptions = 0
    const cp = (t: number) => {
      // The storm gets past the cap at 6 s: preemptions climb at a full KV cache.
      if (t >= 6000 && t <= 9000) preemptions += 5
      return checkpoint(t, [
        engine('r0', { kvCacheUsage: 0.97, preemptionsTotal: preemptions }),
        engine('r1'),
      ])
    }
    await run(s, 12_000, (t) => (t <= 9000 ? [alarm('kv-exhaustion')] : []), cp)
    expect(cap.calls).toHaveLength(1)
    expect(restart.calls).toHaveLength(1)
    expect(restart.calls[0]?.trigger.detail).toMatch(
      /started despite ReduceBatchSize .*escalating to RestartWithSmallerBatch/,
    )
    const escalation = s.orch.actions().find((a) => a.strategy === 'RestartWithSmallerBatch')
    expect(escalation?.basis).toBe('escalation')
    // Both judged, the alarm quiet: both rolled back.
    await run(s, 80_000)
    expect(cap.rollbacks).toEqual(['r0'])
    expect(restart.rollbacks).toEqual(['r0'])
  })
})

describe('leaving no lever pulled', () => {
  it('lifts the native reflex cap once the OOM alarm is quiet when no strategy took it over', async () => {
    const admission = new AdmissionController()
    const clock = { t: 0 }
    const s = setup({
      actuators: actuators({ admission }),
      // Every considered response is refused: the reflex's cap is nobody else's to lift.
      safety: new SafetyGate({ now: () => clock.t, approveAll: true, approve: () => false }),
      now: () => clock.t,
      rollbackQuietMs: 5_000,
    })
    Object.assign(s, { clock })
    await run(s, 1000)
    expect(s.orch.nativeAlert('r0', 'GPU 0 memory 98.5 %')).toBe(20)
    await run(s, 4000)
    expect(admission.state('r0').cap).toBe(20)
    await run(s, 10_000)
    expect(admission.state('r0').cap).toBeNull()
  })

  it('rolls back what is in place and lifts reflex caps when it closes', async () => {
    const admission = new AdmissionController()
    const s = setup({ actuators: actuators({ admission }) })
    await run(s, 2000, () => [alarm('kv-exhaustion')])
    s.orch.nativeAlert('r1', 'GPU 1 memory 99 %')
    expect(admission.state('r1').cap).not.toBeNull()
    await s.orch.close()
    expect(s.strategy.rollbacks).toEqual(['r0'])
    expect(admission.state('r1').cap).toBeNull()
  })
})
