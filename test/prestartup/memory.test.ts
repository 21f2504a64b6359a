import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import {
  defaultMaxNumBatchedTokens,
  type GpuMemoryState,
  memoryNeedPerGpu,
  planMemory,
  utilizationCap,
} from '../../src/prestartup/memory.js'
import { type ResolvedModel, resolveModel } from '../../src/prestartup/models.js'
import { GPUS } from '../../src/sim/hardware.js'
import { GiB } from './helpers.js'

async function model(name: string): Promise<ResolvedModel> {
  const r = await resolveModel(name, join('/nonexistent', 'hub'))
  if (!r.found) throw new Error(r.reason)
  return r.model
}

// An 80 GB part as CUDA reports it (sim-calibration §2: ≈79.2 GiB), idle: 78.6 GiB free.
const h100 = (index: number, freeGiB = 78.6): GpuMemoryState => ({
  index,
  name: 'NVIDIA H100 80GB HBM3',
  totalBytes: 79.18 * GiB,
  freeBytes: freeGiB * GiB,
})
const gpus = (n: number) => Array.from({ length: n }, (_, i) => h100(i))
const plan = (m: ResolvedModel, g: GpuMemoryState[], tp: number, util: number, len: number) =>
  planMemory({
    model: m,
    gpus: g,
    tensorParallelSize: tp,
    gpuMemoryUtilization: util,
    maxModelLen: len,
    maxNumBatchedTokens: 8192,
  })

describe('memoryNeedPerGpu', () => {
  it('adds weights, the profile run, non-torch memory, CUDA graphs and one max_model_len request of KV', async () => {
    const n = memoryNeedPerGpu(await model('meta-llama/Meta-Llama-3-8B'), 1, 8192, 8192)
    expect(n.weightsBytes / GiB).toBeCloseTo(14.96, 1)
    // #10511 measured an activation peak of 1.26 GiB for this model at 8192 batched tokens.
    expect(n.activationBytes / GiB).toBeGreaterThan(1)
    expect(n.activationBytes / GiB).toBeLessThan(1.3)
    expect(n.kvCacheBytes).toBe(8192 * 128 * 1024)
    expect(n.totalBytes).toBeCloseTo(
      n.weightsBytes + n.activationBytes + n.nonTorchBytes + n.cudaGraphBytes + n.kvCacheBytes,
    )
  })

  it('splits weights and KV over TP ranks, replicating KV heads past their count', async () => {
    const q = await model('Qwen/Qwen2.5-7B-Instruct') // 4 KV heads
    const tp1 = memoryNeedPerGpu(q, 1, 32768, 8192)
    expect(memoryNeedPerGpu(q, 2, 32768, 8192).weightsBytes).toBeCloseTo(tp1.weightsBytes / 2)
    expect(memoryNeedPerGpu(q, 4, 32768, 8192).kvCacheBytes).toBeCloseTo(tp1.kvCacheBytes / 4)
    expect(memoryNeedPerGpu(q, 8, 32768, 8192).kvCacheBytes).toBeCloseTo(tp1.kvCacheBytes / 4)
  })

  it("uses vLLM's default batch size per GPU (A100: 2048)", () => {
    expect(defaultMaxNumBatchedTokens(GPUS['A100-80GB']!.name)).toBe(2048)
    expect(defaultMaxNumBatchedTokens('NVIDIA H100 80GB HBM3')).toBe(8192)
    expect(defaultMaxNumBatchedTokens('NVIDIA A10G')).toBe(8192)
  })
})

describe('planMemory', () => {
  it('fits Llama-3-8B on one H100 at 0.9, with a KV pool near the one vLLM logs (#10511)', async () => {
    const p = plan(await model('meta-llama/Meta-Llama-3-8B'), gpus(1), 1, 0.9, 8192)
    expect(p.requested.fits).toBe(true)
    expect(p.requested.budgetBytes / GiB).toBeCloseTo(71.26, 1)
    // #10511: 53.29 GiB of KV = ≈436.6 k tokens at 128 KiB per token.
    expect(Math.abs(p.requested.kvCacheTokens / 436_600 - 1)).toBeLessThan(0.03)
    expect(p.minTensorParallelSize).toBe(1)
    expect(p.recommended).toMatchObject({ tensorParallelSize: 1, gpuMemoryUtilization: 0.9 })
  })

  it('does not fit a 70B model in bf16 on one 80 GB GPU: TP 2 at its 8k context', async () => {
    const m = await model('meta-llama/Meta-Llama-3-70B-Instruct')
    const p = plan(m, gpus(8), 1, 0.9, 8192)
    expect(p.requested.fits).toBe(false)
    expect(p.requested.problem).toMatch(/^needs 1\d\d\.\d GiB per GPU, more than 0.9 × 79.2 GiB = 71.3 GiB$/)
    expect(p.minTensorParallelSize).toBe(2)
    expect(p.recommended).toMatchObject({ tensorParallelSize: 2, gpuMemoryUtilization: 0.9 })
    expect(plan(m, gpus(2), 2, 0.9, 8192).requested.fits).toBe(true)
  })

  it('needs TP 4 for a 70B model with a useful 128k context', async () => {
    const m = await model('meta-llama/Llama-3.1-70B-Instruct')
    const p = plan(m, gpus(8), 2, 0.9, 131072)
    expect(p.requested.fits).toBe(false)
    expect(p.minTensorParallelSize).toBe(4)
    expect(p.recommended?.tensorParallelSize).toBe(4)
    expect(p.recommended!.kvCacheTokens).toBeGreaterThan(131072)
  })

  it('raises the utilization when one full-length request does not fit at the requested one', async () => {
    // 70B at TP 2 with 32k: ≈73 GiB per GPU, over 0.9 × 79.2 but under 0.95.
    const p = plan(await model('meta-llama/Llama-3.1-70B-Instruct'), gpus(2), 2, 0.9, 32768)
    expect(p.requested.fits).toBe(false)
    expect(p.recommended?.tensorParallelSize).toBe(2)
    expect(p.recommended?.gpuMemoryUtilization).toBeGreaterThan(0.9)
    expect(p.recommended?.gpuMemoryUtilization).toBeLessThanOrEqual(0.95)
  })

  it('lowers the utilization to what free memory allows when something else holds memory', async () => {
    const p = plan(await model('meta-llama/Llama-3.1-8B-Instruct'), [h100(0, 60.5)], 1, 0.9, 8192)
    expect(p.requested.fits).toBe(true)
    // floor(60.5 / 79.18 - 0.01) = 0.75: vLLM's free-memory pre-check passes with a point to spare.
    expect(p.recommended).toMatchObject({ tensorParallelSize: 1, gpuMemoryUtilization: 0.75 })
    expect(utilizationCap([h100(0, 60.5)])).toBe(0.75)
  })

  it('says why there is no way to fit, and how long a context would', async () => {
    const m = await model('meta-llama/Llama-3.1-70B-Instruct')
    const p = plan(m, gpus(2), 2, 0.9, 131072)
    expect(p.recommended).toBeNull()
    expect(p.reason).toMatch(
      /does not fit 2 GPU\(s\) of 79\.2 GiB even at 0\.95; at TP 2 it fits up to --max-model-len \d+/,
    )
    const full = plan(await model('meta-llama/Llama-3.1-8B-Instruct'), [h100(0, 10)], 1, 0.9, 8192)
    expect(full.recommended).toBeNull()
    expect(full.reason).toMatch(/^not enough free memory/)
  })

  it('refuses a TP that does not divide the attention heads or exceeds the GPUs', async () => {
    const m = await model('meta-llama/Meta-Llama-3-8B')
    expect(plan(m, gpus(4), 3, 0.9, 8192).requested.problem).toBe(
      '32 attention heads do not split over 3 GPUs',
    )
    expect(plan(m, gpus(2), 4, 0.9, 8192).requested.problem).toBe(
      '--tensor-parallel-size 4 needs 4 GPUs; 2 visible',
    )
  })
})
