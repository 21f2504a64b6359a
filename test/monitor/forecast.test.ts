// The monitor's forecasting end to end. The forecast workers run the compiled worker
// (dist/forecast/worker.js): run `npm run build:ts` first.
//
// vitest.config.ts sets VLLM_MONITOR_MODEL=none for every test file, so a monitor here forecasts
// with the shipped model only where a test names it (`forecast.model` beats the environment).
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest'
import { loadModelArtifacts, saveModel } from '../../src/forecast/model-io.js'
import { DEFAULT_MODEL_DIR } from '../../src/forecast/predictive.js'
import { createMonitor, type VLLMEngineMonitor } from '../../src/monitor/monitor.js'
import type { MonitorOptions } from '../../src/monitor/options.js'
import { runSimulation } from '../../src/sim/run.js'
import { scenario } from '../../src/sim/scenarios.js'
import type { Checkpoint, TelemetryRecord, TimedEvent } from '../../src/telemetry/types.js'
import { sleep } from '../helpers/fake-nvml.js'
import { closeAllHarnesses, type Harness, poll, type ReplicaTransition, startHarness } from './sim-harness.js'

const MODEL_NAME = /^forecaster-v\d+$/

/**
 * A simulated kv-exhaustion run over real HTTP, watched at 10x: the fault starts at 45 s, r0's KV
 * cache fills ≈105 s (≈11 s of wall time), and the monitor's clock is the simulator's.
 */
describe('createMonitor forecasting a simulated fleet over HTTP with the shipped model', () => {
  let h: Harness
  let degraded: ReplicaTransition
  let failureT: number
  const predictionEvents: TimedEvent[] = []
  const checkpoints: Checkpoint[] = []

  beforeAll(async () => {
    h = await startHarness({
      fleet: scenario('kv-exhaustion', { seed: 3 }).fleet,
      speed: 10,
      monitor: {
        forecast: { model: DEFAULT_MODEL_DIR, intervalMs: 200, taskTimeoutMs: 5_000 },
        http: { host: '127.0.0.1', port: 0 },
      },
    })
    h.monitor.on('event', (e) => {
      if (e.type === 'prediction') predictionEvents.push(e)
    })
    h.monitor.on('checkpoint', (cp) => {
      if (cp.predictions.length > 0) checkpoints.push(cp)
    })
    degraded = await h.waitForTransition('r0', 'DEGRADED', { timeoutMs: 45_000 })
    failureT = (await h.waitForLabel('kv-exhaustion', 'failure')).t
  }, 60_000)

  afterAll(async () => {
    await closeAllHarnesses()
  })

  it('goes DEGRADED for the exhausted KV cache (precondition of the checks below)', () => {
    expect(degraded.reason).toMatch(/^KV cache exhausted/)
  })

  it("announces r0's kv-exhaustion with a 'prediction' event from the model before r0 goes DEGRADED", () => {
    const first = predictionEvents.find(
      (e) =>
        e.replica === 'r0' &&
        e.data?.failureType === 'kv-exhaustion' &&
        MODEL_NAME.test(String(e.data?.model)),
    )
    expect(first, predictionEvents.map((e) => `${e.t} ${e.message}`).join('\n')).toBeDefined()
    expect(first!.t).toBeLessThan(degraded.t)
    expect(first!.t).toBeLessThan(failureT - 5_000)
    expect(first).toMatchObject({
      severity: 'warning',
      data: { horizonS: 120, timeToFailureS: expect.any(Number) },
    })
    expect(first!.message).toMatch(
      /^kv-exhaustion predicted within 120 s \(p \d\.\d\d, failure in ~\d+ s; forecaster-v\d+\): KV cache \d+%/,
    )
  })

  it('attaches the predictions to the checkpoints and the status', () => {
    expect(checkpoints.length).toBeGreaterThan(0)
    const models = new Set(checkpoints.flatMap((cp) => cp.predictions.map((p) => p.model)))
    expect([...models].some((m) => MODEL_NAME.test(m))).toBe(true)
    expect(models).toContain('detector')
    const status = h.monitor.getStatus()
    expect(status.predictiveEnabled).toBe(true)
    expect(status.predictions.length).toBeGreaterThan(0)
    expect(status.predictions.filter((p) => p.target.replica === 'r0').map((p) => p.failureType)).toEqual(
      expect.arrayContaining(['kv-exhaustion', 'hardware-failure', 'network-failure']),
    )
    expect(h.monitor.predictiveDetector!.status()).toMatchObject({
      model: expect.stringMatching(MODEL_NAME),
      state: 'ready',
    })
  })

  it("exposes r0's kv-exhaustion probability on /metrics", async () => {
    expect(h.monitor.url).not.toBeNull()
    const text = await (await fetch(`${h.monitor.url}/metrics`)).text()
    expect(text).toMatch(/^# TYPE vllm:monitor_failure_probability gauge$/m)
    const m = text.match(/^vllm:monitor_failure_probability\{replica="r0",fault="kv-exhaustion"\} (\S+)$/m)
    expect(m, text).not.toBeNull()
    // r0 is past its failure: the model says so.
    expect(Number(m![1])).toBeGreaterThan(0.5)
  })
})

describe('createMonitor forecasting options', () => {
  const monitors: VLLMEngineMonitor[] = []
  let dir: string

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vllm-monitor-forecast-'))
  })

  afterEach(async () => {
    vi.unstubAllEnvs()
    await Promise.all(monitors.splice(0).map((m) => m.close()))
  })

  afterAll(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  function open(options: MonitorOptions): VLLMEngineMonitor {
    const m = createMonitor({ http: false, gpu: 'none', ...options })
    monitors.push(m)
    return m
  }

  /**
   * Drives a monitor on an injected clock with the records of a simulated run up to `untilMs`,
   * then lets the clock run on until `done` holds (the forecast lands a tick after it was asked).
   */
  async function drive(
    options: MonitorOptions,
    untilMs: number,
    done: (m: VLLMEngineMonitor) => boolean,
  ): Promise<VLLMEngineMonitor> {
    let now = 0
    const m = open({ ...options, now: () => now })
    m.on('error', () => {})
    const records: TelemetryRecord[] = []
    runSimulation({
      scenario: 'kv-exhaustion',
      seed: 3,
      durationMs: untilMs,
      onRecord: (r) => records.push(r),
    })
    for (const r of records.sort((a, b) => a.t - b.t)) m.push(r)
    now = untilMs
    await poll(
      'the forecast',
      async () => {
        if (done(m)) return true
        now += 100
        await sleep(100)
        return false
      },
      15_000,
    )
    return m
  }

  it('has no predictiveDetector, and no predictions, with predictive: false', async () => {
    const m = await drive({ predictive: false }, 30_000, (x) => (x.getCheckpoint()?.t ?? 0) >= 30_500)
    expect(m.predictiveDetector).toBeNull()
    expect(m.getStatus()).toMatchObject({ predictiveEnabled: false, predictions: [] })
  })

  it('forecasts with the baselines under VLLM_MONITOR_MODEL=none', async () => {
    vi.stubEnv('VLLM_MONITOR_MODEL', 'none')
    const m = await drive({}, 30_000, (x) => x.getStatus().predictions.length > 0)
    expect(m.predictiveDetector!.status()).toMatchObject({
      model: null,
      state: 'fallback',
      reason: 'no model configured',
    })
    const models = new Set(m.getStatus().predictions.map((p) => p.model))
    expect([...models].every((x) => x === 'detector' || x === 'threshold')).toBe(true)
    expect(models).toContain('detector')
  })

  it('forecasts with the model named in forecast.model over VLLM_MONITOR_MODEL=none', async () => {
    vi.stubEnv('VLLM_MONITOR_MODEL', 'none')
    const m = await drive(
      { forecast: { model: DEFAULT_MODEL_DIR, intervalMs: 200, taskTimeoutMs: 5_000 } },
      30_000,
      (x) => x.getStatus().predictions.some((p) => MODEL_NAME.test(p.model)),
    )
    expect(m.predictiveDetector!.status()).toMatchObject({
      model: expect.stringMatching(MODEL_NAME),
      state: 'ready',
    })
  })

  it('loads the model directory VLLM_MONITOR_MODEL names', async () => {
    vi.stubEnv('VLLM_MONITOR_MODEL', DEFAULT_MODEL_DIR)
    const m = open({})
    await m.predictiveDetector!.ready
    expect(m.predictiveDetector!.status()).toMatchObject({
      model: expect.stringMatching(MODEL_NAME),
      state: 'ready',
    })
  })

  it("reports a corrupt model as an 'error' with VLLM_MONITOR_MODEL_LOAD and forecasts with the baselines", async () => {
    const bad = join(dir, 'corrupt')
    await saveModel(bad, await loadModelArtifacts(DEFAULT_MODEL_DIR))
    const weights = await readFile(join(bad, 'weights.bin'))
    weights[100] = weights[100]! ^ 0xff
    await writeFile(join(bad, 'weights.bin'), weights)
    const m = open({ forecast: { model: bad } })
    const errors: Array<Error & { code?: string }> = []
    m.on('error', (err) => errors.push(err))
    await m.predictiveDetector!.ready
    expect(errors).toEqual([
      expect.objectContaining({
        code: 'VLLM_MONITOR_MODEL_LOAD',
        message: expect.stringMatching(/weights\.bin does not match the checksum/),
      }),
    ])
    expect(m.predictiveDetector!.status()).toMatchObject({ model: null, state: 'fallback' })
  })
})
