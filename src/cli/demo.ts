/**
 * `vllm-monitor demo` (what `npm start` runs): a simulated two-replica vLLM fleet with a scripted
 * incident, served over real HTTP on loopback and watched through the same paths as a real
 * deployment: the HTTP scraper, the log classifier fed the servers' log lines, and the GPU source
 * (the real NVML where present, the simulated GPUs' counters otherwise). The fleet's load reaches
 * it through a simulated gateway, whose levers (caps, weights, shedding) and the simulator's
 * (control endpoints, restarts, co-tenants) are the monitor's actuators: unless `--no-mitigate`,
 * the monitor acts on its own forecasts, judges what it did, and says what its learner recommends.
 */
import { probeNvml } from '../gpu/native.js'
import { contextKey, describeContext, type LearnerFeatures } from '../mitigation/learner.js'
import type { ActionRecord } from '../mitigation/orchestrator.js'
import { builtinStrategies } from '../mitigation/strategies/index.js'
import { createMonitor, type VLLMEngineMonitor } from '../monitor/monitor.js'
import { SimFleet } from '../sim/fleet.js'
import { SimGateway, simActuators } from '../sim/gateway.js'
import { scenario as namedScenario } from '../sim/scenarios.js'
import { SimServer } from '../sim/server.js'
import type { Checkpoint, FailureType, FaultLabel, TimedEvent, Transition } from '../telemetry/types.js'
import {
  formatEvent,
  type IncidentRecommendation,
  MITIGATION_EVENT_TYPES,
  recommendationLine,
  renderDemoView,
  renderIncidentSummary,
} from './demo-view.js'
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
  /** Act on the forecasts (default true; `--no-mitigate` watches only). */
  mitigate?: boolean
  /** Append every decision, action and outcome here (JSON Lines). */
  auditLog?: string
  /** Keep what the learner learned here, across runs. */
  learnerState?: string
}

export async function runDemo(o: DemoOptions): Promise<number> {
  const sc = namedScenario(o.scenario, { seed: o.seed, ...scenarioLoad(o.load) })
  const fleet = new SimFleet({ ...sc.fleet, epochMs: Date.now() })
  // The fleet's own arrivals go through the gateway, mitigating or not, so `--no-mitigate` replays
  // the same requests; the servers' HTTP API is for the scraper and the probes.
  const gateway = new SimGateway()
  fleet.attachGateway(gateway)
  const actuators = simActuators(fleet, gateway)
  const mitigate = o.mitigate !== false
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
    autoMitigate: mitigate,
    mitigation: {
      actuators,
      // As runClosedLoop: the simulated co-tenant may be ended (a real one is the operator's call).
      strategies: builtinStrategies({ EmergencyGPUMemoryCleanup: { killCotenants: true } }),
      // One run teaches too little to experiment on: play the runbook, the same every run.
      explore: false,
      ...(o.auditLog === undefined ? {} : { auditLog: o.auditLog }),
      ...(o.learnerState === undefined ? {} : { learnerState: o.learnerState }),
    },
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
    out(
      `  mitigation: ${mitigate ? 'on (gateway caps, weights, shedding; control endpoints; restarts; co-tenants)' : 'off (--no-mitigate)'}`,
    )
  }
  const transitions: Array<{ replica: string } & Transition> = []
  m.on('transition', (replica, tr) => {
    transitions.push({ replica, ...tr })
    if (!tty && !o.json)
      out(`[${(tr.t / 1000).toFixed(1)}s] ${replica}: ${tr.from} -> ${tr.to}  (${tr.reason})`)
  })
  const forecasts: TimedEvent[] = []
  const mitigations: TimedEvent[] = []
  // The learner's context at each replica's first alarm of a type, for its recommendation.
  const contexts = new Map<string, Promise<Partial<LearnerFeatures>>>()
  const growth = new GrowthTracker()
  m.on('checkpoint', (cp) => growth.observe(cp))
  m.on('event', (e) => {
    if (e.type === 'prediction') {
      forecasts.push(e)
      const key = `${e.replica}|${String(e.data?.failureType)}`
      const cp = m.getCheckpoint()
      if (e.replica !== null && cp !== null && !contexts.has(key))
        contexts.set(key, featuresAt(cp, e, growth, actuators.processes))
    }
    if (MITIGATION_EVENT_TYPES.includes(e.type)) mitigations.push(e)
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
      mitigations,
    })
    process.stdout.write(`\u001b[H\u001b[2J${view}\n`)
  }
  const timer = setInterval(render, o.json ? 1000 : 250)
  await untilStopped(o.durationSec)
  clearInterval(timer)
  render()
  const endT = now()
  await m.close()
  await server.close()
  // After close: it waits for the actions still running.
  const counts = m.mitigation?.orchestrator?.triggered() ?? []
  const actions: ActionRecord[] = [...(m.mitigation?.orchestrator?.actions() ?? [])]
  const learner = m.continuousLearner
  const recommendations: IncidentRecommendation[] = []
  if (learner !== null) {
    for (const [key, features] of contexts) {
      const [replica = '', failureType] = key.split('|') as [string, FailureType]
      // The context the orchestrator decided in, where it acted; the one at the alarm otherwise.
      const acted = actions.find((a) => a.replica === replica && a.failureType === failureType)
      const metrics = (acted as { features?: LearnerFeatures } | undefined)?.features ?? (await features)
      const [recommendation] = learner.getLearningRecommendations({ replica }, [failureType], metrics)
      if (recommendation === undefined) continue
      const context = describeContext(contextKey(failureType, metrics))
      recommendations.push({ replica, failureType, context, recommendation })
    }
  }
  const rules = learner?.rules().map((r) => r.text) ?? []
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
    out('')
    for (const line of renderIncidentSummary({
      labels,
      predictions: forecasts,
      actions,
      mitigate,
      counts,
      recommendations,
      rules,
      endT,
    }))
      out(line)
    out('At the end:')
    for (const r of m.getStatus().replicas) out(`  ${r.replica}  ${r.lifecycleState}: ${r.reason}`)
  } else {
    out(
      JSON.stringify({
        summary: {
          labels,
          transitions,
          predictions: forecasts,
          mitigation: {
            enabled: mitigate,
            counts,
            actions: actions.map((a) => ({
              t: a.t,
              replica: a.replica,
              failureType: a.failureType,
              strategy: a.strategy,
              basis: a.basis,
              outcome: a.result?.outcome ?? null,
              detail: a.result?.detail ?? null,
              judgement: a.judgement,
            })),
            recommendations: recommendations.map((r) => ({ ...r, text: recommendationLine(r) })),
            rules,
          },
        },
      }),
    )
  }
  return 0
}

/** Worst-GPU memory growth per replica over at least 5 s, as the orchestrator measures it. */
class GrowthTracker {
  readonly #last = new Map<string, { t: number; used: number; growth: number | null }>()
  observe(cp: Checkpoint): void {
    for (const g of cp.gpus) {
      if (g.replica === null || g.memoryUsedBytes === null) continue
      const key = `${g.replica}|${g.gpu}`
      const prev = this.#last.get(key)
      if (prev === undefined) this.#last.set(key, { t: cp.t, used: g.memoryUsedBytes, growth: null })
      else if (cp.t - prev.t >= 5_000)
        this.#last.set(key, {
          t: cp.t,
          used: g.memoryUsedBytes,
          growth: ((g.memoryUsedBytes - prev.used) * 1000) / (cp.t - prev.t),
        })
    }
  }
  of(replica: string): number | null {
    let worst: number | null = null
    for (const [key, v] of this.#last)
      if (key.startsWith(`${replica}|`) && v.growth !== null && (worst === null || v.growth > worst))
        worst = v.growth
    return worst
  }
}

/** The learner's features for `alarm`'s replica in `cp` (the orchestrator's, from the monitor's side). */
async function featuresAt(
  cp: Checkpoint,
  alarm: TimedEvent,
  growth: GrowthTracker,
  processes: ReturnType<typeof simActuators>['processes'],
): Promise<Partial<LearnerFeatures>> {
  const replica = alarm.replica as string
  const r = cp.engines.find((e) => e.replica === replica)?.reading ?? null
  let memoryUsedFraction: number | null = null
  for (const g of cp.gpus) {
    if (g.replica !== replica || g.memoryUsedBytes === null || !g.memoryTotalBytes) continue
    memoryUsedFraction = Math.max(memoryUsedFraction ?? 0, g.memoryUsedBytes / g.memoryTotalBytes)
  }
  // KV room on the other replicas that serve with no queue, as the orchestrator counts headroom.
  let room = 0
  let others = 0
  for (const x of cp.engines) {
    if (x.replica === replica || (x.lifecycleState !== 'SERVING' && x.lifecycleState !== 'DEGRADED')) continue
    others++
    if (x.reading === null || x.stale || (x.reading.requestsWaiting ?? 0) > 0) continue
    room += Math.max(0, 1 - (x.reading.kvCacheUsage ?? 1))
  }
  const cotenants = (await processes?.cotenants(replica).catch(() => null)) ?? null
  const d = alarm.data ?? {}
  return {
    kvCacheUsage: r?.kvCacheUsage ?? null,
    requestsWaiting: r?.requestsWaiting ?? null,
    requestsRunning: r?.requestsRunning ?? null,
    memoryUsedFraction,
    memoryGrowthBytesPerSec: growth.of(replica),
    cotenantMemoryBytes: cotenants?.reduce((s, p) => s + (p.memoryUsedBytes ?? 0), 0) ?? null,
    fleetHeadroom: others === 0 ? 0 : room / others,
    probability: typeof d.probability === 'number' ? d.probability : null,
    timeToFailureS: typeof d.timeToFailureS === 'number' ? d.timeToFailureS : null,
  }
}
