/**
 * `vllm-monitor run [options] -- vllm serve MODEL ...`: starts vLLM under the supervisor, watches
 * it (scrape, GPU, its own log lines) and prints each lifecycle transition. vLLM's output passes
 * through verbatim; ours goes to stderr, prefixed `[vllm-monitor]` (or as JSON lines with --json).
 *
 * Exit status: vLLM's own, except that
 * - an exit code 0 the monitor calls a crash (vLLM exits 0 after engine death, vllm.md §0 #4; or
 *   it exited on its own while the monitor had it in ERROR) is 1, so `Restart=on-failure` and CI
 *   see the failure;
 * - killed by a signal: 128 + the signal number (137 for SIGKILL), as a shell reports it;
 * - vLLM could not be started: 127 when the command is not found (a shell's "command not found",
 *   so scripts can tell "vLLM is not installed" from "vLLM crashed"), 126 when it is not
 *   executable, 1 otherwise.
 */
import { constants } from 'node:os'
import { type Command, InvalidArgumentError } from 'commander'
import { createMonitor } from '../monitor/monitor.js'
import type { GpuMode, MonitorOptions } from '../monitor/options.js'
import type { TimedEvent, Transition } from '../telemetry/types.js'
import { type ExitInfo, VllmSupervisor } from '../vllm/supervisor.js'
import { guardOutput, safeWrite } from './safe-output.js'

export interface RunCliOptions {
  /** The vLLM command line: `['vllm', 'serve', MODEL, ...]`. */
  command: string[]
  name: string
  url?: string
  restart: boolean
  maxRestarts?: number
  restartDelayMs: number
  graceMs: number
  hangAfterMs?: number
  httpPort?: number
  record?: string
  /** Forecaster model directory, or 'none'. */
  model?: string
  json: boolean
  gpu: string
}

/**
 * Checkpoints every 10 ms (the monitor's default is 100): a record waits for the next grid point and
 * the grid point for the timer, so a death line or an exit becomes a transition within about two
 * grid steps; bench/supervisor-latency.mjs measures it.
 */
const kCheckpointMs = 10
/** Supervisor events worth a line of their own (transitions cover the rest). */
const kShownEvents = new Set(['process-spawn', 'process-exit', 'process-restart', 'nccl-error'])

const nonNegativeInt = (name: string) => (v: string) => {
  const n = Number(v)
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`${name} must be a non-negative integer`)
  return n
}

export function registerRun(program: Command): void {
  program
    .command('run')
    .description('start vLLM, supervise it and watch it: vllm-monitor run [options] -- vllm serve MODEL ...')
    .usage('[options] -- vllm serve MODEL [vLLM args...]')
    .argument('<command...>', 'the vLLM command line, after --')
    .option('--name <name>', 'replica name', 'r0')
    .option(
      '--url <url>',
      "vLLM's base URL to scrape (default: --host/--port from the vLLM args, else http://127.0.0.1:8000)",
      (v: string) => {
        if (!URL.canParse(v)) throw new InvalidArgumentError(`${JSON.stringify(v)} is not a URL`)
        return v
      },
    )
    .option('--restart', 'restart vLLM after a crash, with exponential backoff (1 s, doubling, up to 60 s)')
    .option(
      '--max-restarts <n>',
      'with --restart: give up after n crashes in a row',
      nonNegativeInt('--max-restarts'),
    )
    .option(
      '--restart-delay-ms <ms>',
      'with --restart: the first backoff delay',
      nonNegativeInt('--restart-delay-ms'),
      1000,
    )
    .option(
      '--grace-ms <ms>',
      'after SIGTERM, how long vLLM may drain before SIGKILL',
      nonNegativeInt('--grace-ms'),
      30_000,
    )
    .option(
      '--hang-after-ms <ms>',
      'requests running with no token or step progress this long is a hang (default 30000)',
      nonNegativeInt('--hang-after-ms'),
    )
    .option(
      '--http-port <port>',
      "serve the monitor's /metrics and /api/* on this port (default: off)",
      nonNegativeInt('--http-port'),
    )
    .option(
      '--record <file>',
      'write everything the monitor receives to a trace (JSON Lines; .gz to compress)',
    )
    .option('--json', 'print transitions and supervisor events as JSON lines (on stderr)')
    .option(
      '--model <dir>',
      'forecaster model directory (default: the shipped one; "none": the baselines only)',
    )
    .option('--gpu <mode>', 'GPU source: auto, nvml, nvidia-smi or none', 'auto')
    .addHelpText(
      'after',
      `
vLLM's stdout and stderr pass through unchanged. SIGINT/SIGTERM stop vLLM gracefully (SIGTERM to its
process group, SIGKILL after --grace-ms); a second one kills it at once. Exit status: vLLM's, but 1
when it exited 0 after a crash the monitor classified (vLLM exits 0 after engine death), 128+N when
killed by signal N, 127 when the vLLM command is not found, 126 when it is not executable.`,
    )
    .action(async (command: string[], o) => {
      process.exitCode = await runRun({
        command,
        name: o.name,
        url: o.url,
        restart: o.restart === true,
        maxRestarts: o.maxRestarts,
        restartDelayMs: o.restartDelayMs,
        graceMs: o.graceMs,
        hangAfterMs: o.hangAfterMs,
        httpPort: o.httpPort,
        record: o.record,
        model: o.model,
        json: o.json === true,
        gpu: o.gpu,
      })
    })
}

/** The URL vLLM will serve on, from its `--host` / `--port` arguments (vLLM's defaults otherwise). */
export function urlFromVllmArgs(args: readonly string[]): string {
  let host = '127.0.0.1'
  let port = '8000'
  for (let i = 0; i < args.length; i++) {
    const m = /^--(host|port)(?:=(.*))?$/.exec(args[i] as string)
    if (m === null) continue
    const v = m[2] ?? args[++i]
    if (v === undefined) break
    if (m[1] === 'host') host = v
    else port = v
  }
  // A wildcard bind is reached over loopback.
  if (host === '' || host === '0.0.0.0') host = '127.0.0.1'
  else if (host === '::' || host === '[::]') host = '[::1]'
  else if (host.includes(':') && !host.startsWith('[')) host = `[${host}]`
  return `http://${host}:${port}`
}

/** The exit status `run` ends with (see the module comment). */
export function exitStatusOf(exit: ExitInfo | null, monitorSawCrash: boolean): number {
  if (exit === null) return 1
  if (exit.cause === 'spawn-failed') return exit.errno === 'ENOENT' ? 127 : exit.errno === 'EACCES' ? 126 : 1
  if (exit.signal !== null) return 128 + (constants.signals[exit.signal] ?? 0)
  if (exit.code !== null && exit.code !== 0) return exit.code
  return exit.cause !== null || (monitorSawCrash && !exit.requested) ? 1 : 0
}

export async function runRun(o: RunCliOptions): Promise<number> {
  const [command, ...args] = o.command
  if (command === undefined || command === '') {
    console.error(
      'vllm-monitor run: no vLLM command given; usage: vllm-monitor run [options] -- vllm serve MODEL ...',
    )
    return 2
  }
  const url = o.url ?? urlFromVllmArgs(args)
  // A closed pipe (`| head`, a dead log shipper) must not take the supervised vLLM down.
  guardOutput()
  const say = (text: string, json: Record<string, unknown>) => {
    safeWrite(
      process.stderr,
      o.json ? `${JSON.stringify({ source: 'vllm-monitor', ...json })}\n` : `[vllm-monitor] ${text}\n`,
    )
  }
  const t0 = performance.now()
  const now = () => performance.now() - t0
  let finish: (exit: ExitInfo | null) => void = () => {}
  const finished = new Promise<ExitInfo | null>((resolve) => {
    finish = resolve
  })
  const supervisor = new VllmSupervisor({
    replica: o.name,
    command,
    args,
    now,
    gracePeriodMs: o.graceMs,
    ...(o.restart
      ? {
          restart: {
            onCrash: true,
            initialDelayMs: o.restartDelayMs,
            maxDelayMs: Math.max(60_000, o.restartDelayMs),
            ...(o.maxRestarts === undefined ? {} : { maxRestarts: o.maxRestarts }),
          },
        }
      : {}),
    onData: (stream, chunk) => safeWrite(stream === 'stdout' ? process.stdout : process.stderr, chunk),
  })
  supervisor.on('exit', (e) => {
    if (!e.willRestart) finish(e)
  })
  // The HTTP surface only when asked for (flag or VLLM_MONITOR_HTTP_PORT): two runs side by side
  // must not fight over the default port.
  const http: MonitorOptions['http'] =
    o.httpPort !== undefined
      ? { host: '127.0.0.1', port: o.httpPort }
      : process.env.VLLM_MONITOR_HTTP_PORT?.trim()
        ? undefined
        : false
  const gpu = o.gpu as GpuMode
  const monitor = createMonitor({
    replicas: [{ name: o.name, url }],
    sources: [supervisor],
    gpu,
    now,
    checkpointIntervalMs: kCheckpointMs,
    ...(http === undefined ? {} : { http }),
    ...(o.hangAfterMs === undefined ? {} : { hangAfterMs: o.hangAfterMs }),
    ...(o.record === undefined ? {} : { record: o.record }),
    ...(o.model === undefined ? {} : { forecast: { model: o.model === 'none' ? null : o.model } }),
  })
  monitor.on('transition', (replica: string, tr: Transition) =>
    say(`${replica}: ${tr.from} -> ${tr.to} (${tr.reason})`, { kind: 'transition', replica, ...tr }),
  )
  monitor.on('event', (e: TimedEvent) => {
    if (!kShownEvents.has(e.type)) return
    say(`${e.replica ?? ''}: ${e.message}`, { kind: 'event', ...e })
  })
  monitor.on('error', (err: Error & { code?: string }) =>
    say(`error: ${err.message}`, { kind: 'error', code: err.code ?? null, message: err.message }),
  )
  say(`supervising ${o.command.join(' ')}; watching ${url}`, {
    kind: 'start',
    replica: o.name,
    command: o.command,
    url,
  })

  let signals = 0
  const onStop = (sig: NodeJS.Signals) => {
    signals++
    if (signals === 1) {
      say(`${sig}: stopping vLLM (SIGTERM, SIGKILL after ${o.graceMs} ms; again to kill it now)`, {
        kind: 'signal',
        signal: sig,
        action: 'shutdown',
      })
      void supervisor.stop().then(() => finish(supervisor.lastExit))
    } else {
      say(`${sig} again: killing vLLM (SIGKILL)`, { kind: 'signal', signal: sig, action: 'kill' })
      supervisor.signal('SIGKILL')
    }
  }
  const forward = (sig: NodeJS.Signals) => supervisor.signal(sig)
  const handlers: Array<[NodeJS.Signals, (sig: NodeJS.Signals) => void]> = [
    ['SIGINT', onStop],
    ['SIGTERM', onStop],
    ['SIGHUP', onStop],
    ['SIGUSR2', forward],
  ]
  for (const [sig, h] of handlers) process.on(sig, h)
  let exit: ExitInfo | null
  try {
    exit = await finished
  } finally {
    for (const [sig, h] of handlers) process.off(sig, h)
  }
  await supervisor.stop()
  await monitor.close()
  const state = monitor.getStatus().replicas.find((r) => r.replica === o.name)?.lifecycleState
  const status = exitStatusOf(exit, state === 'ERROR')
  say(`exit status ${status}${exit === null ? '' : ` (${exit.message})`}`, {
    kind: 'exit',
    status,
    lifecycleState: state ?? null,
    exit,
  })
  return status
}
