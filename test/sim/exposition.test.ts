import { describe, expect, it } from 'vitest'
import { poissonArrivals } from '../../src/sim/arrivals.js'
import { SimEngine } from '../../src/sim/engine.js'
import { type MetricsGeneration, renderExposition } from '../../src/sim/exposition.js'
import { SimFleet } from '../../src/sim/fleet.js'
import { GPUS, MODELS, StepTimeModel } from '../../src/sim/hardware.js'
import { ITL_BUCKETS, TTFT_BUCKETS } from '../../src/sim/histogram.js'
import type { EngineReading } from '../../src/telemetry/types.js'
import { readEngineMetrics } from '../../src/vllm/engine-metrics.js'
import { parseExposition, type Sample } from '../../src/vllm/exposition.js'

const MODEL = 'meta-llama/Llama-3.1-8B-Instruct'

/** A replica that has served a while under overload: every counter and histogram has moved. */
function loadedFleet(): SimFleet {
  const fleet = new SimFleet({
    seed: 4,
    arrivals: poissonArrivals({ ratePerSec: 8, seed: 'exposition' }),
    faults: [{ fault: 'kv-exhaustion', atMs: 20_000, surgeRatePerSec: 20 }],
  })
  fleet.start()
  fleet.advanceTo(70_000)
  return fleet
}

const fleet = loadedFleet()
const replica = fleet.replicas[0]!
const engine = replica.engine!

function render(e: SimEngine, generation: MetricsGeneration, modelName = MODEL): string {
  return renderExposition({
    modelName,
    engine: e,
    generation,
    blockSize: 16,
    gpuMemoryUtilization: 0.92,
    startTimeSeconds: 1_795_000_000,
  })
}

const v1 = parseExposition(render(engine, 'v1'))
const v0 = parseExposition(render(engine, 'v0'))

const named = (samples: readonly Sample[], name: string) => samples.filter((s) => s.name === name)

/** Buckets of one histogram, in the order rendered. */
function buckets(samples: readonly Sample[], family: string): Array<{ le: string; value: number }> {
  return named(samples, `${family}_bucket`).map((s) => ({ le: s.labels.le!, value: s.value }))
}

function expectWellFormedHistogram(samples: readonly Sample[], family: string): void {
  const bs = buckets(samples, family)
  expect(bs.length, family).toBeGreaterThan(1)
  expect(bs.at(-1)!.le).toBe('+Inf')
  for (let i = 1; i < bs.length; i++) {
    expect(bs[i]!.value, `${family} le=${bs[i]!.le}`).toBeGreaterThanOrEqual(bs[i - 1]!.value)
    if (bs[i]!.le !== '+Inf') expect(Number(bs[i]!.le)).toBeGreaterThan(Number(bs[i - 1]!.le))
  }
  const count = named(samples, `${family}_count`)
  const sum = named(samples, `${family}_sum`)
  expect(count).toHaveLength(1)
  expect(sum).toHaveLength(1)
  expect(count[0]!.value).toBe(bs.at(-1)!.value)
  expect(sum[0]!.value).toBeGreaterThanOrEqual(0)
}

describe('renderExposition, the simulated /metrics', () => {
  it('has load worth checking: preemptions, a queue, latencies', () => {
    expect(engine.preemptionsTotal).toBeGreaterThan(0)
    expect(engine.gaugeWaiting).toBeGreaterThan(0)
    expect(engine.ttft.count).toBeGreaterThan(100)
    expect(engine.itl.count).toBeGreaterThan(1000)
  })

  describe('V1', () => {
    it('parses with zero errors', () => {
      expect(v1.errors).toEqual([])
      expect(v1.samples.length).toBeGreaterThan(200)
    })

    it('gives readEngineMetrics back the engine\u2019s gauges and counters exactly', () => {
      const readings = readEngineMetrics(v1, 'r0')
      expect(readings).toHaveLength(1)
      const expected: EngineReading = {
        ...replica.reading(),
        reachable: true,
        healthStatus: null,
        error: null,
      }
      expect(readings[0]).toEqual(expected)
      expect(readings[0]).toMatchObject({
        engine: '0',
        modelName: MODEL,
        requestsRunning: engine.gaugeRunning,
        requestsWaiting: engine.gaugeWaiting,
        kvCacheUsage: engine.gaugeKvUsage,
        preemptionsTotal: engine.preemptionsTotal,
        generationTokensTotal: engine.generationTokensTotal,
        stepsTotal: engine.iterationTokens.count,
        numGpuBlocks: engine.config.numGpuBlocks,
        ttftSecondsSum: engine.ttft.sum,
        itlCount: engine.itl.count,
      })
    })

    it('labels every vllm: series with engine="0" and the model name', () => {
      const vllm = v1.samples.filter((s) => s.name.startsWith('vllm:'))
      expect(vllm.every((s) => s.labels.engine === '0' && s.labels.model_name === MODEL)).toBe(true)
    })

    it('renders cumulative histograms whose _count equals the +Inf bucket', () => {
      for (const family of [
        'vllm:iteration_tokens_total',
        'vllm:time_to_first_token_seconds',
        'vllm:inter_token_latency_seconds',
        'vllm:request_time_per_output_token_seconds',
        'vllm:e2e_request_latency_seconds',
        'vllm:request_queue_time_seconds',
        'vllm:request_inference_time_seconds',
        'vllm:request_prefill_time_seconds',
        'vllm:request_decode_time_seconds',
        'vllm:request_prompt_tokens',
        'vllm:request_generation_tokens',
        'vllm:request_params_max_tokens',
      ]) {
        expectWellFormedHistogram(v1.samples, family)
      }
      const ttft = buckets(v1.samples, 'vllm:time_to_first_token_seconds')
      expect(ttft.slice(0, -1).map((b) => Number(b.le))).toEqual(TTFT_BUCKETS)
      expect(ttft.at(-1)!.value).toBe(engine.ttft.count)
      const itl = buckets(v1.samples, 'vllm:inter_token_latency_seconds')
      expect(itl.slice(0, -1).map((b) => Number(b.le))).toEqual(ITL_BUCKETS)
      // vLLM's prompt-length buckets are 1-2-5 up to max_model_len.
      const prompt = buckets(v1.samples, 'vllm:request_prompt_tokens').map((b) => b.le)
      expect(prompt.slice(0, 6)).toEqual(['1.0', '2.0', '5.0', '10.0', '20.0', '50.0'])
      expect(Number(prompt.at(-2))).toBeLessThanOrEqual(32_768)
    })

    it('declares counters under their _total names, as vLLM\u2019s prometheus_client does', () => {
      for (const name of [
        'vllm:num_preemptions_total',
        'vllm:prompt_tokens_total',
        'vllm:generation_tokens_total',
        'vllm:request_success_total',
        'vllm:prefix_cache_queries_total',
      ]) {
        expect(v1.families.get(name)?.type, name).toBe('counter')
        expect(named(v1.samples, name).length, name).toBeGreaterThan(0)
      }
      expect(v1.families.get('vllm:iteration_tokens_total')?.type).toBe('histogram')
      expect(v1.families.get('vllm:kv_cache_usage_perc')?.type).toBe('gauge')
    })

    it('counts requests by finished_reason', () => {
      const reasons = Object.fromEntries(
        named(v1.samples, 'vllm:request_success_total').map((s) => [s.labels.finished_reason, s.value]),
      )
      expect(reasons).toEqual(engine.finishedTotal)
    })

    it('carries num_gpu_blocks and the cache config in vllm:cache_config_info', () => {
      const info = named(v1.samples, 'vllm:cache_config_info')
      expect(info).toHaveLength(1)
      expect(info[0]!.value).toBe(1)
      expect(info[0]!.labels).toMatchObject({
        num_gpu_blocks: String(replica.sizing.numGpuBlocks),
        block_size: '16',
        gpu_memory_utilization: '0.92',
        enable_prefix_caching: 'True',
      })
    })

    it('escapes the model name so any name round-trips', () => {
      const odd = 'org/model "quoted" \\ back\nslash'
      const parsed = parseExposition(render(engine, 'v1', odd))
      expect(parsed.errors).toEqual([])
      expect(readEngineMetrics(parsed, 'r0')[0]!.modelName).toBe(odd)
    })

    it('counts the requests a dead engine failed under finished_reason="error"', () => {
      const e = new SimEngine({
        numGpuBlocks: 100,
        maxNumSeqs: 8,
        maxNumBatchedTokens: 2048,
        maxModelLen: 4096,
        stepTime: new StepTimeModel(GPUS['H100-80GB']!, MODELS[MODEL]!, 1),
      })
      for (let i = 0; i < 5; i++) e.submit(100, 50, 50, null)
      e.advanceTo(50)
      e.kill()
      const r = readEngineMetrics(parseExposition(render(e, 'v1')), 'r0')[0]!
      expect(r.requestsErroredTotal).toBe(5)
      expect(r.requestsFinishedTotal).toBe(5)
    })
  })

  describe('V0', () => {
    it('parses with zero errors', () => {
      expect(v0.errors).toEqual([])
    })

    it('uses the V0 names: gpu_cache_usage_perc and time_per_output_token_seconds, with no engine label', () => {
      const names = new Set(v0.samples.map((s) => s.name))
      expect(names.has('vllm:gpu_cache_usage_perc')).toBe(true)
      expect(names.has('vllm:num_requests_swapped')).toBe(true)
      expect(names.has('vllm:time_per_output_token_seconds_count')).toBe(true)
      expect(names.has('vllm:kv_cache_usage_perc')).toBe(false)
      expect(names.has('vllm:inter_token_latency_seconds_count')).toBe(false)
      expect(names.has('vllm:cache_config_info')).toBe(false)
      expect(v0.samples.some((s) => 'engine' in s.labels)).toBe(false)
      expectWellFormedHistogram(v0.samples, 'vllm:time_per_output_token_seconds')
    })

    it('reads back as one engine-less reading with the same values', () => {
      const readings = readEngineMetrics(v0, 'r0')
      expect(readings).toHaveLength(1)
      const f = engine.finishedTotal
      expect(readings[0]).toMatchObject({
        engine: null,
        modelName: MODEL,
        requestsRunning: engine.gaugeRunning,
        requestsWaiting: engine.gaugeWaiting,
        kvCacheUsage: engine.gaugeKvUsage,
        preemptionsTotal: engine.preemptionsTotal,
        promptTokensTotal: engine.promptTokensTotal,
        generationTokensTotal: engine.generationTokensTotal,
        itlSecondsSum: engine.itl.sum,
        itlCount: engine.itl.count,
        ttftCount: engine.ttft.count,
        numGpuBlocks: null,
        requestsFinishedTotal: f.stop + f.length + f.abort,
      })
    })

    it('has no finished_reason="error" series (V0 had no such reason)', () => {
      const reasons = named(v0.samples, 'vllm:request_success_total').map((s) => s.labels.finished_reason)
      expect(reasons).toEqual(['stop', 'length', 'abort'])
      expect(readEngineMetrics(v0, 'r0')[0]!.requestsErroredTotal).toBeNull()
    })
  })
})
