import { describe, expect, it } from 'vitest'
import { SimScenarioError } from '../../src/errors.js'
import { SimEngine } from '../../src/sim/engine.js'
import { SimFleet } from '../../src/sim/fleet.js'
import {
  BLOCK_SIZE_TOKENS,
  GPUS,
  MODELS,
  type ModelProfile,
  StepTimeModel,
  sizeKvCache,
} from '../../src/sim/hardware.js'

const GiB = 1024 ** 3
const H100 = GPUS['H100-80GB']!
const A100 = GPUS['A100-80GB']!
const LLAMA3_8B = MODELS['meta-llama/Llama-3.1-8B-Instruct']!
const LLAMA3_70B = MODELS['meta-llama/Llama-3.1-70B-Instruct']!

/** Llama-2-7B as Vidur profiled it (sim-calibration §1: 6.74 B params, 13.5 GB bf16, 512 KiB KV/token). */
const LLAMA2_7B: ModelProfile = {
  name: 'meta-llama/Llama-2-7b-hf',
  params: 6.74e9,
  weightsBytes: 13.5e9,
  layers: 32,
  hidden: 4096,
  kvBytesPerToken: 512 * 1024,
  maxModelLen: 4096,
}

/** Vidur's measured non-attention time per forward pass, ms (sim-calibration §3). */
const VIDUR_LLAMA2_7B: Record<'A100' | 'H100', Record<number, number>> = {
  A100: { 1: 9.4, 32: 9.6, 128: 12.4, 256: 18.0, 512: 33.6, 1024: 68.4, 2048: 134.4, 4096: 260.4 },
  H100: { 1: 5.6, 32: 5.9, 128: 6.4, 256: 9.3, 512: 12.1, 1024: 21.3, 2048: 40.9, 4096: 84.6 },
}

/** The step model's non-attention part: no KV read, no CPU side, full clocks. */
function linearMs(st: StepTimeModel, tokens: number): number {
  return st.stepMs(tokens, 0, 1) - st.cpuOverheadMs
}

/** Mean inter-token latency, ms, of one request decoding alone (low load). */
function lowLoadTpotMs(gpu: typeof H100, model: ModelProfile): number {
  const st = new StepTimeModel(gpu, model, 1)
  const engine = new SimEngine({
    numGpuBlocks: 10_000,
    maxNumSeqs: gpu.defaultMaxNumSeqs,
    maxNumBatchedTokens: gpu.defaultMaxNumBatchedTokens,
    maxModelLen: model.maxModelLen,
    stepTime: st,
  })
  engine.submit(1000, 200, 200, null)
  engine.advanceTo(60_000)
  expect(engine.itl.count).toBe(199)
  return (engine.itl.sum / engine.itl.count) * 1e3
}

describe('KV cache sizing at start-up (sim-calibration §2, §7)', () => {
  it('gives Llama-3-8B on one H100 at the defaults ≈15 GiB of weights and a ≈51-56 GiB pool of ≈420-460k tokens', () => {
    const s = sizeKvCache(H100, LLAMA3_8B, 1, 0.92, H100.defaultMaxNumBatchedTokens)
    expect(s.weightsBytesPerGpu / GiB).toBeCloseTo(15, 0)
    expect(s.kvCacheBytesPerGpu / GiB).toBeGreaterThanOrEqual(51)
    expect(s.kvCacheBytesPerGpu / GiB).toBeLessThanOrEqual(56)
    expect(s.kvCacheTokens).toBeGreaterThanOrEqual(420_000)
    expect(s.kvCacheTokens).toBeLessThanOrEqual(460_000)
    expect(s.kvCacheTokens).toBe(s.numGpuBlocks * BLOCK_SIZE_TOKENS)
    expect(BLOCK_SIZE_TOKENS).toBe(16)
  })

  it('matches the #10511 start-up log at gpu_memory_utilization 0.9: activations ≈1.1-1.3 GiB, ≈26-28k blocks', () => {
    const s = sizeKvCache(H100, LLAMA3_8B, 1, 0.9, 8192)
    expect(s.requestedBytes / GiB).toBeCloseTo(0.9 * 79.18, 2)
    expect(s.activationPeakBytes / GiB).toBeGreaterThan(1.0)
    expect(s.activationPeakBytes / GiB).toBeLessThan(1.3)
    expect(s.numGpuBlocks).toBeGreaterThan(26_000)
    expect(s.numGpuBlocks).toBeLessThan(28_000)
  })

  it('scales the profiled activation peak with max_num_batched_tokens (2048 on A100 leaves more KV than 8192)', () => {
    const small = sizeKvCache(A100, LLAMA3_8B, 1, 0.9, 2048)
    const large = sizeKvCache(A100, LLAMA3_8B, 1, 0.9, 8192)
    expect(large.activationPeakBytes).toBeCloseTo(4 * small.activationPeakBytes, 0)
    expect(small.numGpuBlocks).toBeGreaterThan(large.numGpuBlocks)
  })

  it('divides weights and KV bytes per token by the tensor-parallel size', () => {
    const tp1 = sizeKvCache(H100, LLAMA3_8B, 1, 0.92, 8192)
    const tp2 = sizeKvCache(H100, LLAMA3_8B, 2, 0.92, 8192)
    expect(tp2.weightsBytesPerGpu).toBeCloseTo(tp1.weightsBytesPerGpu / 2, 0)
    // Each GPU holds half of every token's KV, so a token pool of more than twice the size.
    expect(tp2.kvCacheTokens).toBeGreaterThan(2 * tp1.kvCacheTokens)
  })

  it('finds no room for KV blocks for Llama-3-70B in bf16 on one 80 GB GPU', () => {
    expect(sizeKvCache(H100, LLAMA3_70B, 1, 0.92, 8192).numGpuBlocks).toBeLessThan(2)
    expect(sizeKvCache(A100, LLAMA3_70B, 1, 0.92, 2048).numGpuBlocks).toBeLessThan(2)
    expect(sizeKvCache(GPUS['H200-141GB']!, LLAMA3_70B, 1, 0.92, 8192).numGpuBlocks).toBeLessThan(2)
  })

  it('makes SimFleet refuse a 70B bf16 replica on one GPU with vLLM\u2019s "No available memory for the cache blocks"', () => {
    const make = () => new SimFleet({ model: 'meta-llama/Llama-3.1-70B-Instruct', gpu: 'H100-80GB' })
    expect(make).toThrow(SimScenarioError)
    expect(make).toThrow(/No available memory for the cache blocks/)
    // At TP4 it fits with a useful pool (sim-calibration §7: ≥ 4×80 GB for bf16).
    const fleet = new SimFleet({ model: 'meta-llama/Llama-3.1-70B-Instruct', tensorParallelSize: 4 })
    expect(fleet.gpus).toHaveLength(4)
    expect(fleet.replicas[0]!.sizing.kvCacheTokens).toBeGreaterThan(300_000)
  })

  it('makes SimFleet refuse a pool smaller than one max_model_len request, as vLLM\u2019s start-up check does (#10517)', () => {
    // 70B bf16 at TP2 leaves ≈30k tokens of KV per replica: less than the 32,768-token max_model_len.
    const tp2 = { model: 'meta-llama/Llama-3.1-70B-Instruct', tensorParallelSize: 2 }
    expect(() => new SimFleet(tp2)).toThrow(SimScenarioError)
    expect(() => new SimFleet(tp2)).toThrow(
      /max seq len \(32768\) is larger than the maximum number of tokens that can be stored in KV cache \(\d+\)/,
    )
    // A shorter max_model_len starts.
    expect(new SimFleet({ ...tp2, maxModelLen: 16_384 }).replicas).toHaveLength(1)
  })
})

describe('the step-time model against Vidur\u2019s profiles (sim-calibration §3)', () => {
  for (const [gpuName, gpu] of [
    ['A100', A100],
    ['H100', H100],
  ] as const) {
    const st = new StepTimeModel(gpu, LLAMA2_7B, 1)
    const rows = VIDUR_LLAMA2_7B[gpuName]

    it(`reproduces Llama-2-7B on ${gpuName} at 1, 512 and 2048 tokens within 15 %`, () => {
      for (const tokens of [1, 512, 2048]) {
        const measured = rows[tokens]!
        expect(Math.abs(linearMs(st, tokens) - measured) / measured, `${tokens} tokens`).toBeLessThan(0.15)
      }
    })

    it(`stays within 20 % of every profiled batch size on ${gpuName}`, () => {
      for (const [tokens, measured] of Object.entries(rows)) {
        expect(Math.abs(linearMs(st, Number(tokens)) - measured) / measured, `${tokens} tokens`).toBeLessThan(
          0.2,
        )
      }
    })
  }

  it('is flat (memory-bound) at small batches and linear (compute-bound) at large ones', () => {
    const st = new StepTimeModel(H100, LLAMA2_7B, 1)
    expect(linearMs(st, 32) / linearMs(st, 1)).toBeLessThan(1.05)
    expect(linearMs(st, 4096) / linearMs(st, 2048)).toBeCloseTo(2, 1)
  })

  it('runs compute-bound steps ≈3.3x and memory-bound steps ≈1.7x faster on H100 than on A100', () => {
    const a = new StepTimeModel(A100, LLAMA2_7B, 1)
    const h = new StepTimeModel(H100, LLAMA2_7B, 1)
    expect(linearMs(a, 1) / linearMs(h, 1)).toBeCloseTo(3.35 / 2.0, 1)
    expect(linearMs(a, 4096) / linearMs(h, 4096)).toBeGreaterThan(3.0)
    expect(linearMs(a, 4096) / linearMs(h, 4096)).toBeLessThan(3.4)
  })

  it('adds one read of every scheduled sequence\u2019s KV per step', () => {
    const st = new StepTimeModel(H100, LLAMA3_8B, 1)
    // 256 sequences × 2k tokens × 128 KiB at 0.7 × 3.35 TB/s ≈ 29 ms on top of the weights.
    const extra = st.stepMs(256, 256 * 2048, 1) - st.stepMs(256, 0, 1)
    expect(extra).toBeCloseTo(((256 * 2048 * 128 * 1024) / (0.7 * 3.35e12)) * 1e3, 6)
  })

  it('slows compute, not HBM reads, when clocks drop', () => {
    const st = new StepTimeModel(H100, LLAMA3_8B, 1)
    expect(st.stepMs(1, 0, 1.5) / st.stepMs(1, 0, 1)).toBeLessThan(1.01)
    expect(st.stepMs(8192, 0, 1.5) / st.stepMs(8192, 0, 1)).toBeGreaterThan(1.45)
  })

  it('counts a long-context decode step as mostly memory-bound, a large prefill as compute-bound', () => {
    const st = new StepTimeModel(H100, LLAMA3_8B, 1)
    // 256 decodes over 2k-token contexts: weights + 64 GiB of KV reads dwarf 256 tokens of matmuls.
    expect(st.computeIntensity(256, 256 * 2048)).toBeLessThan(0.2)
    expect(st.computeIntensity(8192, 8192)).toBeGreaterThan(0.9)
  })
})

describe('decode TPOT at low load (sim-calibration §7: ≈ weights / (0.7·BW))', () => {
  it('is ≈7 ms for an 8B model on H100', () => {
    const tpot = lowLoadTpotMs(H100, LLAMA3_8B)
    expect(tpot).toBeGreaterThan(7 * 0.9)
    expect(tpot).toBeLessThan(7 * 1.15)
  })

  it('is ≈10 ms for an 8B model on A100 (the formula itself gives 11.5 ms for 16.1 GB at 1.4 TB/s)', () => {
    const tpot = lowLoadTpotMs(A100, LLAMA3_8B)
    const formula = (LLAMA3_8B.weightsBytes / (0.7 * A100.memoryBandwidthBytesPerSec)) * 1e3
    expect(tpot).toBeGreaterThan(10 * 0.9)
    expect(tpot).toBeLessThan(10 * 1.25)
    expect(Math.abs(tpot - formula) / formula).toBeLessThan(0.1)
  })

  it('is ≈1.6x longer on A100 than on H100 (the HBM bandwidth ratio)', () => {
    const ratio = lowLoadTpotMs(A100, LLAMA3_8B) / lowLoadTpotMs(H100, LLAMA3_8B)
    expect(ratio).toBeGreaterThan(1.5)
    expect(ratio).toBeLessThan(1.75)
  })
})
