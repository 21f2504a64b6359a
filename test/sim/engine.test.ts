import { describe, expect, it } from 'vitest'
import { type FinishReason, type RequestSink, SimEngine, type SimRequest } from '../../src/sim/engine.js'
import { GPUS, MODELS, StepTimeModel } from '../../src/sim/hardware.js'
import { createRng } from '../../src/sim/random.js'

const H100 = GPUS['H100-80GB']!
const LLAMA3_8B = MODELS['meta-llama/Llama-3.1-8B-Instruct']!

/** Every step takes exactly 10 ms, so step k runs over [10(k-1), 10k) and tests can stop between steps. */
class FixedStep extends StepTimeModel {
  constructor() {
    super(H100, LLAMA3_8B, 1)
  }
  override stepMs(): number {
    return 10
  }
}

interface EngineOptions {
  numGpuBlocks?: number
  maxNumSeqs?: number
  maxNumBatchedTokens?: number
  realSteps?: boolean
}

function engine(o: EngineOptions = {}): SimEngine {
  return new SimEngine({
    numGpuBlocks: o.numGpuBlocks ?? 1000,
    maxNumSeqs: o.maxNumSeqs ?? 1024,
    maxNumBatchedTokens: o.maxNumBatchedTokens ?? 8192,
    maxModelLen: 8192,
    stepTime: o.realSteps ? new StepTimeModel(H100, LLAMA3_8B, 1) : new FixedStep(),
  })
}

/** Records every token and the finish of each request. */
class Recorder implements RequestSink {
  readonly tokens = new Map<number, number[]>()
  readonly finished = new Map<number, { reason: FinishReason; t: number }>()
  onToken(r: SimRequest, t: number): void {
    const ts = this.tokens.get(r.id) ?? []
    ts.push(t)
    this.tokens.set(r.id, ts)
  }
  onFinish(r: SimRequest, reason: FinishReason, t: number): void {
    expect(this.finished.has(r.id), `request ${r.id} finished twice`).toBe(false)
    this.finished.set(r.id, { reason, t })
  }
  first(r: SimRequest): number {
    return this.tokens.get(r.id)?.[0] ?? Number.NaN
  }
}

/**
 * vLLM's pool: block 0 is the null block, every other block is free or held by exactly one request.
 * Returns what is wrong ('' when nothing), so a hot loop can check it without thousands of expects.
 */
function conservationError(e: SimEngine, requests: readonly SimRequest[]): string {
  let held = 0
  for (const r of requests) {
    if (r.blocks < 0) return `request ${r.id} holds ${r.blocks} blocks`
    if (r.finished && r.blocks !== 0) return `finished request ${r.id} still holds ${r.blocks} blocks`
    held += r.blocks
  }
  if (e.freeBlocks < 0) return `${e.freeBlocks} free blocks`
  const usable = e.config.numGpuBlocks - 1
  if (e.freeBlocks + held !== usable) return `${e.freeBlocks} free + ${held} held != ${usable}`
  return ''
}

describe('SimEngine, the vLLM V1 scheduler over a paged KV cache', () => {
  it('conserves KV blocks under random load, preemption and aborts: free + held == num_gpu_blocks - 1', () => {
    const rng = createRng('engine-conservation')
    const e = engine({ numGpuBlocks: 64, maxNumSeqs: 12, maxNumBatchedTokens: 256, realSteps: true })
    const requests: SimRequest[] = []
    let t = 0
    const violations: string[] = []
    const check = (when: string) => {
      const err = conservationError(e, requests)
      if (err !== '') violations.push(`${when} at ${t.toFixed(1)} ms: ${err}`)
      if (e.numRunning > 12) violations.push(`${e.numRunning} running at ${t} ms`)
    }
    for (let i = 0; i < 2000; i++) {
      t += rng.exponential(0.05)
      e.advanceTo(t)
      check('after steps')
      const p = rng.next()
      if (p < 0.5) {
        requests.push(e.submit(1 + rng.int(300), 1 + rng.int(200), 400, null))
      } else if (p < 0.55 && requests.length > 0) {
        e.abort(requests[rng.int(requests.length)]!)
      }
      check('after submit/abort')
    }
    expect(violations.slice(0, 5)).toEqual([])
    e.advanceTo(t + 3_600_000)
    expect(conservationError(e, requests)).toBe('')
    // The pool was small enough to force preemptions, and everything still drained.
    expect(e.preemptionsTotal).toBeGreaterThan(0)
    expect(e.numRunning + e.numWaiting).toBe(0)
    expect(e.freeBlocks).toBe(63)
    expect(requests.every((r) => r.finished)).toBe(true)
    const f = e.finishedTotal
    expect(f.stop + f.length + f.abort + f.error).toBe(requests.length)
  })

  it('admits waiting requests first come, first served', () => {
    const e = engine({ maxNumSeqs: 1 })
    const sink = new Recorder()
    const reqs = [0, 1, 2, 3].map(() => e.submit(32, 3, 3, sink))
    e.advanceTo(1000)
    const firsts = reqs.map((r) => sink.first(r))
    expect(firsts).toEqual([...firsts].sort((a, b) => a - b))
    // One at a time: each starts when the previous one finished (1 prefill + 2 decode steps).
    expect(firsts).toEqual([10, 40, 70, 100])
    expect(reqs.map((r) => r.firstScheduledMs)).toEqual([0, 30, 60, 90])
  })

  it('splits a prompt longer than max_num_batched_tokens across steps (chunked prefill)', () => {
    const e = engine({ maxNumBatchedTokens: 64 })
    const sink = new Recorder()
    const r = e.submit(200, 2, 2, sink)
    const chunks: number[] = []
    for (let t = 5; t < 100; t += 10) {
      e.advanceTo(t)
      chunks.push(e.currentStepTokens)
    }
    // 64 + 64 + 64 + 8 prompt tokens, then one decode step; nothing after it finished.
    expect(chunks.slice(0, 6)).toEqual([64, 64, 64, 8, 1, 0])
    expect(sink.first(r)).toBe(40)
    expect(sink.tokens.get(r.id)).toEqual([40, 50])
    expect(e.iterationTokens.count).toBe(5)
    expect(e.promptTokensTotal).toBe(200)
    expect(e.generationTokensTotal).toBe(2)
  })

  it('runs decodes first and fills the rest of the token budget with a new prompt\u2019s chunk', () => {
    const e = engine({ maxNumBatchedTokens: 64 })
    e.submit(16, 100, 100, null)
    e.advanceTo(15)
    e.submit(500, 1, 1, null)
    e.advanceTo(25)
    // 1 decode token + 63 of the new prompt.
    expect(e.currentStepTokens).toBe(64)
  })

  it('never runs more than max_num_seqs requests at once', () => {
    const e = engine({ maxNumSeqs: 2 })
    for (let i = 0; i < 5; i++) e.submit(16, 5, 5, null)
    for (let t = 5; t < 300; t += 10) {
      e.advanceTo(t)
      expect(e.numRunning).toBeLessThanOrEqual(2)
      expect(e.gaugeRunning).toBeLessThanOrEqual(2)
    }
    const fresh = engine({ maxNumSeqs: 2 })
    for (let i = 0; i < 5; i++) fresh.submit(16, 5, 5, null)
    fresh.advanceTo(15)
    expect(fresh.gaugeRunning).toBe(2)
    expect(fresh.gaugeWaiting).toBe(3)
  })

  it('keeps a request waiting until its whole prompt fits in KV, even when its first chunk would (reserve_full_isl)', () => {
    // 10 usable blocks = 160 tokens; 32 tokens per step.
    const e = engine({ numGpuBlocks: 11, maxNumBatchedTokens: 32 })
    const sink = new Recorder()
    const a = e.submit(100, 40, 40, sink) // 7 blocks once prefilled, 9 by its last token
    e.advanceTo(45) // A's four chunks: 32+32+32+4
    const b = e.submit(64, 1, 1, sink) // needs 4 blocks; its first 31-token chunk would need 2
    let roomForFirstChunk = 0
    for (let t = 55; sink.finished.get(a.id) === undefined; t += 10) {
      e.advanceTo(t)
      if (sink.finished.get(a.id) === undefined) {
        expect(e.freeBlocks).toBeLessThan(4)
        expect(b.firstScheduledMs).toBe(-1)
        if (e.freeBlocks >= 2) roomForFirstChunk++
      }
    }
    expect(roomForFirstChunk).toBeGreaterThan(0)
    e.advanceTo(10_000)
    expect(sink.finished.get(b.id)?.reason).toBe('length')
    expect(b.firstScheduledMs).toBeGreaterThanOrEqual(sink.finished.get(a.id)!.t)
    expect(e.preemptionsTotal).toBe(0)
  })

  describe('when a running request cannot get a block (recompute preemption)', () => {
    // 10 usable blocks. A, B, C: 48-token prompts (3 blocks each), 20 tokens out (5 blocks at the end).
    function setup() {
      const e = engine({ numGpuBlocks: 11 })
      const sink = new Recorder()
      const [a, b, c] = [0, 1, 2].map(() => e.submit(48, 20, 20, sink)) as [
        SimRequest,
        SimRequest,
        SimRequest,
      ]
      return { e, sink, a, b, c }
    }

    it('preempts the most recently admitted request, frees its blocks and counts it', () => {
      const { e, a, b, c } = setup()
      e.advanceTo(5) // step 1: the three prefills, 9 blocks held
      expect([a.blocks, b.blocks, c.blocks]).toEqual([3, 3, 3])
      e.advanceTo(15) // step 2: A takes the last free block for token 49, B needs one: C goes
      expect(c.preemptions).toBe(1)
      expect(a.preemptions + b.preemptions).toBe(0)
      expect(c.blocks).toBe(0)
      expect(c.numComputed).toBe(0)
      expect(e.preemptionsTotal).toBe(1)
      expect(e.numRunning).toBe(2)
      expect(e.numWaiting).toBe(1)
      expect([a.blocks, b.blocks]).toEqual([4, 4])
      expect(e.freeBlocks).toBe(2)
      // No request is admitted in a step that preempted.
      expect(e.currentStepTokens).toBe(2)
    })

    it('puts the preempted request at the front of the waiting queue, ahead of earlier arrivals', () => {
      const { e, sink, c } = setup()
      e.advanceTo(5)
      const d = e.submit(100, 1, 1, sink) // arrives before the preemption; needs 7 blocks
      e.advanceTo(15)
      expect(c.preemptions).toBe(1)
      e.advanceTo(10_000)
      // Once A and B finish (10 free blocks), C (4 blocks) goes first and D (7) no longer fits beside it;
      // had D been ahead, it would have taken 7 blocks and C would have waited instead.
      const cResumed = sink.tokens.get(c.id)![1]!
      expect(sink.first(d)).toBeGreaterThan(cResumed)
    })

    it('recomputes the preempted request\u2019s prompt and tokens, and it still finishes with every token', () => {
      const { e, sink, a, b, c } = setup()
      e.advanceTo(10_000)
      for (const r of [a, b, c]) {
        expect(sink.finished.get(r.id)?.reason).toBe('length')
        expect(r.generated).toBe(20)
        expect(sink.tokens.get(r.id)).toHaveLength(20)
      }
      expect(e.generationTokensTotal).toBe(60)
      // Prompt tokens count once per request, not again for the recompute.
      expect(e.promptTokensTotal).toBe(3 * 48)
      // C's second token waited for the recompute: a long inter-token gap.
      const ct = sink.tokens.get(c.id)!
      expect(ct[1]! - ct[0]!).toBeGreaterThan(100)
      expect(e.freeBlocks).toBe(10)
    })
  })

  it('observes TTFT, inter-token latency, TPOT and end-to-end latency', () => {
    const e = engine()
    const reqs = [e.submit(100, 5, 5, null), e.submit(100, 1, 1, null), e.submit(100, 10, 10, null)]
    e.advanceTo(10_000)
    expect(e.ttft.count).toBe(3)
    // All three prefill in the first 10 ms step.
    expect(e.ttft.sum).toBeCloseTo(0.03, 9)
    expect(e.itl.count).toBe(4 + 0 + 9)
    expect(e.itl.sum).toBeCloseTo(13 * 0.01, 9)
    expect(e.tpot.count).toBe(2)
    expect(e.e2e.count).toBe(3)
    expect(e.queueTime.count).toBe(3)
    expect(e.generationTokensHist.count).toBe(3)
    expect(e.generationTokensHist.sum).toBe(16)
    expect(reqs.every((r) => r.finished)).toBe(true)
    expect(e.finishedTotal.length).toBe(3)
  })

  it('finishes with "stop" when the model stops before max_tokens, "length" when it hits it', () => {
    const e = engine()
    const sink = new Recorder()
    const stop = e.submit(16, 3, 10, sink)
    const length = e.submit(16, 10, 10, sink)
    e.advanceTo(1000)
    expect(sink.finished.get(stop.id)?.reason).toBe('stop')
    expect(sink.finished.get(length.id)?.reason).toBe('length')
  })

  it('changes its gauges only when a step completes', () => {
    const e = engine({ maxNumSeqs: 1 })
    for (let i = 0; i < 3; i++) e.submit(32, 50, 50, null)
    e.advanceTo(5) // step 1 in flight
    expect(e.numRunning).toBe(1)
    expect(e.numWaiting).toBe(2)
    expect([e.gaugeRunning, e.gaugeWaiting, e.gaugeKvUsage]).toEqual([0, 0, 0])
    e.advanceTo(15)
    expect([e.gaugeRunning, e.gaugeWaiting]).toEqual([1, 2])
    // Two blocks held when step 1 ended (step 2 has since taken a third for token 33).
    expect(e.gaugeKvUsage).toBeCloseTo(2 / 999, 12)
    expect(e.kvUsage).toBeCloseTo(3 / 999, 12)
    // A request arriving mid-step shows up at the next step's end.
    e.submit(32, 50, 50, null)
    expect(e.gaugeWaiting).toBe(2)
    e.advanceTo(25)
    expect(e.gaugeWaiting).toBe(3)
  })

  it('freezes gauges and counters when hung, while requests still queue', () => {
    const e = engine()
    for (let i = 0; i < 4; i++) e.submit(100, 1000, 1000, null)
    e.advanceTo(105)
    e.hung = true
    const snapshot = () => [
      e.gaugeRunning,
      e.gaugeWaiting,
      e.gaugeKvUsage,
      e.generationTokensTotal,
      e.promptTokensTotal,
      e.iterationTokens.count,
    ]
    const before = snapshot()
    const waiting = e.numWaiting
    for (let i = 0; i < 5; i++) e.submit(100, 10, 10, null)
    e.advanceTo(600_000)
    expect(snapshot()).toEqual(before)
    expect(e.numWaiting).toBe(waiting + 5)
    expect(e.now).toBe(600_000)
  })

  it('fails every request in flight with "error" when killed, and frees the whole pool', () => {
    const e = engine({ maxNumSeqs: 2 })
    const sink = new Recorder()
    const reqs = [0, 1, 2, 3].map(() => e.submit(64, 100, 100, sink))
    e.advanceTo(55)
    e.kill()
    expect(e.dead).toBe(true)
    for (const r of reqs) expect(sink.finished.get(r.id)?.reason).toBe('error')
    expect(e.finishedTotal.error).toBe(4)
    expect(e.numRunning + e.numWaiting).toBe(0)
    expect(e.freeBlocks).toBe(999)
    // Nothing steps any more.
    const steps = e.iterationTokens.count
    e.advanceTo(10_000)
    expect(e.iterationTokens.count).toBe(steps)
  })

  it('fails a request submitted to a dead engine at once, without queueing it', () => {
    const e = engine()
    e.kill()
    const sink = new Recorder()
    const r = e.submit(64, 10, 10, sink)
    expect(sink.finished.get(r.id)?.reason).toBe('error')
    expect(e.numWaiting).toBe(0)
    expect(e.finishedTotal.error).toBe(1)
  })

  it('frees a request\u2019s blocks when it is aborted, whether running or waiting', () => {
    const e = engine({ maxNumSeqs: 1 })
    const sink = new Recorder()
    const running = e.submit(64, 100, 100, sink)
    const waiting = e.submit(64, 100, 100, sink)
    e.advanceTo(25)
    expect(running.blocks).toBe(5)
    e.abort(running)
    expect(running.blocks).toBe(0)
    expect(e.freeBlocks).toBe(999)
    expect(sink.finished.get(running.id)?.reason).toBe('abort')
    // The step in flight completes without giving the aborted request a token.
    const tokens = sink.tokens.get(running.id)!.length
    e.advanceTo(35)
    expect(sink.tokens.get(running.id)).toHaveLength(tokens)
    expect(waiting.blocks).toBeGreaterThan(0)
    e.abort(waiting)
    e.abort(waiting) // twice is harmless
    expect(e.freeBlocks).toBe(999)
    expect(e.finishedTotal.abort).toBe(2)
    e.advanceTo(1000)
    expect(e.numRunning + e.numWaiting).toBe(0)
  })
})
