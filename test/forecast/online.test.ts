// Online retraining (src/forecast/online.ts + train-worker.ts). The rounds that swap and refuse
// run the compiled worker in dist/ with real tfjs: run `npm run build:ts` first.
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest'
import { ForecastWorkerError, InvalidOptionError } from '../../src/errors.js'
import { FEATURE_COUNT } from '../../src/forecast/features.js'
import {
  buildModel,
  initBackend,
  type ModelArtifacts,
  newMeta,
  tf,
  toArtifacts,
} from '../../src/forecast/model.js'
import {
  type FineTuneResult,
  type FineTuneTask,
  OnlineTrainer,
  type OnlineTrainerOptions,
  type RoundResult,
} from '../../src/forecast/online.js'
import { FAILURE_TYPES, MODEL_OUTPUTS } from '../../src/forecast/spec.js'
import fineTune from '../../src/forecast/train-worker.js'

const NO = MODEL_OUTPUTS.length
const KV = FAILURE_TYPES.indexOf('kv-exhaustion')
const head = (type: string, h: number) =>
  MODEL_OUTPUTS.findIndex((o) => o.failureType === type && o.horizonS === h)
const builtWorker = fileURLToPath(new URL('../../dist/forecast/train-worker.js', import.meta.url))

let untrained: ModelArtifacts
const trainers: OnlineTrainer[] = []

beforeAll(async () => {
  await initBackend('auto')
  const m = buildModel({ seed: 3 })
  const zeros = new Array<number>(FEATURE_COUNT).fill(0)
  untrained = await toArtifacts(m, newMeta('online-test', { mean: zeros, std: zeros.map(() => 1) }))
  m.dispose()
  m.optimizer?.dispose()
})

afterEach(async () => {
  await Promise.all(trainers.splice(0).map((t) => t.close()))
})

function trainer(options: Partial<OnlineTrainerOptions> = {}): OnlineTrainer {
  const t = new OnlineTrainer({ getModel: () => untrained, onSwap: () => {}, ...options })
  trainers.push(t)
  return t
}

/** A feature row whose first value is its id, so a task's rows can be told apart. */
function row(id: number, fill = 0): Float32Array {
  const f = new Float32Array(FEATURE_COUNT).fill(fill)
  f[0] = id
  return f
}
const none = new Uint8Array(FAILURE_TYPES.length)

/** A trainer whose rounds record the task instead of running it; every 2nd row is held back. */
function capturing(options: Partial<OnlineTrainerOptions> = {}): { t: OnlineTrainer; tasks: FineTuneTask[] } {
  const tasks: FineTuneTask[] = []
  const t = trainer({
    minSamples: 1,
    heldBackEvery: 2,
    runTask: async (task) => {
      tasks.push(task)
      throw new Error('captured')
    },
    onError: () => {},
    ...options,
  })
  return { t, tasks }
}

/** The labels the last round sent, by row id: training rows, held-back rows, and both. */
async function sentLabels(t: OnlineTrainer, tasks: FineTuneTask[]) {
  const r = await t.retrain()
  const task = tasks.at(-1)
  if (task === undefined) throw new Error(`no task was sent: ${r.reason}`)
  const pick = (x: Float32Array, y: Float32Array, rows: number) =>
    new Map(
      Array.from({ length: rows }, (_, r) => [
        x[r * FEATURE_COUNT]!,
        Array.from(y.subarray(r * NO, (r + 1) * NO)),
      ]),
    )
  const train = pick(task.x, task.y, task.rows)
  const held = pick(task.heldX, task.heldY, task.heldRows)
  return { train, held, all: new Map([...train, ...held]) }
}

describe('labelling', () => {
  it('keeps a row pending until its 120 s horizon has passed', () => {
    const t = trainer()
    t.observe(0, 'a', row(1), none)
    t.advance(119_999)
    expect(t.stats()).toMatchObject({ pending: 1, trainRows: 0 })
    t.advance(120_000)
    expect(t.stats()).toMatchObject({ pending: 0, trainRows: 1 })
  })

  it('labels a row before an onset within 30 s positive on the 30 s and 120 s heads, negative on 5 s', async () => {
    const { t, tasks } = capturing()
    t.observe(0, 'a', row(1), none)
    t.observe(0, 'b', row(2), none)
    t.observe(100_000, 'a', row(3), none)
    t.onset({ failureType: 'kv-exhaustion', replica: 'a', t: 20_000, detail: 'preemptions at KV 97%' })
    t.advance(220_000)
    const { all } = await sentLabels(t, tasks)
    const y = all.get(1)!
    expect(y[head('kv-exhaustion', 5)]).toBe(0)
    expect(y[head('kv-exhaustion', 30)]).toBe(1)
    expect(y[head('kv-exhaustion', 120)]).toBe(1)
    expect(y.reduce((a, b) => a + b, 0)).toBe(2)
    expect(all.get(2)).toEqual(new Array(NO).fill(0)) // another replica
    expect(all.get(3)).toEqual(new Array(NO).fill(0)) // after the onset
  })

  it('labels every head of a failure type positive while it is under way', async () => {
    const { t, tasks } = capturing()
    const ongoing = new Uint8Array(FAILURE_TYPES.length)
    ongoing[FAILURE_TYPES.indexOf('oom')] = 1
    t.observe(0, 'a', row(1), ongoing)
    t.observe(1000, 'a', row(2), none)
    t.advance(200_000)
    const { all } = await sentLabels(t, tasks)
    expect(all.get(1)).toEqual(MODEL_OUTPUTS.map((o) => (o.failureType === 'oom' ? 1 : 0)))
    expect(all.get(2)).toEqual(new Array(NO).fill(0))
  })

  it('turns a warning that did not come true into a negative', async () => {
    const { t, tasks } = capturing()
    // Every feature high: any detector would alarm, but no failure followed.
    t.observe(0, 'a', row(1, 0.99), none)
    t.observe(1000, 'a', row(2, 0.99), none)
    t.reportOutcome({ t: 5_000, replica: 'a', failureType: 'kv-exhaustion', outcome: 'false-alarm' })
    t.advance(200_000)
    expect(t.stats()).toMatchObject({ trainRows: 1, heldRows: 1, dropped: 0 })
    const { all } = await sentLabels(t, tasks)
    expect(all.get(1)).toEqual(new Array(NO).fill(0))
    expect(all.get(2)).toEqual(new Array(NO).fill(0))
  })

  it("treats an 'occurred' outcome as an onset", async () => {
    const { t, tasks } = capturing()
    t.observe(0, 'a', row(1), none)
    t.observe(1000, 'a', row(2), none)
    t.reportOutcome({ t: 3_000, replica: 'a', failureType: 'kv-exhaustion', outcome: 'occurred' })
    t.advance(200_000)
    const y = (await sentLabels(t, tasks)).all.get(1)!
    expect([5, 30, 120].map((h) => y[head('kv-exhaustion', h)])).toEqual([1, 1, 1])
  })

  it("drops the replica's rows of the 120 s before an 'avoided' outcome instead of using them as negatives", async () => {
    const { t, tasks } = capturing()
    const ongoing = new Uint8Array(FAILURE_TYPES.length)
    ongoing[KV] = 1
    for (let s = 0; s < 10; s++) {
      t.observe(s * 1000, 'a', row(100 + s), s === 8 ? ongoing : none)
      t.observe(s * 1000, 'b', row(200 + s), none)
    }
    t.reportOutcome({ t: 8_000, replica: 'a', failureType: 'kv-exhaustion', outcome: 'avoided' })
    t.advance(200_000)
    const { all } = await sentLabels(t, tasks)
    expect(t.stats()).toMatchObject({ dropped: 8, trainRows: 6, heldRows: 6 })
    // 108 is covered but positive on every KV head anyway; 109 comes after the outcome's t.
    expect([...all.keys()].filter((id) => id < 200).sort()).toEqual([108, 109])
    expect(all.get(108)![head('kv-exhaustion', 5)]).toBe(1)
    expect([...all.keys()].filter((id) => id >= 200)).toHaveLength(10)
  })
})

describe('buffers', () => {
  it('holds back every 5th labelled row of each replica', async () => {
    const { t, tasks } = capturing({ heldBackEvery: 5 })
    for (let s = 0; s < 10; s++)
      for (const [k, r] of ['a', 'b'].entries()) t.observe(s * 1000, r, row(k * 100 + s), none)
    t.advance(1_000_000)
    expect(t.stats()).toMatchObject({ trainRows: 16, heldRows: 4 })
    const { held } = await sentLabels(t, tasks)
    expect([...held.keys()].sort((a, b) => a - b)).toEqual([4, 9, 104, 109])
  })

  it('keeps at most maxRows labelled rows, dropping the oldest', async () => {
    const { t, tasks } = capturing({ heldBackEvery: 5, maxRows: 10 })
    for (let s = 0; s < 30; s++) t.observe(s * 1000, 'a', row(s), none)
    t.advance(1_000_000)
    expect(t.stats()).toMatchObject({ trainRows: 8, heldRows: 2 })
    const { train, held } = await sentLabels(t, tasks)
    expect([...train.keys()]).toEqual([20, 21, 22, 23, 25, 26, 27, 28])
    expect([...held.keys()]).toEqual([24, 29])
  })
})

describe('rounds', () => {
  it('refuses to train on too few rows', async () => {
    const runTask = vi.fn()
    const onRound = vi.fn()
    const t = trainer({ runTask, onRound })
    for (let s = 0; s < 10; s++) t.observe(s * 1000, 'a', row(s), none)
    t.advance(1_000_000)
    const r = await t.retrain()
    expect(r).toMatchObject({ swapped: false, reason: 'not enough labelled rows (8 < 256)', oldLoss: null })
    expect(runTask).not.toHaveBeenCalled()
    expect(onRound).toHaveBeenCalledWith(r)
    expect(t.stats().rounds).toBe(0)
  })

  it('reports a worker crash as a result and through onError, never by throwing', async () => {
    const onError = vi.fn()
    const onSwap = vi.fn()
    const t = trainer({
      minSamples: 4,
      onError,
      onSwap,
      runTask: () => Promise.reject(new Error('worker exited (code 1)')),
    })
    for (let s = 0; s < 10; s++) t.observe(s * 1000, 'a', row(s), none)
    t.advance(1_000_000)
    const r = await t.retrain()
    expect(r).toMatchObject({ swapped: false, reason: 'online retraining failed: worker exited (code 1)' })
    expect(r.error).toBeInstanceOf(ForecastWorkerError)
    expect(onError).toHaveBeenCalledWith(r.error)
    expect(onSwap).not.toHaveBeenCalled()
    expect(t.stats()).toMatchObject({ rounds: 1, failures: 1, swaps: 0 })
  })

  it('runs one round at a time and retrains on the interval', async () => {
    let release!: (r: FineTuneResult) => void
    const runTask = vi.fn(() => new Promise<FineTuneResult>((res) => (release = res)))
    const t = trainer({ minSamples: 4, intervalMs: 60_000, runTask, onSwap: () => {} })
    for (let s = 0; s < 10; s++) t.observe(s * 1000, 'a', row(s), none)
    t.advance(1_000_000)
    expect(t.maybeRetrain(0)).toBeNull()
    expect(t.maybeRetrain(59_999)).toBeNull()
    const first = t.maybeRetrain(60_000)
    expect(first).not.toBeNull()
    expect(t.retrain()).toBe(first)
    const artifacts = { ...untrained, meta: { ...untrained.meta, version: 2 } }
    release({ artifacts, oldLoss: 0.5, newLoss: 0.4, numTensors: 0, backend: 'cpu' })
    expect((await first)!).toMatchObject({ swapped: true, version: 2 })
    expect(runTask).toHaveBeenCalledTimes(1)
    expect(t.maybeRetrain(100_000)).toBeNull()
  })

  it('refuses a model fine-tuned from one that was replaced during the round', async () => {
    let model = untrained
    const onSwap = vi.fn()
    const t = trainer({
      minSamples: 4,
      getModel: () => model,
      onSwap,
      runTask: async (task) => {
        model = { ...untrained }
        return { artifacts: task.model, oldLoss: 1, newLoss: 0.1, numTensors: 0, backend: 'cpu' }
      },
    })
    for (let s = 0; s < 10; s++) t.observe(s * 1000, 'a', row(s), none)
    t.advance(1_000_000)
    expect(await t.retrain()).toMatchObject({
      swapped: false,
      reason: 'the model was replaced while the round ran',
    })
    expect(onSwap).not.toHaveBeenCalled()
  })

  it('swaps in a better model and refuses a worse one, with the real worker', async () => {
    expect(existsSync(builtWorker), 'run `npm run build:ts` first').toBe(true)
    let model = untrained
    const swaps: ModelArtifacts[] = []
    const rounds: RoundResult[] = []
    const onError = vi.fn()
    const options = {
      getModel: () => model,
      onSwap: (a: ModelArtifacts) => {
        swaps.push(a)
        model = a
      },
      onRound: (r: RoundResult) => rounds.push(r),
      onError,
      minSamples: 200,
      epochs: 3,
      batchSize: 32,
    }
    const good = trainer({ ...options, learningRate: 1e-2 })
    // Feature 0 decides whether a KV exhaustion is under way; the rest is noise.
    let seed = 12345
    const rand = () => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff
      return seed / 0x7fffffff
    }
    const f = new Float32Array(FEATURE_COUNT)
    const on = new Uint8Array(FAILURE_TYPES.length)
    const feed = (t: OnlineTrainer) => {
      for (let s = 0; s < 300; s++) {
        for (const r of ['a', 'b']) {
          for (let j = 0; j < FEATURE_COUNT; j++) f[j] = rand() * 2 - 1
          on[KV] = rand() < 0.5 ? 1 : 0
          f[0] = on[KV] ? 2 : -2
          t.observe(s * 1000, r, f, on)
        }
      }
      t.advance(420_000)
    }
    feed(good)
    expect(good.stats()).toMatchObject({ trainRows: 480, heldRows: 120 })
    const r1 = await good.retrain()
    expect(r1).toMatchObject({ swapped: true, version: 2 })
    expect(r1.newLoss!).toBeLessThan(r1.oldLoss! / 2)
    expect(swaps).toHaveLength(1)
    expect(model.meta.version).toBe(2)
    expect(model.meta.normalization).toEqual(untrained.meta.normalization)
    expect(model.meta.training).toMatchObject({ onlineRounds: 1, lastRound: { rows: 480, heldRows: 120 } })

    // The next round starts from the swapped-in model: its old loss is the last round's new loss.
    const wild = trainer({ ...options, learningRate: 50 })
    feed(wild)
    const r2 = await wild.retrain()
    expect(r2.swapped).toBe(false)
    expect(r2.newLoss!).toBeGreaterThan(r2.oldLoss!)
    expect(r2.reason).toBe(
      `held-back loss would rise from ${r2.oldLoss!.toFixed(4)} to ${r2.newLoss!.toFixed(4)}: kept the current model`,
    )
    expect(swaps).toHaveLength(1)
    expect(model.meta.version).toBe(2)
    expect(wild.stats()).toMatchObject({ rounds: 1, swaps: 0, refusals: 1 })
    expect(rounds).toEqual([r1, r2])
    expect(onError).not.toHaveBeenCalled()
  })
})

describe('train worker', () => {
  it('fine-tunes reproducibly and leaves no tensors behind', async () => {
    const rows = 64
    const x = new Float32Array(rows * FEATURE_COUNT).map((_, i) => Math.sin(i))
    const y = new Float32Array(rows * NO).map((_, i) => (Math.cos(i) > 0 ? 1 : 0))
    const task = (): FineTuneTask => ({
      kind: 'fine-tune',
      model: untrained,
      x: x.slice(),
      y: y.slice(),
      rows,
      heldX: x.slice(0, 16 * FEATURE_COUNT),
      heldY: y.slice(0, 16 * NO),
      heldRows: 16,
      epochs: 2,
      learningRate: 1e-3,
      batchSize: 16,
      seed: 7,
    })
    const a = await fineTune(task())
    const before = tf.memory().numTensors
    const b = await fineTune(task())
    expect(tf.memory().numTensors).toBe(before)
    expect(b.numTensors).toBe(a.numTensors)
    expect(b.newLoss).toBe(a.newLoss)
    expect(new Float32Array(b.artifacts.weights)).toEqual(new Float32Array(a.artifacts.weights))
    expect(a.artifacts.meta.version).toBe(untrained.meta.version + 1)
    await expect(fineTune({ ...task(), rows: 0 })).rejects.toThrow('task.rows must be a positive integer')
  })
})

describe('options', () => {
  it('validates them with messages that name the option', () => {
    const base = { getModel: () => untrained, onSwap: () => {} }
    const bad: [Partial<OnlineTrainerOptions>, string][] = [
      [{ getModel: undefined }, 'OnlineTrainer: option "getModel" must be a function'],
      [{ intervalMs: -1 }, 'OnlineTrainer: option "intervalMs" must be an integer >= 0'],
      [{ minSamples: 0.5 }, 'OnlineTrainer: option "minSamples" must be an integer >= 1'],
      [{ heldBackEvery: 1 }, 'OnlineTrainer: option "heldBackEvery" must be an integer >= 2'],
      [{ learningRate: 0 }, 'OnlineTrainer: option "learningRate" must be a positive number'],
      [{ runTask: 'x' as never }, 'OnlineTrainer: option "runTask" must be a function'],
    ]
    for (const [o, msg] of bad) {
      const make = () => new OnlineTrainer({ ...base, ...o } as OnlineTrainerOptions)
      expect(make).toThrow(InvalidOptionError)
      expect(make).toThrow(msg)
    }
  })

  it('closes idempotently and ignores rows afterwards', async () => {
    const t = trainer()
    await t.close()
    await t.close()
    t.observe(0, 'a', row(1), none)
    expect(t.stats().pending).toBe(0)
    expect(await t.retrain()).toMatchObject({ swapped: false, reason: 'trainer closed' })
  })
})
