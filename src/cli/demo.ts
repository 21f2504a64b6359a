/**
 * `vllm-monitor demo` (what `npm start` runs): a simulated two-replica vLLM fleet with a scripted
 * incident, served over real HTTP on loopback and watched through the same paths as a real
 * deployment: the HTTP scraper, the log classifier fed the servers' log lines, and the GPU source
 * (the real NVML where present, the simulated GPUs' counters otherwise).
 */
import { probeNvml } from '../gpu/native.js'
import { createMonitor, type VLLMEngineMonitor } from '../monitor/monitor.js'
import { SimFleet } from '../sim/fleet.js'
import { scenario as namedScenario } from '../sim/scenarios.js'
import { SimServer } from '../sim/server.js'
import type { FaultLabel, TimedEvent, Transition } from '../telemetry/types.js'
import { formatEvent, renderDemoView } from './demo-view.js'
import { type LoadCliOptions, scenarioLoad } from './load.js'
import { untilStopped } from './until-stopped.js'

export interface DemoOptions {
  durationSec: number
  json: boolean
  seed: number
  speed: number
  scenario: string
  /** Force plain line output even on a TTY. */
  plain: boolean
  /** Use the host's NVML when present (default true). */
  realGpu: boolean
  load: LoadCliOptions
  /** Forecaster model directory, or 'none' (default: the shipped one). */
  model?: string
}

export async function runDemo(o: DemoOptions): Promise<number> {
  const sc = namedScenario(o.scenario, { seed: o.seed, ...scenarioLoad(o.load) })
  const fleet = new SimFleet({ ...sc.fleet, epochMs: Date.now() })
  const labels: Array<FaultLabel & { t: number }> = []
  fleet.on({ label: (l, t) => labels.push({ ...l, t }) })
  let monitor: VLLMEngineMonitor | null = null
  const server = await SimServer.start({
    fleet,
    speed: o.speed,
    onLog: (replica, _stream, text) => monitor?.logLine(replica, text),
  })
  const nvml = o.realGpu && probeNvml().available
  // The monitor's clock is the fleet's: rates, latencies and hang thresholds read in simulated time.
  const now = () => server.simNow()
  monitor = createMonitor({
    replicas: Object.entries(server.urls).map(([name, url]) => ({ name, url })),
    gpu: nvml ? 'nvml' : { simUrl: server.controlUrl },
    http: { host: '127.0.0.1', port: 0 },
    scrapeIntervalMs: Math.max(20, Math.round(100 / Math.min(o.speed, 5))),
    checkpointIntervalMs: 100,
    now,
    ...(o.model === undefined ? {} : { forecast: { model: o.model === 'none' ? null : o.model } }),
  })
  const m = monitor
  await m.ready
  const tty = process.stdout.isTTY === true && !o.json && !o.plain
  const out = (s: string) => process.stdout.write(`${s}\n`)
  if (!o.json) {
    out(`vllm-monitor demo: scenario "${sc.name}" (${sc.description})`)
    out(
      `  ${fleet.replicas.length} simulated vLLM replicas: ${Object.values(server.urls).join(', ')}  (speed ${o.speed}x)`,
    )
    out(`  monitor: ${m.url ?? '(no HTTP surface)'}/metrics, /api/status, /api/export`)
    out(`  GPUs: ${nvml ? 'this host (NVML)' : 'simulated (no NVIDIA driver here)'}`)
  }
  const transitions: Array<{ replica: string } & Transition> = []
  m.on('transition', (replica, tr) => {
    transitions.push({ replica, ...tr })
    if (!tty && !o.json)
      out(`[${(tr.t / 1000).toFixed(1)}s] ${replica}: ${tr.from} -> ${tr.to}  (${tr.reason})`)
  })
  const forecasts: TimedEvent[] = []
  m.on('event', (e) => {
    if (e.type === 'prediction') forecasts.push(e)
    if (!tty && !o.json && e.type !== 'lifecycle') out(`  ${formatEvent(e, false)}`)
  })
  const render = () => {
    const status = m.getStatus()
    if (o.json) {
      out(JSON.stringify({ t: Math.round(now()), status }))
      return
    }
    if (!tty) return
    const view = renderDemoView(m.getCheckpoint(), status, {
      color: true,
      title: `vllm-monitor demo · ${sc.name}`,
      clockLabel: `t=${(now() / 1000).toFixed(0)}s (${o.speed}x)`,
      width: Math.max(80, (process.stdout.columns ?? 110) - 1),
      groundTruth: labels.map(
        (l) => `${(l.t / 1000).toFixed(1)}s  ${l.replica}  ${l.fault} ${l.phase}: ${l.detail}`,
      ),
    })
    process.stdout.write(`\u001b[H\u001b[2J${view}\n`)
  }
  const timer = setInterval(render, o.json ? 1000 : 250)
  await untilStopped(o.durationSec)
  clearInterval(timer)
  render()
  await m.close()
  await server.close()
  if (!o.json) {
    out('')
    out('Ground truth vs what the monitor saw:')
    for (const l of labels.filter((x) => x.phase !== 'cleared')) {
      out(`  ${(l.t / 1000).toFixed(1).padStart(6)}s  ${l.replica}  ${l.fault} ${l.phase}: ${l.detail}`)
    }
    const firstForecast = new Map<string, TimedEvent>()
    for (const e of forecasts) {
      const key = `${e.replica}|${String(e.data?.failureType)}`
      if (!firstForecast.has(key)) firstForecast.set(key, e)
    }
    // What the monitor said, in time order: its first forecast of each failure, then what it saw.
    const said: Array<{ t: number; line: string }> = [...firstForecast.values()].map((e) => ({
      t: e.t,
      line: `${e.replica}  monitor: ${e.message}`,
    }))
    for (const tr of transitions.filter((x) => x.to === 'DEGRADED' || x.to === 'ERROR'))
      said.push({ t: tr.t, line: `${tr.replica}  monitor: ${tr.from} -> ${tr.to} (${tr.reason})` })
    said.sort((a, b) => a.t - b.t)
    for (const s of said) out(`  ${(s.t / 1000).toFixed(1).padStart(6)}s  ${s.line}`)
    out('At the end:')
    for (const r of m.getStatus().replicas) out(`  ${r.replica}  ${r.lifecycleState}: ${r.reason}`)
  } else {
    out(JSON.stringify({ summary: { labels, transitions } }))
  }
  return 0
}
