/**
 * `VllmSupervisor`'s options, what it reports, and the checks at its boundary: a bad option throws
 * an `InvalidOptionError` naming it.
 */
import type { spawn as nodeSpawn } from 'node:child_process'
import { InvalidOptionError } from '../errors.js'

export type OutputStream = 'stdout' | 'stderr'
export type SupervisorState = 'running' | 'exited' | 'stopping' | 'backoff'

export interface RestartPolicy {
  /** Restart after a crash (an exit the supervisor did not ask for, with a fatal cause). */
  onCrash: boolean
  /** First backoff delay, ms. Default 1000. */
  initialDelayMs: number
  /** Default 60000. */
  maxDelayMs: number
  /** Each consecutive crash multiplies the delay by this. Default 2. */
  factor: number
  /** Gives up after this many crashes in a row. Default Infinity. */
  maxRestarts: number
  /** A run that stayed up this long resets the backoff and the crash count. Default 300000. */
  resetAfterMs: number
}

export interface VllmSupervisorOptions {
  /** The monitor's name for this server (the `replica` of every record). */
  replica: string
  command: string
  args?: readonly string[]
  /** Added to `process.env` (a value of `undefined` removes a variable). */
  env?: Readonly<Record<string, string | undefined>>
  cwd?: string
  /** ms on the monitor's clock. */
  now: () => number
  /** `true` is `{ onCrash: true }` with the default backoff. */
  restart?: boolean | ({ onCrash: boolean } & Partial<Omit<RestartPolicy, 'onCrash'>>)
  /** After SIGTERM, how long vLLM may drain before SIGKILL. Default 30000. */
  gracePeriodMs?: number
  /** Lines kept per stream for `tail()`. Default 200. */
  tailLines?: number
  /** Every line, cleaned (no ANSI, final frame of a progress bar). */
  onOutput?: (stream: OutputStream, line: string) => void
  /** Every chunk as the child wrote it (for passing its output through verbatim). */
  onData?: (stream: OutputStream, chunk: Buffer) => void
  /** `child_process.spawn`, replaceable in tests. */
  spawn?: typeof nodeSpawn
}

export interface ExitInfo {
  /** When the exit was seen, on the monitor's clock. */
  t: number
  pid: number | null
  code: number | null
  signal: NodeJS.Signals | null
  /** Root cause (`cuda-oom`, `kv-too-small`, `worker-died`, ..., `signal`, `exit-code`, `spawn-failed`); null: clean. */
  cause: string | null
  message: string
  /** The log line that names the cause. */
  detail: string | null
  uptimeMs: number | null
  /** The supervisor asked for it (shutdown, restart). */
  requested: boolean
  /** Killed with SIGKILL after the grace period. */
  forced: boolean
  /** For `spawn-failed`: the system error code (ENOENT, EACCES...). */
  errno: string | null
}

export interface TailLine {
  t: number
  stream: OutputStream
  text: string
}

export interface SupervisorEvents {
  spawn: [{ pid: number; argv: string[] }]
  exit: [ExitInfo & { willRestart: boolean }]
}

export const kRestartDefaults: RestartPolicy = {
  onCrash: false,
  initialDelayMs: 1_000,
  maxDelayMs: 60_000,
  factor: 2,
  maxRestarts: Number.POSITIVE_INFINITY,
  resetAfterMs: 300_000,
}
export function formatArgv(argv: readonly string[]): string {
  return argv.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replaceAll("'", "'\\''")}'`)).join(' ')
}

export function mergeEnv(
  base: NodeJS.ProcessEnv,
  extra: Readonly<Record<string, string | undefined>>,
): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...base }
  for (const [k, v] of Object.entries(extra)) {
    if (v === undefined) delete env[k]
    else env[k] = v
  }
  return env
}

export function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>
}

function fail(option: string, must: string, got: unknown): never {
  const shown =
    typeof got === 'function' ? 'a function' : typeof got === 'string' ? JSON.stringify(got) : String(got)
  throw new InvalidOptionError(`options${option === '' ? '' : `.${option}`} must be ${must} (got ${shown})`)
}

const isMs = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v) && v >= 0

export function validateSupervisorOptions(o: VllmSupervisorOptions): VllmSupervisorOptions {
  if (o === null || typeof o !== 'object') fail('', 'an object', o)
  if (typeof o.replica !== 'string' || o.replica === '') fail('replica', 'a non-empty string', o.replica)
  if (typeof o.command !== 'string' || o.command === '') fail('command', 'a non-empty string', o.command)
  if (o.args !== undefined && (!Array.isArray(o.args) || o.args.some((a) => typeof a !== 'string')))
    fail('args', 'an array of strings', o.args)
  if (o.env !== undefined && (o.env === null || typeof o.env !== 'object')) fail('env', 'an object', o.env)
  if (o.cwd !== undefined && (typeof o.cwd !== 'string' || o.cwd === ''))
    fail('cwd', 'a non-empty string', o.cwd)
  if (typeof o.now !== 'function') fail('now', 'a function returning ms', o.now)
  if (o.gracePeriodMs !== undefined && !(isMs(o.gracePeriodMs) && Number.isInteger(o.gracePeriodMs)))
    fail('gracePeriodMs', 'a non-negative integer', o.gracePeriodMs)
  const tl = o.tailLines
  if (tl !== undefined && !(Number.isInteger(tl) && tl >= 1 && tl <= 100_000))
    fail('tailLines', 'an integer from 1 to 100000', tl)
  for (const k of ['onOutput', 'onData', 'spawn'] as const) {
    if (o[k] !== undefined && typeof o[k] !== 'function') fail(k, 'a function', o[k])
  }
  const r = o.restart
  if (r !== undefined && typeof r !== 'boolean') {
    if (r === null || typeof r !== 'object') fail('restart', 'a boolean or an object', r)
    if (typeof r.onCrash !== 'boolean') fail('restart.onCrash', 'a boolean', r.onCrash)
    for (const k of ['initialDelayMs', 'maxDelayMs', 'resetAfterMs'] as const) {
      if (r[k] !== undefined && !isMs(r[k])) fail(`restart.${k}`, 'a non-negative number', r[k])
    }
    if (r.factor !== undefined && !(Number.isFinite(r.factor) && r.factor >= 1))
      fail('restart.factor', 'a number >= 1', r.factor)
    const max = r.maxRestarts
    if (max !== undefined && !((Number.isInteger(max) && max >= 0) || max === Number.POSITIVE_INFINITY))
      fail('restart.maxRestarts', 'a non-negative integer or Infinity', max)
    const initial = r.initialDelayMs ?? kRestartDefaults.initialDelayMs
    if (r.maxDelayMs !== undefined && r.maxDelayMs < initial)
      fail('restart.maxDelayMs', `>= restart.initialDelayMs (${initial})`, r.maxDelayMs)
  }
  return o
}
