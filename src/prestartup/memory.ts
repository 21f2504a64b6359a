/**
 * Will the model fit, per GPU? vLLM's start-up accounting (sim-calibration §2, `sizeKvCache`):
 * a GPU gets `total × gpu_memory_utilization`; weights / TP, the profile run's activation peak,
 * non-torch memory and CUDA graphs come off the top, and the KV pool that is left must hold one
 * full `max_model_len` request or vLLM refuses to start. Separately, the free memory at start-up
 * must be at least `total × gpu_memory_utilization` ("Free memory on device … is less than
 * desired GPU memory utilization").
 */
import { BLOCK_SIZE_TOKENS, GPUS, sizeKvCache } from '../sim/hardware.js'

const GiB = 1024 ** 3
/** Above this, allocations vLLM does not profile (PR #2031) have nowhere to go. */
export const MAX_UTILIZATION = 0.95
export const DEFAULT_UTILIZATION = 0.9
/** vLLM's `get_batch_defaults` for the OpenAI server on H100/H200-class GPUs. */
export const DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192

export interface PlanModel {
  weightsBytes: number
  hidden: number
  kvBytesPerToken: number
  attentionHeads: number
  kvHeads: number
}

export interface MemoryNeed {
  weightsBytes: number
  activationBytes: number
  nonTorchBytes: number
  cudaGraphBytes: number
  /** KV for one `max_model_len` request, whole blocks. */
  kvCacheBytes: number
  totalBytes: number
}

/** What one GPU of a TP group needs to start with one full-length request's KV. */
export function memoryNeedPerGpu(
  model: PlanModel,
  tp: number,
  maxModelLen: number,
  maxNumBatchedTokens: number,
): MemoryNeed {
  const s = sizeKvCache({ memoryTotalBytes: 0 }, model, tp, 0, maxNumBatchedTokens)
  const kvCacheBytes = kvBytesForTokens(
    model,
    tp,
    Math.ceil(maxModelLen / BLOCK_SIZE_TOKENS) * BLOCK_SIZE_TOKENS,
  )
  const base = s.weightsBytesPerGpu + s.activationPeakBytes + s.nonTorchBytes + s.cudaGraphBytes
  return {
    weightsBytes: s.weightsBytesPerGpu,
    activationBytes: s.activationPeakBytes,
    nonTorchBytes: s.nonTorchBytes,
    cudaGraphBytes: s.cudaGraphBytes,
    kvCacheBytes,
    totalBytes: base + kvCacheBytes,
  }
}

// KV heads are split across the TP ranks; with more ranks than KV heads vLLM replicates them.
function kvBytesForTokens(model: PlanModel, tp: number, tokens: number): number {
  return (tokens * model.kvBytesPerToken) / Math.min(tp, model.kvHeads)
}

/** vLLM's default `max_num_batched_tokens` for a GPU by its NVML name (A100: 2048, else 8192). */
export function defaultMaxNumBatchedTokens(gpuName: string | null): number {
  const p = Object.values(GPUS).find((g) => g.name === gpuName)
  return p?.defaultMaxNumBatchedTokens ?? DEFAULT_MAX_NUM_BATCHED_TOKENS
}

export interface GpuMemoryState {
  index: number
  name: string | null
  /** What CUDA reports as total: NVML total less the driver's reserved memory. */
  totalBytes: number
  freeBytes: number | null
}

const floor2 = (x: number) => Math.floor(x * 100 + 1e-9) / 100
const ceil2 = (x: number) => Math.ceil(x * 100 - 1e-9) / 100

/**
 * The highest utilization vLLM's free-memory pre-check accepts on these GPUs, one point under
 * free / total so that a context created meanwhile does not tip it over; capped at 0.95.
 */
export function utilizationCap(gpus: GpuMemoryState[]): number {
  let cap = MAX_UTILIZATION
  for (const g of gpus)
    if (g.freeBytes !== null) cap = Math.min(cap, floor2(g.freeBytes / g.totalBytes - 0.01))
  return Math.max(0, cap)
}

export interface PlanInput {
  model: PlanModel
  /** The GPUs vLLM will see, in CUDA order; TP rank r runs on `gpus[r]`. */
  gpus: GpuMemoryState[]
  tensorParallelSize: number
  gpuMemoryUtilization: number
  maxModelLen: number
  maxNumBatchedTokens: number
}

export interface PlanOption {
  tensorParallelSize: number
  gpuMemoryUtilization: number
  need: MemoryNeed
  /** Tokens the KV pool holds at this setting (all sequences together). */
  kvCacheTokens: number
}

export interface MemoryPlan {
  requested: PlanOption & { budgetBytes: number; fits: boolean; problem: string | null }
  /** Smallest TP that fits these GPUs' capacity at up to 0.95 (free memory aside); null: none. */
  minTensorParallelSize: number | null
  /** The requested TP and utilization where they work, else the nearest that do; null: none. */
  recommended: PlanOption | null
  /** Why there is no recommendation. */
  reason: string | null
}

function kvTokens(input: PlanInput, tp: number, util: number, need: MemoryNeed, total: number): number {
  const free = total * util - (need.totalBytes - need.kvCacheBytes)
  const block = kvBytesForTokens(input.model, tp, BLOCK_SIZE_TOKENS)
  return Math.max(0, Math.floor(free / block)) * BLOCK_SIZE_TOKENS
}

export const gib = (b: number) => `${(b / GiB).toFixed(1)} GiB`

/** Sizes the requested setting and finds the smallest TP and a utilization that work. */
export function planMemory(input: PlanInput): MemoryPlan {
  const { model, gpus, maxModelLen, maxNumBatchedTokens } = input
  const tp = input.tensorParallelSize
  const util = input.gpuMemoryUtilization
  const group = (n: number) => gpus.slice(0, n)
  const minTotal = (n: number) => Math.min(...group(n).map((g) => g.totalBytes))
  const need = memoryNeedPerGpu(model, tp, maxModelLen, maxNumBatchedTokens)
  let problem: string | null = null
  if (model.attentionHeads % tp !== 0)
    problem = `${model.attentionHeads} attention heads do not split over ${tp} GPUs`
  else if (tp > gpus.length) problem = `--tensor-parallel-size ${tp} needs ${tp} GPUs; ${gpus.length} visible`
  const total = gpus.length > 0 ? minTotal(Math.min(tp, gpus.length)) : 0
  const budgetBytes = total * util
  if (problem === null && need.totalBytes > budgetBytes)
    problem = `needs ${gib(need.totalBytes)} per GPU, more than ${util} × ${gib(total)} = ${gib(budgetBytes)}`
  const requested = {
    tensorParallelSize: tp,
    gpuMemoryUtilization: util,
    need,
    kvCacheTokens: problem === null ? kvTokens(input, tp, util, need, total) : 0,
    budgetBytes,
    fits: problem === null,
    problem,
  }
  const candidates = [tp]
  for (let n = 1; n <= gpus.length; n *= 2) if (n !== tp) candidates.push(n)
  const valid = candidates
    .filter((n) => n <= gpus.length && model.attentionHeads % n === 0)
    .sort((a, b) => a - b)
  const minUtil = (n: number) =>
    ceil2(memoryNeedPerGpu(model, n, maxModelLen, maxNumBatchedTokens).totalBytes / minTotal(n))
  const minTensorParallelSize = valid.find((n) => minUtil(n) <= MAX_UTILIZATION) ?? null
  // Keep what was asked where it works; otherwise the smallest TP whose free memory allows it.
  const order = valid.includes(tp)
    ? [tp, ...valid.filter((n) => n > tp), ...valid.filter((n) => n < tp)]
    : valid
  for (const n of order) {
    const lo = minUtil(n)
    const hi = utilizationCap(group(n))
    if (lo > hi) continue
    const u = Math.min(Math.max(util, lo), hi)
    const nNeed = memoryNeedPerGpu(model, n, maxModelLen, maxNumBatchedTokens)
    const option = {
      tensorParallelSize: n,
      gpuMemoryUtilization: u,
      need: nNeed,
      kvCacheTokens: kvTokens(input, n, u, nNeed, minTotal(n)),
    }
    return { requested, minTensorParallelSize, recommended: option, reason: null }
  }
  let reason: string
  if (gpus.length === 0) reason = 'no GPU visible'
  else if (minTensorParallelSize === null) {
    const n = valid.at(-1)
    const fit =
      n === undefined
        ? 0
        : kvTokens(input, n, MAX_UTILIZATION, memoryNeedPerGpu(model, n, 0, maxNumBatchedTokens), minTotal(n))
    reason =
      `the model does not fit ${gpus.length} GPU(s) of ${gib(minTotal(gpus.length))} even at ${MAX_UTILIZATION}` +
      (fit > 0 ? `; at TP ${n} it fits up to --max-model-len ${fit}` : '; add GPUs or use a quantized model')
  } else
    reason = `not enough free memory: TP ${minTensorParallelSize} needs ${minUtil(minTensorParallelSize)} of each GPU but only ${utilizationCap(group(minTensorParallelSize))} is free; end what holds GPU memory`
  return { requested, minTensorParallelSize, recommended: null, reason }
}
