/**
 * `prestartupCheck(options)`: will vLLM start here? Checks the driver and GPUs, the model's memory
 * against free memory per GPU, leftover processes, the port, /dev/shm, disk, `ulimit -n`,
 * CUDA_VISIBLE_DEVICES and the vllm install, and returns pass / warn / fail / skip per check with
 * the fix. `applyFixes(report, { yes })` applies the safe fixes, and the destructive ones with `yes`.
 */
import { resolve } from 'node:path'
import { InvalidOptionError } from '../errors.js'
import type { GpuDeviceInfo } from '../gpu/types.js'
import { checkGpuMemory, checkGpus, checkMemoryPlan, checkModel, checkVisibleDevices } from './checks.js'
import { type CheckContext, createContext } from './context.js'
import { checkDisk, checkPort, checkShm, checkUlimit, checkVllm } from './host.js'
import { DEFAULT_UTILIZATION, type MemoryPlan } from './memory.js'
import { hfCacheDir, type ResolvedModel } from './models.js'
import { checkLeftoverProcesses } from './processes.js'
import {
  CHECK_IDS,
  type CheckId,
  type CheckResult,
  type CheckStatus,
  type PrestartupOptions,
  type ResolvedPrestartupOptions,
} from './types.js'

export type { AutoFix, CheckId, CheckResult, CheckStatus, PrestartupOptions, ProgressEvent } from './types.js'
export { CHECK_IDS } from './types.js'

export interface PrestartupReport {
  /** No check failed. */
  ok: boolean
  counts: Record<CheckStatus, number>
  checks: CheckResult[]
  /** The GPUs NVML lists ([] without a driver). */
  gpus: GpuDeviceInfo[]
  /** Why the GPUs could not be read, else null. */
  gpuError: { code: string; message: string } | null
  model: ResolvedModel | null
  plan: (MemoryPlan & { maxModelLen: number; maxNumBatchedTokens: number }) | null
}

const kKnown = [
  'model',
  'tensorParallelSize',
  'gpuMemoryUtilization',
  'maxModelLen',
  'maxNumBatchedTokens',
  'port',
  'host',
  'libraryPath',
  'hfCacheDir',
  'shmPath',
  'envFile',
  'env',
  'only',
  'onProgress',
]

/** Validates options and fills in defaults; throws InvalidOptionError naming the bad option. */
export function resolvePrestartupOptions(options: PrestartupOptions = {}): ResolvedPrestartupOptions {
  if (options === null || typeof options !== 'object')
    throw new InvalidOptionError(
      `options must be an object (got ${options === null ? 'null' : typeof options})`,
    )
  const unknown = Object.keys(options).filter((k) => !kKnown.includes(k))
  if (unknown.length > 0)
    throw new InvalidOptionError(
      `unknown option ${unknown.map((k) => `options.${k}`).join(', ')}; known: ${kKnown.join(', ')}`,
    )
  const o = options as Record<string, unknown>
  const int = (k: string, min: number, max: number): number | null => {
    const v = o[k]
    if (v === undefined) return null
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max)
      throw new InvalidOptionError(
        `options.${k} must be an integer between ${min} and ${max} (got ${String(v)})`,
      )
    return v
  }
  const str = (k: string): string | null => {
    const v = o[k]
    if (v === undefined) return null
    if (typeof v !== 'string' || v === '')
      throw new InvalidOptionError(`options.${k} must be a non-empty string`)
    return v
  }
  const util = o.gpuMemoryUtilization ?? DEFAULT_UTILIZATION
  if (typeof util !== 'number' || !(util > 0 && util <= 1))
    throw new InvalidOptionError(
      `options.gpuMemoryUtilization must be a number in (0, 1] (got ${String(util)})`,
    )
  const env = o.env ?? process.env
  if (env === null || typeof env !== 'object') throw new InvalidOptionError('options.env must be an object')
  const only = o.only
  if (
    only !== undefined &&
    (!Array.isArray(only) || only.some((c) => !(CHECK_IDS as readonly unknown[]).includes(c)))
  )
    throw new InvalidOptionError(`options.only must be an array of check ids: ${CHECK_IDS.join(', ')}`)
  if (o.onProgress !== undefined && typeof o.onProgress !== 'function')
    throw new InvalidOptionError('options.onProgress must be a function')
  const e = env as NodeJS.ProcessEnv
  return {
    model: str('model'),
    tensorParallelSize: int('tensorParallelSize', 1, 1024) ?? 1,
    gpuMemoryUtilization: util,
    maxModelLen: int('maxModelLen', 1, 1 << 30),
    maxNumBatchedTokens: int('maxNumBatchedTokens', 1, 1 << 30),
    port: int('port', 0, 65535) ?? 8000,
    host: str('host') ?? '0.0.0.0',
    libraryPath: str('libraryPath'),
    hfCacheDir: str('hfCacheDir') ?? hfCacheDir(e),
    shmPath: str('shmPath') ?? '/dev/shm',
    envFile: resolve(str('envFile') ?? 'vllm-monitor.env'),
    env: e,
    only: (only as CheckId[] | undefined) ?? null,
    onProgress: (o.onProgress as ResolvedPrestartupOptions['onProgress'] | undefined) ?? null,
  }
}

interface Step {
  id: CheckId
  title: string
  run(ctx: CheckContext): Promise<CheckResult | CheckResult[]>
}

function steps(o: ResolvedPrestartupOptions): Step[] {
  return [
    { id: 'gpus', title: 'GPUs and driver', run: checkGpus },
    { id: 'cuda-visible-devices', title: 'CUDA_VISIBLE_DEVICES', run: checkVisibleDevices },
    { id: 'model', title: 'model', run: checkModel },
    { id: 'memory-plan', title: 'model fits (TP, utilization)', run: checkMemoryPlan },
    { id: 'gpu-memory', title: 'free GPU memory', run: checkGpuMemory },
    { id: 'leftover-processes', title: 'leftover GPU processes', run: checkLeftoverProcesses },
    { id: 'port', title: `port ${o.port}`, run: () => checkPort(o.host, o.port) },
    { id: 'shm', title: o.shmPath, run: () => checkShm(o.shmPath, o.tensorParallelSize) },
    {
      id: 'disk',
      title: 'disk for the model',
      run: async (ctx) => {
        const m = await ctx.model()
        const why = m === null ? 'no --model given' : m.found ? null : 'unknown model'
        return checkDisk(o.hfCacheDir, m?.found ? m.model : null, why)
      },
    },
    { id: 'ulimit', title: 'open files (ulimit -n)', run: () => checkUlimit() },
    { id: 'vllm', title: 'vllm installed', run: () => checkVllm(o.env) },
  ]
}

/** Runs the checks one after another, reporting progress; rejects only for invalid options. */
export async function prestartupCheck(options: PrestartupOptions = {}): Promise<PrestartupReport> {
  const o = resolvePrestartupOptions(options)
  const ctx = createContext(o)
  const todo = steps(o).filter((s) => o.only === null || o.only.includes(s.id))
  const checks: CheckResult[] = []
  for (const [i, s] of todo.entries()) {
    const where = { id: s.id, title: s.title, step: i + 1, steps: todo.length }
    o.onProgress?.({ type: 'start', ...where })
    let results: CheckResult[]
    try {
      const r = await s.run(ctx)
      results = Array.isArray(r) ? r : [r]
    } catch (err) {
      results = [
        {
          id: s.id,
          title: s.title,
          status: 'skip',
          detail: `the check itself failed: ${(err as Error).message}`,
        },
      ]
    }
    checks.push(...results)
    o.onProgress?.({ type: 'done', ...where, results })
  }
  const counts: Record<CheckStatus, number> = { pass: 0, warn: 0, fail: 0, skip: 0 }
  for (const c of checks) counts[c.status]++
  // Only what the checks already read: a report for `only: ['port']` does not open NVML.
  const asked = new Set(todo.map((s) => s.id))
  const gpuRead = ['gpus', 'cuda-visible-devices', 'memory-plan', 'gpu-memory', 'leftover-processes'].some(
    (id) => asked.has(id as CheckId),
  )
  const inv = gpuRead ? await ctx.inventory() : null
  const lookup = o.model !== null ? await ctx.model() : null
  const pc = asked.has('memory-plan') || asked.has('gpu-memory') ? await ctx.plan() : null
  return {
    ok: counts.fail === 0,
    counts,
    checks,
    gpus: inv?.ok ? inv.inventory.devices : [],
    gpuError: inv && !inv.ok ? { code: inv.code, message: inv.message } : null,
    model: lookup?.found ? lookup.model : null,
    plan: pc
      ? { ...pc.plan, maxModelLen: pc.maxModelLen, maxNumBatchedTokens: pc.maxNumBatchedTokens }
      : null,
  }
}

export interface FixOutcome {
  id: string
  description: string
  safe: boolean
  status: 'applied' | 'needs-yes' | 'failed'
  error?: string
}

/**
 * Applies the report's fixes in check order: the safe ones always, the destructive ones (ending
 * a process) only with `yes`. Never throws; a fix that fails is reported as `failed`.
 */
export async function applyFixes(
  report: PrestartupReport,
  options: { yes?: boolean; onFix?: (outcome: FixOutcome) => void } = {},
): Promise<FixOutcome[]> {
  const out: FixOutcome[] = []
  for (const c of report.checks) {
    const f = c.autoFix
    if (!f) continue
    const base = { id: c.id, description: f.description, safe: f.safe }
    let outcome: FixOutcome
    if (!f.safe && options.yes !== true) outcome = { ...base, status: 'needs-yes' }
    else {
      try {
        await f.apply()
        outcome = { ...base, status: 'applied' }
      } catch (err) {
        outcome = { ...base, status: 'failed', error: (err as Error).message }
      }
    }
    out.push(outcome)
    options.onFix?.(outcome)
  }
  return out
}
