import { describe, expect, it } from 'vitest'
import type { EngineReading } from '../../src/telemetry/types.js'
import { emptyEngineReading, mergeEngineReadings, readEngineMetrics } from '../../src/vllm/engine-metrics.js'
import { parseExposition } from '../../src/vllm/exposition.js'
import { fixture, fixtureNames } from './helpers.js'

const read = (text: string, replica = 'r1') => readEngineMetrics(parseExposition(text), replica)
const readFixture = (name: string) => read(fixture(name))

/** The fields a reading gets from /metrics, all null: what an empty or foreign exposition yields. */
function nullMetrics(): Partial<EngineReading> {
  const {
    replica: _r,
    engine: _e,
    reachable: _re,
    healthStatus: _h,
    error: _er,
    ...rest
  } = emptyEngineReading('x')
  return rest
}

describe('readEngineMetrics on the V1 sample exposition', () => {
  it('maps every field of engine "0"', () => {
    expect(readFixture('vllm-metrics-sample.txt')).toEqual([
      {
        replica: 'r1',
        engine: '0',
        modelName: 'meta-llama/Llama-3.1-8B-Instruct',
        reachable: true,
        healthStatus: null,
        error: null,
        requestsRunning: 8,
        requestsWaiting: 3,
        kvCacheUsage: 0.6187341772151899,
        preemptionsTotal: 4,
        promptTokensTotal: 139841,
        generationTokensTotal: 37074,
        stepsTotal: 4170,
        requestsFinishedTotal: 140,
        requestsErroredTotal: 0,
        numGpuBlocks: 27810,
        ttftSecondsSum: 19.030832949478278,
        ttftCount: 140,
        itlSecondsSum: 638.9774446199112,
        itlCount: 35284,
        e2eSecondsSum: 663.1180107265601,
        e2eCount: 140,
        queueTimeSecondsSum: 7.218080072532026,
        queueTimeCount: 140,
        // One scrape has no window: the scraper fills these.
        ttftP50Ms: null,
        ttftP90Ms: null,
        ttftP99Ms: null,
        itlP50Ms: null,
        itlP99Ms: null,
        e2eP50Ms: null,
        e2eP99Ms: null,
        queueTimeP99Ms: null,
      },
    ])
  })
})

describe('readEngineMetrics on the real captures', () => {
  it('reads the tiny V1 KV value of prodstack-617 on engine "0" and leaves the rest null', () => {
    const [r, ...more] = readFixture('metrics-v1-prodstack-617.txt')
    expect(more).toEqual([])
    expect(r).toMatchObject({
      engine: '0',
      modelName: 'zai-org/GLM-4.5',
      kvCacheUsage: 9.75010481363281e-6,
      requestsRunning: null,
      // Only TPOT buckets are in the paste: no _sum/_count, so no ITL numbers.
      itlSecondsSum: null,
      itlCount: null,
      numGpuBlocks: null,
    })
  })

  it('finds two engines in 22227 from bucket series alone', () => {
    const readings = readFixture('metrics-v1-22227.txt')
    expect(readings.map((r) => r.engine)).toEqual(['0', '1'])
    for (const r of readings) {
      expect(r).toMatchObject({ ...nullMetrics(), modelName: '/home/jovyan/qwen3-8b' })
    }
  })

  it('reads the old V1 names of prodstack-318 as one engine without a label', () => {
    expect(readFixture('metrics-v1early-prodstack-318.txt')).toEqual([
      {
        ...emptyEngineReading('r1'),
        modelName: 'Qwen/Qwen2.5-Coder-32B-Instruct',
        requestsRunning: 0,
        requestsWaiting: 0,
        // vllm:gpu_cache_usage_perc, the name before kv_cache_usage_perc.
        kvCacheUsage: 0,
      },
    ])
  })

  it('reads V0 token counters of the IBM fork and ignores the CPU cache gauge', () => {
    expect(readFixture('metrics-v0-ibmvllm-18.txt')).toEqual([
      {
        ...emptyEngineReading('r1'),
        modelName: 'bigscience/bloom-560m',
        promptTokensTotal: 1196,
        generationTokensTotal: 218152,
      },
    ])
  })

  it('names the model of a V0 bucket-only paste and leaves every metric null', () => {
    expect(readFixture('metrics-v0-8819.txt')).toEqual([
      { ...emptyEngineReading('r1'), modelName: 'facebook/opt-125m' },
    ])
  })

  it('sums a LoRA adapter into its V0 engine and names the base model, not the adapter', () => {
    const [r, ...more] = readFixture('metrics-v0-11117.txt')
    expect(more).toEqual([])
    expect(r).toMatchObject({
      engine: null,
      modelName: 'meta-llama/Llama-2-7b-hf',
      stepsTotal: 8,
      // sql-lora's count; the base model's _count is beyond the excerpt.
      e2eCount: 1,
      e2eSecondsSum: null,
    })
  })

  it('yields one all-null reading for the HELP/TYPE-only functionary file', () => {
    expect(parseExposition(fixture('metrics-v0-functionary-263.txt')).errors).toEqual([])
    expect(readFixture('metrics-v0-functionary-263.txt')).toEqual([emptyEngineReading('r1')])
  })

  it('yields one all-null reading for the pre-vllm: aioprometheus exporter', () => {
    expect(readFixture('metrics-v0-1890.txt')).toEqual([emptyEngineReading('r1')])
  })

  it('covers every metrics capture in the fixtures folder', () => {
    for (const name of fixtureNames('metrics-')) {
      const readings = readFixture(name)
      expect(readings.length, name).toBeGreaterThan(0)
      for (const r of readings) expect(r, name).toMatchObject({ replica: 'r1', reachable: true, error: null })
    }
  })
})

describe('readEngineMetrics on hand-made expositions', () => {
  it('takes the base model gauges and sums counters over adapters (V0 LoRA)', () => {
    const [r] = read(
      [
        'vllm:num_requests_running{model_name="base"} 3.0',
        'vllm:gpu_cache_usage_perc{model_name="base"} 0.5',
        'vllm:prompt_tokens_total{model_name="base"} 100.0',
        'vllm:prompt_tokens_total{model_name="adapter"} 20.0',
        'vllm:request_success_total{finished_reason="stop",model_name="adapter"} 2.0',
        'vllm:request_success_total{finished_reason="length",model_name="base"} 5.0',
        'vllm:time_per_output_token_seconds_sum{model_name="adapter"} 1.5',
        'vllm:time_per_output_token_seconds_count{model_name="adapter"} 10.0',
      ].join('\n'),
    )
    expect(r).toMatchObject({
      engine: null,
      modelName: 'base',
      requestsRunning: 3,
      kvCacheUsage: 0.5,
      promptTokensTotal: 120,
      requestsFinishedTotal: 7,
      // V0 had no finished_reason="error": that count cannot be taken.
      requestsErroredTotal: null,
      itlSecondsSum: 1.5,
      itlCount: 10,
    })
  })

  it('prefers the new names when a transitional server exposes both', () => {
    const [r] = read(
      [
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25',
        'vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.75',
        'vllm:inter_token_latency_seconds_sum{engine="0",model_name="m"} 2.0',
        'vllm:inter_token_latency_seconds_count{engine="0",model_name="m"} 20.0',
        'vllm:time_per_output_token_seconds_sum{engine="0",model_name="m"} 9.0',
        'vllm:time_per_output_token_seconds_count{engine="0",model_name="m"} 90.0',
      ].join('\n'),
    )
    expect(r).toMatchObject({ kvCacheUsage: 0.25, itlSecondsSum: 2, itlCount: 20 })
  })

  it('counts error finishes and sorts engines numerically', () => {
    const lines: string[] = []
    for (const e of ['10', '2', '0']) {
      lines.push(`vllm:request_success_total{engine="${e}",finished_reason="error",model_name="m"} ${e}`)
      lines.push(`vllm:request_success_total{engine="${e}",finished_reason="stop",model_name="m"} 1`)
    }
    const readings = read(lines.join('\n'))
    expect(readings.map((r) => [r.engine, r.requestsErroredTotal, r.requestsFinishedTotal])).toEqual([
      ['0', 0, 1],
      ['2', 2, 3],
      ['10', 10, 11],
    ])
  })

  it('reads num_gpu_blocks as a number, "None" as null, and shares an engine-less config', () => {
    expect(read('vllm:cache_config_info{engine="0",num_gpu_blocks="None"} 1')[0]?.numGpuBlocks).toBeNull()
    const readings = read(
      [
        'vllm:cache_config_info{num_gpu_blocks="512"} 1.0',
        'vllm:num_requests_running{engine="0",model_name="m"} 1',
        'vllm:num_requests_running{engine="1",model_name="m"} 2',
      ].join('\n'),
    )
    expect(readings.map((r) => [r.engine, r.numGpuBlocks])).toEqual([
      ['0', 512],
      ['1', 512],
    ])
  })

  it('ignores NaN and infinite samples rather than reporting them', () => {
    const [r] = read(
      'vllm:num_requests_running{model_name="m"} NaN\nvllm:prompt_tokens_total{model_name="m"} +Inf',
    )
    expect(r).toMatchObject({ requestsRunning: null, promptTokensTotal: null, modelName: 'm' })
  })

  it('does not take an adapter listed in lora_requests_info for the base model', () => {
    const [r] = read(
      [
        'vllm:lora_requests_info{max_lora="1",running_lora_adapters="first/adapter",waiting_lora_adapters=""} 1.7e9',
        'vllm:e2e_request_latency_seconds_count{model_name="first/adapter"} 1',
        'vllm:e2e_request_latency_seconds_count{model_name="org/base"} 2',
      ].join('\n'),
    )
    expect(r).toMatchObject({ modelName: 'org/base', e2eCount: 3 })
  })

  it('survives input that is not a parsed exposition', () => {
    expect(readEngineMetrics(null as never, 'r')).toEqual([emptyEngineReading('r')])
    expect(readEngineMetrics({ samples: 'x' } as never, 'r')).toEqual([emptyEngineReading('r')])
    expect(readEngineMetrics({ samples: [null, { name: 'vllm:x' }, { name: 1 }] } as never, 'r')).toEqual([
      emptyEngineReading('r'),
    ])
  })
})

describe('mergeEngineReadings', () => {
  it('adds up a data-parallel server and keeps the fullest engine KV usage', () => {
    const a = { ...emptyEngineReading('x', '0'), requestsRunning: 3, kvCacheUsage: 0.5, preemptionsTotal: 1 }
    const b = {
      ...emptyEngineReading('x', '1'),
      requestsRunning: 4,
      kvCacheUsage: 0.9,
      preemptionsTotal: null,
    }
    const m = mergeEngineReadings([a, b])
    expect(m).toMatchObject({
      replica: 'x',
      engine: '0,1',
      requestsRunning: 7,
      kvCacheUsage: 0.9,
      preemptionsTotal: 1,
    })
    expect(m.requestsWaiting).toBeNull()
    expect(mergeEngineReadings([a])).toBe(a)
  })
})
