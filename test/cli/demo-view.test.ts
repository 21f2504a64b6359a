import { describe, expect, it } from 'vitest'
import {
  formatEvent,
  type IncidentInput,
  renderDemoView,
  renderIncidentSummary,
} from '../../src/cli/demo-view.js'
import type { ActionRecord } from '../../src/mitigation/orchestrator.js'
import { MonitorCore } from '../../src/monitor/core.js'
import { statusOf } from '../../src/monitor/monitor.js'
import { runSimulation } from '../../src/sim/run.js'

function checkpointOf(
  scenarioName: string,
  durationMs: number,
  mitigations?: Array<{ strategy: string; outcome: 'SUCCESS'; count: number }>,
) {
  const core = new MonitorCore()
  let next = 0
  runSimulation({
    scenario: scenarioName,
    seed: 1,
    durationMs,
    onRecord: (r) => {
      while (next < r.t) {
        core.tick(next)
        next += 100
      }
      core.push(r)
    },
  })
  const cp = core.tick(next)
  const status = statusOf(core, cp, {
    monitorActive: true,
    predictive: true,
    learning: false,
    autoMitigate: mitigations !== undefined,
    ...(mitigations === undefined ? {} : { mitigations }),
    uptimeMs: next,
    urls: new Map(),
  })
  return { cp, status }
}

describe('the demo view', () => {
  it('shows each replica with its state and reason, its GPU, and the newest events', () => {
    const { cp, status } = checkpointOf('kv-surge', 70_000)
    const text = renderDemoView(cp, status, {
      color: false,
      title: 'demo',
      clockLabel: 't=70s',
      groundTruth: [],
    })
    expect(text).toMatch(/fleet DEGRADED/)
    expect(text).toMatch(/r0\s+DEGRADED/)
    expect(text).toMatch(/KV cache exhausted/)
    expect(text).toMatch(/0\s+r0\s+\[#+\.*\] 7\d\.\d\/79 GiB/)
    expect(text).toMatch(/no fault injected yet/)
    expect(text).not.toContain('\u001b[')
  })

  it('marks a lost GPU and colours states only when asked', () => {
    const { cp, status } = checkpointOf('xid-79', 60_000)
    const plain = renderDemoView(cp, status, { color: false, title: 'demo', clockLabel: '' })
    expect(plain).toMatch(/LOST \(fell off the bus\)/)
    expect(plain).toMatch(/r0\s+ERROR/)
    const coloured = renderDemoView(cp, status, { color: true, title: 'demo', clockLabel: '' })
    expect(coloured).toContain('\u001b[31mERROR')
  })
})

const action = {
  t: 80_600,
  type: 'mitigation',
  severity: 'info' as const,
  replica: 'r0',
  gpu: null,
  message: 'ReduceBatchSize for kv-exhaustion on r0: SUCCESS (capped r0 at 16)',
  data: { strategy: 'ReduceBatchSize', outcome: 'SUCCESS', failureType: 'kv-exhaustion' },
}
const judgement = {
  t: 203_100,
  type: 'mitigation-outcome',
  severity: 'info' as const,
  replica: 'r0',
  gpu: null,
  message: 'kv-exhaustion on r0 avoided after ReduceBatchSize; SLO met at the end of the window',
  data: { strategy: 'ReduceBatchSize', failureType: 'kv-exhaustion', verdict: 'avoided', reward: 1 },
}

describe('mitigation in the demo view', () => {
  it('labels actions and judgements apart from what the monitor saw, in their own colours', () => {
    expect(formatEvent(action, false)).toBe(
      '80.6s    r0    MITIGATION      ReduceBatchSize for kv-exhaustion on r0: SUCCESS (capped r0 at 16)',
    )
    expect(formatEvent(judgement, false)).toMatch(/^203\.1s +r0 +JUDGEMENT +kv-exhaustion on r0 avoided/)
    expect(formatEvent(action, true)).toContain('\u001b[1;35mMITIGATION')
    expect(formatEvent(judgement, true)).toContain('\u001b[1;32mJUDGEMENT')
    const occurred = { ...judgement, data: { ...judgement.data, verdict: 'occurred' } }
    expect(formatEvent(occurred, true)).toContain('\u001b[1;31mJUDGEMENT')
  })

  it('counts actions by strategy and outcome and keeps the newest actions in view', () => {
    const { cp, status } = checkpointOf('kv-surge', 20_000, [
      { strategy: 'ReduceBatchSize', outcome: 'SUCCESS', count: 1 },
      { strategy: 'EmergencyGPUMemoryCleanup', outcome: 'SUCCESS', count: 2 },
    ])
    const text = renderDemoView(cp, status, {
      color: false,
      title: 'demo',
      clockLabel: '',
      mitigations: [action, judgement],
    })
    expect(text).toMatch(/actions {6}ReduceBatchSize SUCCESS 1, EmergencyGPUMemoryCleanup SUCCESS 2\n/)
    expect(text).toMatch(/actions .*\n {2}80\.6s +r0 +MITIGATION .*\n {2}203\.1s +r0 +JUDGEMENT /)
    const off = renderDemoView(checkpointOf('kv-surge', 20_000).cp, checkpointOf('kv-surge', 20_000).status, {
      color: false,
      title: 'demo',
      clockLabel: '',
    })
    expect(off).toMatch(/actions {6}auto-mitigation off/)
  })
})

describe('the incident summary', () => {
  const labels: IncidentInput['labels'] = [
    { t: 60_000, fault: 'kv-exhaustion', phase: 'injected', replica: 'r0', gpu: null, detail: '{}' },
    { t: 70_000, fault: 'gpu-oom-cotenant', phase: 'injected', replica: 'r1', gpu: 1, detail: '{}' },
    {
      t: 76_400,
      fault: 'gpu-oom-cotenant',
      phase: 'cleared',
      replica: 'r1',
      gpu: 1,
      detail: 'co-tenant process terminated',
    },
    {
      t: 116_900,
      fault: 'kv-exhaustion',
      phase: 'failure',
      replica: 'r0',
      gpu: null,
      detail: 'KV cache exhausted: 1 preemptions, 5 waiting',
    },
  ]
  const prediction = (t: number, replica: string, failureType: string, ttf: number | null) => ({
    t,
    type: 'prediction',
    severity: 'warning' as const,
    replica,
    gpu: null,
    message: `${failureType} predicted`,
    data: { failureType, probability: 0.84, timeToFailureS: ttf, horizonS: 120, model: 'forecaster-v1' },
  })
  const record = (o: Partial<ActionRecord>): ActionRecord =>
    ({
      id: 'm1',
      t: 76_000,
      replica: 'r1',
      failureType: 'oom',
      strategy: 'EmergencyGPUMemoryCleanup',
      basis: 'runbook',
      trigger: { kind: 'prediction', detail: '' },
      result: { outcome: 'SUCCESS', detail: 'ended co-tenants pid 3000001', actions: [] },
      holdout: false,
      judgement: null,
      rolledBack: false,
      ...o,
    }) as ActionRecord
  const input: IncidentInput = {
    labels,
    predictions: [prediction(78_300, 'r0', 'kv-exhaustion', 79), prediction(76_000, 'r1', 'oom', null)],
    actions: [
      record({
        judgement: {
          id: 'm1',
          replica: 'r1',
          failureType: 'oom',
          strategy: 'EmergencyGPUMemoryCleanup',
          t: 76_000,
          alreadyFailing: false,
          verdict: 'avoided',
          sloRestored: true,
          reward: 1,
          failedAt: null,
          judgedAt: 198_900,
          detail: 'oom on r1 avoided after EmergencyGPUMemoryCleanup; SLO met at the end of the window',
        },
      }),
      record({
        id: 'm2',
        t: 78_300,
        replica: 'r0',
        failureType: 'kv-exhaustion',
        strategy: 'ReduceBatchSize',
        result: { outcome: 'SUCCESS', detail: 'capped r0 at 16', actions: [] },
      }),
    ],
    mitigate: true,
    counts: [
      { strategy: 'EmergencyGPUMemoryCleanup', outcome: 'SUCCESS', count: 1 },
      { strategy: 'ReduceBatchSize', outcome: 'SUCCESS', count: 1 },
    ],
    recommendations: [
      {
        replica: 'r1',
        failureType: 'oom',
        context: 'cotenant_memory >= 256 MiB',
        recommendation: {
          failureType: 'oom',
          strategy: 'EmergencyGPUMemoryCleanup',
          basis: 'runbook',
          confidence: 1,
          expectedReward: 0.67,
          trials: 1,
          rule: 'cotenant_memory >= 256 MiB: EmergencyGPUMemoryCleanup succeeded 1/1',
        },
      },
    ],
    rules: [],
    endT: 240_700,
  }

  it('says per replica and failure type what was predicted, done, judged and true, in order', () => {
    expect(renderIncidentSummary(input)).toEqual([
      'Incident: predicted -> mitigated -> judged, against the ground truth',
      '  r0 kv-exhaustion',
      '    predicted    78.3s  p 0.84 within 120 s, failure in ~79 s (forecaster-v1); 38.6 s before the failure',
      '    mitigated    78.3s  ReduceBatchSize (runbook): SUCCESS (capped r0 at 16)',
      '    judged           -  not yet: its window runs to t=198.3s (longer while still predicted)',
      '    truth       116.9s  kv-exhaustion failure (injected at 60.0s): KV cache exhausted: 1 preemptions, 5 waiting',
      '  r1 oom',
      '    predicted    76.0s  p 0.84 within 120 s (forecaster-v1)',
      '    mitigated    76.0s  EmergencyGPUMemoryCleanup (runbook): SUCCESS (ended co-tenants pid 3000001)',
      '    judged      198.9s  oom on r1 avoided after EmergencyGPUMemoryCleanup; SLO met at the end of the window (reward 1.00)',
      '    truth            -  gpu-oom-cotenant injected at 70.0s; cleared at 76.4s (co-tenant process terminated), no failure',
      '    learner: for oom on r1 (cotenant_memory >= 256 MiB) recommend EmergencyGPUMemoryCleanup (runbook, confidence 1.00, 1 judged): EmergencyGPUMemoryCleanup succeeded 1/1',
      'mitigations: EmergencyGPUMemoryCleanup SUCCESS 1, ReduceBatchSize SUCCESS 1',
      'learned rules: none yet (each needs several judged trials in one context; --learner-state keeps them across runs)',
    ])
  })

  it('says when mitigation was off, and lists the rules learned', () => {
    const lines = renderIncidentSummary({
      ...input,
      actions: [],
      mitigate: false,
      counts: [],
      rules: ['cotenant_memory >= 256 MiB: EmergencyGPUMemoryCleanup succeeded 5/5'],
    })
    expect(lines.filter((l) => l.startsWith('    mitigated'))).toEqual([
      '    mitigated        -  auto-mitigation off (--no-mitigate)',
      '    mitigated        -  auto-mitigation off (--no-mitigate)',
    ])
    expect(lines.slice(-3)).toEqual([
      'mitigations: off',
      'learned rules:',
      '  cotenant_memory >= 256 MiB: EmergencyGPUMemoryCleanup succeeded 5/5',
    ])
  })
})
