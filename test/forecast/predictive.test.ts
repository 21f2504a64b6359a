// The forecast workers run the compiled worker (dist/forecast/worker.js): run `npm run build:ts` first.
//
// A simulated kv-exhaustion run (two replicas, the fault on r0) is replayed through a MonitorCore
// exactly as the monitor drives it: records pushed, a checkpoint every 100 ms, a forecast every
// simulated second. The failure's start comes from the same definition training and scoring use
// (OnsetTracker) and from the simulator's ground-truth label, whichever is earlier.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { loadModelArtifacts, type ModelMeta, saveModel } from '../../src/forecast/model-io.js'
import { OnsetTracker, type TimedLabel } from '../../src/forecast/onsets.js'
import {
  DEFAULT_MODEL_DIR,
  PredictiveDetector,
  type PredictiveDetectorOptions,
} from '../../src/forecast/predictive.js'
import { SCORING } from '../../src/forecast/spec.js'
import { MonitorCore } from '../../src/monitor/core.js'
import { runSimulation } from '../../src/sim/run.js'
import type { Checkpoint, LifecycleState, Prediction, TelemetryRecord } from '../../src/telemetry/types.js'

const SEED = 3
/** Long enough to pass the first kv-exhaustion onset (≈105 s simulated for seed 3). */
const REPLAY_MS = 130_000
const SERVING: readonly LifecycleState[] = ['READY', 'SERVING', 'DEGRADED']

interface Tick {
  cp: Checkpoint
  predictions: Prediction[]
  alarms: Prediction[]
}

interface Replay {
  detector: PredictiveDetector
  errors: Array<{ code: string; message: string }>
  ticks: Tick[]
  /** First kv-exhaustion start on r0: the earlier of OnsetTracker's onset and the simulator's label. */
  onsetT: number
}

let records: TelemetryRecord[] = []
let meta: ModelMeta
let dir: string
const detectors: PredictiveDetector[] = []

beforeAll(async () => {
  runSimulation({
    scenario: 'kv-exhaustion',
    seed: SEED,
    replicas: 2,
    durationMs: REPLAY_MS,
    onRecord: (r) => records.push(r),
  })
  // Log lines and GPU events are stamped as they happen and may precede the sample at the same t.
  records = records.sort((a, b) => a.t - b.t)
  meta = (await loadModelArtifacts(DEFAULT_MODEL_DIR)).meta
  dir = await mkdtemp(join(tmpdir(), 'vllm-monitor-predictive-'))
})

afterEach(async () => {
  await Promise.all(detectors.splice(0).map((d) => d.close()))
})

afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

function open(options: PredictiveDetectorOptions): {
  core: MonitorCore
  detector: PredictiveDetector
  errors: Replay['errors']
} {
  const core = new MonitorCore()
  core.addReplica('r0')
  core.addReplica('r1')
  const errors: Replay['errors'] = []
  const detector = new PredictiveDetector(core.store, {
    // A generous deadline: a busy CI host must not turn a slow tick into a fallback tick here.
    taskTimeoutMs: 10_000,
    ...options,
    onError: (code, message) => errors.push({ code, message }),
  })
  detectors.push(detector)
  return { core, detector, errors }
}

async function replay(options: PredictiveDetectorOptions, untilMs = REPLAY_MS): Promise<Replay> {
  const { core, detector, errors } = open(options)
  await detector.ready
  const tracker = new OnsetTracker()
  const ticks: Tick[] = []
  let labels: TimedLabel[] = []
  let onsetT = Number.POSITIVE_INFINITY
  let i = 0
  for (let t = 0; t <= untilMs; t += 100) {
    while (i < records.length && records[i]!.t <= t) {
      const r = records[i++]!
      if (r.kind === 'label') {
        labels.push(r as TimedLabel)
        if (r.fault === 'kv-exhaustion' && r.phase === 'failure' && r.replica === 'r0')
          onsetT = Math.min(onsetT, r.t)
      }
      core.push(r)
    }
    const cp = core.tick(t)
    if (t % 1000 !== 0) continue
    for (const o of tracker.observe(cp, labels))
      if (o.failureType === 'kv-exhaustion' && o.replica === 'r0') onsetT = Math.min(onsetT, o.t)
    labels = []
    const predictions = await detector.analyzeCheckpoint(cp)
    ticks.push({ cp, predictions, alarms: detector.alarms(predictions) })
  }
  return { detector, errors, ticks, onsetT }
}

/** Replicas a forecast is owed to at this checkpoint: serving (or degraded) with a fresh reading. */
function servingReplicas(cp: Checkpoint): string[] {
  return cp.engines.filter((e) => SERVING.includes(e.lifecycleState) && !e.stale).map((e) => e.replica)
}

function kv120(tick: Tick, replica: string): Prediction | undefined {
  return tick.predictions.find(
    (p) => p.failureType === 'kv-exhaustion' && p.horizonS === 120 && p.target.replica === replica,
  )
}

/** Copies the shipped model (checked on the way) to `name` under the temp dir, then lets `spoil` change it. */
async function spoiledCopy(name: string, spoil: (modelDir: string) => Promise<void>): Promise<string> {
  const modelDir = join(dir, name)
  await saveModel(modelDir, await loadModelArtifacts(DEFAULT_MODEL_DIR))
  // The copy loads as it is: whatever fails below is what `spoil` did.
  await expect(loadModelArtifacts(modelDir)).resolves.toBeDefined()
  await spoil(modelDir)
  return modelDir
}

describe('PredictiveDetector with the shipped model over a kv-exhaustion run', () => {
  let run: Replay

  beforeAll(async () => {
    run = await replay({ model: DEFAULT_MODEL_DIR })
  }, 60_000)

  afterAll(async () => {
    await run.detector.close()
  })

  it('sees the failure start in the replay (precondition of the checks below)', () => {
    expect(run.onsetT).toBeGreaterThan(45_000)
    expect(run.onsetT).toBeLessThan(REPLAY_MS)
  })

  it('answers with the model every tick, named forecaster-vN after meta.json', () => {
    expect(run.errors).toEqual([])
    const status = run.detector.status()
    expect(status).toMatchObject({
      model: `${meta.name}-v${meta.version}`,
      state: 'ready',
      reason: null,
      fallbackTicks: 0,
    })
    expect(status.model).toMatch(/^forecaster-v\d+$/)
    expect(status.ticks).toBe(run.ticks.length)
    const serving = run.ticks.filter((t) => servingReplicas(t.cp).length > 0)
    expect(serving.length).toBeGreaterThan(60)
    for (const t of serving) {
      const models = new Set(t.predictions.map((p) => p.model))
      expect([...models].sort()).toEqual(['detector', status.model].sort())
    }
  })

  it("raises r0's kv-exhaustion probability at 120 s past the model's alarm threshold at least 5 s before the failure starts", () => {
    const threshold = meta.thresholds['kv-exhaustion']
    expect(threshold).toBeTypeOf('number')
    const first = run.ticks.find((t) => (kv120(t, 'r0')?.probability ?? 0) >= threshold!)
    expect(first, `no tick reached ${threshold}`).toBeDefined()
    expect(run.onsetT - first!.cp.t).toBeGreaterThanOrEqual(5_000)
  })

  it('raises that alarm through alarms(), with a time to failure and the evidence behind it', () => {
    const isKvOnR0 = (p: Prediction) => p.failureType === 'kv-exhaustion' && p.target.replica === 'r0'
    const first = run.ticks.find((t) => t.alarms.some(isKvOnR0))
    expect(first).toBeDefined()
    expect(run.onsetT - first!.cp.t).toBeGreaterThanOrEqual(5_000)
    const alarm = first!.alarms.find(isKvOnR0)!
    expect(alarm).toBe(kv120(first!, 'r0'))
    expect(alarm).toMatchObject({ horizonS: 120, target: { replica: 'r0', gpu: expect.any(Number) } })
    expect(alarm.model).toMatch(/^forecaster-v\d+$/)
    expect(alarm.probability).toBeGreaterThanOrEqual(meta.thresholds['kv-exhaustion']!)
    expect(alarm.timeToFailureS).toBeTypeOf('number')
    expect(alarm.timeToFailureS).toBeGreaterThanOrEqual(0)
    expect(alarm.timeToFailureS).toBeLessThanOrEqual(120)
    expect(alarm.evidence).toEqual([
      expect.stringMatching(/^KV cache \d+% \([+-]\d+\.\d pts in 30 s\)$/),
      expect.stringMatching(/^\d+ waiting, \d+\.\d preemptions\/s$/),
    ])
  })

  it('gives every model prediction a probability in [0, 1] and one entry per head', () => {
    const t = run.ticks.find((x) => servingReplicas(x.cp).length === 2)!
    for (const replica of ['r0', 'r1']) {
      const kv = t.predictions.filter(
        (p) => p.failureType === 'kv-exhaustion' && p.target.replica === replica,
      )
      expect(kv.map((p) => p.horizonS)).toEqual([5, 30, 120])
    }
    for (const p of t.predictions) {
      expect(p.probability).toBeGreaterThanOrEqual(0)
      expect(p.probability).toBeLessThanOrEqual(1)
    }
  })

  it('scores its own alarms as they come true: the kv-exhaustion alarm before the failure counts as right', () => {
    const accuracy = run.detector.accuracy()
    expect(accuracy).not.toBeNull()
    expect(accuracy!).toBeGreaterThan(0)
    expect(accuracy!).toBeLessThanOrEqual(1)
  })

  it('alarms only on each failure type at its scoring horizon', () => {
    const all = run.ticks.flatMap((t) => t.alarms)
    expect(all.length).toBeGreaterThan(0)
    for (const p of all) expect(p.horizonS).toBe(SCORING[p.failureType].horizonS)
  })

  it('answers hardware-failure and network-failure from the detectors for every serving replica, every tick', () => {
    let checked = 0
    for (const t of run.ticks) {
      const replicas = servingReplicas(t.cp)
      if (replicas.length === 0) expect(t.predictions).toEqual([])
      for (const replica of replicas) {
        for (const type of ['hardware-failure', 'network-failure'] as const) {
          const found = t.predictions.filter((p) => p.failureType === type && p.target.replica === replica)
          expect(found, `${type} for ${replica} at ${t.cp.t}`).toHaveLength(1)
          expect(found[0]).toMatchObject({ model: 'detector', horizonS: 30, timeToFailureS: null })
          expect(found[0]!.probability).toBeGreaterThan(0)
          // Nothing is wrong with r1's GPU or network: its detectors stay below their 0.5 alarm.
          expect(found[0]!.probability).toBeLessThan(replica === 'r1' ? 0.5 : 1)
          checked++
        }
      }
    }
    expect(checked).toBeGreaterThan(200)
  })
})

describe('PredictiveDetector without a model', () => {
  it('answers with predict_linear (probability 1, firing rules only) and says it is in fallback', async () => {
    const run = await replay({ model: null, fallback: 'predict_linear' })
    expect(run.errors).toEqual([])
    expect(run.detector.status()).toMatchObject({
      model: null,
      state: 'fallback',
      reason: 'no model configured',
      fallback: 'predict_linear',
    })
    expect(run.detector.modelName).toBeNull()
    const baseline = run.ticks.flatMap((t) => t.predictions.filter((p) => p.model !== 'detector'))
    for (const p of baseline) {
      expect(p).toMatchObject({ model: 'predict_linear', probability: 1, timeToFailureS: null })
      expect(p.horizonS).toBe(SCORING[p.failureType].horizonS)
      expect(p.evidence).toEqual([expect.stringMatching(/\S/)])
      expect(['hardware-failure', 'network-failure']).not.toContain(p.failureType)
    }
    // Only firing rules become predictions: r0's KV rule is absent while its cache is far from
    // full, and each time it is present the value it quotes has reached the limit of 1.
    const kvR0 = run.ticks.map((t) => ({ t: t.cp.t, p: kv120(t, 'r0') }))
    expect(kvR0.filter((x) => x.t < 60_000 && x.p !== undefined)).toEqual([])
    const firing = kvR0.filter((x) => x.p !== undefined)
    expect(firing.length).toBeGreaterThan(0)
    expect(firing[0]!.t).toBeLessThan(run.onsetT)
    for (const { p } of firing) {
      const m = p!.evidence[0]!.match(/^predict_linear\(kv\[60s\], 120\) = (\d+\.\d\d) >= 1$/)
      expect(m, p!.evidence[0]).not.toBeNull()
      expect(Number(m![1])).toBeGreaterThanOrEqual(1)
    }
    // Every alarm of a baseline is a firing rule; before any failure is under way, every firing
    // rule is an alarm (afterwards a forecast of what already happened raises none).
    for (const t of run.ticks) {
      const firingRules = t.predictions.filter((p) => p.model !== 'detector')
      const alarms = t.alarms.filter((p) => p.model !== 'detector')
      expect(firingRules).toEqual(expect.arrayContaining(alarms))
      if (t.cp.t < run.onsetT - 30_000) expect(alarms).toEqual(firingRules)
    }
  })

  it("answers with the threshold rules when they are the fallback, naming them as the predictions' model", async () => {
    const run = await replay({ model: null, fallback: 'threshold' })
    expect(run.detector.status()).toMatchObject({ state: 'fallback', fallback: 'threshold' })
    const models = new Set(run.ticks.flatMap((t) => t.predictions.map((p) => p.model)))
    expect([...models].sort()).toEqual(['detector', 'threshold'])
    const kv = run.ticks.find((t) => kv120(t, 'r0')?.model === 'threshold')
    expect(kv120(kv!, 'r0')!.evidence[0]).toMatch(/^KV usage \d+% >= 90%$/)
  })
})

describe('PredictiveDetector with a model it cannot load', () => {
  it('reports a corrupt weights.bin as VLLM_MONITOR_MODEL_LOAD naming the checksum, and forecasts with the baselines', async () => {
    const modelDir = await spoiledCopy('corrupt', async (d) => {
      const weights = await readFile(join(d, 'weights.bin'))
      weights[100] = weights[100]! ^ 0xff
      await writeFile(join(d, 'weights.bin'), weights)
    })
    const run = await replay({ model: modelDir, fallback: 'predict_linear' })
    expect(run.errors).toEqual([
      {
        code: 'VLLM_MONITOR_MODEL_LOAD',
        message: expect.stringMatching(
          /weights\.bin does not match the checksum in meta\.json .*; forecasting with predict_linear instead$/,
        ),
      },
    ])
    const status = run.detector.status()
    expect(status).toMatchObject({ model: null, state: 'fallback', fallback: 'predict_linear' })
    expect(status.reason).toMatch(/checksum/)
    expect(status.fallbackTicks).toBeGreaterThan(60)
    const models = new Set(run.ticks.flatMap((t) => t.predictions.map((p) => p.model)))
    expect([...models].sort()).toEqual(['detector', 'predict_linear'])
    expect(run.ticks.some((t) => kv120(t, 'r0')?.model === 'predict_linear')).toBe(true)
  })

  it('reports a model trained on another feature schema as VLLM_MONITOR_MODEL_MISMATCH', async () => {
    const modelDir = await spoiledCopy('other-schema', async (d) => {
      const m = JSON.parse(await readFile(join(d, 'meta.json'), 'utf8')) as ModelMeta
      await writeFile(
        join(d, 'meta.json'),
        JSON.stringify({ ...m, featureSchemaVersion: m.featureSchemaVersion + 1 }),
      )
    })
    const { detector, errors } = open({ model: modelDir })
    await detector.ready
    expect(errors).toEqual([
      {
        code: 'VLLM_MONITOR_MODEL_MISMATCH',
        message: expect.stringMatching(/trained on feature schema \d+/),
      },
    ])
    expect(detector.status().state).toBe('fallback')
  })

  it('reports a missing directory as VLLM_MONITOR_MODEL_LOAD naming the file it looked for', async () => {
    const { detector, errors } = open({ model: join(dir, 'no-such-model') })
    await detector.ready
    expect(errors).toEqual([
      {
        code: 'VLLM_MONITOR_MODEL_LOAD',
        message: expect.stringMatching(/no-such-model: cannot read meta\.json \(no such file\)/),
      },
    ])
    expect(detector.status()).toMatchObject({ model: null, state: 'fallback' })
  })
})

describe('PredictiveDetector routes', () => {
  it('runs a small fleet on the main thread once the worker has vouched for the model, with the same predictions as the worker', async () => {
    const auto = await replay({ model: DEFAULT_MODEL_DIR }, 25_000)
    const worker = await replay({ model: DEFAULT_MODEL_DIR, inlineMaxMacs: 0 }, 25_000)
    try {
      expect(worker.detector.status().inlineTicks).toBe(0)
      const s = auto.detector.status()
      // The first ticks wait for the worker's warm-up; the rest run here.
      expect(s.inlineTicks).toBeGreaterThan(0)
      expect(s.inlineTicks).toBeLessThanOrEqual(s.ticks)
      for (let i = 0; i < auto.ticks.length; i++) {
        const strip = (ps: Tick['predictions']) => ps.map((p) => ({ ...p, evidence: p.evidence.join('|') }))
        expect(strip(auto.ticks[i]!.predictions)).toEqual(strip(worker.ticks[i]!.predictions))
      }
      expect([...auto.errors, ...worker.errors]).toEqual([])
    } finally {
      await Promise.all([auto.detector.close(), worker.detector.close()])
    }
  })
})

describe('PredictiveDetector.close()', () => {
  it('can be called again, and concurrently, once the workers have run', async () => {
    const run = await replay({ model: DEFAULT_MODEL_DIR }, 25_000)
    expect(run.detector.status().state).toBe('ready')
    const first = run.detector.close()
    await expect(Promise.all([first, run.detector.close()])).resolves.toEqual([undefined, undefined])
    await expect(run.detector.close()).resolves.toBeUndefined()
  })

  it('can be called before the model has loaded', async () => {
    const { detector, errors } = open({ model: DEFAULT_MODEL_DIR })
    await expect(detector.close()).resolves.toBeUndefined()
    await detector.ready
    await expect(detector.close()).resolves.toBeUndefined()
    expect(errors).toEqual([])
  })

  it('answers with the baselines after close() without reporting the closed pool as failing', async () => {
    const run = await replay({ model: DEFAULT_MODEL_DIR, fallback: 'predict_linear' }, 25_000)
    await run.detector.close()
    const cp = run.ticks.at(-1)!.cp
    for (let i = 0; i < 3; i++) {
      const predictions = await run.detector.analyzeCheckpoint(cp)
      expect(predictions.length).toBeGreaterThan(0)
      for (const p of predictions) expect(['detector', 'predict_linear']).toContain(p.model)
    }
    expect(run.errors).toEqual([])
    expect(run.detector.status().reason ?? '').not.toMatch(/failed/)
  })
})

describe('PredictiveDetector when the forecast workers keep failing', () => {
  const broken = fileURLToPath(new URL('../fixtures/forecast/load-error-worker.mjs', import.meta.url))

  it('answers every tick with the baselines, then sets the model aside and retries it after a pause', async () => {
    const run = await replay({ model: DEFAULT_MODEL_DIR, fallback: 'predict_linear' }, 25_000)
    const cp = run.ticks.at(-1)!.cp
    await run.detector.close()
    const { detector, errors } = open({
      model: DEFAULT_MODEL_DIR,
      workerFilename: broken,
      taskTimeoutMs: 2_000,
      retryAfterMs: 300,
      fallback: 'predict_linear',
    })
    await detector.ready
    // Each failing tick is still answered, by the baseline.
    for (let i = 0; i < 3; i++) {
      const predictions = await detector.analyzeCheckpoint(cp)
      expect(predictions.some((p) => p.model === 'detector')).toBe(true)
      expect(predictions.every((p) => p.model === 'detector' || p.model === 'predict_linear')).toBe(true)
    }
    expect(detector.status()).toMatchObject({ state: 'suspended', model: null })
    expect(detector.status().reason).toMatch(/failed 3 times in a row/)
    expect(errors.some((e) => /for 0\.3 s$/.test(e.message))).toBe(true)
    // While suspended no worker is tried.
    const before = errors.length
    await detector.analyzeCheckpoint(cp)
    expect(errors.length).toBe(before)
    // After the pause the model is tried again; failing again doubles the pause.
    await new Promise((r) => setTimeout(r, 350))
    for (let i = 0; i < 3; i++) await detector.analyzeCheckpoint(cp)
    expect(errors.some((e) => /retrying the model/.test(e.message))).toBe(true)
    expect(errors.some((e) => /for 0\.6 s$/.test(e.message))).toBe(true)
    expect(detector.status().state).toBe('suspended')
  })
})
