/**
 * Turns a parsed `/metrics` exposition into one {@link EngineReading} per vLLM engine.
 *
 * vLLM has exposed three generations of names (vllm.md §1.4): V0 (`model_name` label only,
 * `gpu_cache_usage_perc`, `time_per_output_token_seconds`), transitional V1 (V1 families under the
 * old names, still no `engine` label) and current V1 (`engine` label, `kv_cache_usage_perc`,
 * `inter_token_latency_seconds`). Every generation is read; where both names are present the new
 * one wins. A metric the server does not expose is null, never 0.
 */
import type { EngineReading } from '../telemetry/types.js'
import { parseSampleValue, type Sample } from './exposition.js'
import type { BucketCounts, LatencyHistograms } from './histogram-window.js'

/** A reading with every metric null: the shape for "looked, found nothing" and for failed scrapes. */
export function emptyEngineReading(replica: string, engine: string | null = null): EngineReading {
  return {
    replica,
    engine,
    modelName: null,
    reachable: true,
    healthStatus: null,
    error: null,
    requestsRunning: null,
    requestsWaiting: null,
    kvCacheUsage: null,
    preemptionsTotal: null,
    promptTokensTotal: null,
    generationTokensTotal: null,
    stepsTotal: null,
    requestsFinishedTotal: null,
    requestsErroredTotal: null,
    numGpuBlocks: null,
    ttftSecondsSum: null,
    ttftCount: null,
    itlSecondsSum: null,
    itlCount: null,
    e2eSecondsSum: null,
    e2eCount: null,
    queueTimeSecondsSum: null,
    queueTimeCount: null,
    ttftP50Ms: null,
    ttftP90Ms: null,
    ttftP99Ms: null,
    itlP50Ms: null,
    itlP99Ms: null,
    e2eP50Ms: null,
    e2eP99Ms: null,
    queueTimeP99Ms: null,
  }
}

// Gauges describe the engine, so only one model's value is taken (see pickBaseModel).
const G = { Running: 0, Waiting: 1, KvNew: 2, KvOld: 3, Count: 4 } as const
type G = (typeof G)[keyof typeof G]

// Counters and histogram sums/counts are summed over every model_name of an engine.
const C = {
  Preemptions: 0,
  PromptTokens: 1,
  GenerationTokens: 2,
  Steps: 3,
  Finished: 4,
  Errored: 5,
  TtftSum: 6,
  TtftCount: 7,
  ItlSum: 8,
  ItlCount: 9,
  TpotSum: 10,
  TpotCount: 11,
  E2eSum: 12,
  E2eCount: 13,
  QueueSum: 14,
  QueueCount: 15,
  Count: 16,
} as const
type C = (typeof C)[keyof typeof C]

const GAUGES: ReadonlyMap<string, G> = new Map<string, G>([
  ['vllm:num_requests_running', G.Running],
  ['vllm:num_requests_waiting', G.Waiting],
  ['vllm:kv_cache_usage_perc', G.KvNew],
  ['vllm:gpu_cache_usage_perc', G.KvOld],
])

const COUNTERS: ReadonlyMap<string, C> = new Map<string, C>([
  ['vllm:num_preemptions_total', C.Preemptions],
  ['vllm:prompt_tokens_total', C.PromptTokens],
  ['vllm:generation_tokens_total', C.GenerationTokens],
  ['vllm:iteration_tokens_total_count', C.Steps],
  ['vllm:time_to_first_token_seconds_sum', C.TtftSum],
  ['vllm:time_to_first_token_seconds_count', C.TtftCount],
  ['vllm:inter_token_latency_seconds_sum', C.ItlSum],
  ['vllm:inter_token_latency_seconds_count', C.ItlCount],
  ['vllm:time_per_output_token_seconds_sum', C.TpotSum],
  ['vllm:time_per_output_token_seconds_count', C.TpotCount],
  ['vllm:e2e_request_latency_seconds_sum', C.E2eSum],
  ['vllm:e2e_request_latency_seconds_count', C.E2eCount],
  ['vllm:request_queue_time_seconds_sum', C.QueueSum],
  ['vllm:request_queue_time_seconds_count', C.QueueCount],
])

/** Gauge families that only the base model carries: their model_name identifies it. */
const ENGINE_LEVEL_GAUGES: ReadonlySet<string> = new Set([
  ...GAUGES.keys(),
  'vllm:num_requests_swapped',
  'vllm:cpu_cache_usage_perc',
  'vllm:num_requests_waiting_by_reason',
  'vllm:engine_sleep_state',
])

// Latency histograms' `_bucket` series; ITL falls back to V0's TPOT family like the sum and count.
const H = { Ttft: 0, Itl: 1, Tpot: 2, E2e: 3, Queue: 4, Count: 5 } as const
type H = (typeof H)[keyof typeof H]

const BUCKETS: ReadonlyMap<string, H> = new Map<string, H>([
  ['vllm:time_to_first_token_seconds_bucket', H.Ttft],
  ['vllm:inter_token_latency_seconds_bucket', H.Itl],
  ['vllm:time_per_output_token_seconds_bucket', H.Tpot],
  ['vllm:e2e_request_latency_seconds_bucket', H.E2e],
  ['vllm:request_queue_time_seconds_bucket', H.Queue],
])

const SUCCESS = 'vllm:request_success_total'
const CACHE_CONFIG = 'vllm:cache_config_info'
const LORA_INFO = 'vllm:lora_requests_info'

interface EngineAcc {
  /** model_name values in order of first appearance ('' for series without one). */
  models: string[]
  /** The same, for lookups: `models.includes` per sample was quadratic in distinct model names. */
  modelSet: Set<string>
  /** Models that carry an engine-level gauge. */
  gaugeModels: Set<string>
  /** Per gauge, model_name -> value; created on first use (a garbage exposition can name 10^4 engines). */
  gauges: Array<Map<string, number> | null>
  counters: Array<number | null>
  numGpuBlocks: number | null
  /** Per latency histogram, `le` -> count summed over model names; null until a bucket is seen. */
  buckets: Array<Map<number, number> | null> | null
}

function newAcc(): EngineAcc {
  return {
    models: [],
    modelSet: new Set(),
    gaugeModels: new Set(),
    gauges: new Array<Map<string, number> | null>(G.Count).fill(null),
    counters: new Array<number | null>(C.Count).fill(null),
    numGpuBlocks: null,
    buckets: null,
  }
}

function addBucket(acc: EngineAcc, h: H, le: string | undefined, v: number): void {
  if (le === undefined || !(v >= 0)) return
  const bound = parseSampleValue(le)
  if (bound === undefined || Number.isNaN(bound) || bound === Number.NEGATIVE_INFINITY) return
  acc.buckets ??= new Array<Map<number, number> | null>(H.Count).fill(null)
  let m = acc.buckets[h]
  if (m == null) {
    m = new Map()
    acc.buckets[h] = m
  }
  m.set(bound, (m.get(bound) ?? 0) + v)
}

/** A `_bucket` family as bounds and cumulative counts; null without +Inf or a finite bound. */
function toBucketCounts(m: Map<number, number> | null | undefined): BucketCounts | null {
  if (m == null) return null
  const inf = m.get(Number.POSITIVE_INFINITY)
  if (inf === undefined || m.size < 2) return null
  const bounds = [...m.keys()].filter((b) => b !== Number.POSITIVE_INFINITY).sort((a, b) => a - b)
  const counts = bounds.map((b) => m.get(b)!)
  counts.push(inf)
  return { bounds, counts, cumulative: true }
}

function noHistograms(): LatencyHistograms {
  return { ttft: null, itl: null, e2e: null, queueTime: null }
}

function toHistograms(acc: EngineAcc): LatencyHistograms {
  const b = acc.buckets
  if (b === null) return noHistograms()
  return {
    ttft: toBucketCounts(b[H.Ttft]),
    itl: toBucketCounts(b[H.Itl] ?? b[H.Tpot]),
    e2e: toBucketCounts(b[H.E2e]),
    queueTime: toBucketCounts(b[H.Queue]),
  }
}

function addCounter(acc: EngineAcc, c: C, v: number): void {
  acc.counters[c] = (acc.counters[c] ?? 0) + v
}

function parseBlocks(raw: string | undefined): number | null {
  if (raw === undefined) return null
  const n = Number(raw)
  // vLLM writes "None" before the KV cache is sized.
  return raw !== '' && Number.isSafeInteger(n) && n >= 0 ? n : null
}

/**
 * The model whose gauges describe the engine when several `model_name` values share it (V0 LoRA
 * exposed adapters as extra model_name values on per-request series). In order of evidence:
 * 1. a model that carries engine-level gauges (running/waiting/KV: the scheduler's, labelled only
 *    with the served base model); 2. a model not listed as an adapter in `vllm:lora_requests_info`;
 * 3. a model that looks like a path or hub id (contains `/`; adapter names are bare `--lora-modules`
 *    names); 4. the first seen.
 */
function pickBaseModel(acc: EngineAcc, adapters: ReadonlySet<string>): string | undefined {
  const { models } = acc
  if (models.length <= 1) return models[0]
  const withGauges = models.find((m) => acc.gaugeModels.has(m))
  if (withGauges !== undefined) return withGauges
  const notAdapters = models.filter((m) => !adapters.has(m))
  const pool = notAdapters.length > 0 ? notAdapters : models
  return pool.find((m) => m.includes('/')) ?? pool[0]
}

function gauge(acc: EngineAcc, g: G, base: string | undefined): number | null {
  const values = acc.gauges[g]
  if (values == null || values.size === 0) return null
  if (base !== undefined) {
    const v = values.get(base)
    if (v !== undefined) return v
  }
  return values.values().next().value ?? null
}

function compareEngines(a: string, b: string): number {
  const na = Number(a)
  const nb = Number(b)
  const aNum = a !== '' && Number.isFinite(na)
  const bNum = b !== '' && Number.isFinite(nb)
  if (aNum && bNum) return na - nb
  if (aNum !== bNum) return aNum ? -1 : 1
  return a < b ? -1 : a > b ? 1 : 0
}

/**
 * One reading per engine: per `engine` label value (sorted numerically), or a single reading with
 * `engine: null` for servers without the label (V0, early V1). When the exposition has no `vllm:`
 * series at all the result is one all-null reading with `engine: null`, so a caller always gets a
 * reading for the replica.
 *
 * Several `model_name` values on one engine: counters and histogram sums/counts are summed across
 * them (each request is counted under exactly one model name, so the sum is the engine's total);
 * gauges (running, waiting, KV usage) are taken from the base model (see {@link pickBaseModel}),
 * whose name is `modelName`.
 *
 * Fields: kvCacheUsage prefers `kv_cache_usage_perc` over the V0 `gpu_cache_usage_perc`; the ITL
 * pair prefers `inter_token_latency_seconds` over `time_per_output_token_seconds` (sum and count
 * always from the same family); requestsErroredTotal is null when no `finished_reason="error"`
 * series exists (V0 had no such reason). Non-finite sample values are ignored. `reachable` is
 * true, `healthStatus` and `error` null: the scraper fills those, and the latency quantiles
 * (`ttftP50Ms`...), which need a window of scrapes (`LatencyWindows`), are null here.
 *
 * `histograms`, when given, is emptied and filled in step with the result: `histograms[i]` holds
 * the cumulative `_bucket` counts (summed over model names) of reading i's TTFT, ITL (V0: TPOT),
 * end-to-end and queue-time histograms; a family without a `+Inf` bucket is null.
 */
export function readEngineMetrics(
  parsed: { samples: readonly Sample[] },
  replica: string,
  histograms?: LatencyHistograms[],
): EngineReading[] {
  if (Array.isArray(histograms)) histograms.length = 0
  const byEngine = new Map<string | null, EngineAcc>()
  // Series without an engine label in an exposition that has one (cache_config_info of some
  // builds, lora_requests_info always) are kept aside rather than inventing an engine for them.
  let unlabelled: EngineAcc | null = null
  let labelledSeen = false
  const adapters = new Set<string>()
  let sawVllm = false

  const samples = parsed?.samples
  if (!Array.isArray(samples)) {
    histograms?.push(noHistograms())
    return [emptyEngineReading(replica)]
  }

  for (const s of samples) {
    const name = s?.name
    // Cheap prefix test first: most of an exposition is python_*, process_*, http_* and buckets.
    if (typeof name !== 'string' || name.charCodeAt(0) !== 118 /* v */ || !name.startsWith('vllm:')) continue
    const labels = s.labels
    if (labels === null || typeof labels !== 'object') continue
    sawVllm = true
    if (name === LORA_INFO) {
      for (const key of ['running_lora_adapters', 'waiting_lora_adapters']) {
        for (const a of (labels[key] ?? '').split(',')) if (a.trim() !== '') adapters.add(a.trim())
      }
      continue
    }
    // Every vllm: series, buckets included, names its engine and model: a partial exposition may
    // hold nothing else (the 22227 capture has only buckets for its two engines).
    const engine = Object.hasOwn(labels, 'engine') ? (labels.engine ?? null) : null
    let acc: EngineAcc
    if (engine !== null) {
      labelledSeen = true
      acc = byEngine.get(engine) ?? newAcc()
      byEngine.set(engine, acc)
    } else {
      unlabelled ??= newAcc()
      acc = unlabelled
    }
    if (name === CACHE_CONFIG) {
      acc.numGpuBlocks ??= parseBlocks(labels.num_gpu_blocks)
      continue
    }
    const model = labels.model_name ?? ''
    if (!acc.modelSet.has(model)) {
      acc.modelSet.add(model)
      acc.models.push(model)
    }
    if (ENGINE_LEVEL_GAUGES.has(name)) acc.gaugeModels.add(model)
    const v = s.value
    if (!Number.isFinite(v)) continue
    const g = GAUGES.get(name)
    const c = g === undefined ? COUNTERS.get(name) : undefined
    if (g !== undefined) {
      let m = acc.gauges[g]
      if (m == null) {
        m = new Map()
        acc.gauges[g] = m
      }
      if (!m.has(model)) m.set(model, v)
    } else if (c !== undefined) {
      addCounter(acc, c, v)
    } else if (name === SUCCESS) {
      addCounter(acc, C.Finished, v)
      if (labels.finished_reason === 'error') addCounter(acc, C.Errored, v)
    } else if (histograms !== undefined) {
      const h = BUCKETS.get(name)
      if (h !== undefined) addBucket(acc, h, labels.le, v)
    }
  }

  if (!sawVllm) {
    histograms?.push(noHistograms())
    return [emptyEngineReading(replica)]
  }
  if (!labelledSeen) {
    // V0 / early V1: everything is one engine.
    byEngine.set(null, unlabelled ?? newAcc())
  } else if (unlabelled !== null && unlabelled.numGpuBlocks !== null) {
    // An engine-less cache_config_info describes the one config every engine shares.
    for (const acc of byEngine.values()) acc.numGpuBlocks ??= unlabelled.numGpuBlocks
  }

  const engines = [...byEngine.keys()]
  engines.sort((a, b) => (a === null || b === null ? 0 : compareEngines(a, b)))
  if (histograms !== undefined)
    for (const engine of engines) histograms.push(toHistograms(byEngine.get(engine)!))
  return engines.map((engine) => toReading(replica, engine, byEngine.get(engine)!, adapters))
}

function toReading(
  replica: string,
  engine: string | null,
  acc: EngineAcc,
  adapters: ReadonlySet<string>,
): EngineReading {
  const base = pickBaseModel(acc, adapters)
  const c = acc.counters
  const useItl = c[C.ItlSum] !== null || c[C.ItlCount] !== null
  const reading = emptyEngineReading(replica, engine)
  reading.modelName = base === undefined || base === '' ? null : base
  reading.requestsRunning = gauge(acc, G.Running, base)
  reading.requestsWaiting = gauge(acc, G.Waiting, base)
  reading.kvCacheUsage = gauge(acc, G.KvNew, base) ?? gauge(acc, G.KvOld, base)
  reading.preemptionsTotal = c[C.Preemptions] ?? null
  reading.promptTokensTotal = c[C.PromptTokens] ?? null
  reading.generationTokensTotal = c[C.GenerationTokens] ?? null
  reading.stepsTotal = c[C.Steps] ?? null
  reading.requestsFinishedTotal = c[C.Finished] ?? null
  reading.requestsErroredTotal = c[C.Errored] ?? null
  reading.numGpuBlocks = acc.numGpuBlocks
  reading.ttftSecondsSum = c[C.TtftSum] ?? null
  reading.ttftCount = c[C.TtftCount] ?? null
  reading.itlSecondsSum = (useItl ? c[C.ItlSum] : c[C.TpotSum]) ?? null
  reading.itlCount = (useItl ? c[C.ItlCount] : c[C.TpotCount]) ?? null
  reading.e2eSecondsSum = c[C.E2eSum] ?? null
  reading.e2eCount = c[C.E2eCount] ?? null
  reading.queueTimeSecondsSum = c[C.QueueSum] ?? null
  reading.queueTimeCount = c[C.QueueCount] ?? null
  return reading
}

const SUMMED: ReadonlyArray<keyof EngineReading> = [
  'requestsRunning',
  'requestsWaiting',
  'preemptionsTotal',
  'promptTokensTotal',
  'generationTokensTotal',
  'stepsTotal',
  'requestsFinishedTotal',
  'requestsErroredTotal',
  'numGpuBlocks',
  'ttftSecondsSum',
  'ttftCount',
  'itlSecondsSum',
  'itlCount',
  'e2eSecondsSum',
  'e2eCount',
  'queueTimeSecondsSum',
  'queueTimeCount',
]

/** The latency quantile fields of an EngineReading (filled by `LatencyWindows`). */
export const LATENCY_QUANTILE_FIELDS = [
  'ttftP50Ms',
  'ttftP90Ms',
  'ttftP99Ms',
  'itlP50Ms',
  'itlP99Ms',
  'e2eP50Ms',
  'e2eP99Ms',
  'queueTimeP99Ms',
] as const satisfies ReadonlyArray<keyof EngineReading>

/**
 * One reading for a whole server with data parallelism (several `engine` labels): counters,
 * queues and histogram sums add up; KV usage is the fullest engine's, since one rank running out
 * of blocks preempts its requests whatever the others hold; latency quantiles are null (they
 * come from merged buckets, see `mergeLatencyHistograms`). `engine` lists the engines ("0,1").
 * Per-engine readings interleaved under one replica name would look like counter resets.
 */
export function mergeEngineReadings(readings: readonly EngineReading[]): EngineReading {
  const first = readings[0]
  if (first === undefined) throw new RangeError('mergeEngineReadings needs at least one reading')
  if (readings.length === 1) return first
  const out: EngineReading = { ...first, engine: readings.map((r) => r.engine ?? '?').join(',') }
  for (const k of SUMMED) {
    let sum: number | null = null
    for (const r of readings) {
      const v = r[k] as number | null
      if (v !== null) sum = (sum ?? 0) + v
    }
    ;(out as unknown as Record<string, unknown>)[k] = sum
  }
  let kv: number | null = null
  for (const r of readings)
    if (r.kvCacheUsage !== null && (kv === null || r.kvCacheUsage > kv)) kv = r.kvCacheUsage
  out.kvCacheUsage = kv
  // Quantiles do not add up: the caller merges the engines' buckets (mergeLatencyHistograms) and
  // fills these from its window.
  for (const k of LATENCY_QUANTILE_FIELDS) out[k] = null
  return out
}
