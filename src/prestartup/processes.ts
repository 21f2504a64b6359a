/** Processes that hold GPU memory: what they are (from /proc) and how to end one. */
import { readFile } from 'node:fs/promises'
import type { CheckContext } from './context.js'
import { gib } from './memory.js'
import type { CheckResult } from './types.js'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** The command line of a process, or null when it is not visible (another PID namespace, gone). */
export async function readCommand(pid: number, maxLength = 80): Promise<string | null> {
  try {
    const raw = await readFile(`/proc/${pid}/cmdline`, 'utf8')
    const cmd = raw.split('\0').filter(Boolean).join(' ')
    if (cmd === '') return (await readFile(`/proc/${pid}/comm`, 'utf8')).trim() || null
    return cmd.length > maxLength ? `${cmd.slice(0, maxLength - 1)}…` : cmd
  } catch {
    return null
  }
}

/** True while the process exists and is not a zombie waiting to be reaped. */
export async function isRunning(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
    // Field 3, after the parenthesised command (which may itself contain ") ").
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
    return state !== 'Z' && state !== 'X'
  } catch {
    return false
  }
}

async function waitGone(pid: number, ms: number): Promise<boolean> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (!(await isRunning(pid))) return true
    await sleep(50)
  }
  return !(await isRunning(pid))
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone, else throws. */
export async function endProcess(pid: number, graceMs = 5_000): Promise<'terminated' | 'killed'> {
  if (pid === process.pid || pid === process.ppid)
    throw new Error(`refusing to end pid ${pid}: it is this check`)
  try {
    process.kill(pid, 'SIGTERM')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return 'terminated'
    throw new Error(`cannot end pid ${pid}: ${(err as Error).message}`)
  }
  if (await waitGone(pid, graceMs)) return 'terminated'
  try {
    process.kill(pid, 'SIGKILL')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err
  }
  if (await waitGone(pid, 2_000)) return 'killed'
  throw new Error(`pid ${pid} is still running after SIGKILL`)
}

export async function checkLeftoverProcesses(ctx: CheckContext): Promise<CheckResult> {
  const base = { id: 'leftover-processes', title: 'leftover GPU processes' }
  const inv = await ctx.gpus()
  if (inv === null) return { ...base, status: 'skip', detail: 'no GPU information' }
  const listed = inv.snapshots.filter((s) => s.processes !== null)
  if (listed.length === 0)
    return { ...base, status: 'skip', detail: 'the driver does not list GPU processes' }
  const usedIdx = new Set((await ctx.used()).map((g) => g.index))
  const byPid = new Map<number, { gpus: number[]; bytes: number }>()
  for (const s of listed)
    for (const p of s.processes ?? []) {
      const e = byPid.get(p.pid) ?? { gpus: [], bytes: 0 }
      e.gpus.push(s.index)
      e.bytes += p.usedMemoryBytes ?? 0
      byPid.set(p.pid, e)
    }
  if (byPid.size === 0) return { ...base, status: 'pass', detail: 'no compute process holds GPU memory' }
  const rows = await Promise.all(
    [...byPid].map(async ([pid, e]) => ({
      pid,
      ...e,
      cmd: await readCommand(pid),
      onUsed: e.gpus.some((g) => usedIdx.has(g)),
    })),
  )
  const detail = rows
    .map(
      (r) =>
        `GPU ${r.gpus.join(',')}: pid ${r.pid} holds ${gib(r.bytes)} (${r.cmd ?? 'not visible here: another container or PID namespace'})`,
    )
    .join('; ')
  const relevant = rows.filter((r) => r.onUsed)
  if (relevant.length === 0)
    return { ...base, status: 'pass', detail: `${detail}; none on the GPUs vLLM will use` }
  const visible = relevant.filter((r) => r.cmd !== null)
  const hidden = relevant.filter((r) => r.cmd === null)
  const fix = [
    visible.length > 0
      ? `end it if it is a leftover: kill ${visible.map((r) => r.pid).join(' ')} (or --auto-fix --yes)`
      : null,
    hidden.length > 0
      ? `end pid ${hidden.map((r) => r.pid).join(', ')} where it runs (nvidia-smi on the host)`
      : null,
  ]
    .filter(Boolean)
    .join('; ')
  const result: CheckResult = { ...base, status: 'warn', detail, fix }
  if (visible.length > 0)
    result.autoFix = {
      safe: false,
      description: `end ${visible.map((r) => `pid ${r.pid} (${r.cmd})`).join(', ')} (SIGTERM, SIGKILL after 5 s)`,
      apply: async () => {
        for (const r of visible) await endProcess(r.pid)
      },
    }
  return result
}
