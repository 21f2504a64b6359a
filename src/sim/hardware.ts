/**
 * Calibration of the simulated hardware and models. Every constant here comes from
 * `shared/reference/sim-calibration.md` (model configs, vLLM start-up accounting, the roofline
 * step-time fit against Vidur's profiles, GPU power and thermal limits); the comments name the row.
 */

const GiB = 1024 ** 3

export interface GpuProfile {
  name: string
  /** What NVML reports as total framebuffer memory. */
  memoryTotalBytes: number
  /** HBM bandwidth, bytes/s. */
  memoryBandwidthBytesPerSec: number
  /** Dense bf16 peak, FLOP/s. */
  peakFlops: number
  powerLimitWatts: number
  idleWatts: number
  maxSmClockMhz: number
  idleSmClockMhz: number
  /** NVML GPU_MAX threshold: the driver applies SW thermal slowdown above it. */
  maxOperatingTempCelsius: number
  /** NVML SLOWDOWN threshold: hardware slowdown. */
  slowdownTempCelsius: number
  /** NVML SHUTDOWN threshold. */
  shutdownTempCelsius: number
  /** °C per W above ambient at equilibrium (healthy cooling). */
  thermalResistance: number
  /** Thermal time constant, s. */
  thermalTauSec: number
  /** vLLM's `get_batch_defaults`: A100 and small GPUs get 2048 / 256, others 8192 / 1024. */
  defaultMaxNumBatchedTokens: number
  defaultMaxNumSeqs: number
}

// Reported totals: ≈79.2 GiB for 80 GB parts (sim-calibration §2), 140.4 GiB for H200 (143771 MiB).
export const GPUS: Record<string, GpuProfile> = {
  'H100-80GB': {
    name: 'NVIDIA H100 80GB HBM3',
    memoryTotalBytes: 79.18 * GiB,
    memoryBandwidthBytesPerSec: 3.35e12,
    peakFlops: 989e12,
    powerLimitWatts: 700,
    idleWatts: 75,
    maxSmClockMhz: 1980,
    idleSmClockMhz: 345,
    maxOperatingTempCelsius: 87,
    slowdownTempCelsius: 89,
    shutdownTempCelsius: 92,
    // 700 W at 30 °C ambient settles near 72 °C with healthy air flow.
    thermalResistance: 0.06,
    thermalTauSec: 45,
    defaultMaxNumBatchedTokens: 8192,
    defaultMaxNumSeqs: 1024,
  },
  'H200-141GB': {
    name: 'NVIDIA H200',
    memoryTotalBytes: 140.4 * GiB,
    memoryBandwidthBytesPerSec: 4.8e12,
    peakFlops: 989e12,
    powerLimitWatts: 700,
    idleWatts: 78,
    maxSmClockMhz: 1980,
    idleSmClockMhz: 345,
    maxOperatingTempCelsius: 87,
    slowdownTempCelsius: 89,
    shutdownTempCelsius: 92,
    thermalResistance: 0.06,
    thermalTauSec: 45,
    defaultMaxNumBatchedTokens: 8192,
    defaultMaxNumSeqs: 1024,
  },
  'A100-80GB': {
    name: 'NVIDIA A100-SXM4-80GB',
    memoryTotalBytes: 79.15 * GiB,
    memoryBandwidthBytesPerSec: 2.0e12,
    peakFlops: 312e12,
    powerLimitWatts: 400,
    idleWatts: 52,
    maxSmClockMhz: 1410,
    idleSmClockMhz: 210,
    maxOperatingTempCelsius: 85,
    slowdownTempCelsius: 89,
    shutdownTempCelsius: 92,
    thermalResistance: 0.1,
    thermalTauSec: 45,
    defaultMaxNumBatchedTokens: 2048,
    defaultMaxNumSeqs: 256,
  },
}

export interface ModelProfile {
  name: string
  params: number
  weightsBytes: number
  layers: number
  hidden: number
  /** 2 (K,V) × layers × kv_heads × head_dim × 2 bytes. */
  kvBytesPerToken: number
  maxModelLen: number
}

export const MODELS: Record<string, ModelProfile> = {
  'meta-llama/Llama-3.1-8B-Instruct': {
    name: 'meta-llama/Llama-3.1-8B-Instruct',
    params: 8.03e9,
    weightsBytes: 14.99 * GiB,
    layers: 32,
    hidden: 4096,
    kvBytesPerToken: 128 * 1024,
    maxModelLen: 32768,
  },
  'Qwen/Qwen2.5-7B-Instruct': {
    name: 'Qwen/Qwen2.5-7B-Instruct',
    params: 7.62e9,
    weightsBytes: 14.2 * GiB,
    layers: 28,
    hidden: 3584,
    kvBytesPerToken: 56 * 1024,
    maxModelLen: 32768,
  },
  'meta-llama/Llama-2-13b-hf': {
    name: 'meta-llama/Llama-2-13b-hf',
    params: 13.0e9,
    weightsBytes: 24.2 * GiB,
    layers: 40,
    hidden: 5120,
    kvBytesPerToken: 800 * 1024,
    maxModelLen: 4096,
  },
  'meta-llama/Llama-3.1-70B-Instruct': {
    name: 'meta-llama/Llama-3.1-70B-Instruct',
    params: 70.6e9,
    weightsBytes: 131.4 * GiB,
    layers: 80,
    hidden: 8192,
    kvBytesPerToken: 320 * 1024,
    maxModelLen: 32768,
  },
}

export const BLOCK_SIZE_TOKENS = 16

/** vLLM's start-up accounting for one GPU of a replica (`determine_available_memory`). */
export interface KvSizing {
  requestedBytes: number
  weightsBytesPerGpu: number
  activationPeakBytes: number
  nonTorchBytes: number
  cudaGraphBytes: number
  kvCacheBytesPerGpu: number
  numGpuBlocks: number
  kvCacheTokens: number
}

export function sizeKvCache(
  gpu: Pick<GpuProfile, 'memoryTotalBytes'>,
  model: Pick<ModelProfile, 'weightsBytes' | 'hidden' | 'kvBytesPerToken'>,
  tp: number,
  gpuMemoryUtilization: number,
  maxNumBatchedTokens: number,
): KvSizing {
  const requestedBytes = gpu.memoryTotalBytes * gpuMemoryUtilization
  const weightsBytesPerGpu = model.weightsBytes / tp
  // Profile run over max_num_batched_tokens: ≈1.1 GiB for 8192 tokens of an 8B model (#10511).
  const activationPeakBytes = (maxNumBatchedTokens * model.hidden * 2 * 18) / tp
  // NCCL/cuBLAS/context: 1.79 GiB TP1 → 3.58 GiB TP2 on 8B (#10511); newer builds ≈0.1-0.6 GiB.
  const nonTorchBytes = 0.6 * GiB * tp ** 0.5
  const cudaGraphBytes = 0.5 * GiB
  const kvCacheBytesPerGpu = Math.max(
    0,
    requestedBytes - weightsBytesPerGpu - activationPeakBytes - nonTorchBytes - cudaGraphBytes,
  )
  const bytesPerBlock = (BLOCK_SIZE_TOKENS * model.kvBytesPerToken) / tp
  const numGpuBlocks = Math.floor(kvCacheBytesPerGpu / bytesPerBlock)
  return {
    requestedBytes,
    weightsBytesPerGpu,
    activationPeakBytes,
    nonTorchBytes,
    cudaGraphBytes,
    kvCacheBytesPerGpu,
    numGpuBlocks,
    kvCacheTokens: numGpuBlocks * BLOCK_SIZE_TOKENS,
  }
}

/**
 * Step-time model, in ms. The non-attention part is a smooth roofline,
 * `sqrt(t_mem² + t_compute²)`, with t_mem = weights / (0.7·BW) and t_compute = tokens·2·params /
 * (0.66·peak): it reproduces Vidur's measured per-forward times within ≈10 % (Llama-2-7B on A100:
 * 9.6 vs 9.4 ms at 1 token, 134 vs 134.4 at 2048; on H100 5.8/5.6, 12.0/12.1 at 512, 85/84.6 at 4096).
 * Attention adds one read of every scheduled sequence's KV (memory-bound), and the CPU side of a V1
 * step (scheduling, sampling, detokenisation) adds ≈0.8 ms.
 */
export class StepTimeModel {
  private readonly tMemMs: number
  private readonly computeMsPerToken: number
  private readonly kvReadMsPerToken: number
  private readonly allReduceMsPerToken: number
  readonly cpuOverheadMs = 0.8

  constructor(gpu: GpuProfile, model: ModelProfile, tp: number) {
    const bw = 0.7 * gpu.memoryBandwidthBytesPerSec
    this.tMemMs = (model.weightsBytes / tp / bw) * 1e3
    this.computeMsPerToken = ((2 * model.params) / tp / (0.66 * gpu.peakFlops)) * 1e3
    this.kvReadMsPerToken = (model.kvBytesPerToken / tp / bw) * 1e3
    // Two all-reduces per layer of hidden × 2 bytes per token over NVLink (≈300 GB/s effective).
    this.allReduceMsPerToken = tp > 1 ? ((2 * model.layers * model.hidden * 2) / 300e9) * 1e3 : 0
  }

  /**
   * @param batchTokens tokens computed this step (prefill chunks + one per decode)
   * @param contextTokens sum over scheduled sequences of their context length (KV read)
   * @param clockFactor max clock / current clock (throttling slows compute, not HBM)
   */
  stepMs(batchTokens: number, contextTokens: number, clockFactor: number): number {
    const tCompute = batchTokens * this.computeMsPerToken * clockFactor
    const linear = Math.sqrt(this.tMemMs * this.tMemMs + tCompute * tCompute)
    return (
      linear +
      contextTokens * this.kvReadMsPerToken +
      batchTokens * this.allReduceMsPerToken +
      this.cpuOverheadMs
    )
  }

  /**
   * Share of the step spent compute-bound (drives power draw): ≈0.1 for decode, → 1 for prefill.
   * The attention's KV reads are memory-bound time too: a decode step over long contexts is mostly
   * HBM traffic, which is why decode draws far less than the power limit (sim-calibration §5).
   */
  computeIntensity(batchTokens: number, contextTokens = 0): number {
    const tCompute = batchTokens * this.computeMsPerToken
    return tCompute / (tCompute + this.tMemMs + contextTokens * this.kvReadMsPerToken)
  }
}
