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
  HELD_BACK_BLOCK_ROWS,
  OnlineTrainer,
  type OnlineTrainerOptions,
  type RoundResult,
} from '../../src/forecast/online.js'
import { FAILURE_TYPES, MODEL_OUTPUTS } from '../../src/forecast/spec.js'
import fineTune, { epochRows } from '../../src/forecast/train-worker.js'

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
const kv = new Uint8Array(FAILURE_TYPES.length)
kv[KV] = 1
const B = HELD_BACK_BLOCK_ROWS
/** Row ids of the padding replica start here; sentLabels leaves them out. */
const PAD_ID = 1_000_000

/**
 * A trainer whose rounds record the task instead of running it; every 2nd block is held back.
 * With `pad`, a replica 'pad' first files 2 blocks at t = 0 with a KV exhaustion under way
 * throughout, so that a round has held-back rows with failures in them: B rows in each buffer.
 */
function capturing(
  options: Partial<OnlineTrainerOptions> = {},
  pad = true,
): { t: OnlineTrainer; tasks: FineTuneTask[] } {
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
  if (pad) for (let i = 0; i < 2 * B; i++) t.observe(0, 'pad', row(PAD_ID + i), kv)
  return { t, tasks }
}

/** Files `blocks` blocks of replica 'a', one row a second; KV exhaustion under way where `positive`. */
function feedBlocks(t: OnlineTrainer, blocks: number, positive: (s: number) => boolean): void {
  for (let s = 0; s < blocks * B; s++) t.observe(s * 1000, 'a', row(s), positive(s) ? kv : none)
  t.advance(blocks * B * 1000 + 200_000)
}

/** A worker's answer with the given losses. */
function answer(artifacts: ModelArtifacts, oldLoss: number, newLoss: number): FineTuneResult {
  return {
    artifacts,
    oldLoss,
    newLoss,
    oldBce: 0.1,
    newBce: 0.1,
    epochRows: 1,
    numTensors: 0,
    backend: 'cpu',
  }
}

/** The labels the last round sent, by row id (padding left out): training rows, held-back rows, and both. */
async function sentLabels(t: OnlineTrainer, tasks: FineTuneTask[]) {
  const r = await t.retrain()
  const task = tasks.at(-1)
  if (task === undefined) throw new Error(`no task was sent: ${r.reason}`)
  const pick = (x: Float32Array, y: Float32Array, rows: number) =>
    new Map(
      Array.from({ length: rows }, (_, r) => [
        x[r * FEATURE_COUNT]!,
        Array.from(y.subarray(r * NO, (r + 1) * NO)),
      ]).filter(([id]) => (id as number) < PAD_ID) as [number, number[]][],
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
    expect(t.stats()).toMatchObject({ trainRows: B + 2, heldRows: B, dropped: 0 })
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
    expect(t.stats()).toMatchObject({ dropped: 8, trainRows: B + 12, heldRows: B })
    // 108 is covered but positive on every KV head anyway; 109 comes after the outcome's t.
    expect([...all.keys()].filter((id) => id < 200).sort()).toEqual([108, 109])
    expect(all.get(108)![head('kv-exhaustion', 5)]).toBe(1)
    expect([...all.keys()].filter((id) => id >= 200)).toHaveLength(10)
  })
})

describe('buffers', () => {
  it('holds back every 5th block of 60 consecutive labelled rows of each replica', async () => {
    expect(B).toBe(60)
    const { t, tasks } = capturing({ heldBackEvery: 5 }, false)
    // 'b' starts 30 s after 'a': its blocks count its own rows.
    for (let s = 0; s < 630; s++) {
      if (s < 600) t.observe(s * 1000, 'a', row(s), kv)
      if (s >= 30) t.observe(s * 1000, 'b', row(10_000 + s), kv)
    }
    t.advance(1_000_000)
    expect(t.stats()).toMatchObject({ trainRows: 2 * 480, heldRows: 2 * 120 })
    const { held } = await sentLabels(t, tasks)
    const range = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i)
    expect([...held.keys()].sort((a, b) => a - b)).toEqual([
      ...range(240, 60),
      ...range(540, 60),
      ...range(10_270, 60),
      ...range(10_570, 60),
    ])
  })

  it('counts only the rows it files into a block', async () => {
    const { t, tasks } = capturing({}, false)
    // Rows 0-9 fall to an 'avoided' outcome: the first block is rows 10-69, the held-back one 70-129.
    for (let s = 0; s < 130; s++) t.observe(s * 1000, 'a', row(s), kv)
    t.reportOutcome({ t: 9_000, replica: 'a', failureType: 'oom', outcome: 'avoided' })
    t.advance(1_000_000)
    expect(t.stats()).toMatchObject({ dropped: 10, trainRows: 60, heldRows: 60 })
    const { held } = await sentLabels(t, tasks)
    expect(Math.min(...held.keys())).toBe(70)
  })

  it('keeps at most maxRows labelled rows, dropping the oldest', async () => {
    const { t, tasks } = capturing({ heldBackEvery: 2, maxRows: 100 }, false)
    for (let s = 0; s < 4 * B; s++) t.observe(s * 1000, 'a', row(s), kv)
    t.advance(1_000_000)
    expect(t.stats()).toMatchObject({ trainRows: 50, heldRows: 50 })
    const { train, held } = await sentLabels(t, tasks)
    expect([...train.keys()]).toEqual(Array.from({ length: 50 }, (_, i) => 130 + i))
    expect([...held.keys()]).toEqual(Array.from({ length: 50 }, (_, i) => 190 + i))
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
    expect(r).toMatchObject({ swapped: false, reason: 'not enough labelled rows (10 < 256)', oldLoss: null })
    expect(runTask).not.toHaveBeenCalled()
    expect(onRound).toHaveBeenCalledWith(r)
    expect(t.stats().rounds).toBe(0)
  })

  it('reports a worker crash as a result and through onError, never by throwing', async () => {
    const onError = vi.fn()
    const onSwap = vi.fn()
    const t = trainer({
      minSamples: 4,
      heldBackEvery: 2,
      onError,
      onSwap,
      runTask: () => Promise.reject(new Error('worker exited (code 1)')),
    })
    feedBlocks(t, 2, (s) => s % B === 30)
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
    const t = trainer({ minSamples: 4, heldBackEvery: 2, intervalMs: 60_000, runTask, onSwap: () => {} })
    feedBlocks(t, 2, (s) => s % B === 30)
    expect(t.maybeRetrain(0)).toBeNull()
    expect(t.maybeRetrain(59_999)).toBeNull()
    const first = t.maybeRetrain(60_000)
    expect(first).not.toBeNull()
    expect(t.retrain()).toBe(first)
    const artifacts = { ...untrained, meta: { ...untrained.meta, version: 2 } }
    release(answer(artifacts, 0.5, 0.4))
    expect((await first)!).toMatchObject({
      swapped: true,
      version: 2,
      oldLoss: 0.5,
      newLoss: 0.4,
      oldBce: 0.1,
    })
    expect(runTask).toHaveBeenCalledTimes(1)
    expect(t.maybeRetrain(100_000)).toBeNull()
  })

  it('refuses a model fine-tuned from one that was replaced during the round', async () => {
    let model = untrained
    const onSwap = vi.fn()
    const t = trainer({
      minSamples: 4,
      heldBackEvery: 2,
      getModel: () => model,
      onSwap,
      runTask: async (task) => {
        model = { ...untrained }
        return answer(task.model, 1, 0.1)
      },
    })
    feedBlocks(t, 2, (s) => s % B === 30)
    expect(await t.retrain()).toMatchObject({
      swapped: false,
      reason: 'the model was replaced while the round ran',
    })
    expect(onSwap).not.toHaveBeenCalled()
  })

  it('refuses a round whose held-back rows hold no failure, before running it', async () => {
    const runTask = vi.fn()
    const t = trainer({ minSamples: 4, heldBackEvery: 2, runTask })
    // Failures only in the training block (rows 0-59); the held-back block 60-119 is all negative.
    feedBlocks(t, 2, (s) => s >= 10 && s < 20)
    expect(t.stats()).toMatchObject({ trainRows: B, heldRows: B })
    expect(await t.retrain()).toMatchObject({
      swapped: false,
      reason: 'no failure in the held-back rows: nothing to judge a new model on',
      oldLoss: null,
      newLoss: null,
    })
    expect(runTask).not.toHaveBeenCalled()
    expect(t.stats()).toMatchObject({ rounds: 0, refusals: 0 })
  })

  it('refuses a model whose held-back loss is not finite', async () => {
    const onSwap = vi.fn()
    const t = trainer({
      minSamples: 4,
      heldBackEvery: 2,
      onSwap,
      runTask: async (task) => answer({ ...task.model }, 0.7, Number.NaN),
    })
    feedBlocks(t, 2, (s) => s % B === 30)
    expect(await t.retrain()).toMatchObject({
      swapped: false,
      reason: 'held-back loss is not finite (0.7000 -> NaN): kept the current model',
    })
    expect(onSwap).not.toHaveBeenCalled()
    expect(t.stats()).toMatchObject({ rounds: 1, refusals: 1 })
  })

  it('sends positiveShare and the balanced losses through', async () => {
    const tasks: FineTuneTask[] = []
    const t = trainer({
      minSamples: 4,
      heldBackEvery: 2,
      positiveShare: 0.25,
      runTask: async (task) => {
        tasks.push(task)
        return { ...answer({ ...task.model }, 0.6, 0.7), oldBce: 0.2, newBce: 0.1 }
      },
    })
    feedBlocks(t, 2, (s) => s % B === 30)
    const r = await t.retrain()
    expect(tasks[0]!.positiveShare).toBe(0.25)
    expect(r).toMatchObject({ swapped: false, oldLoss: 0.6, newLoss: 0.7, oldBce: 0.2, newBce: 0.1 })
    expect(r.reason).toBe('held-back loss would rise from 0.6000 to 0.7000: kept the current model')
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
    // Blocks 0-3 of each replica (240 rows) train, block 4 is held back; about half of it positive.
    expect(good.stats()).toMatchObject({ trainRows: 480, heldRows: 120 })
    const r1 = await good.retrain()
    expect(r1).toMatchObject({ swapped: true, version: 2 })
    expect(r1.newLoss!).toBeLessThan(r1.oldLoss! / 2)
    expect(r1.newBce!).toBeLessThan(r1.oldBce!)
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

  it('refuses a round that only lowers every probability, though plain cross-entropy falls', async () => {
    expect(existsSync(builtWorker), 'run `npm run build:ts` first').toBe(true)
    const onSwap = vi.fn()
    const onError = vi.fn()
    const t = trainer({
      onSwap,
      onError,
      minSamples: 100,
      heldBackEvery: 2,
      epochs: 3,
      batchSize: 32,
      learningRate: 3e-3,
    })
    // Blocks 0 and 2 train, all negative; blocks 1 and 3 are held back, with 10 failing rows each.
    const f = new Float32Array(FEATURE_COUNT)
    for (let s = 0; s < 4 * B; s++) {
      const held = Math.floor(s / B) % 2 === 1
      const on = held && s % B < 10
      for (let j = 0; j < FEATURE_COUNT; j++) f[j] = Math.sin(s * 7 + j)
      t.observe(s * 1000, 'a', f, on ? kv : none)
    }
    t.advance(10_000_000)
    expect(t.stats()).toMatchObject({ trainRows: 2 * B, heldRows: 2 * B })
    const r = await t.retrain()
    expect(r.swapped).toBe(false)
    // Mean cross-entropy alone would have swapped this model in.
    expect(r.newBce!).toBeLessThan(r.oldBce!)
    expect(r.newLoss!).toBeGreaterThan(r.oldLoss!)
    expect(r.reason).toBe(
      `held-back loss would rise from ${r.oldLoss!.toFixed(4)} to ${r.newLoss!.toFixed(4)}: kept the current model`,
    )
    expect(onSwap).not.toHaveBeenCalled()
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
    await expect(fineTune({ ...task(), positiveShare: 1 })).rejects.toThrow(
      'task.positiveShare must be a number >= 0 and < 1',
    )
  })

  it('repeats positive rows to about positiveShare of an epoch, the same way for the same seed', () => {
    // 3 positive rows (on different heads) among 100.
    const rows = 100
    const y = new Float32Array(rows * NO)
    for (const [r, k] of [
      [5, 0],
      [40, NO - 1],
      [77, 3],
    ] as const)
      y[r * NO + k] = 1
    const seeded = (seed: number) => {
      let a = seed
      return () => {
        a = (a * 1103515245 + 12345) & 0x7fffffff
        return a / 0x80000000
      }
    }
    const a = epochRows(y, rows, 0.1, seeded(1))
    // 97 negatives: round(0.1 x 97 / 0.9) = 11 positive rows in all, so 8 repeats.
    expect(a.length).toBe(rows + 8)
    expect(Array.from(a.subarray(0, rows))).toEqual(Array.from({ length: rows }, (_, i) => i))
    const extra = Array.from(a.subarray(rows))
    expect(extra.every((r) => [5, 40, 77].includes(r))).toBe(true)
    // 8 = 2 each + 2 drawn: every positive row 3 or 4 times in all.
    for (const r of [5, 40, 77]) expect([2, 3]).toContain(extra.filter((v) => v === r).length)
    expect(Array.from(epochRows(y, rows, 0.1, seeded(1)))).toEqual(Array.from(a))
    expect(epochRows(y, rows, 0, seeded(1)).length).toBe(rows)
    expect(epochRows(new Float32Array(rows * NO), rows, 0.5, seeded(1)).length).toBe(rows)
    // Already above the share: nothing is repeated, nothing dropped.
    expect(epochRows(y, 10, 0.05, seeded(1)).length).toBe(10)
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
      [{ positiveShare: 1 }, 'OnlineTrainer: option "positiveShare" must be a number >= 0 and < 1'],
      [{ positiveShare: -0.1 }, 'OnlineTrainer: option "positiveShare" must be a number >= 0 and < 1'],
      [{ positiveShare: Number.NaN }, 'OnlineTrainer: option "positiveShare" must be a number >= 0 and < 1'],
      [
        { positiveShare: '0.1' as never },
        'OnlineTrainer: option "positiveShare" must be a number >= 0 and < 1',
      ],
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
