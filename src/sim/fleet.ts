/**
 * A simulated vLLM fleet: replicas with their GPUs, one arrival stream routed across them, a fault
 * schedule, and the ground truth (labels, GPU events, log lines) as it happens. Deterministic under
 * a seed: the same options give the same readings at the same simulated instants.
 */
import { SimScenarioError } from '../errors.js'
import type { EngineReading, FaultLabel, GpuReading, MonitorEvent } from '../telemetry/types.js'
import type { Arrival } from './arrivals.js'
import { type FaultSpec, type FaultSpecInput, parseFaultSpec } from './faults.js'
import { SimGpu } from './gpu.js'
import { GPUS, MODELS } from './hardware.js'
import type { LogStream } from './logs.js'
import { createRng, type Rng, type Seed } from './random.js'
import { SimReplica } from './replica.js'

/** Anything that yields arrivals in time order, `null` when exhausted. */
export interface ArrivalStream {
  next(): Arrival | null
}

export type RouterPolicy = 'round-robin' | 'least-loaded'

/**
 * Something between the arrivals and the replicas (`SimGateway`). Once attached, every arrival goes
 * through it: the base stream, `submit()` and the surge arrivals a replica receives by session
 * affinity (`pinned`).
 */
export interface FleetGateway {
  /** Called once by `attachGateway`, with a random stream of the gateway's own. */
  attach(fleet: SimFleet, rng: Rng): void
  /** One request arriving at `tMs`; false when it was turned away at once (no replica, shed, queue full). */
  arrive(
    tMs: number,
    promptTokens: number,
    targetTokens: number,
    maxTokens: number,
    pinned: SimReplica | null,
  ): boolean
  /** Called after every fleet tick and at the end of `advanceTo`: timeouts, deferred dispatches. */
  tick(tMs: number): void
}

export interface FleetOptions {
  seed?: Seed
  /** Number of replicas, named r0, r1, ... */
  replicas?: number
  /** Key of `GPUS`. */
  gpu?: string
  /** Key of `MODELS`. */
  model?: string
  tensorParallelSize?: number
  gpuMemoryUtilization?: number
  maxNumSeqs?: number
  maxNumBatchedTokens?: number
  maxModelLen?: number
  /** First replica's port in log lines (and the HTTP server's, when served). */
  basePort?: number
  arrivals?: ArrivalStream | null
  router?: RouterPolicy
  faults?: FaultSpecInput[]
  /** Wall-clock epoch ms of simulated t = 0, for log timestamps. Fixed by default so runs repeat. */
  epochMs?: number
  /** Weight loading speed, bytes/s (default 2.5 GiB/s: a local NVMe). */
  loadBytesPerSec?: number
}

export interface FleetListener {
  log?(replica: string, stream: LogStream, text: string, t: number): void
  label?(label: FaultLabel, t: number): void
  gpuEvent?(event: MonitorEvent, t: number): void
  listening?(replica: SimReplica, open: boolean): void
}

const TICK_MS = 100
const DEFAULT_EPOCH_MS = Date.UTC(2026, 10, 27, 9, 0, 0)

export class SimFleet {
  readonly replicas: SimReplica[]
  readonly gpus: SimGpu[]
  readonly epochMs: number
  now = 0
  /** Arrivals that found no serving replica (a gateway would see connection refused). */
  droppedArrivals = 0
  private readonly listeners: FleetListener[] = []
  private readonly arrivals: ArrivalStream | null
  private pending: Arrival | null = null
  private readonly router: RouterPolicy
  private rr = 0
  private nextTickMs = TICK_MS
  private readonly schedule: FaultSpec[]
  private readonly rng: Rng
  private gatewayRef: FleetGateway | null = null

  constructor(options: FleetOptions = {}) {
    const rng: Rng = createRng(options.seed ?? 1)
    this.rng = rng
    const n = options.replicas ?? 1
    if (!Number.isInteger(n) || n < 1 || n > 64) {
      throw new SimScenarioError(`replicas must be an integer from 1 to 64 (got ${String(options.replicas)})`)
    }
    const gpuKey = options.gpu ?? 'H100-80GB'
    const gpu = GPUS[gpuKey]
    if (gpu === undefined) {
      throw new SimScenarioError(
        `unknown gpu ${JSON.stringify(gpuKey)}; expected one of ${Object.keys(GPUS).join(', ')}`,
      )
    }
    const modelKey = options.model ?? 'meta-llama/Llama-3.1-8B-Instruct'
    const model = MODELS[modelKey]
    if (model === undefined) {
      throw new SimScenarioError(
        `unknown model ${JSON.stringify(modelKey)}; expected one of ${Object.keys(MODELS).join(', ')}`,
      )
    }
    const tp = options.tensorParallelSize ?? 1
    if (![1, 2, 4, 8].includes(tp))
      throw new SimScenarioError(`tensorParallelSize must be 1, 2, 4 or 8 (got ${tp})`)
    const util = options.gpuMemoryUtilization ?? 0.92
    if (!(util > 0 && util <= 1)) {
      throw new SimScenarioError(`gpuMemoryUtilization must be in (0, 1] (got ${util})`)
    }
    this.epochMs = options.epochMs ?? DEFAULT_EPOCH_MS
    this.arrivals = options.arrivals ?? null
    this.router = options.router ?? 'least-loaded'
    const maxNumBatchedTokens = options.maxNumBatchedTokens ?? gpu.defaultMaxNumBatchedTokens
    const maxNumSeqs = options.maxNumSeqs ?? gpu.defaultMaxNumSeqs
    const maxModelLen = options.maxModelLen ?? model.maxModelLen
    const basePort = options.basePort ?? 8000
    this.gpus = []
    this.replicas = []
    const hooks = {
      epochMs: (t: number) => this.epochMs + t,
      log: (r: SimReplica, stream: LogStream, text: string, t: number) => {
        for (const l of this.listeners) l.log?.(r.name, stream, text, t)
      },
      label: (label: FaultLabel, t: number) => {
        for (const l of this.listeners) l.label?.(label, t)
      },
      gpuEvent: (event: MonitorEvent, t: number) => {
        for (const l of this.listeners) l.gpuEvent?.(event, t)
      },
      listening: (r: SimReplica, open: boolean) => {
        for (const l of this.listeners) l.listening?.(r, open)
      },
      arrival: (r: SimReplica, t: number, prompt: number, target: number, max: number) => {
        const g = this.gatewayRef
        if (g === null) return false
        g.arrive(t, prompt, target, max, r)
        return true
      },
    }
    for (let i = 0; i < n; i++) {
      const name = `r${i}`
      const gpus: SimGpu[] = []
      for (let k = 0; k < tp; k++) {
        const g = new SimGpu(i * tp + k, gpu, name)
        gpus.push(g)
        this.gpus.push(g)
      }
      const replica = new SimReplica(
        {
          name,
          gpu,
          model,
          tensorParallelSize: tp,
          gpuMemoryUtilization: util,
          maxNumSeqs,
          maxNumBatchedTokens,
          maxModelLen,
          port: basePort + i,
          loadBytesPerSec: options.loadBytesPerSec ?? 2.5 * 1024 ** 3,
        },
        gpus,
        hooks,
        rng.fork(name),
      )
      if (replica.sizing.numGpuBlocks < 2) {
        throw new SimScenarioError(
          `${model.name} does not fit ${gpuKey} at tensorParallelSize ${tp} and gpuMemoryUtilization ${util}: ` +
            'No available memory for the cache blocks',
        )
      }
      // vLLM's start-up check (`_check_enough_kv_cache_memory`, #10517): one max_model_len request must fit.
      if (replica.sizing.kvCacheTokens < maxModelLen) {
        throw new SimScenarioError(
          `${model.name} on ${gpuKey} at tensorParallelSize ${tp}: The model's max seq len (${maxModelLen}) is larger ` +
            `than the maximum number of tokens that can be stored in KV cache (${replica.sizing.kvCacheTokens}). ` +
            'Try increasing gpu_memory_utilization or decreasing max_model_len when initializing the engine.',
        )
      }
      this.replicas.push(replica)
    }
    this.schedule = (options.faults ?? []).map((f, i) => {
      const spec = parseFaultSpec(f, `faults[${i}]`)
      if (spec.replica !== undefined && !this.replicas.some((r) => r.name === spec.replica)) {
        throw new SimScenarioError(
          `faults[${i}]: unknown replica ${JSON.stringify(spec.replica)}; the fleet has ${this.replicas.map((r) => r.name).join(', ')}`,
        )
      }
      return spec
    })
    this.schedule.sort((a, b) => a.atMs - b.atMs)
  }

  on(listener: FleetListener): () => void {
    this.listeners.push(listener)
    return () => {
      const i = this.listeners.indexOf(listener)
      if (i >= 0) this.listeners.splice(i, 1)
    }
  }

  /** The gateway every arrival goes through, null when none was attached. */
  get gateway(): FleetGateway | null {
    return this.gatewayRef
  }

  /**
   * Puts `gateway` between the arrivals and the replicas. Its randomness comes from a fork of the
   * fleet's seed of its own (`gateway`), so the replicas' and the arrivals' streams do not move.
   */
  attachGateway(gateway: FleetGateway): void {
    if (this.gatewayRef !== null) throw new SimScenarioError('the fleet already has a gateway')
    gateway.attach(this, this.rng.fork('gateway'))
    this.gatewayRef = gateway
  }

  /** Starts every replica's process at the current time. */
  start(): void {
    for (const r of this.replicas) r.start(this.now)
  }

  replica(name: string): SimReplica {
    const r = this.replicas.find((x) => x.name === name)
    if (r === undefined) throw new SimScenarioError(`unknown replica ${JSON.stringify(name)}`)
    return r
  }

  /** Injects a fault now (its `atMs` is set to the current time when in the past). */
  inject(input: FaultSpecInput): FaultSpec {
    const spec = parseFaultSpec(input, 'fault')
    if (spec.atMs < this.now) spec.atMs = this.now
    if (spec.atMs === this.now) this.apply(spec)
    else {
      this.schedule.push(spec)
      this.schedule.sort((a, b) => a.atMs - b.atMs)
    }
    return spec
  }

  /** Advances the whole fleet to simulated time `t`. */
  advanceTo(t: number): void {
    while (this.nextTickMs <= t) {
      this.advanceEvents(this.nextTickMs)
      for (const r of this.replicas) r.tick(this.nextTickMs, TICK_MS)
      this.gatewayRef?.tick(this.nextTickMs)
      this.nextTickMs += TICK_MS
    }
    this.advanceEvents(t)
    this.gatewayRef?.tick(t)
  }

  /**
   * Routes one request now; false when no replica serves (with a gateway: when it was turned away
   * at once; `droppedArrivals` still counts those that found no replica).
   */
  submit(promptTokens: number, targetTokens: number, maxTokens: number): boolean {
    if (this.gatewayRef !== null)
      return this.gatewayRef.arrive(this.now, promptTokens, targetTokens, maxTokens, null)
    const r = this.pick()
    if (r === null) {
      this.droppedArrivals++
      return false
    }
    return r.submit(promptTokens, targetTokens, maxTokens, null) !== null
  }

  engineReadings(): EngineReading[] {
    return this.replicas.map((r) => r.reading())
  }

  gpuReadings(): GpuReading[] {
    return this.gpus.map((g) => g.reading())
  }

  private advanceEvents(t: number): void {
    for (;;) {
      if (this.pending === null && this.arrivals !== null) this.pending = this.arrivals.next()
      const a = this.pending
      const f = this.schedule[0]
      const ta = a !== null ? a.atMs : Number.POSITIVE_INFINITY
      const tf = f !== undefined ? f.atMs : Number.POSITIVE_INFINITY
      const next = Math.min(ta, tf)
      if (next > t) break
      for (const r of this.replicas) r.advanceTo(next)
      this.now = next
      if (tf <= ta) {
        this.schedule.shift()
        this.apply(f as FaultSpec)
      } else {
        this.pending = null
        // A trace gives the tokens actually generated; the model stopped there on its own.
        const out = (a as Arrival).maxTokens
        this.submit((a as Arrival).promptTokens, out, Math.max(256, out * 2))
      }
    }
    for (const r of this.replicas) r.advanceTo(t)
    this.now = t
  }

  private apply(spec: FaultSpec): void {
    const r = spec.replica !== undefined ? this.replica(spec.replica) : (this.replicas[0] as SimReplica)
    r.inject(spec)
  }

  private pick(): SimReplica | null {
    const rs = this.replicas
    if (this.router === 'round-robin') {
      for (let k = 0; k < rs.length; k++) {
        const r = rs[(this.rr + k) % rs.length] as SimReplica
        if (r.phase === 'serving' || r.phase === 'hung') {
          this.rr = (this.rr + k + 1) % rs.length
          return r
        }
      }
      return null
    }
    let best: SimReplica | null = null
    let bestLoad = Number.POSITIVE_INFINITY
    for (const r of rs) {
      // A hung engine still accepts requests (the API server is fine), and its frozen gauges look idle.
      if ((r.phase !== 'serving' && r.phase !== 'hung') || r.engine === null) continue
      const load = r.engine.gaugeRunning + r.engine.gaugeWaiting
      if (load < bestLoad) {
        bestLoad = load
        best = r
      }
    }
    return best
  }
}
