import { describe, expect, it } from 'vitest'
import { ContinuousLearner } from '../../src/mitigation/learner.js'
import { runClosedLoop } from '../../src/mitigation/simulate.js'
import { builtinStrategies } from '../../src/mitigation/strategies/index.js'

// One closed-loop run is a few seconds of CPU: each test plays one scenario twice at most.
describe('the mitigation loop in the simulator', () => {
  it('lets a KV surge end in a preemption storm with the monitor off, and avoids it with the runbook on the same seed', async () => {
    const off = await runClosedLoop({ scenario: 'kv-surge', seed: 101, mode: 'off' })
    const on = await runClosedLoop({ scenario: 'kv-surge', seed: 101, mode: 'runbook' })
    expect(off.faults).toEqual([expect.objectContaining({ fault: 'kv-exhaustion', verdict: 'occurred' })])
    expect(off.actions).toEqual([])
    expect(on.faults).toEqual([expect.objectContaining({ fault: 'kv-exhaustion', verdict: 'avoided' })])
    const first = on.actions[0]
    expect(first).toMatchObject({ replica: 'r0', failureType: 'kv-exhaustion', strategy: 'ReduceBatchSize' })
    expect(first?.result?.outcome).toBe('SUCCESS')
    expect(first?.judgement?.verdict).toBe('avoided')
    // The cap turned some requests away with 429 (queue timeouts): the price of no storm.
    expect(on.requests.queueTimeout + on.requests.shed).toBeGreaterThan(0)
    expect(on.requests.failed).toBe(0)
  }, 60_000)

  it('recovers a hung replica by draining and restarting it, where the monitor off waits ten minutes for the watchdog', async () => {
    const off = await runClosedLoop({ scenario: 'nccl-hang', seed: 101, mode: 'off' })
    const on = await runClosedLoop({ scenario: 'nccl-hang', seed: 101, mode: 'runbook' })
    expect(off.faults[0]?.verdict).toBe('occurred')
    expect(on.faults[0]?.verdict).toBe('recovered')
    expect(on.actions.some((a) => a.strategy === 'RestartNCCL' && a.result?.outcome === 'SUCCESS')).toBe(true)
    expect(on.requests.failed).toBeLessThan(off.requests.failed / 10)
    expect(on.sloMinutes).toBeLessThan(off.sloMinutes)
  }, 60_000)

  it('uses what the learner learned: a restart for a leak in vLLM itself, where the runbook caps and still hits OOM', async () => {
    const learner = new ContinuousLearner({ explore: false, seed: 1 })
    for (const s of builtinStrategies({ EmergencyGPUMemoryCleanup: { killCotenants: true } }))
      learner.registerStrategy(s.name, s)
    const leak = {
      kvCacheUsage: null,
      requestsWaiting: null,
      requestsRunning: null,
      memoryUsedFraction: null,
      memoryGrowthBytesPerSec: 24 * 1024 ** 2,
      cotenantMemoryBytes: 0,
      tempCelsius: null,
      fleetHeadroom: 0.9,
      probability: 0.9,
      timeToFailureS: 100,
    }
    // What a history of leaks taught it: the cleanup fails, the restart works.
    const runbook = learner.choose('oom', leak)
    for (let i = 0; i < 12; i++) {
      learner.update(
        { failureType: 'oom', strategy: 'EmergencyGPUMemoryCleanup', context: runbook!.context },
        0,
        'SUCCESS',
      )
      learner.update(
        { failureType: 'oom', strategy: 'RestartReplica', context: runbook!.context },
        1,
        'SUCCESS',
      )
    }
    const r = await runClosedLoop({ scenario: 'memory-leak', seed: 101, mode: 'learner', learner })
    const first = r.actions.find((a) => a.failureType === 'oom')
    expect(first?.strategy).toBe('RestartReplica')
    expect(first?.basis).toBe('learned')
    expect(r.faults[0]?.verdict).toBe('avoided')
  }, 60_000)
})
