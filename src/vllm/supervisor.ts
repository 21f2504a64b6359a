/**
 * Runs vLLM as a child process and reports what it does: `process-spawn` and `process-exit` events,
 * the lifecycle phases and failure signatures of its log lines (through `LogLineSource`), and at
 * exit a verdict taken from its log, not its exit status (vLLM exits 0 after engine death, vllm.md
 * §0 #4). Restarts it with exponential backoff after a crash when asked, forwards signals, and stops
 * it gracefully: SIGTERM, then SIGKILL after a grace period.
 *
 * vLLM runs in its own process group (`detached`), so a signal reaches its EngineCore and worker
 * processes too, as Ctrl-C would in a terminal; workers left behind by a dead server are killed
 * with the group, since they hold the GPU memory the next start needs.
 */
import { type ChildProcess, spawn as nodeSpawn } from 'node:child_process'
import { EventEmitter } from 'node:events'
import { existsSync } from 'node:fs'
import { InvalidArgumentError } from '../errors.js'
import type { TelemetryRecord, TelemetrySource } from '../telemetry/types.js'
import { FATAL_TYPES, type FatalEvidence, judgeExit } from './exit-cause.js'
import { LineSplitter } from './line-splitter.js'
import { LogLineSource } from './log-source.js'
import {
  type ExitInfo,
  formatArgv,
  kRestartDefaults,
  mergeEnv,
  type OutputStream,
  type RestartPolicy,
  type SupervisorEvents,
  type SupervisorState,
  stripUndefined,
  type TailLine,
  type VllmSupervisorOptions,
  validateSupervisorOptions,
} from './supervisor-options.js'

export type {
  ExitInfo,
  OutputStream,
  RestartPolicy,
  SupervisorEvents,
  SupervisorState,
  TailLine,
  VllmSupervisorOptions,
} from './supervisor-options.js'

/** How long to wait after the exit for the pipes to deliver the last lines. */
const kCloseWaitMs = 50

interface Run {
  child: ChildProcess
  pid: number
  argv: string[]
  spawnedAt: number
  splitters: LineSplitter[]
  /** First evidence of each fatal type. */
  evidence: Map<string, FatalEvidence>
  sawStartup: boolean
  sawServing: boolean
  requested: boolean
  forced: boolean
  exited: boolean
  closed: boolean
  finished: boolean
  code: number | null
  signal: NodeJS.Signals | null
  graceTimer: NodeJS.Timeout | null
  closeTimer: NodeJS.Timeout | null
  waiters: Array<(r: { code: number | null; signal: NodeJS.Signals | null }) => void>
  onHostExit: () => void
}

export class VllmSupervisor extends EventEmitter<SupervisorEvents> implements TelemetrySource {
  readonly name = 'supervisor'
  readonly replica: string
  readonly command: string
  readonly restartPolicy: RestartPolicy
  readonly gracePeriodMs: number
  /** Restarts so far (after crashes and by `restart()`). */
  restarts = 0
  lastExit: ExitInfo | null = null
  #state: SupervisorState = 'exited'
  readonly #o: VllmSupervisorOptions
  readonly #now: () => number
  readonly #logs: LogLineSource
  readonly #tailLines: number
  readonly #tails: Record<OutputStream, TailLine[]> = { stdout: [], stderr: [] }
  #push: ((r: TelemetryRecord) => void) | null = null
  #run: Run | null = null
  #lineRun: Run | null = null
  #started = false
  #stopped = false
  #restarting = false
  #crashesInARow = 0
  #backoffTimer: NodeJS.Timeout | null = null
  #chain: Promise<void> = Promise.resolve()
  #args: readonly string[]

  constructor(options: VllmSupervisorOptions) {
    super()
    this.#o = validateSupervisorOptions(options)
    this.replica = options.replica
    this.command = options.command
    this.#args = [...(options.args ?? [])]
    this.#now = options.now
    this.gracePeriodMs = options.gracePeriodMs ?? 30_000
    this.#tailLines = options.tailLines ?? 200
    const r = options.restart
    this.restartPolicy =
      r === undefined || r === false
        ? { ...kRestartDefaults }
        : r === true
          ? { ...kRestartDefaults, onCrash: true }
          : { ...kRestartDefaults, ...stripUndefined(r) }
    this.#logs = new LogLineSource(this.#now)
  }

  /** The arguments vLLM runs with (changed by `restart(reason, { args })`). */
  get args(): readonly string[] {
    return this.#args
  }

  get state(): SupervisorState {
    return this.#state
  }

  /** The running server's pid (its process group's id), null when none runs. */
  get pid(): number | null {
    const run = this.#run
    return run !== null && !run.exited ? run.pid : null
  }

  /** The last lines of both streams, oldest first. */
  tail(n = this.#tailLines): TailLine[] {
    return [...this.#tails.stdout, ...this.#tails.stderr].sort((a, b) => a.t - b.t).slice(-n)
  }

  start(push: (record: TelemetryRecord) => void): void {
    if (this.#started) return
    this.#started = true
    this.#push = push
    this.#logs.start((rec) => this.#fromLogs(rec))
    this.#spawn()
  }

  /** Stops vLLM (as `shutdown()`), never restarts it again, and resolves once it has exited. */
  async stop(): Promise<void> {
    this.#stopped = true
    this.#cancelBackoff()
    await this.shutdown()
    await this.#chain
    this.#logs.stop()
    this.#push = null
  }

  /**
   * SIGTERM to vLLM's process group (vLLM drains and exits 0), SIGKILL after `gracePeriodMs`.
   * Resolves with how it ended; never rejects.
   */
  shutdown(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    const run = this.#run
    if (this.#state === 'backoff') {
      this.#cancelBackoff()
      this.#state = 'exited'
    }
    if (run === null || run.finished) {
      return Promise.resolve({ code: this.lastExit?.code ?? null, signal: this.lastExit?.signal ?? null })
    }
    const done = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      run.waiters.push(resolve),
    )
    if (!run.requested && !run.exited) {
      run.requested = true
      this.#state = 'stopping'
      this.#record(
        'lifecycle-hint',
        'info',
        `supervisor sent SIGTERM to pid ${run.pid} (graceful shutdown)`,
        { state: 'SHUTTING_DOWN', source: 'supervisor' },
      )
      this.#kill(run, 'SIGTERM')
      run.graceTimer = setTimeout(() => {
        run.graceTimer = null
        if (run.exited) return
        run.forced = true
        this.#kill(run, 'SIGKILL')
      }, this.gracePeriodMs)
    }
    return done
  }

  /**
   * The restart actuator: stops vLLM gracefully and starts it again. `reason` is recorded (a
   * `process-restart` event). With `args`, the new process (and every later one) runs with them
   * instead (a mitigation lowering `--max-num-seqs`). Rejects only for invalid `args`; a no-op
   * before `start()` or after `stop()`.
   */
  restart(reason: string, options?: { args?: readonly string[] }): Promise<void> {
    const args = options?.args
    if (args !== undefined && (!Array.isArray(args) || args.some((a) => typeof a !== 'string')))
      return Promise.reject(new InvalidArgumentError('restart: options.args must be an array of strings'))
    const next = args === undefined ? undefined : [...args]
    const op = this.#chain.then(() => this.#restartNow(String(reason), next))
    this.#chain = op.catch(() => {})
    return this.#chain
  }

  /** Sends `sig` to vLLM's process group. False when no server runs or the signal failed. */
  signal(sig: NodeJS.Signals): boolean {
    const run = this.#run
    if (run === null || run.exited) return false
    return this.#kill(run, sig)
  }

  async #restartNow(reason: string, args: readonly string[] | undefined): Promise<void> {
    if (!this.#started || this.#stopped) return
    this.#record('process-restart', 'warning', `restarting vLLM: ${reason}`, { reason, requested: true })
    this.#restarting = true
    try {
      this.#cancelBackoff()
      await this.shutdown()
    } finally {
      this.#restarting = false
    }
    if (this.#stopped) return
    if (args !== undefined) this.#args = args
    this.restarts++
    this.#spawn()
  }

  #spawn(): void {
    const o = this.#o
    const argv = [this.command, ...this.args]
    const env = o.env === undefined ? process.env : mergeEnv(process.env, o.env)
    let child: ChildProcess
    try {
      child = (o.spawn ?? nodeSpawn)(this.command, [...this.args], {
        ...(o.cwd === undefined ? {} : { cwd: o.cwd }),
        env,
        // Its own process group, so signals reach the EngineCore and worker processes too.
        detached: process.platform !== 'win32',
        stdio: ['ignore', 'pipe', 'pipe'],
        windowsHide: true,
      })
    } catch (err) {
      this.#spawnFailed(err as NodeJS.ErrnoException)
      return
    }
    if (child.pid === undefined) {
      // ENOENT / EACCES arrive as an 'error' event on the next tick.
      let reported = false
      child.once('error', (err) => {
        if (reported) return
        reported = true
        this.#spawnFailed(err as NodeJS.ErrnoException)
      })
      child.stdout?.on('error', () => {})
      child.stderr?.on('error', () => {})
      return
    }
    const run: Run = {
      child,
      pid: child.pid,
      argv,
      spawnedAt: this.#now(),
      splitters: [],
      evidence: new Map(),
      sawStartup: false,
      sawServing: false,
      requested: false,
      forced: false,
      exited: false,
      closed: false,
      finished: false,
      code: null,
      signal: null,
      graceTimer: null,
      closeTimer: null,
      waiters: [],
      // If the host exits without stopping us, vLLM must not run on unsupervised.
      onHostExit: () => this.#kill(run, 'SIGTERM'),
    }
    this.#run = run
    this.#state = 'running'
    process.on('exit', run.onHostExit)
    for (const stream of ['stdout', 'stderr'] as const) {
      const readable = child[stream]
      if (readable === null) continue
      const splitter = new LineSplitter((line) => this.#line(run, stream, line))
      run.splitters.push(splitter)
      readable.on('data', (chunk: Buffer) => {
        if (o.onData !== undefined) safeCall(() => o.onData?.(stream, chunk))
        splitter.write(chunk)
      })
      readable.on('error', () => {})
    }
    child.on('error', (err) => {
      // After a successful spawn: a failed kill() or a pipe error. The exit still comes.
      this.#record('monitor-error', 'warning', `vLLM process ${run.pid}: ${err.message}`, {
        code: 'VLLM_MONITOR_SUPERVISOR_FAILED',
      })
    })
    child.once('exit', (code, signal) => this.#onExit(run, code, signal))
    child.once('close', () => {
      run.closed = true
      if (run.exited) this.#finish(run)
    })
    this.#record('process-spawn', 'info', `vLLM started (pid ${run.pid}): ${formatArgv(argv)}`, {
      pid: run.pid,
      argv,
    })
    this.#emitSafe('spawn', { pid: run.pid, argv })
  }

  #spawnFailed(err: NodeJS.ErrnoException): void {
    const code = err?.code ?? null
    const cwd = this.#o.cwd
    const why =
      cwd !== undefined && !existsSync(cwd)
        ? `working directory ${cwd} does not exist`
        : code === 'ENOENT'
          ? `command "${this.command}" not found (is vLLM installed and on PATH?)`
          : code === 'EACCES'
            ? `"${this.command}" is not executable (EACCES)`
            : (err?.message ?? String(err))
    const info: ExitInfo = {
      t: this.#now(),
      pid: null,
      code: null,
      signal: null,
      cause: 'spawn-failed',
      message: `cannot start vLLM: ${why}`,
      detail: err?.message ?? null,
      uptimeMs: null,
      requested: false,
      forced: false,
      errno: code,
    }
    this.#state = 'exited'
    this.#ended(info, false)
  }

  #line(run: Run, stream: OutputStream, text: string): void {
    if (text.trim() === '') return
    const t = this.#now()
    const tail = this.#tails[stream]
    tail.push({ t, stream, text })
    if (tail.length > this.#tailLines) tail.shift()
    if (this.#o.onOutput !== undefined) safeCall(() => this.#o.onOutput?.(stream, text))
    this.#lineRun = run
    try {
      this.#logs.line(this.replica, text)
    } finally {
      this.#lineRun = null
    }
  }

  /** What the log classifier pushes, on its way out: keeps the run's phases and fatal evidence. */
  #fromLogs(rec: TelemetryRecord): void {
    const run = this.#lineRun
    if (run !== null && rec.kind === 'event') {
      if (rec.type === 'lifecycle-hint') {
        const s = rec.data?.state
        if (s === 'SERVING') run.sawServing = true
        else if (s !== 'SHUTTING_DOWN') run.sawStartup = true
      } else if (FATAL_TYPES.has(rec.type) && !run.evidence.has(rec.type)) {
        run.evidence.set(rec.type, {
          type: rec.type,
          message: rec.message,
          ...(rec.data === undefined ? {} : { data: rec.data }),
        })
      }
    }
    this.#pushRecord(rec)
  }

  #onExit(run: Run, code: number | null, signal: NodeJS.Signals | null): void {
    if (run.exited) return
    run.exited = true
    run.code = code
    run.signal = signal
    if (run.graceTimer !== null) clearTimeout(run.graceTimer)
    run.graceTimer = null
    process.off('exit', run.onHostExit)
    // Workers a dead server left behind hold its GPU memory: take the rest of the group down.
    if (process.platform !== 'win32') {
      try {
        process.kill(-run.pid, 'SIGKILL')
      } catch {
        // ESRCH: nothing left, the usual case.
      }
    }
    if (run.closed) this.#finish(run)
    else {
      // The pipes close when the last holder is gone; don't wait long for a straggler.
      run.closeTimer = setTimeout(() => this.#finish(run), kCloseWaitMs)
      run.closeTimer.unref()
    }
  }

  #finish(run: Run): void {
    if (run.finished) return
    run.finished = true
    if (run.closeTimer !== null) clearTimeout(run.closeTimer)
    for (const s of run.splitters) s.end()
    const t = this.#now()
    const verdict = judgeExit({
      code: run.code,
      signal: run.signal,
      requested: run.requested,
      forced: run.forced,
      gracePeriodMs: this.gracePeriodMs,
      evidence: run.evidence.values(),
      sawStartup: run.sawStartup,
      sawServing: run.sawServing,
    })
    const info: ExitInfo = {
      t,
      pid: run.pid,
      code: run.code,
      signal: run.signal,
      cause: verdict.cause,
      message: verdict.message,
      detail: verdict.detail,
      uptimeMs: t - run.spawnedAt,
      requested: run.requested,
      forced: run.forced,
      errno: null,
    }
    const crashed = !run.requested && verdict.cause !== null
    const willRestart = this.#restarting || (crashed && this.#scheduleRestart(info))
    if (!willRestart || this.#restarting) this.#state = 'exited'
    this.#ended(info, willRestart)
    for (const w of run.waiters.splice(0)) w({ code: run.code, signal: run.signal })
  }

  #ended(info: ExitInfo, willRestart: boolean): void {
    this.lastExit = info
    this.#record('process-exit', info.cause === null ? 'info' : 'critical', info.message, {
      pid: info.pid,
      code: info.code,
      signal: info.signal,
      cause: info.cause,
      detail: info.detail,
      uptimeMs: info.uptimeMs,
      requested: info.requested,
      forced: info.forced,
      ...(info.errno === null ? {} : { errno: info.errno }),
    })
    this.#emitSafe('exit', { ...info, willRestart })
  }

  /** Schedules the next start after a crash; false when the policy says not to. */
  #scheduleRestart(info: ExitInfo): boolean {
    const p = this.restartPolicy
    if (!p.onCrash || this.#stopped) return false
    if ((info.uptimeMs ?? 0) >= p.resetAfterMs) this.#crashesInARow = 0
    if (this.#crashesInARow >= p.maxRestarts) {
      this.#record(
        'process-restart',
        'critical',
        `not restarting vLLM: ${this.#crashesInARow} restarts in a row ended in a crash (maxRestarts)`,
        { gaveUp: true, crashesInARow: this.#crashesInARow },
      )
      return false
    }
    const delayMs = Math.min(p.maxDelayMs, p.initialDelayMs * p.factor ** this.#crashesInARow)
    this.#crashesInARow++
    this.#state = 'backoff'
    this.#record(
      'process-restart',
      'warning',
      `restarting vLLM in ${(delayMs / 1000).toFixed(1)} s after a crash (attempt ${this.#crashesInARow})`,
      { reason: `crash: ${info.cause}`, delayMs, attempt: this.#crashesInARow, requested: false },
    )
    // Not unref'd: a supervisor waiting to restart its server is still at work.
    this.#backoffTimer = setTimeout(() => {
      this.#backoffTimer = null
      if (this.#stopped) return
      this.restarts++
      this.#spawn()
    }, delayMs)
    return true
  }

  #cancelBackoff(): void {
    if (this.#backoffTimer !== null) clearTimeout(this.#backoffTimer)
    this.#backoffTimer = null
  }

  #kill(run: Run, sig: NodeJS.Signals): boolean {
    try {
      if (process.platform === 'win32') return run.child.kill(sig)
      process.kill(-run.pid, sig)
      return true
    } catch {
      // The group is gone (ESRCH) or we may not signal it: try the process itself.
      try {
        return run.child.kill(sig)
      } catch {
        return false
      }
    }
  }

  #record(type: string, severity: 'info' | 'warning' | 'critical', message: string, data?: object): void {
    this.#pushRecord({
      t: this.#now(),
      kind: 'event',
      type,
      severity,
      replica: this.replica,
      gpu: null,
      message,
      ...(data === undefined ? {} : { data: data as Record<string, unknown> }),
    })
  }

  #pushRecord(rec: TelemetryRecord): void {
    const push = this.#push
    if (push !== null) safeCall(() => push(rec))
  }

  #emitSafe<K extends keyof SupervisorEvents>(name: K, ...args: SupervisorEvents[K]): void {
    safeCall(() => (this.emit as (n: string, ...a: unknown[]) => boolean)(name, ...args))
  }
}

function safeCall(fn: () => void): void {
  try {
    fn()
  } catch (err) {
    process.emitWarning(
      `vllm-monitor supervisor: a callback threw: ${(err as Error)?.stack ?? String(err)}`,
      {
        code: 'VLLM_MONITOR_CALLBACK_THREW',
      },
    )
  }
}
