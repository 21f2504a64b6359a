/**
 * The co-tenant process actuator: compute processes on a replica's GPUs that are not its vLLM, from
 * nvidia-smi's process list, and the lever to end one (never vLLM's own pids, groups or children).
 */
import { execFile } from 'node:child_process'
import { readFile, readlink } from 'node:fs/promises'
import { basename } from 'node:path'
import { promisify } from 'node:util'
import { MitigationError, NvidiaSmiError } from '../errors.js'
import { endProcess } from '../prestartup/processes.js'
import { checkObject, nonEmpty, optionError, positiveMs } from './actuator-options.js'
import type { ProcessActuator } from './types.js'

const execFileAsync = promisify(execFile)
const kMiB = 1_048_576

export interface NvidiaSmiProcessesOptions {
  /** UUIDs (`GPU-…`) of the GPUs the replica runs on. */
  gpuUuids(replica: string): readonly string[]
  /** The replica's vLLM pids (the supervisor's pid); their process groups and descendants are its own too. */
  ownPids(replica: string): readonly number[]
  /** The nvidia-smi binary (default `'nvidia-smi'`). */
  nvidiaSmiPath?: string
  /** Deadline of one nvidia-smi run (default 5 000 ms). */
  timeoutMs?: number
  /** SIGTERM → SIGKILL grace period of `terminate` (default 5 000 ms). */
  graceMs?: number
}

interface Listed {
  name: string
  replica: string
}

/** `ps`'s view of a pid from /proc: parent and process group, null when it is not visible. */
async function procStat(pid: number): Promise<{ ppid: number; pgrp: number } | null> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return { ppid: Number(f[1]), pgrp: Number(f[2]) }
  } catch {
    return null
  }
}

/** The pid is one of `own`, in the process group of one, or a descendant of one. */
async function isOwn(pid: number, own: ReadonlySet<number>): Promise<boolean> {
  if (own.has(pid) || pid === process.pid) return true
  let p = pid
  for (let depth = 0; depth < 64 && p > 1; depth++) {
    const s = await procStat(p)
    if (s === null) return false
    if (own.has(s.pgrp) || own.has(s.ppid)) return true
    p = s.ppid
  }
  return false
}

/**
 * The pid in this PID namespace runs what nvidia-smi named: its executable, argv[0] or comm match.
 * Guards against ending a stranger (a pid from another namespace, or reused since the listing).
 */
async function runsAs(pid: number, name: string): Promise<boolean> {
  const want = basename(name)
  if (want === '' || want.startsWith('[')) return false
  const exe = await readlink(`/proc/${pid}/exe`).catch(() => null)
  if (exe !== null && basename(exe) === want) return true
  const argv0 = await readFile(`/proc/${pid}/cmdline`, 'utf8').then(
    (c) => c.split('\0')[0] ?? '',
    () => '',
  )
  if (argv0 !== '' && basename(argv0) === want) return true
  const comm = (await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '')).trim()
  return comm !== '' && want.startsWith(comm)
}

function parseMiB(v: string): number | null {
  return /^\d+(\.\d+)?$/.test(v) ? Math.round(Number(v) * kMiB) : null
}

/**
 * Co-tenants from `nvidia-smi --query-compute-apps`: compute processes on the replica's GPUs that
 * are not its vLLM (nor this process), largest memory first. `terminate` ends only a pid the last
 * listing returned, and only while it still runs what nvidia-smi named.
 */
export function processesFromNvidiaSmi(options: NvidiaSmiProcessesOptions): ProcessActuator {
  const owner = 'processesFromNvidiaSmi'
  const o = checkObject(owner, options)
  if (typeof o.gpuUuids !== 'function')
    throw optionError(owner, 'gpuUuids', 'a function (replica) => GPU UUIDs')
  if (typeof o.ownPids !== 'function') throw optionError(owner, 'ownPids', 'a function (replica) => pids')
  const path =
    o.nvidiaSmiPath === undefined ? 'nvidia-smi' : nonEmpty(owner, 'nvidiaSmiPath', o.nvidiaSmiPath)
  const timeoutMs = positiveMs(owner, 'timeoutMs', o.timeoutMs, 5_000)
  const graceMs = positiveMs(owner, 'graceMs', o.graceMs, 5_000)
  const listed = new Map<number, Listed>()
  const own = (replica: string) => new Set(options.ownPids(replica))

  async function query(): Promise<string> {
    try {
      const { stdout } = await execFileAsync(
        path,
        ['--query-compute-apps=pid,process_name,used_memory,gpu_uuid', '--format=csv,noheader,nounits'],
        { timeout: timeoutMs, killSignal: 'SIGKILL', encoding: 'utf8' },
      )
      return stdout
    } catch (err) {
      throw new NvidiaSmiError(`nvidia-smi --query-compute-apps failed: ${(err as Error).message}`, {
        cause: err,
      })
    }
  }

  return {
    async cotenants(replica) {
      const gpus = new Set(options.gpuUuids(replica))
      const mine = own(replica)
      const byPid = new Map<number, { pid: number; name: string; memoryUsedBytes: number | null }>()
      for (const line of (await query()).split('\n')) {
        const cols = line.split(',').map((c) => c.trim())
        if (cols.length < 4 || !/^\d+$/.test(cols[0]!)) continue
        const pid = Number(cols[0])
        const uuid = cols[cols.length - 1]!
        if (!gpus.has(uuid) || (await isOwn(pid, mine))) continue
        const bytes = parseMiB(cols[cols.length - 2]!)
        const name = cols.slice(1, -2).join(',')
        const seen = byPid.get(pid)
        if (seen === undefined) byPid.set(pid, { pid, name, memoryUsedBytes: bytes })
        else if (bytes !== null) seen.memoryUsedBytes = (seen.memoryUsedBytes ?? 0) + bytes
      }
      const out = [...byPid.values()].sort((a, b) => (b.memoryUsedBytes ?? -1) - (a.memoryUsedBytes ?? -1))
      // This listing replaces the replica's last one: a pid only an older listing named may have
      // exited and been reused since, and keeping every pid ever listed would grow without bound.
      for (const [pid, l] of listed) if (l.replica === replica) listed.delete(pid)
      for (const p of out) listed.set(p.pid, { name: p.name, replica })
      return out
    },
    async terminate(pid) {
      const l = listed.get(pid)
      if (l === undefined)
        throw new MitigationError(`refusing to end pid ${pid}: the last co-tenant listing did not name it`)
      if (await isOwn(pid, own(l.replica)))
        throw new MitigationError(`refusing to end pid ${pid}: it belongs to ${l.replica}'s vLLM`)
      if (!(await runsAs(pid, l.name)))
        throw new MitigationError(
          `refusing to end pid ${pid}: it does not run "${l.name}" here (another PID namespace, or gone and reused)`,
        )
      listed.delete(pid)
      await endProcess(pid, graceMs)
      return true
    },
  }
}

/** The same as `processesFromNvidiaSmi` (the process list comes from NVML through nvidia-smi). */
export const processesFromNvml = processesFromNvidiaSmi
