/**
 * The loop end to end in the simulator: a scenario's fleet behind a simulated gateway, the monitor
 * core watching it, the forecaster predicting on it, and — unless the monitor is off — the
 * orchestrator acting on it through the simulator's actuators, all in simulated time. The same
 * scenario and seed give the same arrivals and faults whatever the mode, so `off`, `runbook` and
 * `learner` runs compare like for like (`bench/mitigation`).
 *
 * The truth is the simulator's: a fault's `failure` label (the instant a perfect monitor would call
 * the failure) and the replica's own phase, not the monitor's judgement of itself.
 */
import { loadModelArtifacts, type ModelArtifacts } from '../forecast/model-io.js'
import { DEFAULT_MODEL_DIR, PredictiveDetector } from '../forecast/predictive.js'
import { DEFAULT_SLO, type SloOptions } from '../forecast/spec.js'
import { MonitorCore } from '../monitor/core.js'
import { simActuators } from '../sim/actuators.js'
import { SimFleet } from '../sim/fleet.js'
import { SimGateway } from '../sim/gateway.js'
import { scenario as namedScenario, type ScenarioOptions } from '../sim/scenarios.js'
import type { FailureType, FaultLabel, FaultType, MonitorEvent } from '../telemetry/types.js'
import { LogLineSource } from '../vllm/log-source.js'
import { ContinuousLearner } from './learner.js'
import { type ActionRecord, MitigationOrchestrator } from './orchestrator.js'
import { SafetyGate } from './safety.js'
import { builtinStrategies } from './strategies/index.js'

/**
 * `off`: nobody acts. `runbook`: the runbook's default strategy for each failure type, always.
 * `learner`: the continuous learner chooses (pass one to carry what it learned across runs).
 */
export type ClosedLoopMode = 'off' | 'runbook' | 'learner'

export interface ClosedLoopOptions extends Pick<ScenarioOptions, 'ratePerReplica' | 'load'> {
  scenario: string
  seed: number
  mode: ClosedLoopMode
  /** Replicas (default 2: rebalancing needs somewhere to send the load). */
  replicas?: number
  /** Simulated ms (default the scenario's). */
  durationMs?: number
  /** For `learner` mode; a fresh one otherwise. */
  learner?: ContinuousLearner
  /** Make every decision for these failure types use this strategy (the oracle runs). */
  force?: Partial<Record<FailureType, string>>
  /** The forecaster's model (default the shipped one; null: the threshold baseline). */
  model?: string | ModelArtifacts | null
  holdout?: number
  /** The strategies the learner chooses from per failure type (default `SIM_CANDIDATES`). */
  candidates?: Partial<Record<FailureType, readonly string[]>>
  slo?: SloOptions
  onEvent?: (t: number, event: MonitorEvent) => void
}

/** Preventable means load- or memory-driven, or a hang a restart clears (issue figures). */
export const PREVENTABLE_FAULTS: readonly FaultType[] = [
  'kv-exhaustion',
  'gpu-oom-spike',
  'gpu-oom-cotenant',
  'memory-leak',
  'thermal-throttle',
  'nccl-hang',
]

/**
 * The strategies that can act in the simulator, per failure type: it has a gateway, control
 * endpoints, a supervisor and co-tenants to end, but no platform to scale (ScaleResources), and
 * the escalation RestartWithSmallerBatch only follows a cap.
 */
export const SIM_CANDIDATES: Readonly<Partial<Record<FailureType, readonly string[]>>> = {
  'kv-exhaustion': ['ReduceBatchSize', 'RebalanceLoad', 'ShedLoad'],
  oom: ['EmergencyGPUMemoryCleanup', 'ReduceBatchSize', 'RebalanceLoad', 'RestartReplica'],
  'thermal-throttle': ['RebalanceLoad', 'ReduceBatchSize'],
  'network-failure': ['RestartNCCL', 'RestartReplica'],
  'slo-violation': ['ShedLoad', 'ReduceBatchSize', 'RebalanceLoad'],
  'queue-overflow': ['ShedLoad', 'ReduceBatchSize', 'RebalanceLoad'],
  'hardware-failure': ['RebalanceLoad'],
}

/** The failure type each failure scenario's fault is (what a strategy is chosen for). */
export const SCENARIO_FAILURE_TYPE: Readonly<Record<string, FailureType>> = {
  'kv-exhaustion': 'kv-exhaustion',
  'kv-surge': 'kv-exhaustion',
  'gpu-oom-spike': 'oom',
  'gpu-oom-cotenant': 'oom',
  'memory-leak': 'oom',
  'thermal-throttle': 'thermal-throttle',
  'nccl-hang': 'network-failure',
  'xid-48': 'hardware-failure',
  'xid-79': 'hardware-failure',
  'engine-death': 'hardware-failure',
  'perf-drift': 'slo-violation',
}

/** A hang counts as recovered when its replica serves again within this long of the hang. */
export const RECOVERY_BOUND_MS = 120_000

export interface FaultOutcome {
  fault: FaultType
  replica: string
  preventable: boolean
  injectedAtMs: number | null
  /** When the failure happened, null when it never did (avoided). */
  failedAtMs: number | null
  /** After the failure, when the replica served again (hangs); null when it did not. */
  recoveredAtMs: number | null
  verdict: 'avoided' | 'recovered' | 'occurred'
}

export interface RequestCounts {
  arrived: number
  ok: number
  /** Failed by their replica (died, restarted, killed with it in flight). */
  failed: number
  /** No replica could take them (connection refused). */
  lost: number
  /** 429 at once (shed, queue full). */
  shed: number
  /** 429 after waiting out the gateway's queue timeout. */
  queueTimeout: number
}

export interface ClosedLoopResult {
  scenario: string
  seed: number
  mode: ClosedLoopMode
  durationMs: number
  faults: FaultOutcome[]
  /**
   * Simulated minutes since the fleet first served in which p99 TTFT (from arrival at the gateway)
   * broke the SLO, a request failed or waited out the queue for a 429, or one still waited for its
   * first token past the SLO.
   */
  sloMinutes: number
  /** Requests that arrived once the fleet served, by how they ended (still running: not counted). */
  requests: RequestCounts
  actions: ActionRecord[]
  wallMs: number
}

let shippedModel: Promise<ModelArtifacts> | null = null

/** Runs one scenario with the loop closed (or open, `off`). */
export async function runClosedLoop(o: ClosedLoopOptions): Promise<ClosedLoopResult> {
  const wall0 = performance.now()
  const sc = namedScenario(o.scenario, {
    seed: o.seed,
    replicas: o.replicas ?? 2,
    ...(o.ratePerReplica === undefined ? {} : { ratePerReplica: o.ratePerReplica }),
    ...(o.load === undefined ? {} : { load: o.load }),
  })
  const durationMs = o.durationMs ?? sc.durationMs
  const slo = o.slo ?? DEFAULT_SLO
  const fleet = new SimFleet(sc.fleet)
  // Requests are counted from the moment every replica first served: a fleet still booting is
  // nobody's SLO, and would add the same losses to every mode.
  let warmMs = Number.POSITIVE_INFINITY
  const requests: RequestCounts = { arrived: 0, ok: 0, failed: 0, lost: 0, shed: 0, queueTimeout: 0 }
  const gateway = new SimGateway({
    onRequest: (q) => {
      if (q.arrivalMs < warmMs) return
      requests.arrived++
      if (q.outcome === 'ok') requests.ok++
      else if (q.outcome === 'shed') requests.shed++
      else if (q.outcome === 'queue-timeout') requests.queueTimeout++
      else if (q.replica === null) requests.lost++
      else requests.failed++
    },
  })
  fleet.attachGateway(gateway)
  const served = new Set<string>()
  const core = new MonitorCore({
    checkpointIntervalMs: 100,
    scrapeIntervalMs: 100,
    staleAfterMs: Number.POSITIVE_INFINITY,
  })
  for (const r of fleet.replicas) core.addReplica(r.name, { scraped: true })
  const labels: Array<FaultLabel & { t: number }> = []
  let logT = 0
  const logs = new LogLineSource(() => logT)
  logs.start((rec) => core.push(rec))
  fleet.on({
    log: (replica, _stream, text, t) => {
      logT = t
      logs.line(replica, text)
    },
    gpuEvent: (event, t) => core.push({ t, kind: 'event', ...event }),
    label: (label, t) => labels.push({ ...label, t }),
    listening: (replica, open) => {
      if (!open || served.has(replica.name)) return
      served.add(replica.name)
      if (served.size === fleet.replicas.length) warmMs = fleet.now
    },
  })
  if (o.model === undefined) shippedModel ??= loadModelArtifacts(DEFAULT_MODEL_DIR)
  const model = o.model === undefined ? await (shippedModel as Promise<ModelArtifacts>) : o.model
  const errors: string[] = []
  const detector = new PredictiveDetector(core.store, {
    model,
    inProcess: true,
    slo,
    onError: (code, message) => errors.push(`${code}: ${message}`),
  })
  await detector.ready
  const now = () => fleet.now
  let orch: MitigationOrchestrator | null = null
  if (o.mode !== 'off') {
    const learner =
      o.mode === 'learner' && o.learner !== undefined
        ? o.learner
        : new ContinuousLearner({
            explore: false,
            seed: o.seed,
            ...(o.force ? { runbook: o.force } : {}),
            now,
          })
    if (learner.strategies().length === 0)
      for (const s of builtinStrategies({ EmergencyGPUMemoryCleanup: { killCotenants: true } }))
        learner.registerStrategy(s.name, s)
    orch = new MitigationOrchestrator({
      learner,
      actuators: simActuators(fleet, gateway),
      safety: new SafetyGate({ now }),
      slo,
      now,
      seed: o.seed,
      candidates: (type) => (o.candidates ?? SIM_CANDIDATES)[type] ?? [],
      ...(o.holdout === undefined ? {} : { holdout: o.holdout }),
      emit: (e) => {
        core.push({ t: fleet.now, kind: 'event', ...e })
        o.onEvent?.(fleet.now, e)
      },
      reportError: (code, message) => errors.push(`${code}: ${message}`),
      reportOutcome: (r) => detector.reportOutcome(r),
    })
  }
  fleet.start()
  try {
    for (let t = 0; t <= durationMs; t += 100) {
      fleet.advanceTo(t)
      for (const reading of fleet.engineReadings()) core.push({ t, kind: 'engine', ...reading })
      for (const reading of fleet.gpuReadings()) core.push({ t, kind: 'gpu', ...reading })
      const cp = core.tick(t)
      if (t % 1000 !== 0) continue
      const preds = await detector.analyzeCheckpoint(cp)
      core.predictions = preds
      if (orch !== null) {
        const alarms = detector.alarms(preds)
        for (const a of alarms) if (o.onEvent && t % 10_000 === 0) o.onEvent(t, alarmEvent(a))
        orch.observe(cp, preds, alarms)
        // Let actions run their next steps (they await actuators that move in simulated time).
        await new Promise<void>((r) => setImmediate(r))
      }
    }
  } finally {
    await orch?.close()
    await detector.close()
    logs.stop()
  }
  return {
    scenario: sc.name,
    seed: o.seed,
    mode: o.mode,
    durationMs,
    faults: faultOutcomes(labels, fleet),
    sloMinutes: gateway.sloMinutes(
      slo.ttftP99Ms,
      undefined,
      Number.isFinite(warmMs) ? { fromMs: warmMs } : {},
    ),
    requests,
    actions: orch === null ? [] : [...orch.actions()],
    wallMs: performance.now() - wall0,
  }
}

function alarmEvent(a: {
  failureType: string
  probability: number
  target: { replica: string | null }
}): MonitorEvent {
  return {
    type: 'prediction',
    severity: 'warning',
    replica: a.target.replica,
    gpu: null,
    message: `${a.failureType} p=${a.probability.toFixed(2)}`,
  }
}

/** Per injected fault: did its failure happen, and did the replica serve again after it? */
function faultOutcomes(labels: ReadonlyArray<FaultLabel & { t: number }>, fleet: SimFleet): FaultOutcome[] {
  const out: FaultOutcome[] = []
  for (const inj of labels) {
    if (inj.phase !== 'injected') continue
    const fail = labels.find(
      (l) => l.phase === 'failure' && l.fault === inj.fault && l.replica === inj.replica && l.t >= inj.t,
    )
    const failedAtMs = fail?.t ?? null
    const replica = fleet.replicas.find((r) => r.name === inj.replica)
    let recoveredAtMs: number | null = null
    if (failedAtMs !== null && replica !== undefined && replica.phase === 'serving') {
      // Served again after the failure: the engine that serves now started after it.
      if (replica.servingSinceMs > failedAtMs) recoveredAtMs = replica.servingSinceMs
    }
    const recovered =
      inj.fault === 'nccl-hang' &&
      recoveredAtMs !== null &&
      failedAtMs !== null &&
      recoveredAtMs - failedAtMs <= RECOVERY_BOUND_MS
    out.push({
      fault: inj.fault,
      replica: inj.replica,
      preventable: PREVENTABLE_FAULTS.includes(inj.fault),
      injectedAtMs: inj.t,
      failedAtMs,
      recoveredAtMs,
      verdict: failedAtMs === null ? 'avoided' : recovered ? 'recovered' : 'occurred',
    })
  }
  return out
}
