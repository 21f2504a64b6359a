/**
 * `vllm-monitor sim`: a simulated vLLM fleet as real HTTP servers on loopback (one port per
 * replica, plus a control port), or, with `--trace FILE --fast`, a run in-process at full speed that
 * writes the trace of what a monitor would have recorded, with ground-truth labels.
 */
import { createWriteStream, mkdirSync, type WriteStream } from 'node:fs'
import { join } from 'node:path'
import { SimFleet } from '../sim/fleet.js'
import { writeSimulationTrace } from '../sim/run.js'
import { scenario as namedScenario } from '../sim/scenarios.js'
import { SimServer } from '../sim/server.js'
import { type LoadCliOptions, scenarioLoad } from './load.js'
import { untilStopped } from './until-stopped.js'

export interface SimCliOptions {
  replicas?: number
  port: number
  controlPort: number
  host: string
  scenario: string
  speed: number
  seed: number
  metrics: 'v1' | 'v0'
  logDir?: string
  quiet: boolean
  durationSec?: number
  trace?: string
  fast: boolean
  /** Requests/s per replica, the load shape, and an arrivals CSV in the Azure trace format. */
  load: LoadCliOptions
  /** Serve vLLM's dev endpoints (`--dev-mode`; default: `VLLM_SERVER_DEV_MODE=1` in the environment). */
  devMode?: boolean
  /** `--enable-sleep-mode`: `/sleep` frees the simulated GPU memory. */
  enableSleepMode?: boolean
}

export async function runSim(o: SimCliOptions): Promise<number> {
  if (o.fast) {
    if (o.trace === undefined)
      throw new Error('--fast needs --trace FILE (it writes the run instead of serving it)')
    const res = await writeSimulationTrace(o.trace, {
      scenario: o.scenario,
      seed: o.seed,
      ...scenarioLoad(o.load),
      ...(o.replicas === undefined ? {} : { replicas: o.replicas }),
      ...(o.durationSec === undefined ? {} : { durationMs: o.durationSec * 1000 }),
    })
    console.log(
      `wrote ${o.trace}: scenario ${res.scenario}, ${(res.durationMs / 1000).toFixed(0)} s simulated in ` +
        `${(res.wallMs / 1000).toFixed(2)} s (${(res.durationMs / res.wallMs).toFixed(0)}x), ${res.records} records`,
    )
    return 0
  }
  const sc = namedScenario(o.scenario, {
    seed: o.seed,
    ...scenarioLoad(o.load),
    ...(o.replicas === undefined ? {} : { replicas: o.replicas }),
  })
  const fleet = new SimFleet({ ...sc.fleet, basePort: o.port || 8000, epochMs: Date.now() })
  const files = new Map<string, WriteStream>()
  if (o.logDir !== undefined) mkdirSync(o.logDir, { recursive: true })
  const server = await SimServer.start({
    fleet,
    host: o.host,
    basePort: o.port,
    controlPort: o.controlPort,
    speed: o.speed,
    metricsGeneration: o.metrics,
    ...(o.devMode === undefined ? {} : { devMode: o.devMode }),
    ...(o.enableSleepMode === undefined ? {} : { enableSleepMode: o.enableSleepMode }),
    onLog: (replica, _stream, text) => {
      if (o.logDir !== undefined) {
        let f = files.get(replica)
        if (f === undefined) {
          const path = join(o.logDir, `${replica}.log`)
          f = createWriteStream(path, { flags: 'a' })
          // A log file that cannot be written loses its lines, not the simulator.
          f.on('error', (err) => console.error(`vllm-monitor sim: cannot write ${path}: ${err.message}`))
          files.set(replica, f)
        }
        f.write(`${text}\n`)
      } else if (!o.quiet) process.stdout.write(`${replica.padEnd(4)}| ${text}\n`)
    },
  })
  const urls = server.urls
  console.error(
    `vllm-monitor sim: scenario "${sc.name}" (${sc.description}), speed ${o.speed}x, seed ${o.seed}`,
  )
  for (const [name, url] of Object.entries(urls))
    console.error(
      `  ${name}  ${url}  (vLLM API: /metrics /health /v1/models /v1/completions /v1/chat/completions)`,
    )
  if (server.devMode) {
    console.error(
      `  dev mode: /pause /resume /is_paused /sleep /wake_up /is_sleeping /reset_prefix_cache /server_info` +
        (server.enableSleepMode ? '' : ' (sleep mode off: /sleep answers 500)'),
    )
  }
  console.error(
    `  control ${server.controlUrl}  (/sim/gpus /sim/events /sim/labels /sim/state, POST /sim/faults /sim/restart)`,
  )
  await untilStopped(o.durationSec)
  await server.close()
  await Promise.all([...files.values()].map((f) => new Promise((r) => f.end(r))))
  return 0
}
