// The pool runs the compiled worker (dist/forecast/worker.js) and fixtures built on it:
// run `npm run build:ts` first.
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { valueSymbol } from 'piscina'
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest'
import {
  ForecastTimeoutError,
  ForecastWorkerError,
  InvalidArgumentError,
  InvalidOptionError,
} from '../../src/errors.js'
import { FEATURE_COUNT } from '../../src/forecast/features.js'
import {
  buildModel,
  initBackend,
  type ModelArtifacts,
  newMeta,
  normalize,
  predictRows,
  type tfl,
  toArtifacts,
} from '../../src/forecast/model.js'
import { ForecastPool, type ForecastPoolOptions, resolveWorkerFile } from '../../src/forecast/pool.js'

const fixture = (name: string) => fileURLToPath(new URL(`../fixtures/forecast/${name}`, import.meta.url))
const kMarker = 999 // first feature that makes a fixture worker misbehave

let modelA: tfl.LayersModel
let modelB: tfl.LayersModel
let artifactsA: ModelArtifacts
let artifactsB: ModelArtifacts
let outputs: number

beforeAll(async () => {
  await initBackend('auto')
  const meta = newMeta('pool-test', {
    mean: new Array(FEATURE_COUNT).fill(0),
    std: new Array(FEATURE_COUNT).fill(1),
  })
  outputs = meta.outputs.length
  modelA = buildModel({ hidden: [16], seed: 1 })
  modelB = buildModel({ hidden: [16], seed: 7 })
  artifactsA = await toArtifacts(modelA, meta)
  artifactsB = await toArtifacts(modelB, meta)
})

function rowsOf(n: number, seed = 1): Float32Array {
  return Float32Array.from({ length: n * FEATURE_COUNT }, (_, i) => Math.sin(seed * 7.3 + i * 0.37))
}

function inProcess(model: tfl.LayersModel, x: Float32Array, rows: number): Float32Array {
  const copy = x.slice()
  normalize(copy, rows, artifactsA.meta.normalization)
  return predictRows(model, copy, rows)
}

function expectClose(actual: Float32Array, expected: Float32Array): void {
  expect(actual.length).toBe(expected.length)
  for (let i = 0; i < expected.length; i++) expect(Math.abs(actual[i]! - expected[i]!)).toBeLessThan(1e-5)
}

const pools: ForecastPool[] = []
/** A pool whose every predict goes to a worker (the worker paths under test), unless told otherwise. */
function open(options: Partial<ForecastPoolOptions> = {}): ForecastPool {
  const pool = new ForecastPool({ model: artifactsA, taskTimeoutMs: 5_000, inlineMaxMacs: 0, ...options })
  pools.push(pool)
  return pool
}

afterEach(async () => {
  await Promise.all(pools.splice(0).map((p) => p.close()))
})

describe('ForecastPool', () => {
  it('predicts in a worker what the model predicts in process', async () => {
    const pool = open()
    const x = rowsOf(5)
    const expected = inProcess(modelA, x, 5)
    const probs = await pool.predict(x, 5)
    expectClose(probs, expected)
    expect(pool.healthy).toBe(true)
    expect(pool.stats).toEqual({ tasks: 1, failures: 0, timeouts: 0, restarts: 0, inline: 0 })
  })

  it('transfers a whole-buffer input and copies a view, leaving the larger buffer usable', async () => {
    const pool = open()
    const whole = rowsOf(2)
    await pool.predict(whole, 2)
    expect(whole.byteLength).toBe(0)
    const big = rowsOf(3)
    const view = big.subarray(FEATURE_COUNT)
    expectClose(await pool.predict(view, 2), inProcess(modelA, big.slice(FEATURE_COUNT), 2))
    expect(big.length).toBe(3 * FEATURE_COUNT)
  })

  it('answers zero rows with an empty result', async () => {
    const pool = open()
    expect(await pool.predict(new Float32Array(0), 0)).toEqual(new Float32Array(0))
    expect(pool.stats.tasks).toBe(0)
  })

  it('runs a swapped model from the next predict on, and finishes a started predict on the old one', async () => {
    const pool = open()
    const x = rowsOf(4, 2)
    expectClose(await pool.predict(x.slice(), 4), inProcess(modelA, x, 4))
    expect(pool.modelVersion).toBe(1)

    const started = pool.predict(x.slice(), 4)
    pool.setModel(artifactsB)
    expect(pool.modelVersion).toBe(2)
    const after = pool.predict(x.slice(), 4)
    expectClose(await started, inProcess(modelA, x, 4))
    const fromB = await after
    expectClose(fromB, inProcess(modelB, x, 4))
    expect(fromB).not.toEqual(inProcess(modelA, x, 4))

    pool.setModel(artifactsA)
    expect(pool.modelVersion).toBe(3)
    expectClose(await pool.predict(x.slice(), 4), inProcess(modelA, x, 4))
  })

  it('refuses a model that does not take the monitor features', () => {
    const pool = open()
    const bad = { ...artifactsB, meta: { ...artifactsB.meta, features: ['x'] } }
    expect(() => pool.setModel(bad)).toThrow(InvalidArgumentError)
    expect(() => pool.setModel(bad)).toThrow(`artifacts must take ${FEATURE_COUNT} features (meta.features)`)
    expect(pool.modelVersion).toBe(1)
  })

  it('times out a stuck task with ForecastTimeoutError and serves the next predict from a fresh worker', async () => {
    const pool = open({ workerFilename: fixture('hang-worker.mjs'), taskTimeoutMs: 1_000 })
    // The deadline covers a worker's start: wait for it, so that a busy host cannot fail the test.
    const started = () =>
      vi.waitFor(() => expect(pool.starting).toBe(false), { timeout: 10_000, interval: 50 })
    await started()
    const x = rowsOf(2)
    expectClose(await pool.predict(x.slice(), 2), inProcess(modelA, x, 2))

    const stuck = rowsOf(2)
    stuck[0] = kMarker
    const err = await pool.predict(stuck, 2).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(ForecastTimeoutError)
    expect((err as Error).message).toBe('forecast task ran past its 1000 ms deadline')
    expect(pool.healthy).toBe(false)

    await started()
    expectClose(await pool.predict(x.slice(), 2), inProcess(modelA, x, 2))
    expect(pool.healthy).toBe(true)
    expect(pool.stats).toMatchObject({ tasks: 3, failures: 0, timeouts: 1, restarts: 1 })
  })

  it('ends a predict at its deadline while the worker starts, and lets the worker finish starting', async () => {
    const errors: Error[] = []
    const pool = open({
      workerFilename: fixture('slow-start-worker.mjs'),
      taskTimeoutMs: 300,
      onError: (e) => errors.push(e),
    })
    expect(pool.starting).toBe(true)
    const x = rowsOf(2)
    const t0 = performance.now()
    const err = await pool.predict(x.slice(), 2).catch((e: unknown) => e)
    const waited = performance.now() - t0
    expect(err).toBeInstanceOf(ForecastTimeoutError)
    expect((err as Error).message).toBe('forecast worker still starting after 300 ms')
    // Not the 1.5 s start (timers may run late on a busy host, never early).
    expect(waited).toBeGreaterThanOrEqual(290)
    expect(waited).toBeLessThan(1_000)
    // Starting is not failing: the worker was neither terminated nor marked unhealthy.
    expect(pool.healthy).toBe(true)
    expect(pool.stats).toEqual({ tasks: 0, failures: 0, timeouts: 1, restarts: 0, inline: 0 })

    await vi.waitFor(() => expect(pool.starting).toBe(false), { timeout: 10_000, interval: 50 })
    // The warm-up loaded the model too: the predict is the run alone, well within 300 ms.
    expectClose(await pool.predict(x.slice(), 2), inProcess(modelA, x, 2))
    expect(pool.stats).toEqual({ tasks: 1, failures: 0, timeouts: 1, restarts: 0, inline: 0 })
    expect(pool.healthy).toBe(true)
    expect(errors).toEqual([])
  })

  it('rejects the task of a worker that exits with ForecastWorkerError, then recovers', async () => {
    const pool = open({ workerFilename: fixture('crash-worker.mjs') })
    const crash = rowsOf(1)
    crash[0] = kMarker
    const err = await pool.predict(crash, 1).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(ForecastWorkerError)
    expect((err as Error).message).toBe('forecast worker failed: worker exited with code: 3')
    expect((err as Error).cause).toBeInstanceOf(Error)
    expect(pool.healthy).toBe(false)

    const x = rowsOf(3)
    expectClose(await pool.predict(x.slice(), 3), inProcess(modelA, x, 3))
    expect(pool.healthy).toBe(true)
    expect(pool.stats).toMatchObject({ tasks: 2, failures: 1, timeouts: 0, restarts: 1 })
  })

  it('reports a worker that fails to load through onError, and rejects predicts, without crashing', async () => {
    const errors: Error[] = []
    const pool = open({
      workerFilename: fixture('load-error-worker.mjs'),
      taskTimeoutMs: 300,
      onError: (e) => errors.push(e),
    })
    await vi.waitFor(() => expect(errors.length).toBeGreaterThan(0), { timeout: 5_000 })
    expect(errors[0]).toBeInstanceOf(ForecastWorkerError)
    expect(errors[0]!.message).toBe('forecast worker failed to start: fixture: this worker cannot load')
    expect(pool.healthy).toBe(false)

    const err = await pool.predict(rowsOf(1), 1).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(ForecastWorkerError)
    expect((err as Error).message).toMatch(/^forecast worker failed.*fixture: this worker cannot load$/)
    expect(pool.healthy).toBe(false)
  })

  it('keeps reporting when onError itself throws', async () => {
    const onError = vi.fn(() => {
      throw new Error('listener bug')
    })
    open({ workerFilename: fixture('load-error-worker.mjs'), onError })
    await vi.waitFor(() => expect(onError).toHaveBeenCalled(), { timeout: 5_000 })
  })

  it('rejects results of the wrong length or type as garbage', async () => {
    const pool = open({ workerFilename: fixture('garbage-worker.mjs') })
    await expect(pool.predict(rowsOf(2), 2)).rejects.toThrow(
      new ForecastWorkerError(
        `forecast worker returned 3 values, expected a Float32Array of rows × outputs = ${2 * outputs} values`,
      ),
    )
    const odd = rowsOf(1)
    odd[0] = kMarker
    await expect(pool.predict(odd, 1)).rejects.toThrow(
      `forecast worker returned an object, expected a Float32Array of rows × outputs = ${outputs} values`,
    )
    expect(pool.healthy).toBe(false)
    expect(pool.stats).toMatchObject({ tasks: 2, failures: 2 })
  })

  it('rejects bad arguments instead of throwing', async () => {
    const pool = open()
    const calls = [
      () => pool.predict([1, 2] as unknown as Float32Array, 1),
      () => pool.predict(rowsOf(1), Number.NaN),
      () => pool.predict(rowsOf(2), 1),
    ]
    for (const call of calls) expect(() => call().catch(() => {})).not.toThrow()
    await expect(calls[0]!()).rejects.toThrow(new InvalidArgumentError('features must be a Float32Array'))
    await expect(calls[1]!()).rejects.toThrow('rows must be a non-negative integer, got NaN')
    await expect(calls[2]!()).rejects.toThrow(
      `features hold ${2 * FEATURE_COUNT} values, expected rows × ${FEATURE_COUNT} = ${FEATURE_COUNT}`,
    )
    await expect(calls[2]!()).rejects.toBeInstanceOf(InvalidArgumentError)
  })

  it.each<[string, Partial<ForecastPoolOptions>, string]>([
    ['model', { model: {} as ModelArtifacts }, 'options.model must hold its weights in an ArrayBuffer'],
    ['threads', { threads: 0 }, 'options.threads must be a positive integer'],
    ['threads', { threads: 1.5 }, 'options.threads must be a positive integer'],
    [
      'idleTimeoutMs',
      { idleTimeoutMs: -1 },
      'options.idleTimeoutMs must be a non-negative number of milliseconds (or Infinity)',
    ],
    [
      'taskTimeoutMs',
      { taskTimeoutMs: 0 },
      'options.taskTimeoutMs must be a positive number of milliseconds',
    ],
    [
      'taskTimeoutMs',
      { taskTimeoutMs: Number.POSITIVE_INFINITY },
      'options.taskTimeoutMs must be a positive number of milliseconds',
    ],
    ['backend', { backend: 'webgl' as 'cpu' }, 'options.backend must be one of auto, wasm, cpu, tensorflow'],
    [
      'workerFilename',
      { workerFilename: '/nonexistent/worker.js' },
      'options.workerFilename: no such file "/nonexistent/worker.js"',
    ],
    [
      'resourceLimits',
      { resourceLimits: { maxOldGenerationSizeMb: -5 } },
      'options.resourceLimits.maxOldGenerationSizeMb must be a positive number',
    ],
    ['onError', { onError: 'log' as unknown as () => void }, 'options.onError must be a function'],
  ])('refuses an invalid %s option, naming it', (_name, options, message) => {
    expect(() => new ForecastPool({ model: artifactsA, ...options })).toThrow(new InvalidOptionError(message))
    expect(() => new ForecastPool({ model: artifactsA, ...options })).toThrow(InvalidOptionError)
  })

  it('accepts the tensorflow backend, and predicts on wasm or cpu where tfjs-node does not load', async () => {
    const pool = open({ backend: 'tensorflow' })
    const x = rowsOf(2)
    expectClose(await pool.predict(x.slice(), 2), inProcess(modelA, x, 2))
  })

  it('accepts a file: URL as the worker filename', async () => {
    const pool = open({ workerFilename: new URL('../fixtures/forecast/garbage-worker.mjs', import.meta.url) })
    await expect(pool.predict(rowsOf(1), 1)).rejects.toBeInstanceOf(ForecastWorkerError)
  })

  it('closes once however often it is called, and rejects later predicts', async () => {
    const pool = open()
    const x = rowsOf(1)
    await pool.predict(x.slice(), 1)
    const first = pool.close()
    expect(pool.close()).toBe(first)
    await expect(first).resolves.toBeUndefined()
    await expect(pool.predict(x.slice(), 1)).rejects.toThrow(new ForecastWorkerError('forecast pool closed'))
    expect(pool.healthy).toBe(false)
  })

  it('reports nothing through onError for predicts that the close rejects', async () => {
    const errors: Error[] = []
    const onError = (e: Error) => errors.push(e)
    const starting = open({ workerFilename: fixture('slow-start-worker.mjs'), onError })
    const waiting = starting.predict(rowsOf(1), 1).catch((e: unknown) => e)
    const hanging = open({ workerFilename: fixture('hang-worker.mjs'), taskTimeoutMs: 500, onError })
    await vi.waitFor(() => expect(hanging.starting).toBe(false), { timeout: 10_000, interval: 50 })
    await hanging.predict(rowsOf(1), 1)
    const stuck = rowsOf(1)
    stuck[0] = kMarker
    const running = hanging.predict(stuck, 1).catch((e: unknown) => e)

    await Promise.all([starting.close(), hanging.close()])
    for (const err of [await waiting, await running]) {
      expect(err).toBeInstanceOf(ForecastWorkerError)
      expect((err as Error).message).toBe('forecast pool closed')
    }
    await expect(starting.predict(rowsOf(1), 1)).rejects.toThrow('forecast pool closed')
    await expect(hanging.predict(rowsOf(1), 1)).rejects.toThrow('forecast pool closed')
    await sleep(200)
    expect(errors).toEqual([])
  })

  it('lets a predict already sent to a worker finish when it closes', async () => {
    const pool = open()
    const x = rowsOf(2)
    await pool.predict(x.slice(), 2)
    const running = pool.predict(x.slice(), 2)
    await pool.close()
    expectClose(await running, inProcess(modelA, x, 2))
  })
})

describe('ForecastPool on the calling thread (inlineMaxMacs)', () => {
  // Multiply-adds of one row of the test models (FEATURE_COUNT -> 16 -> outputs).
  const macsPerRow = () => FEATURE_COUNT * 16 + 16 * outputs
  const ready = (pool: ForecastPool) =>
    vi.waitFor(() => expect(pool.runsInline(1)).toBe(true), { timeout: 10_000, interval: 20 })

  it('runs a small batch here once a worker has sent the layers, with what the worker computes', async () => {
    const pool = open({ inlineMaxMacs: 250_000 })
    // Nothing runs here before a worker has loaded the model and vouched for its loops.
    expect(pool.runsInline(1)).toBe(false)
    await ready(pool)
    const x = rowsOf(3, 5)
    const before = x.slice()
    expectClose(await pool.predict(x, 3), inProcess(modelA, x, 3))
    // The caller's features are neither transferred nor normalised in place.
    expect(x).toEqual(before)
    expect(pool.stats).toMatchObject({ tasks: 0, inline: 1 })
  })

  it('sends a batch over the budget to a worker', async () => {
    const pool = open({ inlineMaxMacs: 2 * macsPerRow() })
    await ready(pool)
    expect(pool.runsInline(2)).toBe(true)
    expect(pool.runsInline(3)).toBe(false)
    const x = rowsOf(3, 6)
    expectClose(await pool.predict(x.slice(), 3), inProcess(modelA, x, 3))
    expectClose(
      await pool.predict(x.slice(0, 2 * FEATURE_COUNT), 2),
      inProcess(modelA, x.slice(0, 2 * FEATURE_COUNT), 2),
    )
    expect(pool.stats).toMatchObject({ tasks: 1, inline: 1 })
  })

  it('runs a swapped model in a worker until one sends its layers, then here', async () => {
    const pool = open({ inlineMaxMacs: 250_000 })
    await ready(pool)
    const x = rowsOf(2, 8)
    pool.setModel(artifactsB)
    expect(pool.runsInline(2)).toBe(false)
    expectClose(await pool.predict(x.slice(), 2), inProcess(modelB, x, 2))
    await ready(pool)
    expectClose(await pool.predict(x.slice(), 2), inProcess(modelB, x, 2))
    expect(pool.stats).toMatchObject({ tasks: 1, inline: 1 })
  })

  it('checks the layers a worker sends, and predicts in the workers when they do not fit', async () => {
    const onError = vi.fn()
    const pool = open({ inlineMaxMacs: 250_000, workerFilename: fixture('bad-layers-worker.mjs'), onError })
    await vi.waitFor(() => expect(pool.starting).toBe(false), { timeout: 10_000, interval: 20 })
    expect(onError).toHaveBeenCalledWith(
      new ForecastWorkerError(
        `forecast worker sent unusable layers (layer 0's kernel is not ${FEATURE_COUNT} × 16 float32); predicting in the workers`,
      ),
    )
    expect(pool.runsInline(1)).toBe(false)
    const x = rowsOf(1, 9)
    expectClose(await pool.predict(x.slice(), 1), inProcess(modelA, x, 1))
    expect(pool.stats).toMatchObject({ tasks: 1, inline: 0 })
  })

  it('predicts in the workers when their pongs carry no layers', async () => {
    const pool = open({ inlineMaxMacs: 250_000, workerFilename: fixture('garbage-worker.mjs') })
    await vi.waitFor(() => expect(pool.starting).toBe(false), { timeout: 10_000, interval: 20 })
    expect(pool.runsInline(1)).toBe(false)
    await expect(pool.predict(rowsOf(1), 1)).rejects.toBeInstanceOf(ForecastWorkerError)
  })

  it('keeps running small batches here while a crashed worker is replaced', async () => {
    // One row runs here, two go to the worker; a two-row batch marked 999 ends the worker's thread.
    const pool = open({ inlineMaxMacs: macsPerRow(), workerFilename: fixture('crash-worker.mjs') })
    await ready(pool)
    const crash = rowsOf(2)
    crash[0] = kMarker
    await expect(pool.predict(crash, 2)).rejects.toBeInstanceOf(ForecastWorkerError)
    const x = rowsOf(1, 3)
    const answered = pool.predict(x, 1)
    // Answered without waiting for the replacement to load tfjs and the model.
    expect(pool.starting).toBe(true)
    expectClose(await answered, inProcess(modelA, x, 1))
    expect(pool.stats).toMatchObject({ inline: 1, failures: 1 })
    expect(pool.healthy).toBe(true)
  })

  it('ends two quick swaps on the last model, here as in the workers', async () => {
    const pool = open({ inlineMaxMacs: 250_000 })
    await ready(pool)
    pool.setModel(artifactsB)
    pool.setModel(artifactsA)
    expect(pool.modelVersion).toBe(3)
    await ready(pool)
    const x = rowsOf(2, 4)
    expectClose(await pool.predict(x.slice(), 2), inProcess(modelA, x, 2))
    expect(pool.stats.inline).toBe(1)
  })

  it('refuses a budget that is negative, fractional or past 10 M', () => {
    const message =
      'options.inlineMaxMacs must be an integer number of multiply-adds from 0 (always a worker) to 10000000'
    for (const bad of [-1, Number.NaN, 0.5, 10_000_001, Number.POSITIVE_INFINITY])
      expect(() => open({ inlineMaxMacs: bad })).toThrow(new InvalidOptionError(message))
  })
})

describe('resolveWorkerFile', () => {
  it('finds the compiled worker from the TypeScript sources', () => {
    expect(resolveWorkerFile('worker.js')).toBe(
      fileURLToPath(new URL('../../dist/forecast/worker.js', import.meta.url)),
    )
  })

  it('says to build when no compiled worker exists', () => {
    expect(() => resolveWorkerFile('no-such-worker.js')).toThrow(ForecastWorkerError)
    expect(() => resolveWorkerFile('no-such-worker.js')).toThrow(/run `npm run build`$/)
  })
})

describe('the forecast worker', () => {
  // In process: the handler is a plain async function once its module has loaded.
  const load = () => import('../../src/forecast/worker.js')

  it('answers a ping without a model with a pong that holds no layers', async () => {
    const { default: handle } = await load()
    expect(await handle({ kind: 'ping' })).toEqual({ kind: 'pong', version: null, dense: null })
  })

  it('loads the model a ping carries, so that the first predict needs no round trip', async () => {
    const { default: handle } = await load()
    const pong = await handle({ kind: 'ping', version: 43, model: artifactsB })
    // The Dense stack comes back with the pong, checked against tfjs in the worker.
    expect(pong).toMatchObject({ kind: 'pong', version: 43 })
    const dense = (pong as { dense: { inDim: number; outDim: number }[] }).dense
    expect(dense.map((l) => [l.inDim, l.outDim])).toEqual([
      [FEATURE_COUNT, 16],
      [16, outputs],
    ])
    const x = rowsOf(2)
    const reply = await handle({ kind: 'predict', version: 43, rows: 2, features: x.slice() })
    expectClose((reply as unknown as Record<symbol, Float32Array>)[valueSymbol]!, inProcess(modelB, x, 2))
  })

  it('leaves a model that fails to load at warm-up for the predict to report', async () => {
    const { default: handle } = await load()
    const broken = { ...artifactsB, weights: new ArrayBuffer(4) }
    expect(await handle({ kind: 'ping', version: 44, model: broken })).toEqual({
      kind: 'pong',
      version: null,
      dense: null,
    })
    const x = rowsOf(1)
    expect(await handle({ kind: 'predict', version: 44, rows: 1, features: x })).toEqual({
      kind: 'need-model',
      version: 44,
      features: x,
    })
  })

  it('never asks for tfjs-node unless the backend is explicitly tensorflow', async () => {
    const { workerBackend } = await load()
    expect(workerBackend(undefined)).toBe('wasm')
    expect(workerBackend('auto')).toBe('wasm')
    expect(workerBackend('wasm')).toBe('wasm')
    expect(workerBackend('cpu')).toBe('cpu')
    // initBackend('auto'): tfjs-node when it loads, else wasm, else cpu.
    expect(workerBackend('tensorflow')).toBe('auto')
  })

  it('asks for the model of a version it does not hold, handing the features back', async () => {
    const { default: handle } = await load()
    const x = rowsOf(2)
    const reply = await handle({ kind: 'predict', version: 41, rows: 2, features: x })
    expect(reply).toEqual({ kind: 'need-model', version: 41, features: x })
  })

  it('loads the model it is sent and predicts with it, and then without it', async () => {
    const { default: handle } = await load()
    const x = rowsOf(3)
    const expected = inProcess(modelB, x, 3)
    const first = await handle({
      kind: 'predict',
      version: 42,
      rows: 3,
      features: x.slice(),
      model: artifactsB,
    })
    // Piscina.move() wraps the result for transfer; a pool receives the Float32Array itself.
    expectClose((first as unknown as Record<symbol, Float32Array>)[valueSymbol]!, expected)
    const again = await handle({ kind: 'predict', version: 42, rows: 3, features: x.slice() })
    expectClose((again as unknown as Record<symbol, Float32Array>)[valueSymbol]!, expected)
  })

  it('refuses malformed tasks with a message that says what is wrong', async () => {
    const { default: handle } = await load()
    const x = rowsOf(1)
    await expect(
      handle({ kind: 'predict', version: 1, rows: Number.POSITIVE_INFINITY, features: x }),
    ).rejects.toThrow(new RangeError('forecast worker: rows must be a positive integer, got Infinity'))
    await expect(handle({ kind: 'predict', version: 1, rows: 2, features: x })).rejects.toThrow(
      `forecast worker: features must be a Float32Array of rows × ${FEATURE_COUNT} = ${2 * FEATURE_COUNT} values, got ${FEATURE_COUNT}`,
    )
    await expect(handle({ kind: 'predict', version: 0, rows: 1, features: x })).rejects.toThrow(
      'forecast worker: version must be a positive integer, got 0',
    )
    await expect(handle({ kind: 'train' } as never)).rejects.toThrow(
      new TypeError('forecast worker: unknown task kind "train"'),
    )
  })
})
