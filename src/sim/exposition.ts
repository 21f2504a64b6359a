/**
 * Renders a simulated engine's `/metrics` the way vLLM's `PrometheusStatLogger` does: V1 names
 * with `model_name` and `engine` labels (vllm.md §1.2), or, as an option, the V0 generation's names
 * (`gpu_cache_usage_perc`, `time_per_output_token_seconds`, `num_requests_swapped`, no `engine`).
 */
import type { SimEngine } from './engine.js'
import type { SimHistogram } from './histogram.js'

export type MetricsGeneration = 'v1' | 'v0'

export interface ExpositionContext {
  modelName: string
  engine: SimEngine
  generation: MetricsGeneration
  /** `vllm:cache_config_info` labels (V1 only). */
  blockSize: number
  gpuMemoryUtilization: number
  startTimeSeconds: number
  /** `/sleep` level while asleep (0, 1 or 2), null or absent when awake. */
  sleepLevel?: number | null
}

function fmt(v: number): string {
  if (Number.isInteger(v)) return `${v}.0`
  return String(v)
}

function escapeLabel(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')
}

class Writer {
  out: string[] = []
  constructor(private readonly labels: string) {}
  family(name: string, type: string, help: string): void {
    this.out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`)
  }
  sample(name: string, value: number, extra = ''): void {
    const l = extra === '' ? this.labels : `${this.labels},${extra}`
    this.out.push(`${name}{${l}} ${fmt(value)}`)
  }
  gauge(name: string, help: string, value: number): void {
    this.family(name, 'gauge', help)
    this.sample(name, value)
  }
  counter(name: string, help: string, value: number): void {
    // prometheus_client's 0.0.4 text names a counter's HELP/TYPE lines with the `_total` suffix too.
    this.family(`${name}_total`, 'counter', help)
    this.sample(`${name}_total`, value)
  }
  histogram(name: string, help: string, h: SimHistogram): void {
    this.family(name, 'histogram', help)
    let cum = 0
    for (let i = 0; i < h.bounds.length; i++) {
      cum += h.counts[i] as number
      this.sample(`${name}_bucket`, cum, `le="${fmt(h.bounds[i] as number)}"`)
    }
    cum += h.counts[h.bounds.length] as number
    this.sample(`${name}_bucket`, cum, 'le="+Inf"')
    this.sample(`${name}_count`, h.count)
    this.sample(`${name}_sum`, h.sum)
  }
}

export function renderExposition(ctx: ExpositionContext): string {
  const e = ctx.engine
  const v1 = ctx.generation === 'v1'
  const model = escapeLabel(ctx.modelName)
  const w = new Writer(v1 ? `engine="0",model_name="${model}"` : `model_name="${model}"`)
  w.out.push(
    '# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.',
    '# TYPE process_start_time_seconds gauge',
    `process_start_time_seconds ${fmt(ctx.startTimeSeconds)}`,
  )
  if (v1) {
    w.family('vllm:cache_config_info', 'gauge', 'Information of the LLMEngine CacheConfig')
    w.sample(
      'vllm:cache_config_info',
      1,
      `block_size="${ctx.blockSize}",cache_dtype="auto",enable_prefix_caching="True",gpu_memory_utilization="${ctx.gpuMemoryUtilization}",num_gpu_blocks="${e.config.numGpuBlocks}"`,
    )
  }
  w.gauge('vllm:num_requests_running', 'Number of requests in model execution batches.', e.gaugeRunning)
  w.gauge('vllm:num_requests_waiting', 'Number of requests waiting to be processed.', e.gaugeWaiting)
  if (v1) {
    // `record_sleep_state` (#24176): exactly one of the three is 1 while asleep at level 1 or 2.
    const level = ctx.sleepLevel ?? null
    w.family(
      'vllm:engine_sleep_state',
      'gauge',
      'Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.',
    )
    w.sample('vllm:engine_sleep_state', level === null ? 1 : 0, 'sleep_state="awake"')
    w.sample('vllm:engine_sleep_state', level === 1 ? 1 : 0, 'sleep_state="weights_offloaded"')
    w.sample('vllm:engine_sleep_state', level === 2 ? 1 : 0, 'sleep_state="discard_all"')
    w.gauge('vllm:kv_cache_usage_perc', 'KV-cache usage. 1 means 100 percent usage.', e.gaugeKvUsage)
  } else {
    w.gauge('vllm:num_requests_swapped', 'Number of requests swapped to CPU.', 0)
    w.gauge('vllm:gpu_cache_usage_perc', 'GPU KV-cache usage. 1 means 100 percent usage.', e.gaugeKvUsage)
    w.gauge('vllm:cpu_cache_usage_perc', 'CPU KV-cache usage. 1 means 100 percent usage.', 0)
  }
  w.counter('vllm:num_preemptions', 'Cumulative number of preemption from the engine.', e.preemptionsTotal)
  w.counter(
    v1 ? 'vllm:prefix_cache_queries' : 'vllm:gpu_prefix_cache_queries',
    'Prefix cache queries, in terms of number of queried tokens.',
    e.prefixQueriesTotal,
  )
  w.counter(
    v1 ? 'vllm:prefix_cache_hits' : 'vllm:gpu_prefix_cache_hits',
    'Prefix cache hits, in terms of number of cached tokens.',
    0,
  )
  w.counter('vllm:prompt_tokens', 'Number of prefill tokens processed.', e.promptTokensTotal)
  w.counter('vllm:generation_tokens', 'Number of generation tokens processed.', e.generationTokensTotal)
  w.family('vllm:request_success_total', 'counter', 'Count of successfully processed requests.')
  const f = e.finishedTotal
  // V0's finish reasons were stop, length and abort; `error` came with V1.
  const reasons = v1
    ? (['stop', 'length', 'abort', 'error'] as const)
    : (['stop', 'length', 'abort'] as const)
  for (const reason of reasons) {
    w.sample('vllm:request_success_total', f[reason], `finished_reason="${reason}"`)
  }
  w.histogram(
    'vllm:iteration_tokens_total',
    'Histogram of number of tokens per engine_step.',
    e.iterationTokens,
  )
  w.histogram('vllm:time_to_first_token_seconds', 'Histogram of time to first token in seconds.', e.ttft)
  if (v1) {
    w.histogram('vllm:inter_token_latency_seconds', 'Histogram of inter-token latency in seconds.', e.itl)
    w.histogram(
      'vllm:request_time_per_output_token_seconds',
      'Histogram of time_per_output_token_seconds per request.',
      e.tpot,
    )
  } else {
    w.histogram('vllm:time_per_output_token_seconds', 'Histogram of time per output token in seconds.', e.itl)
  }
  w.histogram('vllm:e2e_request_latency_seconds', 'Histogram of e2e request latency in seconds.', e.e2e)
  w.histogram(
    'vllm:request_queue_time_seconds',
    'Histogram of time spent in WAITING phase for request.',
    e.queueTime,
  )
  w.histogram(
    'vllm:request_inference_time_seconds',
    'Histogram of time spent in RUNNING phase for request.',
    e.inferenceTime,
  )
  w.histogram(
    'vllm:request_prefill_time_seconds',
    'Histogram of time spent in PREFILL phase for request.',
    e.prefillTime,
  )
  w.histogram(
    'vllm:request_decode_time_seconds',
    'Histogram of time spent in DECODE phase for request.',
    e.decodeTime,
  )
  w.histogram('vllm:request_prompt_tokens', 'Number of prefill tokens processed.', e.promptTokensHist)
  w.histogram(
    'vllm:request_generation_tokens',
    'Number of generation tokens processed.',
    e.generationTokensHist,
  )
  w.histogram(
    'vllm:request_params_max_tokens',
    'Histogram of the max_tokens request parameter.',
    e.maxTokensHist,
  )
  w.out.push('')
  return w.out.join('\n')
}
