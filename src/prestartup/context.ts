/**
 * What the checks share, each read at most once and only when a check asks: the GPU inventory,
 * the model, the GPUs CUDA will show vLLM, and the memory plan.
 */
import { type GpuInventory, type InventoryResult, memoryStates, readGpuInventory } from './gpus.js'
import {
  DEFAULT_MAX_NUM_BATCHED_TOKENS,
  defaultMaxNumBatchedTokens,
  type GpuMemoryState,
  type MemoryPlan,
  planMemory,
} from './memory.js'
import { type ModelLookup, type ResolvedModel, resolveModel } from './models.js'
import type { ResolvedPrestartupOptions } from './types.js'
import { parseVisibleDevices, type VisibleDevices } from './visible-devices.js'

export interface PlanContext {
  plan: MemoryPlan
  model: ResolvedModel
  maxModelLen: number
  maxNumBatchedTokens: number
  /** The GPUs the plan was made for, in CUDA order. */
  gpus: GpuMemoryState[]
}

export interface CheckContext {
  options: ResolvedPrestartupOptions
  inventory(): Promise<InventoryResult>
  /** The GPU inventory when NVML works, else null. */
  gpus(): Promise<GpuInventory | null>
  /** null when no --model was given. */
  model(): Promise<ModelLookup | null>
  /** null without GPU information. */
  visible(): Promise<VisibleDevices | null>
  /** The GPUs vLLM's TP ranks will run on (the first TP visible ones), with their memory. */
  used(): Promise<GpuMemoryState[]>
  /** null without a model or without GPUs. */
  plan(): Promise<PlanContext | null>
}

function once<T>(f: () => Promise<T>): () => Promise<T> {
  let p: Promise<T> | null = null
  return () => {
    p ??= f()
    return p
  }
}

export function createContext(o: ResolvedPrestartupOptions): CheckContext {
  const inventory = once(() => readGpuInventory(o.libraryPath))
  const gpus = once(async () => {
    const r = await inventory()
    return r.ok ? r.inventory : null
  })
  const model = once(async () => (o.model === null ? null : resolveModel(o.model, o.hfCacheDir)))
  const visible = once(async () => {
    const inv = await gpus()
    if (inv === null) return null
    return parseVisibleDevices(o.env.CUDA_VISIBLE_DEVICES, inv.devices, o.env.CUDA_DEVICE_ORDER)
  })
  const visibleStates = once(async () => {
    const inv = await gpus()
    const vis = await visible()
    if (inv === null || vis === null) return []
    const states = memoryStates(inv)
    return vis.indices.map((i) => states.find((s) => s.index === i)!).filter(Boolean)
  })
  const used = once(async () => (await visibleStates()).slice(0, o.tensorParallelSize))
  const plan = once(async () => {
    const m = await model()
    const states = await visibleStates()
    if (m === null || !m.found || states.length === 0) return null
    const maxModelLen = o.maxModelLen ?? m.model.maxModelLen
    const maxNumBatchedTokens =
      o.maxNumBatchedTokens ??
      defaultMaxNumBatchedTokens(states[0]?.name ?? null) ??
      DEFAULT_MAX_NUM_BATCHED_TOKENS
    const p = planMemory({
      model: m.model,
      gpus: states,
      tensorParallelSize: o.tensorParallelSize,
      gpuMemoryUtilization: o.gpuMemoryUtilization,
      maxModelLen,
      maxNumBatchedTokens,
    })
    return { plan: p, model: m.model, maxModelLen, maxNumBatchedTokens, gpus: states }
  })
  return { options: o, inventory, gpus, model, visible, used, plan }
}
