// A tiny training run (two scenarios, one seed per split, two epochs: a few seconds) and what it
// leaves behind: a model directory the monitor accepts, a model card, a resumable checkpoint.
import { cp, mkdtemp, readFile, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { train } from '../../src/forecast/lazy.js'
import { loadModel } from '../../src/forecast/model-io.js'
import { FAILURE_TYPES, MODEL_OUTPUTS } from '../../src/forecast/spec.js'
import type { TrainOptions, TrainProgress, TrainResult } from '../../src/forecast/train.js'

const TINY = {
  scenarios: ['kv-exhaustion', 'steady'],
  trainSeeds: [1],
  validationSeeds: [2],
  testSeeds: [3],
  epochs: 2,
} satisfies Partial<TrainOptions>

let root: string
let out: string
let first: TrainResult
let firstWeights: Buffer
const progress: TrainProgress[] = []

const weightsOf = (dir: string) => readFile(join(dir, 'weights.bin'))
const exists = (path: string) =>
  stat(path).then(
    () => true,
    () => false,
  )

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'vllm-monitor-train-'))
  out = join(root, 'model')
  first = await train({ outDir: out, ...TINY, onProgress: (p) => progress.push(p) })
  firstWeights = await weightsOf(out)
}, 60_000)

afterAll(async () => {
  await rm(root, { recursive: true, force: true })
})

describe('train', () => {
  it('writes model.json, weights.bin, meta.json and MODEL_CARD.md', async () => {
    for (const f of ['model.json', 'weights.bin', 'meta.json', 'MODEL_CARD.md'])
      expect(await exists(join(out, f)), f).toBe(true)
    expect(first.resumedFromEpoch).toBe(0)
  })

  it('writes a model that loadModel accepts after building it in TensorFlow.js', async () => {
    const a = await loadModel(out, { verify: true })
    expect(a.meta).toMatchObject({ name: 'forecaster', version: 1 })
    expect(a.meta.outputs).toEqual(MODEL_OUTPUTS)
    expect(a.meta.sha256).toEqual({ 'model.json': expect.any(String), 'weights.bin': expect.any(String) })
    expect(Buffer.from(a.weights).equals(firstWeights)).toBe(true)
  })

  it('records how it was trained, and an alarm threshold per forecast failure type, in meta.json', async () => {
    const meta = JSON.parse(await readFile(join(out, 'meta.json'), 'utf8'))
    expect(meta.training).toMatchObject({
      scenarios: TINY.scenarios,
      trainSeeds: [1],
      validationSeeds: [2],
      testSeeds: [3],
      epochs: 2,
      backend: first.backend,
    })
    expect(meta.training.trainingRows).toBeGreaterThan(100)
    expect(Object.keys(meta.thresholds).sort()).toEqual(
      ['kv-exhaustion', 'oom', 'queue-overflow', 'slo-violation', 'thermal-throttle'].sort(),
    )
    for (const v of Object.values(meta.thresholds) as number[]) {
      expect(v).toBeGreaterThan(0)
      expect(v).toBeLessThan(1)
    }
  })

  it('puts the held-out table in the model card: the model, predict_linear and threshold for each failure type', async () => {
    const card = await readFile(join(out, 'MODEL_CARD.md'), 'utf8')
    expect(card).toMatch(/^# forecaster v1: failure forecaster for vLLM replicas$/m)
    expect(card).toMatch(/^- Held-out seeds 3 \(/m)
    expect(card).toContain(first.table)
    for (const type of FAILURE_TYPES) {
      for (const predictor of ['forecaster-v1', 'predict_linear', 'threshold']) {
        const row = new RegExp(
          `^${type}\\s+${predictor}\\s+\\d+\\s+(\\d\\.\\d\\d|-)\\s+(\\d\\.\\d\\d|-)\\s`,
          'm',
        )
        expect(card, `${type} ${predictor}`).toMatch(row)
      }
    }
    // One kv-exhaustion failure in the held-out kv-exhaustion run.
    expect(card).toMatch(/^kv-exhaustion\s+forecaster-v1\s+1\s/m)
    expect(first.heldOut.filter((s) => s.predictor === 'forecaster-v1').map((s) => s.failureType)).toEqual([
      ...FAILURE_TYPES,
    ])
  })

  it('reports its phases in order: data, train (one step per epoch), evaluate, save', () => {
    const phases = progress.map((p) => p.phase).filter((p, i, a) => p !== a[i - 1])
    expect(phases).toEqual(['data', 'train', 'evaluate', 'save'])
    expect(progress.filter((p) => p.phase === 'data')).toHaveLength(6)
    expect(progress.filter((p) => p.phase === 'train').map((p) => p.detail)).toEqual([
      expect.stringMatching(/^epoch 1\/2 loss \d+\.\d{4}\b/),
      expect.stringMatching(/^epoch 2\/2 loss \d+\.\d{4}\b/),
    ])
  })

  it('resumes the same call from its last epoch and writes the same weights', async () => {
    const again = await train({ outDir: out, ...TINY })
    expect(again.resumedFromEpoch).toBe(2)
    expect((await weightsOf(out)).equals(firstWeights)).toBe(true)
  })

  it('trains the same weights in another directory (seeded initialisation and shuffle)', async () => {
    const other = join(root, 'other')
    const r = await train({ outDir: other, ...TINY })
    expect(r.resumedFromEpoch).toBe(0)
    expect((await weightsOf(other)).equals(firstWeights)).toBe(true)
  })

  it('resumes an interrupted run from the last finished epoch', async () => {
    const dir = join(root, 'interrupted')
    // The simulated runs are the same: reuse them, the checkpoint is what is under test.
    await cp(join(out, '.cache'), join(dir, '.cache'), { recursive: true })
    const stop = (p: TrainProgress) => {
      if (p.phase === 'train' && p.done === 1) throw new Error('interrupted')
    }
    await expect(train({ outDir: dir, ...TINY, onProgress: stop })).rejects.toThrow('interrupted')
    expect(await exists(join(dir, 'meta.json'))).toBe(false)
    const r = await train({ outDir: dir, ...TINY })
    expect(r.resumedFromEpoch).toBe(1)
    await expect(loadModel(dir)).resolves.toMatchObject({ meta: { name: 'forecaster' } })
  })

  it('starts over with fresh: true', async () => {
    const r = await train({ outDir: out, ...TINY, fresh: true })
    expect(r.resumedFromEpoch).toBe(0)
    expect((await weightsOf(out)).equals(firstWeights)).toBe(true)
  })

  it('refuses an unknown scenario, naming it, before writing anything', async () => {
    const dir = join(root, 'refused')
    await expect(train({ outDir: dir, ...TINY, scenarios: ['kv-exhaustion', 'nope'] })).rejects.toThrow(
      /^unknown scenario "nope"; expected some of steady, kv-exhaustion/,
    )
    expect(await exists(dir)).toBe(false)
  })
})
