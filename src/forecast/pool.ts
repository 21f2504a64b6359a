/**
 * ForecastPool: the forecasting model in piscina worker threads, so that tfjs never runs on the
 * thread that samples GPUs and scrapes vLLM.
 *
 * One fixed-size pool (minThreads = maxThreads = `threads`); each worker initialises its backend
 * once and caches one model by version (worker.ts). The artifacts stay here: a worker that lacks
 * the current version answers 'need-model' and gets the task again with them, so a swap costs one
 * extra round trip per worker and the weights cross threads once per worker per version.
 *
 * A predict's deadline (taskTimeoutMs) covers everything the caller waits for: a worker still
 * starting, the queue, the 'need-model' round trip, the load and the run. Workers start (and load
 * the current model) in a warm-up outside any deadline; a predict that runs out of time waiting
 * for it rejects without disturbing the starting worker.
 *
 * Small batches run here (`inlineMaxMacs`): once a worker has loaded a model and found it to be a
 * Dense stack whose loops agree with tfjs, its pong hands the layers over, and a batch costing at
 * most `inlineMaxMacs` multiply-adds runs them on the calling thread: 4 replicas of the shipped
 * model are about 41k, tens of microseconds, no more main-thread time than sending the task to a
 * worker and taking its answer back (measured the same, 0.7-1.1 ms a tick with the features) and
 * no thread wake-up on either side, which is what the latency was. Layers once held serve their
 * version through worker restarts too. Larger batches, other architectures and every model until
 * a worker has vouched for it go to the workers. tfjs is never loaded on the calling thread.
 *
 * Failure handling (forecasting.md §5): a task past its deadline is aborted, which makes piscina
 * terminate its worker and start another; a worker that exits or throws rejects its task; a worker
 * that fails to load emits 'error' on the pool, which would crash the process with no listener.
 * Every such case rejects the predict with a typed error, marks the pool unhealthy until the next
 * success, and never throws into the caller's thread.
 */
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { Piscina } from 'piscina'
import {
  ForecastTimeoutError,
  ForecastWorkerError,
  InvalidArgumentError,
  InvalidOptionError,
} from '../errors.js'
import { checkDenseLayers, type DenseForward, denseForward, denseMacsPerRow } from './dense.js'
import { FEATURE_COUNT } from './features.js'
import { type ModelArtifacts, normalize } from './model-io.js'
import type { ForecastReply, ForecastTask, ForecastWorkerData, NeedModel, Pong } from './worker.js'

/**
 * The tfjs backend in the workers. 'auto' (the default) is wasm, or cpu when wasm cannot start:
 * unlike model.ts's initBackend('auto'), never @tensorflow/tfjs-node, which fails in worker threads
 * (tfjs#2079; tfjs#8388, "starts failing at the second worker thread"). 'tensorflow' asks for
 * tfjs-node explicitly (still wasm, then cpu, when it is not installed or does not load there).
 */
export type ForecastBackend = 'auto' | 'wasm' | 'cpu' | 'tensorflow'

export interface ForecastPoolOptions {
  /** The model the workers run until `setModel`. */
  model: ModelArtifacts
  /** Worker threads, each with its own backend and model copy. Default 1. */
  threads?: number
  /**
   * piscina's idleTimeout: how long a worker above minThreads may idle before it ends. This pool
   * runs minThreads = maxThreads = `threads`, so none ends today; the default (60,000) guards the
   * day that changes, since piscina's own (0) would re-initialise tfjs and the model per task.
   */
  idleTimeoutMs?: number
  /**
   * Deadline of one predict, from the call to its result: waiting for a worker that is still
   * starting, queueing, a model (re)load and the run included. Default 1,000.
   */
  taskTimeoutMs?: number
  /**
   * tfjs backend in the workers. Default 'auto': wasm, cpu when wasm cannot start; never
   * @tensorflow/tfjs-node, which fails in worker threads (tfjs#2079, #8388). 'tensorflow': use
   * tfjs-node, explicitly requested (falls back like 'auto' when it does not load). 'wasm': wasm,
   * else cpu. 'cpu': cpu.
   */
  backend?: ForecastBackend
  /** Worker module; default the compiled worker.js (resolveWorkerFile). Tests use fixtures. */
  workerFilename?: string | URL
  resourceLimits?: { maxOldGenerationSizeMb?: number }
  /**
   * Batches whose forward pass costs at most this many multiply-adds (rows × the model's per-row
   * cost) run on the calling thread, with the Dense loops a worker compiled and checked against
   * tfjs; larger ones, and models that are not Dense stacks, go to a worker. Default 250,000
   * (≈0.1-0.2 ms of arithmetic; the shipped model is 10,336 a row, so up to 24 replicas), at most
   * 10,000,000. 0: always a worker.
   */
  inlineMaxMacs?: number
  /** Failures no predict is waiting on: a worker that fails to start, a pool-level error. */
  onError?: (err: Error) => void
}

export interface ForecastPoolStats {
  /** Predicts sent to a worker. */
  tasks: number
  /** Predicts rejected with ForecastWorkerError (crash, throw, garbage), closing excluded. */
  failures: number
  /** Predicts rejected with ForecastTimeoutError, those that waited for a starting worker included. */
  timeouts: number
  /** Workers ended by a crash, a load failure or a timeout (piscina starts a replacement). */
  restarts: number
  /** Predicts answered on the calling thread (`inlineMaxMacs`), not counted in `tasks`. */
  inline: number
}

const kDefaultOptions = {
  threads: 1,
  idleTimeoutMs: 60_000,
  taskTimeoutMs: 1_000,
  backend: 'auto',
  inlineMaxMacs: 250_000,
} as const
const kBackends: readonly string[] = ['auto', 'wasm', 'cpu', 'tensorflow']
/**
 * Upper bound of `inlineMaxMacs`: 10 M multiply-adds are several milliseconds of one thread, past
 * which a batch belongs in a worker whatever the hop costs.
 */
const kMaxInlineMacs = 10_000_000
/** Bound on the warm-up ping: a cold worker imports tfjs, starts its backend and loads the model. */
const kStartupTimeoutMs = 30_000

/**
 * The path of a compiled worker module. Vitest runs the .ts sources, next to which no `.js`
 * exists, so after `./<name>` beside this module comes `<package root>/dist/forecast/<name>`.
 */
export function resolveWorkerFile(name: string): string {
  const candidates = [
    fileURLToPath(new URL(`./${name}`, import.meta.url)),
    fileURLToPath(new URL(`../../dist/forecast/${name}`, import.meta.url)),
  ]
  for (const file of candidates) if (existsSync(file)) return file
  throw new ForecastWorkerError(
    `forecast worker ${name} not found (looked for ${candidates.join(' and ')}); run \`npm run build\``,
  )
}

export class ForecastPool {
  #piscina: Piscina<ForecastTask, ForecastReply>
  #artifacts: ModelArtifacts
  #version = 1
  #timeoutMs: number
  #onError: ((err: Error) => void) | undefined
  #healthy = true
  /** Set by a worker that failed to start; a predict that then times out reports it as the cause. */
  #startError: Error | null = null
  /** Pending warm-up pings (never rejects); null once they are answered. Predicts wait for it. */
  #warming: Promise<void> | null = null
  #closing: Promise<void> | null = null
  #stats: ForecastPoolStats = { tasks: 0, failures: 0, timeouts: 0, restarts: 0, inline: 0 }
  #inlineMaxMacs: number
  /** The current version's Dense stack, once a worker has sent it; null: every batch to a worker. */
  #inline: Inline | null = null

  constructor(options: ForecastPoolOptions) {
    const o = validateOptions(options)
    this.#artifacts = o.model
    this.#timeoutMs = o.taskTimeoutMs
    this.#onError = o.onError
    this.#inlineMaxMacs = o.inlineMaxMacs
    const workerData: ForecastWorkerData = { backend: o.backend }
    this.#piscina = new Piscina({
      filename: o.filename,
      minThreads: o.threads,
      maxThreads: o.threads,
      idleTimeout: o.idleTimeoutMs,
      workerData,
      recordTiming: false,
      // In-flight predicts end by their deadline; the bound only matters for a stuck warm-up ping.
      closeTimeout: o.taskTimeoutMs + 1_000,
      ...(o.resourceLimits === undefined ? {} : { resourceLimits: o.resourceLimits }),
    })
    // Without a listener a worker that fails to load crashes the process (forecasting.md §5).
    this.#piscina.on('error', (err: Error) => this.#onPoolError(err))
    this.#piscina.on('workerDestroy', () => this.#onWorkerDestroy())
    this.#warmUp(o.threads)
  }

  /** Increases by one with each `setModel`; the constructor's model is version 1. */
  get modelVersion(): number {
    return this.#version
  }

  /**
   * False after a failed or timed-out predict or a worker that failed to start, until a success.
   * A predict that ran out of time waiting for a worker to start does not count: starting is not
   * failing (a start that fails, or takes longer than 30 s, does).
   */
  get healthy(): boolean {
    return this.#healthy && this.#closing === null
  }

  /**
   * True while a worker is starting (at first, and after each restart) and no start has failed:
   * predicts wait for it, and one whose deadline passes meanwhile rejects with ForecastTimeoutError
   * ('forecast worker still starting after N ms'), which says nothing about the model.
   */
  get starting(): boolean {
    return this.#warming !== null && this.#startError === null && this.#closing === null
  }

  /** Predicts answered on the calling thread so far (stats.inline, without the copy). */
  get inlinePredicts(): number {
    return this.#stats.inline
  }

  get stats(): ForecastPoolStats {
    return { ...this.#stats }
  }

  /**
   * Swaps the model: predicts from now on use it; those already started finish on the old one.
   * Each worker loads it on its first task of the new version.
   */
  setModel(artifacts: ModelArtifacts): void {
    const bad = checkArtifacts(artifacts)
    if (bad !== null) throw new InvalidArgumentError(`artifacts ${bad}`)
    this.#artifacts = artifacts
    this.#version++
    this.#inline = null
    // The new version runs in the workers until one has loaded it and sent its layers back.
    if (this.#inlineMaxMacs > 0 && this.#closing === null) this.#learnLayers()
  }

  /** Whether a predict of `rows` rows now runs on the calling thread. */
  runsInline(rows: number): boolean {
    const inl = this.#inline
    return (
      inl !== null &&
      inl.version === this.#version &&
      rows * inl.macsPerRow <= this.#inlineMaxMacs &&
      this.#closing === null
    )
  }

  /**
   * Runs the model on `rows` rows of FEATURE_COUNT raw features; resolves to rows × outputs
   * probabilities (row-major, in meta.outputs order). When the batch goes to a worker and
   * `features` spans its whole ArrayBuffer, that buffer is transferred and detached here: pass
   * `features.slice()` to keep it. A batch run here (`runsInline`) leaves `features` as it was.
   * Rejects with InvalidArgumentError, ForecastTimeoutError or ForecastWorkerError; never throws.
   * Settles within taskTimeoutMs (plus timer lag), a worker still starting included.
   */
  async predict(features: Float32Array, rows: number): Promise<Float32Array> {
    if (this.#closing !== null) throw new ForecastWorkerError('forecast pool closed')
    if (!(features instanceof Float32Array)) throw new InvalidArgumentError('features must be a Float32Array')
    if (!Number.isSafeInteger(rows) || rows < 0)
      throw new InvalidArgumentError(`rows must be a non-negative integer, got ${rows}`)
    if (features.length !== rows * FEATURE_COUNT)
      throw new InvalidArgumentError(
        `features hold ${features.length} values, expected rows × ${FEATURE_COUNT} = ${rows * FEATURE_COUNT}`,
      )
    if (rows === 0) return new Float32Array(0)
    // Before any wait: held layers serve their version while a restarted worker starts, too.
    if (this.runsInline(rows)) {
      const out = this.#runInline(features, rows)
      if (out !== null) return out
    }
    // One deadline from here on, warm-up wait included. A ref'd timer (unlike AbortSignal.timeout's):
    // a pending predict keeps the process alive until it settles, and the timer goes away with it.
    const deadline = new Deadline()
    deadline.timer = setTimeout(expire, this.#timeoutMs, deadline)
    // One async frame for the whole predict (not a wrapper awaiting an inner one): each extra
    // frame is a promise and microtask hops on every tick.
    try {
      if (this.#warming !== null && this.#startError === null) {
        // Nothing is sent before the worker is up: the deadline then only ends this wait, and the
        // starting worker (not stuck, just slow) goes on starting for the predicts after this one.
        const started = await settledUnlessAborted(this.#warming, deadline)
        if (this.#closing !== null) throw new ForecastWorkerError('forecast pool closed')
        if (!started) {
          this.#stats.timeouts++
          throw new ForecastTimeoutError(`forecast worker still starting after ${this.#timeoutMs} ms`)
        }
      }
      if (this.runsInline(rows)) {
        const out = this.#runInline(features, rows)
        if (out !== null) return out
      }
      const version = this.#version
      const artifacts = this.#artifacts
      let x = ownBuffer(features)
      let reply: ForecastReply
      this.#stats.tasks++
      try {
        reply = await this.#piscina.run(
          { kind: 'predict', version, rows, features: x },
          { signal: deadline, transferList: [x.buffer as ArrayBuffer] },
        )
        if (isNeedModel(reply)) {
          if (this.#closing !== null) throw new ForecastWorkerError('forecast pool closed')
          x = reply.features
          reply = await this.#piscina.run(
            { kind: 'predict', version, rows, features: x, model: artifacts },
            { signal: deadline, transferList: [x.buffer as ArrayBuffer] },
          )
        }
      } catch (err) {
        throw this.#taskError(err, deadline)
      }
      const expected = rows * artifacts.meta.outputs.length
      if (!(reply instanceof Float32Array) || reply.length !== expected) {
        this.#stats.failures++
        this.#healthy = false
        throw new ForecastWorkerError(
          `forecast worker returned ${describe(reply)}, expected a Float32Array of rows × outputs = ${expected} values`,
        )
      }
      this.#healthy = true
      this.#startError = null
      return reply
    } finally {
      clearTimeout(deadline.timer)
    }
  }

  /** The batch on this thread, or null (reported) if the loops threw: the workers take over. */
  #runInline(features: Float32Array, rows: number): Float32Array | null {
    const inl = this.#inline!
    try {
      // normalize and the loops read only the first rows × FEATURE_COUNT values: no view needed.
      if (inl.scratch.length < features.length) inl.scratch = new Float32Array(features.length)
      inl.scratch.set(features)
      normalize(inl.scratch, rows, inl.normalization)
      const out = inl.forward(inl.scratch, rows)
      this.#stats.inline++
      this.#healthy = true
      return out
    } catch (err) {
      this.#inline = null
      const message = `forecast pool: the inline forward pass failed (${(err as Error)?.message}); predicting in the workers`
      this.#report(new ForecastWorkerError(message, { cause: err }))
      return null
    }
  }

  /** Takes a pong's Dense stack for inline batches if it is the current version's and checks out. */
  #adoptLayers(reply: unknown): void {
    if (this.#inlineMaxMacs <= 0 || this.#closing !== null || typeof reply !== 'object' || reply === null)
      return
    const pong = reply as Partial<Pong>
    if (pong.kind !== 'pong' || pong.version !== this.#version || pong.dense == null) return
    // Each worker's warm-up (and each restart's) sends the same version's layers again.
    if (this.#inline?.version === pong.version) return
    try {
      const meta = this.#artifacts.meta
      const bad = checkDenseLayers(pong.dense, FEATURE_COUNT, meta.outputs.length)
      if (bad !== null) {
        this.#report(
          new ForecastWorkerError(`forecast worker sent unusable layers (${bad}); predicting in the workers`),
        )
        return
      }
      this.#inline = {
        version: pong.version,
        forward: denseForward(pong.dense),
        macsPerRow: denseMacsPerRow(pong.dense),
        // A copy: the workers got theirs by structured clone, so a later change by the caller
        // reaches neither route.
        normalization: { mean: [...meta.normalization.mean], std: [...meta.normalization.std] },
        scratch: new Float32Array(0),
      }
    } catch (err) {
      // Called from promise callbacks: a throw here would be an unhandled rejection.
      this.#report(new ForecastWorkerError(`forecast pool: layers not taken (${(err as Error)?.message})`))
    }
  }

  /** One ping with the current model, outside any predict's deadline, for its layers. */
  #learnLayers(): void {
    const version = this.#version
    const ping: ForecastTask = { kind: 'ping', version, model: this.#artifacts }
    this.#piscina.run(ping, { signal: AbortSignal.timeout(kStartupTimeoutMs) }).then(
      (reply) => {
        if (this.#closing === null) this.#adoptLayers(reply)
      },
      // A worker that cannot load it fails the predicts that go to it, which report why.
      () => {},
    )
  }

  /** Lets running predicts finish (each within its deadline), then ends the workers. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= this.#piscina.close().catch(() => {})
    return this.#closing
  }

  #taskError(err: unknown, signal: Deadline): Error {
    if (this.#closing !== null) return new ForecastWorkerError('forecast pool closed', { cause: err })
    this.#healthy = false
    if (signal.aborted) {
      // piscina terminated the worker that ran it (if one had started it) and starts another.
      if (this.#startError !== null) {
        this.#stats.failures++
        return new ForecastWorkerError(`forecast worker failed to start: ${this.#startError.message}`, {
          cause: this.#startError,
        })
      }
      this.#stats.timeouts++
      return new ForecastTimeoutError(`forecast task ran past its ${this.#timeoutMs} ms deadline`, {
        cause: err,
      })
    }
    if (err instanceof ForecastWorkerError) return err
    this.#stats.failures++
    return new ForecastWorkerError(`forecast worker failed: ${(err as Error)?.message ?? String(err)}`, {
      cause: err,
    })
  }

  /**
   * Pings `n` workers with the current model. A cold worker imports tfjs, starts its backend and
   * loads the model (≈0.2 s here, seconds on a busy host). Predicts wait for the pings within their
   * own deadline (the pings are bounded by kStartupTimeoutMs), except while workers are known to
   * fail at start; the load done here is one a predict's deadline no longer has to cover.
   */
  #warmUp(n: number): void {
    // Sent from a microtask: piscina emits 'workerDestroy' while the dead worker is still in its
    // ready set, and a task run from the listener would be posted to it (an assertion, uncaught).
    const warming: Promise<void> = Promise.resolve()
      .then(() => {
        if (this.#closing !== null) return
        const signal = AbortSignal.timeout(kStartupTimeoutMs)
        const ping: ForecastTask = { kind: 'ping', version: this.#version, model: this.#artifacts }
        const pings: Promise<unknown>[] = []
        for (let i = 0; i < n; i++)
          pings.push(this.#piscina.run(ping, { signal }).then((reply) => this.#adoptLayers(reply)))
        return Promise.all(pings)
      })
      .then(
        () => {
          this.#startError = null
        },
        (err: unknown) => {
          if (this.#closing !== null) return
          this.#startError = err as Error
          this.#healthy = false
          const message = `forecast worker failed to start: ${(err as Error)?.message ?? String(err)}`
          this.#report(new ForecastWorkerError(message, { cause: err }))
        },
      )
      .finally(() => {
        if (this.#warming === warming) this.#warming = null
      })
    this.#warming = warming
  }

  #onWorkerDestroy(): void {
    if (this.#closing !== null) return
    this.#stats.restarts++
    // piscina starts the replacement now (after a timeout or a crash); wait for it to load.
    if (this.#warming === null) this.#warmUp(1)
  }

  #onPoolError(err: Error): void {
    if (this.#closing !== null) return
    // piscina emits 'error' for a failure no task is waiting on: in practice a worker that failed
    // to load while its task was still queued; that task would otherwise just time out.
    this.#startError = err
    this.#healthy = false
    this.#report(
      new ForecastWorkerError(`forecast worker failed: ${err?.message ?? String(err)}`, { cause: err }),
    )
  }

  #report(err: Error): void {
    try {
      this.#onError?.(err)
    } catch {
      // A throwing onError must not turn a reported failure into an uncaught exception.
    }
  }
}

interface ValidOptions {
  model: ModelArtifacts
  threads: number
  idleTimeoutMs: number
  taskTimeoutMs: number
  backend: ForecastBackend
  filename: string
  resourceLimits: { maxOldGenerationSizeMb?: number } | undefined
  inlineMaxMacs: number
  onError: ((err: Error) => void) | undefined
}

interface Inline {
  version: number
  forward: DenseForward
  macsPerRow: number
  normalization: ModelArtifacts['meta']['normalization']
  /** The normalised copy of a batch (the caller's features are left as they were). */
  scratch: Float32Array
}

function validateOptions(options: ForecastPoolOptions): ValidOptions {
  if (typeof options !== 'object' || options === null)
    throw new InvalidOptionError('options must be an object')
  const o = { ...kDefaultOptions, ...stripUndefined(options) }
  const model = o.model as ModelArtifacts
  const bad = checkArtifacts(model)
  if (bad !== null) throw new InvalidOptionError(`options.model ${bad}`)
  if (!Number.isSafeInteger(o.threads) || o.threads < 1)
    throw new InvalidOptionError('options.threads must be a positive integer')
  if (typeof o.idleTimeoutMs !== 'number' || Number.isNaN(o.idleTimeoutMs) || o.idleTimeoutMs < 0)
    throw new InvalidOptionError(
      'options.idleTimeoutMs must be a non-negative number of milliseconds (or Infinity)',
    )
  if (!Number.isFinite(o.taskTimeoutMs) || o.taskTimeoutMs <= 0 || o.taskTimeoutMs > 2 ** 31 - 1)
    throw new InvalidOptionError('options.taskTimeoutMs must be a positive number of milliseconds')
  if (!kBackends.includes(o.backend))
    throw new InvalidOptionError(`options.backend must be one of ${kBackends.join(', ')}`)
  if (!Number.isSafeInteger(o.inlineMaxMacs) || o.inlineMaxMacs < 0 || o.inlineMaxMacs > kMaxInlineMacs)
    throw new InvalidOptionError(
      `options.inlineMaxMacs must be an integer number of multiply-adds from 0 (always a worker) to ${kMaxInlineMacs}`,
    )
  if (o.onError !== undefined && typeof o.onError !== 'function')
    throw new InvalidOptionError('options.onError must be a function')
  const rl = o.resourceLimits
  if (rl !== undefined) {
    const mb = rl?.maxOldGenerationSizeMb
    if (typeof rl !== 'object' || rl === null || (mb !== undefined && !(Number.isFinite(mb) && mb > 0)))
      throw new InvalidOptionError('options.resourceLimits.maxOldGenerationSizeMb must be a positive number')
  }
  return {
    model,
    threads: o.threads,
    idleTimeoutMs: o.idleTimeoutMs,
    taskTimeoutMs: o.taskTimeoutMs,
    backend: o.backend,
    filename: workerFile(o.workerFilename),
    resourceLimits: rl,
    inlineMaxMacs: o.inlineMaxMacs,
    onError: o.onError,
  }
}

function workerFile(given: string | URL | undefined): string {
  if (given === undefined) return resolveWorkerFile('worker.js')
  let file: string
  try {
    file = given instanceof URL || given.startsWith('file:') ? fileURLToPath(given) : given
  } catch {
    throw new InvalidOptionError('options.workerFilename must be a path or a file: URL')
  }
  if (typeof file !== 'string' || !existsSync(file))
    throw new InvalidOptionError(`options.workerFilename: no such file ${JSON.stringify(String(given))}`)
  return file
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>
}

/** Why `a` cannot be sent to a worker, or null. Full checks (checksums, shapes) are model.ts's. */
function checkArtifacts(a: ModelArtifacts): string | null {
  if (typeof a !== 'object' || a === null) return 'must be ModelArtifacts ({ meta, modelJSON, weights })'
  if (!(a.weights instanceof ArrayBuffer)) return 'must hold its weights in an ArrayBuffer'
  if (typeof a.modelJSON !== 'object' || a.modelJSON === null) return 'has no modelJSON'
  const m = a.meta
  if (typeof m !== 'object' || m === null) return 'has no meta'
  if (!Array.isArray(m.features) || m.features.length !== FEATURE_COUNT)
    return `must take ${FEATURE_COUNT} features (meta.features)`
  if (!Array.isArray(m.outputs) || m.outputs.length < 1) return 'must list its outputs (meta.outputs)'
  const n = m.normalization
  if (
    !Array.isArray(n?.mean) ||
    !Array.isArray(n?.std) ||
    n.mean.length !== FEATURE_COUNT ||
    n.std.length !== FEATURE_COUNT
  )
    return `must hold ${FEATURE_COUNT} means and stds (meta.normalization)`
  return null
}

/**
 * One predict's deadline, passed to piscina as its `signal` in the EventEmitter shape piscina also
 * accepts (`once`/`off`/`removeListener` of 'abort', plus `aborted` and `reason`, read by
 * piscina's run). An AbortController is an EventTarget: its construction, listener maps and
 * event dispatch cost ≈0.1 ms per task at 10 Hz on a small VM, where this is a few fields.
 * Aborting it does what aborting an AbortSignal did: piscina rejects the task with an AbortError
 * and, when a worker had started it, terminates that worker and starts another.
 */
class Deadline {
  aborted = false
  reason: unknown = undefined
  timer: ReturnType<typeof setTimeout> | undefined = undefined
  // At most one task and one warm-up wait listen at a time; two slots avoid an array per predict.
  #a: (() => void) | null = null
  #b: (() => void) | null = null

  once(_event: 'abort', listener: () => void): void {
    if (this.#a === null) this.#a = listener
    else if (this.#b === null) this.#b = listener
    else throw new Error('forecast deadline: more than two abort listeners')
  }

  off(_event: 'abort', listener: () => void): void {
    if (this.#a === listener) this.#a = null
    else if (this.#b === listener) this.#b = null
  }

  removeListener(event: 'abort', listener: () => void): void {
    this.off(event, listener)
  }

  abort(reason: unknown): void {
    if (this.aborted) return
    this.aborted = true
    this.reason = reason
    const a = this.#a
    const b = this.#b
    this.#a = null
    this.#b = null
    a?.()
    b?.()
  }
}

function expire(deadline: Deadline): void {
  deadline.abort(new ForecastTimeoutError('forecast task deadline'))
}

/** Whether `p` settled before `deadline` passed. */
function settledUnlessAborted(p: Promise<void>, deadline: Deadline): Promise<boolean> {
  if (deadline.aborted) return Promise.resolve(false)
  return new Promise((resolve) => {
    const onAbort = () => resolve(false)
    deadline.once('abort', onAbort)
    p.then(() => {
      deadline.off('abort', onAbort)
      resolve(true)
    })
  })
}

/** `f` itself when it spans an unshared ArrayBuffer (transferred as is), else a copy that does. */
function ownBuffer(f: Float32Array): Float32Array {
  return f.buffer instanceof ArrayBuffer && f.byteOffset === 0 && f.byteLength === f.buffer.byteLength
    ? f
    : f.slice()
}

function isNeedModel(r: ForecastReply): r is NeedModel {
  return typeof r === 'object' && r !== null && (r as NeedModel).kind === 'need-model'
}

function describe(r: unknown): string {
  if (r instanceof Float32Array) return `${r.length} values`
  if (ArrayBuffer.isView(r)) return `a ${r.constructor.name}`
  return r === null ? 'null' : typeof r === 'object' ? 'an object' : `a ${typeof r}`
}
