/**
 * `vllm-monitor watch --url URL [--url URL2 ...] [--pid PID] [--log FILE]`: attach mode, for vLLM
 * servers the monitor did not start. It scrapes `/metrics` and `/health`, probes `/health`,
 * `/v1/models`, `/version` and (unless `--no-e2e-probe`) a one-token completion, follows each log
 * file like `tail -F`, and polls each PID: a process that is gone is a `process-exit` event (ERROR).
 * The i-th `--pid` and `--log` belong to the i-th `--url` (replicas are named r0, r1, ...).
 * Transitions go to stderr, one line each (JSON lines with `--json`).
 */
import { readFileSync } from 'node:fs'
import { InvalidArgumentError as CliArgError, type Command, Option } from 'commander'
import { createMonitor, type VLLMEngineMonitor } from '../monitor/monitor.js'
import type { GpuMode, MonitorOptions } from '../monitor/options.js'
import type { Transition } from '../telemetry/types.js'
import { LogTail } from '../vllm/log-tail.js'
import { untilStopped } from './until-stopped.js'

export interface WatchCliOptions {
  urls: string[]
  pids: number[]
  logs: string[]
  json: boolean
  hangAfterMs: number
  httpPort?: number
  record?: string
  /** Forecaster model directory, or 'none'. */
  model?: string
  gpu: string
  scrapeIntervalMs: number
  staleAfterMs?: number
  probeIntervalMs: number
  probeTimeoutMs: number
  e2e: boolean
  e2eIntervalMs: number
  e2eTimeoutMs: number
  e2eFailures: number
  apiKey?: string
  durationSec?: number
  /** PID liveness poll period. */
  pidPollMs?: number
}

/**
 * Whether `pid` names a live process (EPERM: alive, owned by someone else). A zombie answers
 * kill(0) too, so /proc's state decides where it can be read: Z (or X) is gone.
 */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const state = stat.charAt(stat.lastIndexOf(')') + 2)
    return state !== 'Z' && state !== 'X'
  } catch {
    return true
  }
}

export async function runWatch(o: WatchCliOptions): Promise<number> {
  const out = (line: string) => process.stderr.write(`${line}\n`)
  if (o.pids.length > o.urls.length || o.logs.length > o.urls.length) {
    out(
      'vllm-monitor watch: more --pid or --log than --url (the i-th --pid and --log go with the i-th --url)',
    )
    return 2
  }
  for (const pid of o.pids) {
    if (!processAlive(pid)) {
      out(`vllm-monitor watch: process ${pid} does not exist`)
      return 2
    }
  }
  const replicas = o.urls.map((url, i) => ({ name: `r${i}`, url }))
  const gpu = o.gpu.startsWith('http') ? { simUrl: o.gpu } : (o.gpu as GpuMode)
  const options: MonitorOptions = {
    replicas,
    gpu,
    http: o.httpPort === undefined ? false : { host: '127.0.0.1', port: o.httpPort },
    hangAfterMs: o.hangAfterMs,
    scrapeIntervalMs: o.scrapeIntervalMs,
    // As `run`: checkpoints every 10 ms so a death or a hang shows within tens of ms of its cause.
    checkpointIntervalMs: 10,
    probes: {
      intervalMs: o.probeIntervalMs,
      timeoutMs: o.probeTimeoutMs,
      e2e: o.e2e
        ? { intervalMs: o.e2eIntervalMs, timeoutMs: o.e2eTimeoutMs, failuresBeforeError: o.e2eFailures }
        : false,
      ...(o.apiKey === undefined ? {} : { apiKey: o.apiKey }),
    },
    ...(o.staleAfterMs === undefined ? {} : { staleAfterMs: o.staleAfterMs }),
    ...(o.record === undefined ? {} : { record: o.record }),
    ...(o.model === undefined ? {} : { forecast: { model: o.model === 'none' ? null : o.model } }),
  }
  const monitor = createMonitor(options)
  const urlOf = new Map(replicas.map((r) => [r.name, r.url]))
  monitor.on('transition', (replica, tr) =>
    out(formatTransition(replica, urlOf.get(replica) ?? null, tr, o.json)),
  )
  monitor.on('error', (err) => {
    const code = (err as { code?: string }).code ?? 'VLLM_MONITOR_ERR'
    out(
      o.json
        ? JSON.stringify({ type: 'error', code, message: err.message })
        : `error: ${err.message} (${code})`,
    )
  })
  await monitor.ready
  if (monitor.url !== null && !o.json) out(`  HTTP surface: ${monitor.url}/metrics /api/status /api/export`)

  const tails = o.logs.map((path, i) => {
    const replica = `r${i}`
    return new LogTail({
      path,
      onLine: (line) => monitor.logLine(replica, line),
      onError: (err) =>
        out(
          o.json
            ? JSON.stringify({ type: 'error', replica, path, message: err.message })
            : `error: ${path}: ${err.message}`,
        ),
    })
  })
  await Promise.all(tails.map((t) => t.start()))
  const stopPids = watchPids(monitor, o.pids, o.pidPollMs ?? 250)
  // Unlike the monitor's own timers, this one keeps the process alive until it is stopped.
  const keepAlive = setInterval(() => {}, 1 << 30)

  if (o.json) {
    out(
      JSON.stringify({
        type: 'watching',
        replicas: replicas.map((r, i) => ({ ...r, pid: o.pids[i] ?? null, log: o.logs[i] ?? null })),
      }),
    )
  } else {
    out(
      `watching ${replicas.map((r, i) => `${r.name}=${r.url}${o.pids[i] === undefined ? '' : ` pid ${o.pids[i]}`}${o.logs[i] === undefined ? '' : ` log ${o.logs[i]}`}`).join(', ')}` +
        `${o.durationSec ? ` for ${o.durationSec} s` : ' (Ctrl-C to stop)'}`,
    )
  }
  await untilStopped(o.durationSec)
  clearInterval(keepAlive)
  stopPids()
  await Promise.all(tails.map((t) => t.stop()))
  await monitor.close()
  const st = monitor.getStatus()
  if (o.json) {
    out(
      JSON.stringify({
        type: 'final',
        replicas: st.replicas.map((r) => ({ replica: r.replica, state: r.lifecycleState, reason: r.reason })),
      }),
    )
  } else out(`done: ${st.replicas.map((r) => `${r.replica} ${r.lifecycleState}`).join(', ')}`)
  return 0
}

/** Polls each PID with signal 0; pushes one `process-exit` event for the replica when it is gone. */
function watchPids(monitor: VLLMEngineMonitor, pids: number[], pollMs: number): () => void {
  const gone = new Set<number>()
  const timer = setInterval(() => {
    pids.forEach((pid, i) => {
      if (gone.has(pid) || processAlive(pid)) return
      gone.add(pid)
      monitor.push({
        t: monitor.getStatus().uptimeMs,
        kind: 'event',
        type: 'process-exit',
        severity: 'critical',
        replica: `r${i}`,
        gpu: null,
        message: `process ${pid} is gone`,
        data: { pid },
      })
    })
  }, pollMs)
  timer.unref()
  return () => clearInterval(timer)
}

function formatTransition(replica: string, url: string | null, tr: Transition, json: boolean): string {
  if (json)
    return JSON.stringify({
      type: 'transition',
      t: Math.round(tr.t),
      replica,
      url,
      from: tr.from,
      to: tr.to,
      reason: tr.reason,
    })
  return `[${(tr.t / 1000).toFixed(1)}s] ${replica}: ${tr.from} -> ${tr.to}  (${tr.reason})`
}

const int =
  (name: string, min = 0) =>
  (v: string) => {
    const n = Number(v)
    if (!Number.isInteger(n) || n < min) throw new CliArgError(`${name} must be an integer >= ${min}`)
    return n
  }
const positive = (name: string) => (v: string) => {
  const n = Number(v)
  if (!Number.isFinite(n) || n <= 0) throw new CliArgError(`${name} must be a positive number`)
  return n
}
const collect =
  <T>(parse: (v: string) => T) =>
  (v: string, previous: T[] | undefined): T[] => [...(previous ?? []), parse(v)]

/** Adds `vllm-monitor watch` to the program. */
export function registerWatch(program: Command): Command {
  return program
    .command('watch')
    .description('attach to vLLM servers it did not start: scrape, probe end to end, follow logs and PIDs')
    .requiredOption('--url <url...>', 'vLLM server base URL (repeat for several: r0, r1, ...)')
    .option(
      '--pid <pid>',
      'server process to watch for exit (repeat; the i-th goes with the i-th --url)',
      collect(int('--pid', 1)),
    )
    .option(
      '--log <file>',
      'log file to follow like tail -F (repeat; the i-th goes with the i-th --url)',
      collect(String),
    )
    .option('--json', 'print transitions as JSON lines')
    .option(
      '--hang-after-ms <ms>',
      'requests running with no progress this long is a hang',
      int('--hang-after-ms', 100),
      30_000,
    )
    .option(
      '--http-port <port>',
      'serve /metrics, /api/status and /api/export on 127.0.0.1:PORT',
      int('--http-port'),
    )
    .option('--record <file>', 'also write everything received to a trace (JSON Lines; .gz to compress)')
    .option(
      '--model <dir>',
      'forecaster model directory (default: the shipped one; "none": the baselines only)',
    )
    .option('--gpu <mode>', "GPU source: auto, nvml, nvidia-smi, none, or a simulator's control URL", 'auto')
    .option('--scrape-interval-ms <ms>', 'scrape period', int('--scrape-interval-ms', 20), 100)
    .option(
      '--stale-after-ms <ms>',
      'metrics older than this are stale (default: from the scrape period)',
      int('--stale-after-ms', 100),
    )
    .option(
      '--probe-interval-ms <ms>',
      'period of the /health, /v1/models, /version probes',
      int('--probe-interval-ms', 100),
      5_000,
    )
    .option('--probe-timeout-ms <ms>', 'deadline of those probes', int('--probe-timeout-ms', 100), 10_000)
    .option('--no-e2e-probe', 'do not send the one-token end-to-end completion probe')
    .option(
      '--e2e-interval-ms <ms>',
      'pause between end-to-end probes',
      int('--e2e-interval-ms', 100),
      10_000,
    )
    .option('--e2e-timeout-ms <ms>', 'deadline of one end-to-end probe', int('--e2e-timeout-ms', 100), 30_000)
    .option(
      '--e2e-failures <n>',
      'end-to-end failures in a row (with /health 200) that mean ERROR',
      int('--e2e-failures', 1),
      3,
    )
    .addOption(new Option('--api-key <key>', "vLLM's --api-key, for /v1/*").env('VLLM_API_KEY'))
    .option('--duration <s>', 'stop after this many seconds', positive('--duration'))
    .action(async (o) => {
      process.exitCode = await runWatch({
        urls: o.url,
        pids: o.pid ?? [],
        logs: o.log ?? [],
        json: o.json === true,
        hangAfterMs: o.hangAfterMs,
        httpPort: o.httpPort,
        record: o.record,
        model: o.model,
        gpu: o.gpu,
        scrapeIntervalMs: o.scrapeIntervalMs,
        staleAfterMs: o.staleAfterMs,
        probeIntervalMs: o.probeIntervalMs,
        probeTimeoutMs: o.probeTimeoutMs,
        e2e: o.e2eProbe !== false,
        e2eIntervalMs: o.e2eIntervalMs,
        e2eTimeoutMs: o.e2eTimeoutMs,
        e2eFailures: o.e2eFailures,
        apiKey: o.apiKey,
        durationSec: o.duration,
      })
    })
}
