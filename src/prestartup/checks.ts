/**
 * The GPU-side checks: the driver and GPUs, CUDA_VISIBLE_DEVICES, the model, whether it fits and
 * free memory per GPU. Leftover processes are in `processes.ts`, host-side checks in `host.ts`.
 */
import { ErrorCodes } from '../errors.js'
import type { CheckContext } from './context.js'
import { envValues, type ServeSettings, serveFlags, writeEnvFile } from './env-file.js'
import { deviceTotalBytes } from './gpus.js'
import { gib, type MemoryNeed, utilizationCap } from './memory.js'
import type { AutoFix, CheckResult, ResolvedPrestartupOptions } from './types.js'

const tokens = (n: number) => (n >= 1e6 ? `${(n / 1e6).toFixed(2)} M` : n.toLocaleString('en-US'))

const kNoGpuFix =
  'install the NVIDIA driver so that nvidia-smi lists the GPUs; in a container, start it with --gpus all ' +
  '(NVIDIA Container Toolkit)'

export async function checkGpus(ctx: CheckContext): Promise<CheckResult> {
  const base = { id: 'gpus', title: 'GPUs and driver' }
  const r = await ctx.inventory()
  if (!r.ok) {
    const lib = ctx.options.libraryPath ?? 'libnvidia-ml.so.1'
    if (r.code === ErrorCodes.NVML_NOT_FOUND)
      return {
        ...base,
        status: 'fail',
        detail: `no NVIDIA GPU or driver found (${lib} could not be loaded): vLLM needs one`,
        fix: ctx.options.libraryPath
          ? `${kNoGpuFix}; or pass --library-path the driver's libnvidia-ml.so.1`
          : kNoGpuFix,
      }
    if (r.code === ErrorCodes.NVML_DRIVER_NOT_LOADED)
      return {
        ...base,
        status: 'fail',
        detail: `the NVIDIA kernel driver is not loaded (${lib} loads, the driver does not answer): vLLM needs it`,
        fix: 'load it (sudo modprobe nvidia; dmesg shows NVRM errors) or reboot after a driver upgrade',
      }
    if (r.code === ErrorCodes.NVML_NO_PERMISSION)
      return {
        ...base,
        status: 'fail',
        detail: `no permission to talk to the NVIDIA driver: ${r.message}`,
        fix: 'run as a user that may open /dev/nvidia* (group video, or root)',
      }
    return {
      ...base,
      status: 'fail',
      detail: `cannot read the GPUs (${r.code}): ${r.message}`,
      fix:
        r.code === ErrorCodes.ADDON_NOT_FOUND ? 'run `npm install` in a clone to build the addon' : kNoGpuFix,
    }
  }
  const inv = r.inventory
  if (inv.devices.length === 0)
    return {
      ...base,
      status: 'fail',
      detail: `NVML loads (driver ${inv.driverVersion}) but lists no GPU`,
      fix: kNoGpuFix,
    }
  const groups = new Map<string, number>()
  for (const d of inv.devices) {
    const total = deviceTotalBytes(inv, d.index)
    const key = `${d.name ?? 'unknown GPU'} (${total === null ? '?' : gib(total)})`
    groups.set(key, (groups.get(key) ?? 0) + 1)
  }
  const what = [...groups].map(([k, n]) => `${n} × ${k}`).join(', ')
  const detail = `${what}; driver ${inv.driverVersion ?? '?'}, CUDA ${inv.cudaDriverVersion ?? '?'}`
  const problems: string[] = []
  const cuda = Number.parseFloat(inv.cudaDriverVersion ?? '')
  if (cuda < 12)
    problems.push(`the driver supports CUDA ${inv.cudaDriverVersion}; vLLM's wheels need CUDA 12`)
  const old = inv.devices.filter(
    (d) => d.computeCapability !== null && Number.parseFloat(d.computeCapability) < 7,
  )
  if (old.length > 0)
    problems.push(
      `GPU ${old.map((d) => d.index).join(', ')}: compute capability below 7.0, which vLLM does not support`,
    )
  const lost = inv.snapshots.filter((s) => s.lost).map((s) => s.index)
  if (lost.length > 0) problems.push(`GPU ${lost.join(', ')} fell off the bus`)
  if (problems.length > 0)
    return {
      ...base,
      status: 'fail',
      detail: `${detail}; ${problems.join('; ')}`,
      fix:
        lost.length > 0
          ? 'reset or reseat the GPU (nvidia-smi -r), then reboot'
          : 'upgrade the NVIDIA driver (≥ 525.60)',
    }
  return { ...base, status: 'pass', detail }
}

export async function checkVisibleDevices(ctx: CheckContext): Promise<CheckResult> {
  const base = { id: 'cuda-visible-devices', title: 'CUDA_VISIBLE_DEVICES' }
  const raw = ctx.options.env.CUDA_VISIBLE_DEVICES
  const vis = await ctx.visible()
  const tp = ctx.options.tensorParallelSize
  if (vis === null)
    return {
      ...base,
      status: 'skip',
      detail: `no GPU information (${raw === undefined ? 'unset' : `"${raw}"`})`,
    }
  const shown = `${vis.set ? `"${raw}"` : 'unset'}: vLLM sees ${vis.indices.length + vis.mig} GPU${vis.indices.length + vis.mig === 1 ? '' : 's'}${vis.indices.length > 0 ? ` (NVML ${vis.indices.join(', ')})` : ''}`
  const errors = [...vis.errors]
  if (vis.indices.length + vis.mig < tp) errors.push(`--tensor-parallel-size ${tp} needs ${tp}`)
  if (errors.length > 0)
    return {
      ...base,
      status: 'fail',
      detail: `${shown}; ${errors.join('; ')}`,
      fix: vis.set
        ? `list ${tp} existing GPU${tp > 1 ? 's' : ''} (nvidia-smi -L shows indices and UUIDs), e.g. CUDA_VISIBLE_DEVICES=${Array.from({ length: tp }, (_, i) => i).join(',')}`
        : `lower --tensor-parallel-size to the number of GPUs, or use a host with ${tp}`,
    }
  if (vis.warnings.length > 0)
    return {
      ...base,
      status: 'warn',
      detail: `${shown}; ${vis.warnings.join('; ')}`,
      fix: 'export CUDA_DEVICE_ORDER=PCI_BUS_ID',
    }
  return { ...base, status: 'pass', detail: shown }
}

export async function checkModel(ctx: CheckContext): Promise<CheckResult> {
  const base = { id: 'model', title: 'model' }
  const lookup = await ctx.model()
  if (lookup === null)
    return {
      ...base,
      status: 'skip',
      detail: 'no --model given, so the memory plan is skipped',
      fix: 'pass --model ORG/NAME',
    }
  if (!lookup.found)
    return {
      ...base,
      status: 'warn',
      detail: `${ctx.options.model}: unknown, cannot size it (${lookup.reason})`,
      fix: `pass --model a local directory with its config.json, or download the config first: huggingface-cli download ${ctx.options.model} config.json`,
    }
  const m = lookup.model
  const from = m.source === 'built-in' ? 'built-in table' : (m.configPath ?? m.source)
  const experts = m.experts !== null ? `, ${m.experts} experts` : ''
  return {
    ...base,
    status: 'pass',
    detail:
      `${m.name} (${from}): ${(m.params / 1e9).toFixed(2)} B params${experts}, ${m.dtype}, ` +
      `${m.weightsExact ? '' : '≈'}${gib(m.weightsBytes)} weights, ${m.kvBytesPerToken / 1024} KiB KV/token, ` +
      `max_model_len ${ctx.options.maxModelLen ?? m.maxModelLen}`,
  }
}

function describeNeed(n: MemoryNeed, maxModelLen: number): string {
  return (
    `weights ${gib(n.weightsBytes)} + activations ${gib(n.activationBytes)} + non-torch ${gib(n.nonTorchBytes)} + ` +
    `CUDA graphs ${gib(n.cudaGraphBytes)} + KV for ${maxModelLen} tokens ${gib(n.kvCacheBytes)}`
  )
}

export function settingsFix(o: ResolvedPrestartupOptions, s: ServeSettings): AutoFix {
  const values = Object.entries(envValues(s))
    .map(([k, v]) => `${k}=${v}`)
    .join(', ')
  return {
    safe: true,
    description: `write ${values} to ${o.envFile} (${serveFlags(s)})`,
    apply: async () => {
      await writeEnvFile(o.envFile, s)
    },
  }
}

export async function checkMemoryPlan(ctx: CheckContext): Promise<CheckResult> {
  const base = { id: 'memory-plan', title: 'model fits (TP, utilization)' }
  const o = ctx.options
  const lookup = await ctx.model()
  if (lookup === null || !lookup.found) return { ...base, status: 'skip', detail: 'no model to size' }
  const pc = await ctx.plan()
  if (pc === null) {
    const w = lookup.model.weightsBytes
    return {
      ...base,
      status: 'skip',
      detail: `no GPU to compare with; the weights alone take ${gib(w)} (${gib(w / o.tensorParallelSize)} per GPU at TP ${o.tensorParallelSize})`,
    }
  }
  const { plan, maxModelLen } = pc
  const req = plan.requested
  const rec = plan.recommended
  const settings = (tp: number, util: number): ServeSettings => ({
    model: o.model,
    tensorParallelSize: tp,
    gpuMemoryUtilization: util,
    maxModelLen,
    port: o.port,
  })
  const autoFix = rec ? settingsFix(o, settings(rec.tensorParallelSize, rec.gpuMemoryUtilization)) : undefined
  const recText = rec
    ? `--tensor-parallel-size ${rec.tensorParallelSize} --gpu-memory-utilization ${rec.gpuMemoryUtilization} (KV pool ${tokens(rec.kvCacheTokens)} tokens)`
    : null
  if (!req.fits) {
    const minTp = plan.minTensorParallelSize
    return {
      ...base,
      status: 'fail',
      detail: `at TP ${req.tensorParallelSize}, utilization ${req.gpuMemoryUtilization}: ${req.problem}${minTp !== null ? `; smallest TP that fits: ${minTp}` : ''}`,
      fix: recText
        ? `run with ${recText}, or lower --max-model-len`
        : (plan.reason ?? 'lower --max-model-len'),
      ...(autoFix ? { autoFix } : {}),
    }
  }
  const concurrency = req.kvCacheTokens / maxModelLen
  const detail =
    `${gib(req.need.totalBytes)} per GPU at TP ${req.tensorParallelSize} (${describeNeed(req.need, maxModelLen)}) ` +
    `of ${gib(req.budgetBytes)} (${req.gpuMemoryUtilization} × total); KV pool ${tokens(req.kvCacheTokens)} tokens = ` +
    `${concurrency.toFixed(1)} × max_model_len`
  if (concurrency < 2)
    return {
      ...base,
      status: 'warn',
      detail: `${detail}: full-length requests will queue behind each other`,
      fix: 'use a larger --tensor-parallel-size, or lower --max-model-len',
      ...(autoFix ? { autoFix } : {}),
    }
  const changed = rec !== null && rec.gpuMemoryUtilization !== req.gpuMemoryUtilization
  return {
    ...base,
    status: 'pass',
    detail: changed ? `${detail}; free memory allows only ${recText}` : detail,
    ...(autoFix ? { autoFix } : {}),
  }
}

export async function checkGpuMemory(ctx: CheckContext): Promise<CheckResult[]> {
  const o = ctx.options
  const used = await ctx.used()
  if (used.length === 0)
    return [{ id: 'gpu-memory', title: 'free GPU memory', status: 'skip', detail: 'no GPU information' }]
  const pc = await ctx.plan()
  const inv = await ctx.gpus()
  const util = o.gpuMemoryUtilization
  const cap = utilizationCap(used)
  let fixAttached = pc !== null
  return used.map((g) => {
    const base = { id: `gpu-memory:${g.index}`, title: `GPU ${g.index} free memory` }
    if (g.freeBytes === null)
      return { ...base, status: 'warn', detail: 'free memory could not be read' } as CheckResult
    const want = g.totalBytes * util
    const needText = pc?.plan.requested.fits
      ? `; the model needs ${gib(pc.plan.requested.need.totalBytes)}`
      : ''
    const detail = `${gib(g.freeBytes)} free of ${gib(g.totalBytes)}; vLLM takes ${gib(want)} (${util} × total)${needText}`
    if (g.freeBytes >= want) return { ...base, status: 'pass', detail }
    const holders = (inv?.snapshots.find((s) => s.index === g.index)?.processes ?? []).map((p) => p.pid)
    const lower = cap > 0 ? `lower --gpu-memory-utilization to ${cap}` : null
    const fix = [
      holders.length > 0 ? `end pid ${holders.join(', ')} holding memory on it (leftover processes)` : null,
      lower,
    ]
      .filter(Boolean)
      .join(', or ')
    const r: CheckResult = {
      ...base,
      status: 'fail',
      detail: `${detail}: vLLM refuses to start ("Free memory on device … is less than desired GPU memory utilization")`,
      fix: fix || 'free memory on this GPU',
    }
    if (!fixAttached && cap > 0) {
      fixAttached = true
      r.autoFix = settingsFix(o, {
        model: o.model,
        tensorParallelSize: o.tensorParallelSize,
        gpuMemoryUtilization: cap,
        maxModelLen: o.maxModelLen,
        port: o.port,
      })
    }
    return r
  })
}
