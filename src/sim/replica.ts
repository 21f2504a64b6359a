/**
 * One simulated vLLM server process (a replica): its start-up sequence and log lines, the engine
 * it serves, its GPUs, the faults injected into it and how it dies. Time is simulated ms; the fleet
 * calls `advanceTo` (engine steps, surge arrivals) and `tick` (every 100 ms: timeline, faults, GPU
 * physics, memory checks).
 */
import type { EngineReading, FaultLabel, FaultType, MonitorEvent } from '../telemetry/types.js'
import { emptyEngineReading } from '../vllm/engine-metrics.js'
import { LatencyWindows } from '../vllm/histogram-window.js'
import { type RequestSink, SimEngine, type SimRequest } from './engine.js'
import type { FaultSpec } from './faults.js'
import type { SimGpu } from './gpu.js'
import { type GpuProfile, type KvSizing, type ModelProfile, StepTimeModel, sizeKvCache } from './hardware.js'
import { engineCoreTraceback, formatVllmLine, gib, type LogLevel, type LogStream } from './logs.js'
import type { Rng } from './random.js'

const GiB = 1024 ** 3
const MiB = 1024 ** 2
export const VLLM_VERSION = '0.22.0'

export type ReplicaPhase = 'stopped' | 'starting' | 'serving' | 'hung' | 'dying' | 'exited'

export interface ReplicaConfig {
  name: string
  gpu: GpuProfile
  model: ModelProfile
  tensorParallelSize: number
  gpuMemoryUtilization: number
  maxNumSeqs: number
  maxNumBatchedTokens: number
  maxModelLen: number
  /** The port its HTTP server would listen on (only used in log lines). */
  port: number
  /** How fast weights load from disk, bytes/s. */
  loadBytesPerSec: number
}

export interface ReplicaHooks {
  /** Absolute epoch ms for a simulated instant (log timestamps). */
  epochMs(simMs: number): number
  log(replica: SimReplica, stream: LogStream, text: string, t: number): void
  label(label: FaultLabel, t: number): void
  /** A GPU event as NVML would deliver it (Xid, ECC, GPU lost). */
  gpuEvent(event: MonitorEvent, t: number): void
  /** The replica's HTTP server opened or closed its port. */
  listening(replica: SimReplica, open: boolean): void
  /**
   * A surge arrival for this replica (session affinity) at `tMs`; true when something else (a
   * gateway) took it, false to queue it on this replica's engine as without a gateway.
   */
  arrival?(
    replica: SimReplica,
    tMs: number,
    promptTokens: number,
    targetTokens: number,
    maxTokens: number,
  ): boolean
}

interface Timed {
  at: number
  run: () => void
}

type DeathCause = 'cuda-oom' | 'ecc' | 'gpu-lost' | 'nccl-timeout' | 'killed'

interface ActiveFault {
  spec: FaultSpec
  /** The `failure` label was emitted. */
  failed: boolean
  cleared: boolean
  nextArrivalMs: number
  lastShmLogMs: number
}

/** What the engine holds outside its pool: the sampler's logits and scratch, scaled by the batch. */
function transientNeedBytes(engine: SimEngine | null): number {
  if (engine === null) return 0
  return 0.25 * GiB + engine.numRunning * 0.5 * MiB + engine.currentStepTokens * 16 * 1024
}

export class SimReplica {
  readonly config: ReplicaConfig
  readonly gpus: SimGpu[]
  readonly sizing: KvSizing
  phase: ReplicaPhase = 'stopped'
  engine: SimEngine | null = null
  exitCode: number | null = null
  listening = false
  now = 0
  /** When it last became ready to serve (perf drift counts uptime from here). */
  servingSinceMs = -1
  restarts = 0
  /** Sleep level (0: scheduling paused only, 1: weights offloaded, 2: discarded); null when awake. */
  sleepLevel: number | null = null
  /** The gateway's concurrency cap on this replica (it shrinks the batch the scheduler can form); null: none. */
  admissionCap: number | null = null
  /** `--max-num-seqs` given to the last restart; null: the configured one. Kept by later restarts. */
  maxNumSeqsOverride: number | null = null
  /** Bytes per GPU that `/sleep` released and `/wake_up` has not restored, by CuMemAllocator tag. */
  private readonly released = new Map<'weights' | 'kv_cache', number>()
  private readonly hooks: ReplicaHooks
  private readonly rng: Rng
  /** The latency quantiles of `reading()`, over the engine's histograms as each reading saw them. */
  private readonly latency = new LatencyWindows()
  private latencyEngine: SimEngine | null = null
  private timeline: Timed[] = []
  private faults: ActiveFault[] = []
  private pidApi = 0
  private pidCore = 0
  private pidWorker = 0
  private lastStatsLogMs = 0
  private lastStatsPrompt = 0
  private lastStatsGen = 0
  private lastStatsPreemptions = 0
  private readonly stepTime: StepTimeModel

  constructor(config: ReplicaConfig, gpus: SimGpu[], hooks: ReplicaHooks, rng: Rng) {
    this.config = config
    this.gpus = gpus
    this.hooks = hooks
    this.rng = rng
    this.sizing = sizeKvCache(
      config.gpu,
      config.model,
      config.tensorParallelSize,
      config.gpuMemoryUtilization,
      config.maxNumBatchedTokens,
    )
    this.stepTime = new StepTimeModel(config.gpu, config.model, config.tensorParallelSize)
  }

  get name(): string {
    return this.config.name
  }

  /** The `--max-num-seqs` the process runs (or will run) with. */
  get maxNumSeqs(): number {
    return this.maxNumSeqsOverride ?? this.config.maxNumSeqs
  }

  /**
   * Activation memory grows with the batch: the share of the configured batch the scheduler can
   * still form under the gateway's cap and the engine's `max_num_seqs` (exactly 1 when neither is
   * below the configured `max_num_seqs`).
   */
  get batchMemoryFactor(): number {
    const limit = Math.min(this.admissionCap ?? Number.POSITIVE_INFINITY, this.maxNumSeqs)
    return limit >= this.config.maxNumSeqs ? 1 : Math.max(0, limit) / this.config.maxNumSeqs
  }

  /** `/health`: 200 while the API server runs (even when the engine hangs), 503 once the engine died. */
  get healthStatus(): number | null {
    if (!this.listening) return null
    return this.phase === 'dying' ? 503 : 200
  }

  /** Spawns the process and plays vLLM's start-up sequence. */
  start(t: number): void {
    if (this.phase !== 'stopped' && this.phase !== 'exited') return
    this.now = t
    this.phase = 'starting'
    this.exitCode = null
    this.sleepLevel = null
    this.released.clear()
    this.pidApi = 1000 + this.rng.int(60000)
    this.pidCore = this.pidApi + 70
    this.pidWorker = this.pidApi + 140
    const c = this.config
    const s = this.sizing
    const lostGpu = this.gpus.find((g) => g.lost)
    this.logApi('INFO', 'utils.py:326', `vLLM server version ${VLLM_VERSION}, serving model ${c.model.name}`)
    this.logApi(
      'INFO',
      'utils.py:261',
      `non-default args: {'model': '${c.model.name}', 'port': ${c.port}, 'tensor_parallel_size': ${c.tensorParallelSize}, 'gpu_memory_utilization': ${c.gpuMemoryUtilization}, 'max_num_seqs': ${this.maxNumSeqs}, 'max_model_len': ${c.maxModelLen}}`,
    )
    this.logCore(
      'INFO',
      'core.py:93',
      `Initializing a V1 LLM engine (v${VLLM_VERSION}) with config: model='${c.model.name}', dtype=torch.bfloat16, max_seq_len=${c.maxModelLen}, tensor_parallel_size=${c.tensorParallelSize}, enable_prefix_caching=True, chunked_prefill_enabled=True`,
    )
    for (const g of this.gpus) if (!g.lost) g.contextBytes = 0.5 * GiB
    if (lostGpu !== undefined) {
      this.at(t + 800, () => {
        this.logCore('ERROR', 'core.py:708', 'EngineCore failed to start.')
        this.logTraceback('core', [
          'Traceback (most recent call last):',
          'RuntimeError: CUDA error: no CUDA-capable device is detected',
        ])
        this.logApi(
          'ERROR',
          'utils.py:112',
          "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {'EngineCore_DP0': 1}",
        )
        this.exit(1)
      })
      return
    }
    let at = t + 1500
    const loadMs = (s.weightsBytesPerGpu / c.loadBytesPerSec) * 1e3
    this.at(at, () =>
      this.logWorker('INFO', 'gpu_model_runner.py:2602', `Starting to load model ${c.model.name}...`),
    )
    // Weights stream in while loading: NVML memory climbs.
    const steps = 8
    for (let i = 1; i <= steps; i++) {
      this.at(at + (loadMs * i) / steps, () => {
        for (const g of this.gpus) g.reservedBytes = (s.weightsBytesPerGpu * i) / steps
      })
    }
    at += loadMs
    this.at(at, () => {
      this.logWorker(
        'INFO',
        'default_loader.py:268',
        `Loading weights took ${(loadMs / 1e3 - 0.3).toFixed(2)} seconds`,
      )
      this.logWorker(
        'INFO',
        'gpu_model_runner.py:2634',
        `Model loading took ${gib(s.weightsBytesPerGpu)} GiB memory and ${(loadMs / 1e3).toFixed(6)} seconds`,
      )
    })
    at += 2000
    this.at(at, () => {
      for (const g of this.gpus)
        g.reservedBytes = s.weightsBytesPerGpu + s.activationPeakBytes + s.nonTorchBytes
      this.logWorker(
        'INFO',
        'gpu_worker.py:298',
        `Available KV cache memory: ${gib(s.kvCacheBytesPerGpu)} GiB`,
      )
      this.logCore(
        'INFO',
        'kv_cache_utils.py:1087',
        `GPU KV cache size: ${s.kvCacheTokens.toLocaleString('en-US')} tokens`,
      )
      this.logCore(
        'INFO',
        'kv_cache_utils.py:1091',
        `Maximum concurrency for ${c.maxModelLen.toLocaleString('en-US')} tokens per request: ${(s.kvCacheTokens / c.maxModelLen).toFixed(2)}x`,
      )
    })
    at += 2500
    this.at(at, () => {
      for (const g of this.gpus) g.reservedBytes = s.requestedBytes - 0.5 * GiB
      this.logWorker(
        'INFO',
        'gpu_model_runner.py:3480',
        `Graph capturing finished in 3 secs, took ${gib(s.cudaGraphBytes)} GiB`,
      )
      this.logCore(
        'INFO',
        'core.py:210',
        `init engine (profile, create kv cache, warmup model) took ${((at - t) / 1e3 - 1.5).toFixed(2)} seconds`,
      )
      this.engine = new SimEngine({
        numGpuBlocks: s.numGpuBlocks,
        maxNumSeqs: this.maxNumSeqs,
        maxNumBatchedTokens: c.maxNumBatchedTokens,
        maxModelLen: c.maxModelLen,
        stepTime: this.stepTime,
      })
      this.engine.now = this.now
    })
    at += 500
    this.at(at, () => {
      this.logApi('INFO', 'api_server.py:1880', `Starting vLLM server on http://0.0.0.0:${c.port}`)
      this.logApi('INFO', 'launcher.py:36', 'Available routes are:')
      for (const route of ['/health', '/metrics', '/v1/models', '/v1/completions', '/v1/chat/completions']) {
        this.logApi(
          'INFO',
          'launcher.py:44',
          `Route: ${route}, Methods: ${route.startsWith('/v1/c') ? 'POST' : 'GET'}`,
        )
      }
      this.hooks.log(this, 'stderr', `INFO:     Started server process [${this.pidApi}]`, this.now)
      this.hooks.log(this, 'stderr', 'INFO:     Waiting for application startup.', this.now)
      this.hooks.log(this, 'stderr', 'INFO:     Application startup complete.', this.now)
      this.phase = 'serving'
      this.servingSinceMs = this.now
      this.lastStatsLogMs = this.now
      this.setListening(true)
    })
  }

  /**
   * Kills whatever runs and starts again (the supervisor's restart). Hardware faults persist. With
   * `maxNumSeqs`, the new process (and later ones) run with that `--max-num-seqs`.
   */
  restart(t: number, overrides: { maxNumSeqs?: number } = {}): void {
    if (overrides.maxNumSeqs !== undefined) this.maxNumSeqsOverride = overrides.maxNumSeqs
    this.now = t
    if (this.phase !== 'stopped' && this.phase !== 'exited') this.exit(-9)
    this.restarts++
    // Process-bound faults go with the process; the co-tenant and the cooling stay.
    this.faults = this.faults.filter(
      (f) => f.spec.fault === 'gpu-oom-cotenant' || f.spec.fault === 'thermal-throttle',
    )
    this.start(t)
  }

  /** SIGTERM: vLLM drains and exits 0. */
  shutdown(t: number): void {
    if (this.phase === 'stopped' || this.phase === 'exited') return
    this.now = t
    const inFlight = this.engine ? this.engine.numRunning + this.engine.numWaiting : 0
    this.logCore('INFO', 'core.py:452', 'Shutdown initiated (timeout=30)')
    this.logCore('INFO', 'core.py:470', `Aborting ${inFlight} requests`)
    this.engine?.kill()
    this.logApi('INFO', 'launcher.py:110', 'Shutting down FastAPI HTTP server.')
    this.exit(0)
  }

  inject(spec: FaultSpec): void {
    const fault: ActiveFault = {
      spec,
      failed: false,
      cleared: false,
      nextArrivalMs: -1,
      lastShmLogMs: spec.atMs,
    }
    this.faults.push(fault)
    const gpu = this.gpus[0] as SimGpu
    this.label(spec.fault, 'injected', this.describe(spec), spec.atMs)
    switch (spec.fault) {
      case 'kv-exhaustion':
        fault.nextArrivalMs = spec.atMs + this.rng.exponential(spec.surgeRatePerSec) * 1e3
        break
      case 'gpu-oom-cotenant':
        gpu.cotenantBytes = spec.initialBytes
        break
      case 'xid-79':
        this.failure(fault, spec.atMs, 'GPU has fallen off the bus (Xid 79)')
        gpu.lost = true
        this.hooks.gpuEvent(
          {
            type: 'xid',
            severity: 'critical',
            replica: this.name,
            gpu: gpu.index,
            message: `Xid 79 on GPU ${gpu.index}: GPU has fallen off the bus`,
            data: { xid: 79 },
          },
          spec.atMs,
        )
        this.hooks.gpuEvent(
          {
            type: 'gpu-lost',
            severity: 'critical',
            replica: this.name,
            gpu: gpu.index,
            message: `GPU ${gpu.index} lost`,
          },
          spec.atMs,
        )
        this.at(spec.atMs + 300, () => this.die('gpu-lost'))
        break
      case 'nccl-hang':
        this.hang(fault, spec.atMs)
        break
      case 'engine-death':
        this.failure(fault, spec.atMs, 'worker process killed')
        this.die('killed')
        break
      default:
        break
    }
  }

  /** Queues a request on the engine at the replica's current time. */
  submit(
    promptTokens: number,
    targetTokens: number,
    maxTokens: number,
    sink: RequestSink | null,
  ): SimRequest | null {
    const e = this.engine
    if (e === null || (this.phase !== 'serving' && this.phase !== 'hung' && this.phase !== 'dying'))
      return null
    // Keep every request admissible: prompt + output within max_model_len and within the whole pool.
    const limit = Math.min(this.config.maxModelLen, (e.config.numGpuBlocks - 2) * 16)
    const p = Math.max(1, Math.min(promptTokens, limit - 1))
    const max = Math.max(1, Math.min(maxTokens, limit - p))
    return e.submit(p, Math.max(1, Math.min(targetTokens, max)), max, sink)
  }

  /**
   * The co-tenant process on `gpu` was killed: its memory is freed and its leak (a
   * `gpu-oom-cotenant` fault) stops, labelled `cleared`. False when the GPU had no co-tenant.
   */
  terminateCotenant(gpu: SimGpu, t: number): boolean {
    if (!this.gpus.includes(gpu) || gpu.cotenantBytes <= 0) return false
    gpu.cotenantBytes = 0
    for (const f of this.faults) {
      if (f.spec.fault !== 'gpu-oom-cotenant' || f.cleared || gpu !== this.gpus[0]) continue
      f.cleared = true
      this.label(f.spec.fault, 'cleared', 'co-tenant process terminated', t)
    }
    return true
  }

  // --- dev-mode control (`VLLM_SERVER_DEV_MODE=1`): sleep and the prefix cache ----------------

  /**
   * `POST /sleep?level=N` after the scheduler was paused: level 1 offloads the weights to CPU and
   * drops the KV cache, level 2 discards both (CuMemAllocator's `weights` and `kv_cache` pools);
   * CUDA graphs, the context and non-torch memory stay. Level 0 only pauses scheduling.
   */
  sleep(level: number): { freedBytes: number; inUseBytes: number } {
    const gpu = this.gpus[0] as SimGpu
    this.sleepLevel = level
    if (level < 1 || this.engine === null) return { freedBytes: 0, inUseBytes: gpu.memoryUsedBytes }
    const before = gpu.memoryUsedBytes
    const s = this.sizing
    for (const [tag, bytes] of [
      ['weights', s.weightsBytesPerGpu],
      ['kv_cache', s.kvCacheBytesPerGpu],
    ] as const) {
      if (this.released.has(tag)) continue
      this.released.set(tag, bytes)
      for (const g of this.gpus) g.reservedBytes = Math.max(0, g.reservedBytes - bytes)
    }
    const freedBytes = before - gpu.memoryUsedBytes
    this.logWorker(
      'INFO',
      'gpu_worker.py:140',
      `Sleep mode freed ${gib(freedBytes)} GiB memory, ${gib(gpu.memoryUsedBytes)} GiB memory is still in use.`,
    )
    return { freedBytes, inUseBytes: gpu.memoryUsedBytes }
  }

  /**
   * `POST /wake_up[?tags=weights&tags=kv_cache]`: reallocates the named pools (all without tags).
   * Returns true once nothing is left asleep, when the scheduler may resume.
   */
  wakeUp(tags: readonly string[] | null): boolean {
    this.logApi(
      'INFO',
      'api_router.py:56',
      `wake up the engine with tags: ${tags === null ? 'None' : `[${tags.map((t) => `'${t}'`).join(', ')}]`}`,
    )
    for (const [tag, bytes] of [...this.released]) {
      if (tags !== null && !tags.includes(tag)) continue
      this.released.delete(tag)
      for (const g of this.gpus) g.reservedBytes += bytes
    }
    if (this.released.size > 0) return false
    this.sleepLevel = null
    return true
  }

  /**
   * `POST /reset_prefix_cache`: vLLM answers 200 whatever happens; with blocks still held by
   * requests the block pool refuses and only logs it (vllm.md §1.7), unless
   * `reset_running_requests` preempts every running request first.
   */
  resetPrefixCache(resetRunningRequests: boolean): {
    reset: boolean
    blocksInUse: number
    preempted: number
  } {
    this.logApi('INFO', 'api_router.py:40', 'Resetting prefix cache...')
    const e = this.engine
    if (e === null) return { reset: false, blocksInUse: 0, preempted: 0 }
    const preempted = resetRunningRequests ? e.preemptAll() : 0
    const blocksInUse = e.blocksInUse
    if (blocksInUse > 0) {
      this.logCore(
        'WARNING',
        'block_pool.py:386',
        `Failed to reset prefix cache because some blocks (${blocksInUse}) are not freed yet`,
      )
      return { reset: false, blocksInUse, preempted }
    }
    this.logCore('INFO', 'block_pool.py:407', 'Successfully reset prefix cache')
    return { reset: true, blocksInUse, preempted }
  }

  /** Runs the engine (and this replica's surge arrivals) up to `t`. */
  advanceTo(t: number): void {
    const e = this.engine
    if (e !== null) {
      for (const f of this.faults) {
        if (f.spec.fault !== 'kv-exhaustion' || f.cleared) continue
        const spec = f.spec
        const end = spec.atMs + spec.durationMs
        while (f.nextArrivalMs >= 0 && f.nextArrivalMs <= t && f.nextArrivalMs < end) {
          const at = f.nextArrivalMs
          f.nextArrivalMs += this.rng.exponential(spec.surgeRatePerSec) * 1e3
          // A ramp thins the full-rate stream: an arrival is kept with probability rate(t)/max.
          if (spec.rampMs > 0 && this.rng.next() * spec.rampMs > at - spec.atMs) continue
          e.advanceTo(at)
          // Drawn in this order whoever takes the request: the replica's stream must not shift.
          const prompt = Math.round(spec.promptTokens * (0.5 + this.rng.next()))
          const target = Math.round(spec.outputTokens * (0.5 + this.rng.next()))
          const max = spec.outputTokens * 2
          if (this.hooks.arrival?.(this, at, prompt, target, max) !== true)
            this.submit(prompt, target, max, null)
        }
      }
      e.advanceTo(t)
    }
    this.now = t
  }

  /** Every 100 ms of simulated time: timeline, faults, GPU physics, memory. */
  tick(t: number, dtMs: number): void {
    this.now = t
    if (this.timeline.length > 0) this.runTimeline(t)
    const e = this.engine
    let busy = 0
    let computeBusy = 0
    if (e !== null && e.busyMs > 0) {
      // A step is booked whole when it starts; spread long steps over the ticks they span.
      busy = Math.min(e.busyMs, dtMs)
      computeBusy = (e.computeBusyMs * busy) / e.busyMs
      e.busyMs -= busy
      e.computeBusyMs -= computeBusy
    }
    const tp = this.gpus.length
    for (const g of this.gpus) g.tick(dtMs, busy, computeBusy)
    if (e !== null) {
      let clockFactor = 1
      for (const g of this.gpus) if (g.clockFactor > clockFactor) clockFactor = g.clockFactor
      e.conditions.clockFactor = clockFactor
    }
    for (const f of this.faults) this.tickFault(f, t, dtMs)
    if (this.phase === 'serving' || this.phase === 'hung') {
      this.checkMemory(t, tp)
      if (this.phase === 'serving' && t - this.lastStatsLogMs >= 10_000) this.logStats(t)
    }
  }

  /**
   * What a scraper of `/metrics` + `/health` would read now. Each call also feeds the latency
   * windows (the runner calls it every sample interval), like a scrape feeds the scraper's.
   */
  reading(): EngineReading {
    const e = this.engine
    const up = this.listening
    const base = emptyEngineReading(this.name, up ? '0' : null)
    base.modelName = up ? this.config.model.name : null
    base.reachable = up
    base.healthStatus = this.healthStatus
    base.error = up ? null : 'ECONNREFUSED'
    if (!up || e === null) return base
    const f = e.finishedTotal
    base.requestsRunning = e.gaugeRunning
    base.requestsWaiting = e.gaugeWaiting
    base.kvCacheUsage = e.gaugeKvUsage
    base.preemptionsTotal = e.preemptionsTotal
    base.promptTokensTotal = e.promptTokensTotal
    base.generationTokensTotal = e.generationTokensTotal
    base.stepsTotal = e.iterationTokens.count
    base.requestsFinishedTotal = f.stop + f.length + f.abort + f.error
    base.requestsErroredTotal = f.error
    base.numGpuBlocks = e.config.numGpuBlocks
    base.ttftSecondsSum = e.ttft.sum
    base.ttftCount = e.ttft.count
    base.itlSecondsSum = e.itl.sum
    base.itlCount = e.itl.count
    base.e2eSecondsSum = e.e2e.sum
    base.e2eCount = e.e2e.count
    base.queueTimeSecondsSum = e.queueTime.sum
    base.queueTimeCount = e.queueTime.count
    // A restarted replica has a new engine whose histograms start from zero.
    if (this.latencyEngine !== e) this.latency.clear()
    this.latencyEngine = e
    const h = { ttft: e.ttft, itl: e.itl, e2e: e.e2e, queueTime: e.queueTime }
    this.latency.update(this.now, h, false)
    return this.latency.fill(base)
  }

  // --- faults ---------------------------------------------------------------------------------

  private tickFault(f: ActiveFault, t: number, dtMs: number): void {
    const spec = f.spec
    if (t < spec.atMs || f.cleared) return
    const gpu = this.gpus[0] as SimGpu
    const e = this.engine
    switch (spec.fault) {
      case 'kv-exhaustion': {
        if (!f.failed && e !== null && e.preemptionsTotal > 0 && e.gaugeKvUsage > 0.9) {
          this.failure(f, t, `KV cache exhausted: ${e.preemptionsTotal} preemptions, ${e.numWaiting} waiting`)
        }
        if (
          t >= spec.atMs + spec.durationMs &&
          (e === null || (e.numWaiting === 0 && e.gaugeKvUsage < 0.8))
        ) {
          f.cleared = true
          this.label(spec.fault, 'cleared', 'surge over and queue drained', t)
        }
        break
      }
      case 'gpu-oom-spike': {
        const frac = Math.min(1, (t - spec.atMs) / spec.rampMs)
        const factor = this.batchMemoryFactor
        const peak = factor === 1 ? spec.peakBytes : spec.peakBytes * factor
        gpu.transientBytes = Math.max(gpu.transientBytes, peak * frac * frac)
        break
      }
      case 'gpu-oom-cotenant':
        // The co-tenant takes what is free; once nothing is, vLLM's next allocation fails.
        gpu.cotenantBytes += Math.max(0, Math.min((spec.bytesPerSec * dtMs) / 1e3, gpu.memoryFreeBytes))
        break
      case 'memory-leak':
        if (this.phase === 'serving' || this.phase === 'hung') {
          for (const g of this.gpus) g.leakBytes += (spec.bytesPerSec * dtMs) / 1e3
        }
        break
      case 'thermal-throttle': {
        const frac = Math.min(1, (t - spec.atMs) / spec.rampMs)
        for (const g of this.gpus) g.coolingFactor = 1 + (spec.coolingFactor - 1) * frac
        if (!f.failed && this.gpus.some((g) => g.clockEventReasons & 0x60)) {
          this.failure(f, t, `thermal slowdown at ${Math.round(gpu.temperatureCelsius)} °C`)
        }
        break
      }
      case 'xid-48': {
        const failAt = spec.atMs + spec.precursorMs
        if (t < failAt) {
          // Corrected (single-bit) errors accelerate before the double-bit error.
          const frac = (t - spec.atMs) / Math.max(1, spec.precursorMs)
          const rate = 2 + 200 * frac * frac
          gpu.eccCorrectedVolatile += Math.round((rate * dtMs) / 1e3 + this.rng.next())
          if (frac >= 0.5 && f.lastShmLogMs < failAt) {
            f.lastShmLogMs = failAt
            this.hooks.gpuEvent(
              {
                type: 'xid',
                severity: 'warning',
                replica: this.name,
                gpu: gpu.index,
                message: `Xid 92 on GPU ${gpu.index}: high single-bit ECC error rate`,
                data: { xid: 92 },
              },
              t,
            )
          }
        } else if (!f.failed) {
          gpu.eccUncorrectedVolatile += 1
          this.failure(f, t, 'double-bit ECC error (Xid 48)')
          this.hooks.gpuEvent(
            {
              type: 'xid',
              severity: 'critical',
              replica: this.name,
              gpu: gpu.index,
              message: `Xid 48 on GPU ${gpu.index}: double-bit ECC error`,
              data: { xid: 48 },
            },
            t,
          )
          this.hooks.gpuEvent(
            {
              type: 'ecc-double-bit',
              severity: 'critical',
              replica: this.name,
              gpu: gpu.index,
              message: `uncorrectable ECC error on GPU ${gpu.index}`,
            },
            t,
          )
          if (this.phase === 'serving' || this.phase === 'hung') this.at(t + 200, () => this.die('ecc'))
        }
        break
      }
      case 'nccl-hang':
        if (!f.failed) this.hang(f, t)
        if (this.phase === 'hung' && t - f.lastShmLogMs >= 60_000) {
          f.lastShmLogMs = t
          this.logWorker(
            'INFO',
            'shm_broadcast.py:466',
            'No available shared memory broadcast block found in 60 seconds. This typically happens when some processes are hanging or doing some time-consuming work (e.g. compilation, weight/kv cache quantization).',
          )
        }
        break
      case 'perf-drift':
        if (e !== null && this.servingSinceMs >= 0) {
          const hours = (t - Math.max(spec.atMs, this.servingSinceMs)) / 3_600_000
          e.conditions.slowdown = 1 + spec.slowdownPerHour * Math.max(0, hours)
          if (!f.failed && e.conditions.slowdown >= 1.5) {
            this.failure(f, t, `step time ${e.conditions.slowdown.toFixed(2)}x its start-up value`)
          }
        }
        break
      default:
        break
    }
  }

  /**
   * A collective runs only inside a forward pass: the deadlock strikes a step of a batch, so an
   * idle engine hangs at its next busy step (its frozen gauges then show the requests running).
   */
  private hang(f: ActiveFault, t: number): void {
    const e = this.engine
    if (e === null || this.phase !== 'serving' || e.gaugeRunning === 0 || f.spec.fault !== 'nccl-hang') return
    e.hung = true
    this.phase = 'hung'
    f.lastShmLogMs = t
    this.failure(f, t, 'engine stopped stepping; /health stays 200')
    const timeoutMs = f.spec.timeoutMs
    this.at(t + timeoutMs, () => {
      this.ncclTimeoutMs = timeoutMs
      this.die('nccl-timeout')
    })
  }

  /** vLLM's next allocation outside its pool fails when the GPU has no room left: CUDA OOM. */
  private checkMemory(t: number, tp: number): void {
    const need = transientNeedBytes(this.engine) / tp
    for (const g of this.gpus) {
      if (g.lost) continue
      const want = Math.max(g.transientBytes, need)
      const grow = want - g.transientBytes
      const freeBefore = g.memoryFreeBytes
      // The allocator needs some headroom for any new block.
      if (freeBefore - grow < 32 * MiB) {
        const tried = Math.max(grow, 20 * MiB)
        for (const f of this.faults) {
          if (
            !f.failed &&
            (f.spec.fault === 'gpu-oom-spike' ||
              f.spec.fault === 'gpu-oom-cotenant' ||
              f.spec.fault === 'memory-leak')
          ) {
            this.failure(f, t, `CUDA out of memory: tried to allocate ${gib(tried)} GiB`)
          }
        }
        this.oomDetail = { tried, free: Math.max(0, freeBefore), gpu: g }
        this.die('cuda-oom')
        return
      }
      g.transientBytes = want
    }
  }

  private oomDetail: { tried: number; free: number; gpu: SimGpu } | null = null
  /** The NCCL watchdog timeout of the hang that killed it (`Timeout(ms)=` in the watchdog line). */
  private ncclTimeoutMs = 600_000

  /** Engine death: logs as vLLM prints them, /health 503, then the server exits with code 0 (#48966). */
  private die(cause: DeathCause): void {
    if (this.phase === 'dying' || this.phase === 'exited' || this.phase === 'stopped') return
    const t = this.now
    const gpu = this.gpus[0] as SimGpu
    switch (cause) {
      case 'cuda-oom': {
        const d = this.oomDetail
        const tried = d ? d.tried : 1.74 * GiB
        const total = gpu.profile.memoryTotalBytes
        const free = d ? d.free : 0
        const triedText = tried >= GiB ? `${gib(tried)} GiB` : `${(tried / MiB).toFixed(2)} MiB`
        this.logCore('ERROR', 'core.py:710', 'EngineCore encountered a fatal error.')
        this.logTraceback(
          'core',
          engineCoreTraceback(
            `torch.OutOfMemoryError: CUDA out of memory. Tried to allocate ${triedText}. GPU ${gpu.index} has a total capacity of ${gib(total)} GiB of which ${(free / MiB).toFixed(2)} MiB is free. Process ${this.pidWorker} has ${gib(gpu.memoryUsedBytes - gpu.cotenantBytes)} GiB memory in use.`,
          ),
        )
        break
      }
      case 'ecc':
        this.logCore('ERROR', 'core.py:710', 'EngineCore encountered a fatal error.')
        this.logTraceback(
          'core',
          engineCoreTraceback('RuntimeError: CUDA error: uncorrectable ECC error encountered'),
        )
        break
      case 'gpu-lost':
      case 'killed':
        this.logCore(
          'ERROR',
          'multiproc_executor.py:149',
          'Worker proc VllmWorker-0 died unexpectedly, shutting down executor.',
        )
        this.logCore('ERROR', 'core.py:710', 'EngineCore encountered a fatal error.')
        this.logTraceback(
          'core',
          engineCoreTraceback(
            "RuntimeError: Worker failed with error 'Worker proc VllmWorker-0 died unexpectedly', please check the stack trace above for the root cause",
          ),
        )
        break
      case 'nccl-timeout':
        this.hooks.log(
          this,
          'stderr',
          `[rank0]:[E${formatStamp(this.hooks.epochMs(t))} ProcessGroupNCCL.cpp:632] [Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=${1000 + this.rng.int(90000)}, OpType=ALLREDUCE, NumelIn=8192, NumelOut=8192, Timeout(ms)=${this.ncclTimeoutMs}) ran for ${this.ncclTimeoutMs + 21} milliseconds before timing out.`,
          t,
        )
        this.hooks.log(
          this,
          'stderr',
          '[rank0]:[E ProcessGroupNCCL.cpp:1595] Some NCCL operations have failed or timed out. Due to the asynchronous nature of CUDA kernels, subsequent GPU operations might run on corrupted/incomplete data.',
          t,
        )
        this.logCore(
          'ERROR',
          'multiproc_executor.py:149',
          'Worker proc VllmWorker-0 died unexpectedly, shutting down executor.',
        )
        this.logCore('ERROR', 'core.py:710', 'EngineCore encountered a fatal error.')
        break
    }
    this.logApi('ERROR', 'async_llm.py:485', 'AsyncLLM output_handler failed.')
    this.logApi(
      'ERROR',
      'async_llm.py:486',
      'vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace (above) for the root cause.',
    )
    for (const f of this.faults) {
      if (!f.failed && (f.spec.fault === 'engine-death' || f.spec.fault === 'xid-79')) {
        this.failure(f, t, 'engine died')
      }
    }
    this.engine?.kill()
    this.phase = 'dying'
    // The API server's watchdog (5 s) notices the dead engine and shuts uvicorn down.
    this.at(t + 5000, () => {
      this.hooks.log(this, 'stderr', 'INFO:     Shutting down', this.now)
      this.hooks.log(this, 'stderr', 'INFO:     Waiting for application shutdown.', this.now)
      this.hooks.log(this, 'stderr', 'INFO:     Application shutdown complete.', this.now)
      this.hooks.log(this, 'stderr', `INFO:     Finished server process [${this.pidApi}]`, this.now)
      this.exit(0)
    })
  }

  private exit(code: number): void {
    this.phase = 'exited'
    this.exitCode = code
    this.engine?.kill()
    this.engine = null
    this.timeline = []
    this.servingSinceMs = -1
    for (const g of this.gpus) {
      g.contextBytes = 0
      g.reservedBytes = 0
      g.leakBytes = 0
      g.transientBytes = 0
    }
    this.setListening(false)
  }

  private setListening(open: boolean): void {
    if (this.listening === open) return
    this.listening = open
    this.hooks.listening(this, open)
  }

  // --- helpers --------------------------------------------------------------------------------

  private at(at: number, run: () => void): void {
    this.timeline.push({ at, run })
    this.timeline.sort((a, b) => a.at - b.at)
  }

  private runTimeline(t: number): void {
    while (this.timeline.length > 0 && (this.timeline[0] as Timed).at <= t) {
      const item = this.timeline.shift() as Timed
      const saved = this.now
      this.now = Math.max(item.at, 0)
      item.run()
      this.now = saved
    }
  }

  private failure(f: ActiveFault, t: number, detail: string): void {
    if (f.failed) return
    f.failed = true
    this.label(f.spec.fault, 'failure', detail, t)
  }

  private label(fault: FaultType, phase: FaultLabel['phase'], detail: string, t: number): void {
    this.hooks.label({ fault, phase, replica: this.name, gpu: this.gpus[0]?.index ?? null, detail }, t)
  }

  private describe(spec: FaultSpec): string {
    const { atMs: _a, replica: _r, fault: _f, ...params } = spec as FaultSpec & Record<string, unknown>
    return JSON.stringify(params)
  }

  private logStats(t: number): void {
    const e = this.engine
    if (e === null) return
    const dt = (t - this.lastStatsLogMs) / 1e3
    const prompt = (e.promptTokensTotal - this.lastStatsPrompt) / dt
    const gen = (e.generationTokensTotal - this.lastStatsGen) / dt
    const pre = e.preemptionsTotal - this.lastStatsPreemptions
    this.lastStatsLogMs = t
    this.lastStatsPrompt = e.promptTokensTotal
    this.lastStatsGen = e.generationTokensTotal
    this.lastStatsPreemptions = e.preemptionsTotal
    // vLLM logs the idle line at DEBUG only.
    if (prompt === 0 && gen === 0) return
    const parts = [
      `Engine 000: Avg prompt throughput: ${prompt.toFixed(1)} tokens/s`,
      `Avg generation throughput: ${gen.toFixed(1)} tokens/s`,
      `Running: ${e.gaugeRunning} reqs`,
      `Waiting: ${e.gaugeWaiting} reqs`,
    ]
    if (pre > 0) parts.push(`Preemptions: ${pre}`)
    parts.push(`GPU KV cache usage: ${(e.gaugeKvUsage * 100).toFixed(1)}%`, 'Prefix cache hit rate: 0.0%')
    this.logApi('INFO', 'loggers.py:271', parts.join(', '))
  }

  private logApi(level: LogLevel, file: string, msg: string): void {
    this.line('APIServer', this.pidApi, level, file, msg)
  }
  private logCore(level: LogLevel, file: string, msg: string): void {
    this.line('EngineCore_DP0', this.pidCore, level, file, msg)
  }
  private logWorker(level: LogLevel, file: string, msg: string): void {
    this.line('Worker_TP0', this.pidWorker, level, file, msg)
  }
  private logTraceback(proc: 'core' | 'api', lines: string[]): void {
    const prefix =
      proc === 'core' ? `(EngineCore_DP0 pid=${this.pidCore}) ` : `(APIServer pid=${this.pidApi}) `
    for (const l of lines) this.hooks.log(this, 'stdout', prefix + l, this.now)
  }
  private line(proc: string, pid: number, level: LogLevel, file: string, msg: string): void {
    this.hooks.log(
      this,
      'stdout',
      formatVllmLine(proc, pid, level, this.hooks.epochMs(this.now), file, msg),
      this.now,
    )
  }
}

/** torch's `[E1127 10:20:00.123456789 ...]` stamp. */
function formatStamp(epochMs: number): string {
  const d = new Date(epochMs)
  const p = (n: number, w = 2) => String(n).padStart(w, '0')
  return `${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())} ${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())}.${p(d.getUTCMilliseconds(), 3)}000000`
}
