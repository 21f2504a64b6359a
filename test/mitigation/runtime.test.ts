import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { DEFAULT_SLO, SCORING } from '../../src/forecast/spec.js'
import { MitigationRuntime } from '../../src/mitigation/runtime.js'
import { mitigationOptionsSchema } from '../../src/monitor/options.js'
import type { Checkpoint, Prediction } from '../../src/telemetry/types.js'
import { derived, engineReading } from '../helpers/records.js'

const dirs: string[] = []
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true })
})

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'vllm-monitor-runtime-'))
  dirs.push(dir)
  return dir
}

function runtime(options: Record<string, unknown>, act: boolean) {
  const errors: Array<{ code: string; message: string }> = []
  const rt = new MitigationRuntime({
    options: mitigationOptionsSchema.parse(options),
    act,
    slo: DEFAULT_SLO,
    now: () => 1000,
    replicaUrl: () => null,
    emit: () => {},
    reportError: (code, message) => errors.push({ code, message }),
  })
  return { rt, errors }
}

function checkpoint(t: number): Checkpoint {
  const engine = {
    replica: 'r0',
    lifecycleState: 'SERVING' as const,
    since: 0,
    reason: '',
    reading: engineReading('r0', { kvCacheUsage: 0.95, requestsRunning: 40 }),
    readingAt: 0,
    stale: false,
    derived: derived({ preemptionsPerSec: 0, stalledForMs: 0 }),
  }
  return {
    t,
    lifecycleState: 'SERVING',
    engines: [engine],
    gpus: [],
    events: [],
    errors: [],
    predictions: [],
  }
}

const alarm: Prediction = {
  failureType: 'kv-exhaustion',
  probability: 0.95,
  timeToFailureS: 20,
  horizonS: SCORING['kv-exhaustion'].horizonS,
  target: { replica: 'r0', gpu: 0 },
  evidence: [],
  model: 'test-v1',
}

describe('the mitigation runtime', () => {
  it('restores the learner before the orchestrator makes its first decision', async () => {
    const path = join(await tempDir(), 'learner.json')
    await writeFile(path, JSON.stringify({ version: 1, decisions: 7, arms: [], budget: {}, updatedAt: null }))
    const { rt, errors } = runtime({ learnerState: path }, true)
    // An alarm on the very first forecast tick, while the state file is still being read.
    rt.orchestrator?.observe(checkpoint(1000), [alarm], [alarm])
    await rt.ready
    await rt.orchestrator?.settle()
    // The restored counter went on (7 -> 8), rather than a decision on the empty state wiped by the restore.
    expect(rt.learner.toJSON().decisions).toBe(8)
    await rt.close()
    expect(errors).toEqual([])
  })

  it('reports a learner state that cannot be saved on close, without an orchestrator too', async () => {
    const file = join(await tempDir(), 'a-file')
    await writeFile(file, '')
    const { rt, errors } = runtime({ learnerState: join(file, 'learner.json') }, false)
    await rt.close()
    expect(errors.map((e) => e.code)).toEqual(['VLLM_MONITOR_LEARNER_STATE', 'VLLM_MONITOR_LEARNER_STATE'])
    expect(errors[1]?.message).toMatch(
      /^saving the learner failed: learner state .*learner\.json: cannot write it/,
    )
  })

  it('builds the scalers the options name: the webhook and the Kubernetes scale subresource', async () => {
    const { rt } = runtime(
      {
        webhookUrl: 'http://autoscaler:8080/scale',
        kubernetes: {
          apiServer: 'https://10.0.0.1:6443',
          namespace: 'llm',
          kind: 'deployments',
          name: 'vllm',
          maxReplicas: 8,
          token: 't',
        },
      },
      false,
    )
    expect(rt.actuators.scalers.map((s) => s.name)).toEqual(['webhook', 'kubernetes:deployments/vllm'])
    await rt.close()
    expect(() =>
      mitigationOptionsSchema.parse({
        kubernetes: { namespace: 'llm', kind: 'pods', name: 'x', maxReplicas: 2 },
      }),
    ).toThrow(/kind/)
  })
})
