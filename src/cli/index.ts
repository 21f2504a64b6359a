#!/usr/bin/env node
import { InvalidArgumentError as CliArgError, Command, Option } from 'commander'
import { VllmMonitorError } from '../errors.js'
import { openGpuSource } from '../gpu/source.js'
import { SCENARIO_NAMES } from '../sim/scenarios.js'
import { runDemo } from './demo.js'
import { registerForecast } from './forecast.js'
import { registerGateway } from './gateway.js'
import { addLoadOptions, loadFromCli } from './load.js'
import { registerPrestartupCheck } from './prestartup.js'
import { runRecord } from './record.js'
import { renderGpuTable } from './render.js'
import { runReplay } from './replay.js'
import { registerRun } from './run.js'
import { guardOutput } from './safe-output.js'
import { runSim } from './sim.js'
import { registerWatch } from './watch.js'

const int = (name: string) => (v: string) => {
  const n = Number(v)
  if (!Number.isInteger(n) || n < 0) throw new CliArgError(`${name} must be a non-negative integer`)
  return n
}
const positive = (name: string) => (v: string) => {
  const n = Number(v)
  if (!Number.isFinite(n) || n <= 0) throw new CliArgError(`${name} must be a positive number`)
  return n
}
const scenarioOption = (fallback: string) =>
  new Option('--scenario <name>', 'simulated scenario').choices([...SCENARIO_NAMES]).default(fallback)

// Every command runs long or pipes: a reader that goes away must not crash it (see safe-output.ts).
guardOutput()

const program = new Command()
  .name('vllm-monitor')
  .description('Watches vLLM servers and their GPUs; predicts and mitigates failures.')

const demo = program
  .command('demo', { isDefault: true })
  .description('watch a simulated two-replica vLLM fleet through a scripted incident (no GPU needed)')
  .option('--duration <s>', 'seconds to run', positive('--duration'), 60)
  .option('--json', 'print one JSON status line per second instead of the live view')
  .option('--plain', 'print transitions and events as lines instead of the live view')
  .option('--seed <n>', 'simulator seed', int('--seed'), 1)
  .option('--speed <x>', 'simulated seconds per wall second', positive('--speed'), 5)
  .option('--no-real-gpu', 'use the simulated GPUs even where NVML is present')
  .option(
    '--model <dir>',
    'forecaster model directory (default: the shipped one; "none": the baselines only)',
  )
  .option('--no-mitigate', 'watch and predict only: take no action (to compare with the default)')
  .option('--audit-log <file>', 'append every mitigation decision, action and outcome here (JSON Lines)')
  .option('--learner-state <file>', 'keep what the learner learned here, across runs')
  .addOption(scenarioOption('demo'))
addLoadOptions(demo).action(async (o) => {
  process.exitCode = await runDemo({
    load: loadFromCli(o),
    durationSec: o.duration,
    json: o.json === true,
    plain: o.plain === true,
    seed: o.seed,
    speed: o.speed,
    scenario: o.scenario,
    realGpu: o.realGpu !== false,
    model: o.model,
    mitigate: o.mitigate !== false,
    auditLog: o.auditLog,
    learnerState: o.learnerState,
  })
})

const sim = program
  .command('sim')
  .description('serve a simulated vLLM fleet over HTTP on loopback (or write a trace with --fast --trace)')
  .option('--replicas <n>', "number of replicas (default: the scenario's)", int('--replicas'))
  .option('--port <port>', 'first replica port (0 = any free port)', int('--port'), 8000)
  .option('--control-port <port>', 'control port for /sim/* (0 = any free port)', int('--control-port'), 0)
  .option('--host <host>', 'address to bind', '127.0.0.1')
  .addOption(scenarioOption('steady'))
  .option('--speed <x>', 'simulated seconds per wall second', positive('--speed'), 1)
  .option('--seed <n>', 'simulator seed', int('--seed'), 1)
  .addOption(new Option('--metrics <gen>', 'metric names to expose').choices(['v1', 'v0']).default('v1'))
  .option('--log-dir <dir>', "write each replica's log to DIR/<replica>.log instead of stdout")
  .option('--quiet', 'do not print log lines')
  .option('--duration <s>', 'stop after this many seconds (simulated with --fast)', positive('--duration'))
  .option('--trace <file>', 'with --fast: write the run as a trace (JSON Lines; .gz to compress)')
  .option(
    '--record <file>',
    'write the run, labelled, as a trace at full speed (same as --fast --trace FILE)',
  )
  .option('--fast', 'run in-process as fast as possible instead of serving')
  .option(
    '--dev-mode',
    "serve vLLM's dev endpoints (/pause, /sleep, /reset_prefix_cache...) as VLLM_SERVER_DEV_MODE=1 does",
  )
  .option('--enable-sleep-mode', 'as vllm serve --enable-sleep-mode')
addLoadOptions(sim).action(async (o) => {
  process.exitCode = await runSim({
    load: loadFromCli(o),
    devMode: o.devMode === true ? true : undefined,
    enableSleepMode: o.enableSleepMode === true,
    replicas: o.replicas,
    port: o.port,
    controlPort: o.controlPort,
    host: o.host,
    scenario: o.scenario,
    speed: o.speed,
    seed: o.seed,
    metrics: o.metrics,
    logDir: o.logDir,
    quiet: o.quiet === true,
    durationSec: o.duration,
    trace: o.record ?? o.trace,
    fast: o.fast === true || o.record !== undefined,
  })
})

program
  .command('record')
  .description('watch vLLM servers and write everything the monitor receives to a trace file')
  .requiredOption('--url <url...>', 'vLLM server base URL(s)')
  .requiredOption('--out <file>', 'trace file (JSON Lines; .gz to compress)')
  .option('--duration <s>', 'stop after this many seconds', positive('--duration'))
  .option('--gpu <mode>', "GPU source: auto, nvml, nvidia-smi, none, or a simulator's control URL", 'auto')
  .option('--scrape-interval-ms <ms>', 'scrape period', int('--scrape-interval-ms'), 100)
  .action(async (o) => {
    process.exitCode = await runRecord({
      urls: o.url,
      out: o.out,
      durationSec: o.duration,
      gpu: o.gpu,
      scrapeIntervalMs: o.scrapeIntervalMs,
    })
  })

program
  .command('replay')
  .description('replay a trace through a fresh monitor and print what it concludes')
  .argument('<file>', 'trace file written by `record` or `sim --fast --trace`')
  .option(
    '--speed <x>',
    'pace at x times the recorded time (default: as fast as possible)',
    positive('--speed'),
  )
  .option('--json', 'print every checkpoint as a JSON line')
  .option('--lenient', 'skip malformed lines instead of stopping at the first')
  .action(async (file: string, o) => {
    process.exitCode = await runReplay({
      file,
      speed: o.speed,
      json: o.json === true,
      lenient: o.lenient === true,
    })
  })

program
  .command('gpu')
  .description('show the GPUs through the fastest source available (native NVML, else nvidia-smi)')
  .option('--once', 'print one reading and exit')
  .option('--json', 'print JSON instead of a table')
  .option('--interval-us <us>', 'memory sampling interval in microseconds', int('--interval-us'), 1000)
  .option('--refresh-ms <ms>', 'screen refresh interval', int('--refresh-ms'), 1000)
  .option('--library-path <path>', 'libnvidia-ml to load instead of libnvidia-ml.so.1')
  .option('--mode <mode>', "'auto', 'nvml', 'nvidia-smi' or 'none'", 'auto')
  .action(async (o) => {
    const source = openGpuSource({ mode: o.mode, intervalUs: o.intervalUs, libraryPath: o.libraryPath })
    source.on('event', (e) => console.error(`[${e.kind}] ${e.message}`))
    source.start()
    const print = () => {
      const snapshot = source.snapshot()
      const stats = source.sampler?.stats() ?? null
      if (o.json)
        console.log(JSON.stringify({ status: source.status, devices: source.devices(), snapshot, stats }))
      else console.log(renderGpuTable(source.status, source.devices(), snapshot, stats))
    }
    const firstMs = source.status.mode === 'nvidia-smi' ? 1_500 : 300
    await new Promise((r) => setTimeout(r, firstMs))
    print()
    if (o.once) {
      source.close()
      return
    }
    const timer = setInterval(print, o.refreshMs)
    const stop = () => {
      clearInterval(timer)
      source.close()
    }
    process.once('SIGINT', stop)
    process.once('SIGTERM', stop)
  })

registerPrestartupCheck(program)
registerForecast(program)
registerRun(program)
registerWatch(program)
registerGateway(program)
program.parseAsync().catch((err: unknown) => {
  if (err instanceof VllmMonitorError) {
    console.error(`vllm-monitor: ${err.message} (${err.code})`)
    process.exitCode = 1
    return
  }
  console.error(`vllm-monitor: ${(err as Error)?.message ?? String(err)}`)
  process.exitCode = 1
})
