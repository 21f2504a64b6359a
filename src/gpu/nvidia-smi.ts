/**
 * The slow fallback for hosts without the native addon or libnvidia-ml: polls the `nvidia-smi`
 * binary (about 23 ms per spawn on an H200). It never blocks the event loop: every query is an
 * `execFile` child with a timeout.
 */
import { execFile } from 'node:child_process'
import { EventEmitter } from 'node:events'
import { promisify } from 'node:util'
import { InvalidArgumentError, NvidiaSmiError } from '../errors.js'
import type { GpuDeviceInfo, GpuSnapshot } from './types.js'
import { debug, emptySnapshot, reportCallbackError } from './util.js'

export interface NvidiaSmiOptions {
  /** The binary to run, a path or a name looked up on PATH. Default `'nvidia-smi'`. */
  path?: string
  /** How long one run may take before it is killed. Default 5000. */
  timeoutMs?: number
}

export interface NvidiaSmiPollerOptions extends NvidiaSmiOptions {
  /** Time between the starts of two polls. Default 1000, at least 100. */
  intervalMs?: number
}

const execFileAsync = promisify(execFile)

const kDefaultPath = 'nvidia-smi'
const kDefaultTimeoutMs = 5_000
const kDefaultIntervalMs = 1_000
/**
 * How long past `timeoutMs` to wait for a killed nvidia-smi to exit. One stuck in the kernel (a
 * GPU fallen off the bus) cannot be killed; it is then abandoned so that polling goes on.
 */
const kKillGraceMs = 1_000
const kMiB = 1_048_576

/** Everything asked of nvidia-smi, in column order. */
const kFields = [
  'index',
  'uuid',
  'name',
  'memory.total',
  'memory.used',
  'memory.free',
  'memory.reserved',
  'utilization.gpu',
  'utilization.memory',
  'temperature.gpu',
  'power.draw',
  'clocks.sm',
  'clocks.mem',
  'pstate',
  'clocks_event_reasons.active',
  'driver_version',
  'pci.bus_id',
  'compute_cap',
  'ecc.mode.current',
  'mig.mode.current',
  'power.limit',
] as const

type Field = (typeof kFields)[number]

/** Older names to ask for when nvidia-smi rejects a field (drivers before 530 say "throttle"). */
const kAliases: Readonly<Record<string, string>> = {
  'clocks_event_reasons.active': 'clocks_throttle_reasons.active',
}
const kCanonical: Readonly<Record<string, Field>> = {
  'clocks_throttle_reasons.active': 'clocks_event_reasons.active',
}

/** Field lists reduced after an nvidia-smi rejected some fields, keyed by `path`. */
const fieldCache = new Map<string, readonly string[]>()

const kRejectedField = /Field "([^"]+)" is not a valid field to query/i

// ---- option checks -----------------------------------------------------------------------------

function checkOptions(o: unknown): { path: string; timeoutMs: number } {
  if (o === null || typeof o !== 'object') throw new InvalidArgumentError('options must be an object')
  const { path = kDefaultPath, timeoutMs = kDefaultTimeoutMs } = o as NvidiaSmiOptions
  if (typeof path !== 'string' || path === '')
    throw new InvalidArgumentError('options.path must be a non-empty string')
  if (typeof timeoutMs !== 'number' || !Number.isInteger(timeoutMs) || timeoutMs < 1)
    throw new InvalidArgumentError('options.timeoutMs must be an integer >= 1')
  return { path, timeoutMs }
}

function checkPollerOptions(o: unknown): { path: string; timeoutMs: number; intervalMs: number } {
  const base = checkOptions(o)
  const { intervalMs = kDefaultIntervalMs } = o as NvidiaSmiPollerOptions
  if (typeof intervalMs !== 'number' || !Number.isInteger(intervalMs) || intervalMs < 100)
    throw new InvalidArgumentError('options.intervalMs must be an integer >= 100')
  return { ...base, intervalMs }
}

// ---- running the binary ------------------------------------------------------------------------

interface ExecError extends Error {
  code?: number | string | null
  signal?: NodeJS.Signals | null
  killed?: boolean
  stdout?: string
  stderr?: string
}

function firstLine(...texts: Array<string | undefined>): string | null {
  for (const t of texts) {
    const line = t
      ?.split(/\r?\n/)
      .map((l) => l.trim())
      .find((l) => l !== '')
    if (line !== undefined) return line
  }
  return null
}

class Aborted extends Error {}

/** Runs nvidia-smi once; resolves with stdout or rejects with an `NvidiaSmiError` or `Aborted`. */
async function run(path: string, args: string[], timeoutMs: number, signal?: AbortSignal): Promise<string> {
  const child = execFileAsync(path, args, {
    encoding: 'utf8',
    timeout: timeoutMs,
    killSignal: 'SIGKILL',
    maxBuffer: 4 * kMiB,
    windowsHide: true,
    ...(signal ? { signal } : {}),
  })
  let guard: NodeJS.Timeout | undefined
  const abandoned = new Promise<never>((_, reject) => {
    guard = setTimeout(() => {
      reject(
        new NvidiaSmiError(
          `nvidia-smi ("${path}") did not finish within ${timeoutMs} ms and did not exit when killed`,
          { cause: new Error(`${path} still running ${timeoutMs + kKillGraceMs} ms after it was started`) },
        ),
      )
    }, timeoutMs + kKillGraceMs)
    guard.unref()
  })
  try {
    const { stdout } = await Promise.race([child, abandoned])
    return stdout
  } catch (err) {
    if (err instanceof NvidiaSmiError) throw err
    throw toNvidiaSmiError(path, timeoutMs, err as ExecError)
  } finally {
    clearTimeout(guard)
  }
}

function toNvidiaSmiError(path: string, timeoutMs: number, err: ExecError): Error {
  if (err.name === 'AbortError') return new Aborted('aborted', { cause: err })
  const cause = { cause: err }
  if (err.code === 'ENOENT')
    return new NvidiaSmiError(
      `nvidia-smi was not found: no executable "${path}" (is the NVIDIA driver installed?)`,
      cause,
    )
  if (err.code === 'ERR_CHILD_PROCESS_STDIO_MAXBUFFER')
    return new NvidiaSmiError(`nvidia-smi ("${path}") printed more than ${4 * kMiB} bytes`, cause)
  if (typeof err.code === 'string')
    return new NvidiaSmiError(`nvidia-smi ("${path}") could not be run: ${err.code}: ${err.message}`, cause)
  if (err.killed && err.signal === 'SIGKILL')
    return new NvidiaSmiError(
      `nvidia-smi ("${path}") did not finish within ${timeoutMs} ms and was killed`,
      cause,
    )
  const said = firstLine(err.stderr, err.stdout)
  const how =
    typeof err.code === 'number'
      ? `exited with code ${err.code}`
      : `was killed by ${err.signal ?? 'a signal'}`
  return new NvidiaSmiError(`nvidia-smi ("${path}") ${how}${said === null ? '' : `: ${said}`}`, cause)
}

// ---- parsing -----------------------------------------------------------------------------------

/** Text for a value, or null for the ways nvidia-smi says "no value" ("[N/A]", "[Not Supported]"...). */
function text(v: string | undefined): string | null {
  if (v === undefined) return null
  const t = v.trim()
  if (t === '' || t === 'N/A' || (t.startsWith('[') && t.endsWith(']'))) return null
  return t
}

function num(v: string | undefined): number | null {
  const t = text(v)
  if (t === null) return null
  const n = Number(t)
  return Number.isFinite(n) ? n : null
}

function scaled(v: string | undefined, factor: number): number | null {
  const n = num(v)
  return n === null ? null : Math.round(n * factor)
}

function pstate(v: string | undefined): number | null {
  const m = /^P(\d+)$/i.exec(text(v) ?? '')
  return m ? Number(m[1]) : null
}

function mask(v: string | undefined): number | null {
  const t = text(v)
  if (t === null || !/^0x[0-9a-f]+$/i.test(t)) return null
  return Number(t)
}

function flag(v: string | undefined): boolean | null {
  const t = text(v)?.toLowerCase()
  return t === 'enabled' ? true : t === 'disabled' ? false : null
}

function parse(
  stdout: string,
  fields: readonly string[],
  timestampNs: number,
): { devices: GpuDeviceInfo[]; snapshots: GpuSnapshot[] } {
  const devices: GpuDeviceInfo[] = []
  const snapshots: GpuSnapshot[] = []
  for (const rawLine of stdout.split(/\r?\n/)) {
    const line = rawLine.trim()
    if (line === '') continue
    const cols = line.split(',').map((c) => c.trim())
    if (cols.length !== fields.length)
      throw new NvidiaSmiError(
        `nvidia-smi printed a line with ${cols.length} values where ${fields.length} were asked for: "${line}"`,
        { cause: { line, fields: [...fields] } },
      )
    const row = new Map<Field, string>()
    for (const [i, f] of fields.entries()) row.set(kCanonical[f] ?? (f as Field), cols[i] ?? '')
    const get = (f: Field) => row.get(f)

    const index = num(get('index'))
    if (index === null || !Number.isInteger(index) || index < 0)
      throw new NvidiaSmiError(`nvidia-smi printed a line without a GPU index: "${line}"`, {
        cause: { line, fields: [...fields] },
      })
    const memoryTotalBytes = scaled(get('memory.total'), kMiB)
    devices.push({
      index,
      uuid: text(get('uuid')),
      name: text(get('name')),
      memoryTotalBytes,
      driverVersion: text(get('driver_version')),
      cudaDriverVersion: null,
      pciBusId: text(get('pci.bus_id')),
      computeCapability: text(get('compute_cap')),
      migEnabled: flag(get('mig.mode.current')),
      eccEnabled: flag(get('ecc.mode.current')),
      powerLimitMilliwatts: scaled(get('power.limit'), 1000),
    })
    snapshots.push({
      ...emptySnapshot(index, 'nvidia-smi', memoryTotalBytes),
      timestampNs,
      memoryUsedBytes: scaled(get('memory.used'), kMiB),
      memoryFreeBytes: scaled(get('memory.free'), kMiB),
      memoryReservedBytes: scaled(get('memory.reserved'), kMiB),
      gpuUtilizationPercent: num(get('utilization.gpu')),
      memoryUtilizationPercent: num(get('utilization.memory')),
      temperatureCelsius: num(get('temperature.gpu')),
      powerMilliwatts: scaled(get('power.draw'), 1000),
      smClockMhz: num(get('clocks.sm')),
      memoryClockMhz: num(get('clocks.mem')),
      clockEventReasons: mask(get('clocks_event_reasons.active')),
      performanceState: pstate(get('pstate')),
    })
  }
  return { devices, snapshots }
}

// ---- the query ---------------------------------------------------------------------------------

async function query(
  path: string,
  timeoutMs: number,
  signal?: AbortSignal,
): Promise<{ devices: GpuDeviceInfo[]; snapshots: GpuSnapshot[] }> {
  let fields = [...(fieldCache.get(path) ?? kFields)]
  const tried = new Set<string>(fields)
  for (;;) {
    const args = [`--query-gpu=${fields.join(',')}`, '--format=csv,noheader,nounits']
    const t0 = process.hrtime.bigint()
    let stdout: string
    try {
      stdout = await run(path, args, timeoutMs, signal)
    } catch (err) {
      const cause = (err as { cause?: ExecError }).cause
      const said = `${cause?.stdout ?? ''}\n${cause?.stderr ?? ''}`
      const rejected = err instanceof NvidiaSmiError ? kRejectedField.exec(said)?.[1] : undefined
      const at = rejected === undefined ? -1 : fields.indexOf(rejected)
      // Older nvidia-smi rejects fields it does not know: ask again without (or under an old name).
      if (rejected === undefined || at <= 0) throw err
      const alias = kAliases[rejected]
      if (alias !== undefined && !tried.has(alias)) {
        fields[at] = alias
        tried.add(alias)
      } else {
        fields = fields.filter((f) => f !== rejected)
      }
      debug('nvidia-smi %s rejected field %s; asking for %s', path, rejected, fields.join(','))
      fieldCache.set(path, [...fields])
      continue
    }
    // The readings were taken somewhere between spawn and exit: stamp them halfway.
    const t1 = process.hrtime.bigint()
    return parse(stdout, fields, Number(t0 + (t1 - t0) / 2n))
  }
}

/**
 * Runs `nvidia-smi --query-gpu=... --format=csv,noheader,nounits` once and parses it. Fields an
 * older nvidia-smi rejects are dropped (and not asked for again from the same `path`).
 * Rejects with `NvidiaSmiError` when the binary is missing, fails, times out or prints rows it
 * cannot parse; with `InvalidArgumentError` for bad options.
 */
export async function queryNvidiaSmi(
  options: NvidiaSmiOptions = {},
): Promise<{ devices: GpuDeviceInfo[]; snapshots: GpuSnapshot[] }> {
  const { path, timeoutMs } = checkOptions(options)
  try {
    return await query(path, timeoutMs)
  } catch (err) {
    throw asNvidiaSmiError(err)
  }
}

function asNvidiaSmiError(err: unknown): NvidiaSmiError {
  if (err instanceof NvidiaSmiError) return err
  return new NvidiaSmiError(`nvidia-smi query failed: ${(err as Error)?.message ?? String(err)}`, {
    cause: err,
  })
}

function copySnapshot(s: GpuSnapshot): GpuSnapshot {
  return { ...s, processes: s.processes?.map((p) => ({ ...p })) ?? null }
}

// ---- the poller --------------------------------------------------------------------------------

/**
 * Polls nvidia-smi every `intervalMs` (one run at a time, on an `unref()`'d timer).
 *
 * Events: `'snapshot'` (GpuSnapshot[]) after each successful poll, `'pollError'` (NvidiaSmiError)
 * after each failed one; never `'error'`, so a failing nvidia-smi cannot crash the host. A failed
 * poll keeps the previous snapshot. Errors thrown by listeners are reported as process warnings.
 */
export class NvidiaSmiPoller extends EventEmitter {
  /** The error of the latest poll; null before the first poll and after a successful one. */
  lastError: NvidiaSmiError | null = null
  readonly #path: string
  readonly #timeoutMs: number
  readonly #intervalMs: number
  #snapshots: GpuSnapshot[] = []
  #devices: GpuDeviceInfo[] = []
  #timer: NodeJS.Timeout | null = null
  #abort: AbortController | null = null
  /** Bumped by start() and stop() so that a poll finishing after stop() is ignored. */
  #generation = 0
  #running = false

  constructor(options: NvidiaSmiPollerOptions = {}) {
    super()
    const o = checkPollerOptions(options)
    this.#path = o.path
    this.#timeoutMs = o.timeoutMs
    this.#intervalMs = o.intervalMs
  }

  get running(): boolean {
    return this.#running
  }

  /** Polls now, then every `intervalMs`. Calling it while running does nothing. */
  start(): this {
    if (this.#running) return this
    this.#running = true
    this.#generation++
    void this.#poll(this.#generation)
    return this
  }

  /** Stops polling and kills a run in flight; the latest snapshot stays readable. */
  stop(): void {
    if (!this.#running) return
    this.#running = false
    this.#generation++
    if (this.#timer !== null) clearTimeout(this.#timer)
    this.#timer = null
    this.#abort?.abort()
    this.#abort = null
  }

  /** The latest readings (copies); empty before the first successful poll. */
  snapshot(): GpuSnapshot[] {
    return this.#snapshots.map(copySnapshot)
  }

  /** The devices seen by the latest successful poll (copies). */
  devices(): GpuDeviceInfo[] {
    return this.#devices.map((d) => ({ ...d }))
  }

  async #poll(generation: number): Promise<void> {
    const started = Date.now()
    const abort = new AbortController()
    this.#abort = abort
    let ok = false
    try {
      const { devices, snapshots } = await query(this.#path, this.#timeoutMs, abort.signal)
      if (generation !== this.#generation) return
      this.#devices = devices
      this.#snapshots = snapshots
      this.lastError = null
      ok = true
      this.#emitSafe('snapshot', this.snapshot())
    } catch (err) {
      if (generation !== this.#generation || err instanceof Aborted) return
      const error = asNvidiaSmiError(err)
      debug('nvidia-smi poll failed: %s', error.message)
      this.lastError = error
      this.#emitSafe('pollError', error)
    } finally {
      if (this.#abort === abort) this.#abort = null
      if (generation === this.#generation && this.#running) {
        // Keep the cadence after a success; after a failure wait a full interval before retrying.
        const delay = ok ? Math.max(0, this.#intervalMs - (Date.now() - started)) : this.#intervalMs
        this.#timer = setTimeout(() => {
          this.#timer = null
          void this.#poll(generation)
        }, delay)
        this.#timer.unref()
      }
    }
  }

  /** Calls each listener on its own, so one that throws neither stops the others nor the poller. */
  #emitSafe(event: 'snapshot' | 'pollError', arg: unknown) {
    for (const listener of this.rawListeners(event)) {
      try {
        const r: unknown = (listener as (a: unknown) => unknown).call(this, arg)
        if (r instanceof Promise) r.catch((err: unknown) => reportCallbackError(`'${event}' listener`, err))
      } catch (err) {
        reportCallbackError(`'${event}' listener`, err)
      }
    }
  }
}
