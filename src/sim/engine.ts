/**
 * One vLLM V1 engine: the scheduler over a paged KV cache, stepping in simulated time.
 *
 * What it reproduces (`vllm/v1/core/sched/scheduler.py`, sim-calibration §4):
 * - every step schedules running requests first (decodes and continuing prefill chunks), then
 *   admits waiting ones FCFS while the token budget (`max_num_batched_tokens`), `max_num_seqs` and
 *   KV blocks allow; a long prompt is chunked across steps (chunked prefill);
 * - `scheduler_reserve_full_isl`: a waiting request is admitted only if its whole input fits in KV;
 * - when a running request cannot get a block, the most recently admitted request is preempted
 *   (recompute: its blocks are freed and it goes back to the front of the waiting queue) until the
 *   allocation succeeds, and no waiting request is admitted in a step that preempted;
 * - gauges are set when a step completes, so a hung engine's gauges freeze, as vLLM's do.
 * The step time comes from `StepTimeModel`; TTFT and inter-token latency follow from it.
 */
import { BLOCK_SIZE_TOKENS, type StepTimeModel } from './hardware.js'
import {
  buckets125,
  ITERATION_TOKEN_BUCKETS,
  ITL_BUCKETS,
  REQUEST_LATENCY_BUCKETS,
  SimHistogram,
  TTFT_BUCKETS,
} from './histogram.js'

export type FinishReason = 'stop' | 'length' | 'abort' | 'error'

/**
 * vLLM's scheduler pause states (`PauseState`, `v1/core/sched/interface.py`): `paused-new` admits
 * nothing from the waiting queue but keeps stepping the running requests (`/pause?mode=wait`, and
 * what is left after `mode=abort`); `paused-all` does not step at all (`mode=keep`, sleep).
 */
export type PauseState = 'running' | 'paused-new' | 'paused-all'
export type PauseMode = 'abort' | 'wait' | 'keep'

/** Receives a request's progress (the HTTP layer streams from it). */
export interface RequestSink {
  onToken(request: SimRequest, tMs: number): void
  onFinish(request: SimRequest, reason: FinishReason, tMs: number): void
}

export interface SimRequest {
  id: number
  arrivalMs: number
  promptTokens: number
  /** Tokens the model will generate before stopping on its own. */
  targetTokens: number
  /** The request's `max_tokens`. */
  maxTokens: number
  generated: number
  /** Tokens whose KV is in the cache. */
  numComputed: number
  blocks: number
  /** Tokens scheduled in the step in flight. */
  chunk: number
  firstScheduledMs: number
  firstTokenMs: number
  lastTokenMs: number
  preemptions: number
  finished: boolean
  sink: RequestSink | null
}

export interface EngineConfig {
  numGpuBlocks: number
  maxNumSeqs: number
  maxNumBatchedTokens: number
  maxModelLen: number
  stepTime: StepTimeModel
}

/** Multiplies step time (perf drift, throttled clocks); set by the replica each tick. */
export interface StepConditions {
  /** max clock / current clock. */
  clockFactor: number
  /** Uptime drift and other slowdowns, >= 1. */
  slowdown: number
}

export class SimEngine {
  readonly config: EngineConfig
  now = 0
  /** Free KV blocks; block 0 is vLLM's reserved null block. */
  freeBlocks: number
  private readonly running: SimRequest[] = []
  private readonly waiting: SimRequest[] = []
  private waitingHead = 0
  /** Preempted requests, prepended to the waiting queue: the last one pushed goes first. */
  private readonly front: SimRequest[] = []
  private readonly scheduled: SimRequest[] = []
  private nScheduled = 0
  private stepEndMs = -1
  private stepTokens = 0
  hung = false
  dead = false
  pauseState: PauseState = 'running'
  readonly conditions: StepConditions = { clockFactor: 1, slowdown: 1 }

  // What `/metrics` shows: gauges as of the last completed step, counters cumulative.
  gaugeRunning = 0
  gaugeWaiting = 0
  gaugeKvUsage = 0
  promptTokensTotal = 0
  generationTokensTotal = 0
  preemptionsTotal = 0
  prefixQueriesTotal = 0
  readonly finishedTotal: Record<FinishReason, number> = { stop: 0, length: 0, abort: 0, error: 0 }
  readonly iterationTokens = new SimHistogram(ITERATION_TOKEN_BUCKETS)
  readonly ttft = new SimHistogram(TTFT_BUCKETS)
  readonly itl = new SimHistogram(ITL_BUCKETS)
  readonly tpot = new SimHistogram(ITL_BUCKETS)
  readonly e2e = new SimHistogram(REQUEST_LATENCY_BUCKETS)
  readonly queueTime = new SimHistogram(REQUEST_LATENCY_BUCKETS)
  readonly prefillTime = new SimHistogram(REQUEST_LATENCY_BUCKETS)
  readonly decodeTime = new SimHistogram(REQUEST_LATENCY_BUCKETS)
  readonly inferenceTime = new SimHistogram(REQUEST_LATENCY_BUCKETS)
  readonly promptTokensHist: SimHistogram
  readonly generationTokensHist: SimHistogram
  readonly maxTokensHist: SimHistogram

  /** Busy time and compute-weighted busy time since the last `takeBusy()` (drives the GPU model). */
  busyMs = 0
  computeBusyMs = 0

  private nextId = 1

  constructor(config: EngineConfig) {
    this.config = config
    this.freeBlocks = config.numGpuBlocks - 1
    const tokenBuckets = buckets125(config.maxModelLen)
    this.promptTokensHist = new SimHistogram(tokenBuckets)
    this.generationTokensHist = new SimHistogram(tokenBuckets)
    this.maxTokensHist = new SimHistogram(tokenBuckets)
  }

  get numRunning(): number {
    return this.running.length
  }

  get numWaiting(): number {
    return this.front.length + this.waiting.length - this.waitingHead
  }

  /** Tokens held in KV, for the replica's activation-memory estimate. */
  get kvUsage(): number {
    const usable = this.config.numGpuBlocks - 1
    return usable > 0 ? 1 - this.freeBlocks / usable : 0
  }

  get stepInFlight(): boolean {
    return this.stepEndMs >= 0
  }

  /** Tokens in the step in flight (prefill chunks make transient activations grow). */
  get currentStepTokens(): number {
    return this.stepEndMs >= 0 ? this.stepTokens : 0
  }

  /** Queues a request that arrived at `this.now`. Returns it (the sink gets its tokens). */
  submit(
    promptTokens: number,
    targetTokens: number,
    maxTokens: number,
    sink: RequestSink | null,
  ): SimRequest {
    const req: SimRequest = {
      id: this.nextId++,
      arrivalMs: this.now,
      promptTokens,
      targetTokens: Math.min(targetTokens, maxTokens),
      maxTokens,
      generated: 0,
      numComputed: 0,
      blocks: 0,
      chunk: 0,
      firstScheduledMs: -1,
      firstTokenMs: -1,
      lastTokenMs: -1,
      preemptions: 0,
      finished: false,
      sink,
    }
    if (this.dead) {
      // EngineDeadError: the request fails at once and never reaches a queue.
      this.finish(req, 'error')
      return req
    }
    this.waiting.push(req)
    this.prefixQueriesTotal += promptTokens
    this.promptTokensHist.observe(promptTokens)
    this.maxTokensHist.observe(maxTokens)
    return req
  }

  /** The client went away: free what the request holds. */
  abort(req: SimRequest): void {
    if (req.finished) return
    let i = this.running.indexOf(req)
    if (i >= 0) {
      // A request in the step in flight is dropped when the step completes (`finished` guards it).
      this.running.splice(i, 1)
    } else {
      i = this.front.indexOf(req)
      if (i >= 0) this.front.splice(i, 1)
      else {
        i = this.waiting.indexOf(req, this.waitingHead)
        if (i >= 0) this.waiting.splice(i, 1)
      }
    }
    this.freeBlocks += req.blocks
    req.blocks = 0
    this.finish(req, 'abort')
  }

  /** Engine death: every request in flight fails (the API server answers 500). */
  kill(): void {
    if (this.dead) return
    this.dead = true
    this.stepEndMs = -1
    for (const r of this.running) this.finish(r, 'error')
    for (const r of this.front) this.finish(r, 'error')
    for (let i = this.waitingHead; i < this.waiting.length; i++)
      this.finish(this.waiting[i] as SimRequest, 'error')
    this.running.length = 0
    this.front.length = 0
    this.waiting.length = 0
    this.waitingHead = 0
    this.freeBlocks = this.config.numGpuBlocks - 1
  }

  /**
   * `POST /pause?mode=...` (`EngineCore.pause_scheduler`): `abort` fails every request in flight
   * (finish reason `abort`) and admits nothing new; `wait` admits nothing new while the running
   * requests finish (see `drained`); `keep` freezes everything. New requests queue until `resume()`.
   * Returns how many requests were aborted.
   */
  pause(mode: PauseMode): number {
    const aborted = mode === 'abort' ? this.abortAll() : 0
    this.pauseState = mode === 'keep' ? 'paused-all' : 'paused-new'
    return aborted
  }

  /** `POST /resume`: schedules again, the requests queued while paused included. */
  resume(): void {
    this.pauseState = 'running'
  }

  get paused(): boolean {
    return this.pauseState !== 'running'
  }

  /** Paused with nothing left running (`get_num_unfinished_requests` is 0 under PAUSED_NEW). */
  get drained(): boolean {
    return this.running.length === 0
  }

  /** KV blocks held by requests (the reserved null block excluded). */
  get blocksInUse(): number {
    return this.config.numGpuBlocks - 1 - this.freeBlocks
  }

  /** Fails every request in flight with finish reason `abort`, as `pause(mode=abort)` does. */
  abortAll(): number {
    const all = [...this.running, ...this.front]
    for (let i = this.waitingHead; i < this.waiting.length; i++) all.push(this.waiting[i] as SimRequest)
    for (const r of all) this.abort(r)
    this.refreshGauges()
    return all.length
  }

  /**
   * `reset_prefix_cache(reset_running_requests=True)`: every running request is preempted
   * (blocks freed, back to the front of the waiting queue, recomputed later). Returns how many.
   */
  preemptAll(): number {
    const n = this.running.length
    while (this.running.length > 0) {
      const r = this.running.pop() as SimRequest
      // A step in flight that scheduled it computes nothing for it now.
      r.chunk = 0
      this.preempt(r)
    }
    this.refreshGauges()
    return n
  }

  /** The engine reports stats with the outputs of an abort or preemption, not only after steps. */
  private refreshGauges(): void {
    this.gaugeRunning = this.running.length
    this.gaugeWaiting = this.numWaiting
    this.gaugeKvUsage = this.kvUsage
  }

  /** Runs steps until simulated time `t`. */
  advanceTo(t: number): void {
    if (t < this.now) return
    for (;;) {
      if (this.dead || this.hung) {
        this.now = t
        return
      }
      if (this.stepEndMs >= 0) {
        if (this.stepEndMs > t) {
          this.now = t
          return
        }
        this.now = this.stepEndMs
        this.completeStep()
      }
      if (this.pauseState === 'paused-all') {
        // Frozen (`/pause?mode=keep`, sleep): the step in flight finished, nothing new starts.
        this.now = t
        return
      }
      if (this.running.length === 0 && this.numWaiting === 0) {
        this.now = t
        return
      }
      this.startStep()
      if (this.stepEndMs < 0) {
        // Nothing fits yet (the head of the queue waits for blocks): idle until the next arrival.
        this.now = t
        return
      }
    }
  }

  private startStep(): void {
    const cfg = this.config
    let budget = cfg.maxNumBatchedTokens
    let contextTokens = 0
    let preempted = false
    this.nScheduled = 0
    const running = this.running
    for (let i = 0; i < running.length && budget > 0; i++) {
      const r = running[i] as SimRequest
      let need = r.promptTokens + r.generated - r.numComputed
      if (need > budget) need = budget
      const blocksNeeded = Math.ceil((r.numComputed + need) / BLOCK_SIZE_TOKENS) - r.blocks
      let selfPreempted = false
      while (blocksNeeded > this.freeBlocks) {
        const victim = running.pop() as SimRequest
        this.preempt(victim)
        preempted = true
        if (victim === r) {
          selfPreempted = true
          break
        }
      }
      if (selfPreempted) break
      if (blocksNeeded > 0) {
        this.freeBlocks -= blocksNeeded
        r.blocks += blocksNeeded
      }
      r.chunk = need
      budget -= need
      contextTokens += r.numComputed + need
      this.scheduled[this.nScheduled++] = r
    }
    if (!preempted && this.pauseState === 'running') {
      while (budget > 0 && running.length < cfg.maxNumSeqs) {
        const fromFront = this.front.length > 0
        const r = fromFront
          ? (this.front[this.front.length - 1] as SimRequest)
          : this.waiting[this.waitingHead]
        if (r === undefined) break
        const target = r.promptTokens + r.generated
        // scheduler_reserve_full_isl: the whole input must fit before admission.
        if (Math.ceil(target / BLOCK_SIZE_TOKENS) > this.freeBlocks) break
        const chunk = Math.min(target, budget)
        const blocks = Math.ceil(chunk / BLOCK_SIZE_TOKENS)
        this.freeBlocks -= blocks
        r.blocks = blocks
        r.chunk = chunk
        budget -= chunk
        contextTokens += chunk
        if (fromFront) this.front.pop()
        else this.popWaiting()
        if (r.firstScheduledMs < 0) {
          r.firstScheduledMs = this.now
          this.queueTime.observe((this.now - r.arrivalMs) / 1e3)
        }
        running.push(r)
        this.scheduled[this.nScheduled++] = r
      }
    }
    if (this.nScheduled === 0) {
      this.stepEndMs = -1
      return
    }
    const tokens = cfg.maxNumBatchedTokens - budget
    const st = cfg.stepTime
    const ms = st.stepMs(tokens, contextTokens, this.conditions.clockFactor) * this.conditions.slowdown
    this.stepTokens = tokens
    this.stepEndMs = this.now + ms
    this.busyMs += ms
    this.computeBusyMs += ms * st.computeIntensity(tokens, contextTokens)
  }

  private popWaiting(): void {
    this.waiting[this.waitingHead] = undefined as unknown as SimRequest
    this.waitingHead++
    // Compact now and then so the array does not grow without bound.
    if (this.waitingHead > 1024 && this.waitingHead * 2 > this.waiting.length) {
      this.waiting.splice(0, this.waitingHead)
      this.waitingHead = 0
    }
  }

  private preempt(r: SimRequest): void {
    this.freeBlocks += r.blocks
    r.blocks = 0
    r.numComputed = 0
    r.preemptions++
    this.preemptionsTotal++
    this.front.push(r)
  }

  private completeStep(): void {
    const now = this.now
    this.iterationTokens.observe(this.stepTokens)
    let anyFinished = false
    for (let i = 0; i < this.nScheduled; i++) {
      const r = this.scheduled[i] as SimRequest
      this.scheduled[i] = undefined as unknown as SimRequest
      if (r.finished) continue
      r.numComputed += r.chunk
      r.chunk = 0
      if (r.numComputed < r.promptTokens + r.generated) continue
      // Every known token is in KV: the step sampled a new one.
      r.generated++
      this.generationTokensTotal++
      if (r.firstTokenMs < 0) {
        r.firstTokenMs = now
        this.ttft.observe((now - r.arrivalMs) / 1e3)
        this.promptTokensTotal += r.promptTokens
        this.prefillTime.observe((now - r.firstScheduledMs) / 1e3)
      } else {
        this.itl.observe((now - r.lastTokenMs) / 1e3)
      }
      r.lastTokenMs = now
      r.sink?.onToken(r, now)
      if (r.generated >= r.targetTokens) {
        this.freeBlocks += r.blocks
        r.blocks = 0
        this.finish(r, r.generated >= r.maxTokens ? 'length' : 'stop')
        anyFinished = true
      }
    }
    this.nScheduled = 0
    this.stepEndMs = -1
    if (anyFinished) {
      const running = this.running
      let w = 0
      for (let i = 0; i < running.length; i++) {
        const r = running[i] as SimRequest
        if (!r.finished) running[w++] = r
      }
      running.length = w
    }
    this.gaugeRunning = this.running.length
    this.gaugeWaiting = this.numWaiting
    this.gaugeKvUsage = this.kvUsage
  }

  private finish(r: SimRequest, reason: FinishReason): void {
    if (r.finished) return
    r.finished = true
    const now = this.now
    this.finishedTotal[reason]++
    if (reason === 'stop' || reason === 'length') {
      this.e2e.observe((now - r.arrivalMs) / 1e3)
      this.generationTokensHist.observe(r.generated)
      this.inferenceTime.observe((now - r.firstScheduledMs) / 1e3)
      this.decodeTime.observe((now - r.firstTokenMs) / 1e3)
      if (r.generated > 1) this.tpot.observe((now - r.firstTokenMs) / 1e3 / (r.generated - 1))
    }
    r.sink?.onFinish(r, reason, now)
  }
}
