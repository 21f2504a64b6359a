/**
 * Runs a simulated fleet in-process, as fast as the CPU allows, and emits what a monitor of it
 * would record: engine readings (what `/metrics` + `/health` say) and GPU readings every
 * `sampleIntervalMs`, GPU events and classified log lines as they happen, and the ground-truth
 * labels. This is how training data and test traces are made.
 */
import type { TelemetryRecord } from '../telemetry/types.js'
import { TraceWriter } from '../trace/writer.js'
import { LogLineSource } from '../vllm/log-source.js'
import { SimFleet } from './fleet.js'
import type { LogStream } from './logs.js'
import { scenario as namedScenario, type Scenario, type ScenarioOptions } from './scenarios.js'

export interface SimulationOptions extends ScenarioOptions {
  /** A scenario name or a built scenario. */
  scenario: string | Scenario
  /** Simulated ms; default the scenario's own duration. */
  durationMs?: number
  sampleIntervalMs?: number
  onRecord?: (record: TelemetryRecord) => void
  onLog?: (replica: string, stream: LogStream, text: string, t: number) => void
}

export interface SimulationResult {
  scenario: string
  durationMs: number
  records: number
  wallMs: number
  fleet: SimFleet
}

export function runSimulation(options: SimulationOptions): SimulationResult {
  const sc =
    typeof options.scenario === 'string' ? namedScenario(options.scenario, options) : options.scenario
  const fleet = new SimFleet(sc.fleet)
  const durationMs = options.durationMs ?? sc.durationMs
  const step = options.sampleIntervalMs ?? 100
  let records = 0
  const emit = (r: TelemetryRecord) => {
    records++
    options.onRecord?.(r)
  }
  let logT = 0
  const logs = new LogLineSource(() => logT)
  logs.start(emit)
  fleet.on({
    log: (replica, stream, text, t) => {
      logT = t
      options.onLog?.(replica, stream, text, t)
      logs.line(replica, text)
    },
    gpuEvent: (event, t) => emit({ t, kind: 'event', ...event }),
    label: (label, t) => emit({ t, kind: 'label', ...label }),
  })
  const wall0 = performance.now()
  fleet.start()
  for (let t = 0; t <= durationMs; t += step) {
    fleet.advanceTo(t)
    for (const reading of fleet.engineReadings()) emit({ t, kind: 'engine', ...reading })
    for (const reading of fleet.gpuReadings()) emit({ t, kind: 'gpu', ...reading })
  }
  return { scenario: sc.name, durationMs, records, wallMs: performance.now() - wall0, fleet }
}

/** Runs a scenario and writes its trace to `path` (`.gz` for gzip). */
export async function writeSimulationTrace(
  path: string,
  options: SimulationOptions,
): Promise<SimulationResult> {
  const sc =
    typeof options.scenario === 'string' ? namedScenario(options.scenario, options) : options.scenario
  const probe = new SimFleet({ ...sc.fleet, arrivals: null })
  const writer = new TraceWriter(path, {
    header: {
      source: 'sim',
      scenario: sc.name,
      ...(typeof options.seed === 'number' ? { seed: options.seed } : {}),
      replicas: probe.replicas.map((r) => ({ name: r.name })),
      gpus: probe.gpus.map((g) => ({
        gpu: g.index,
        name: g.profile.name,
        uuid: g.uuid,
        replica: g.replica,
        memoryTotalBytes: g.profile.memoryTotalBytes,
      })),
      meta: {
        description: sc.description,
        faults: sc.faults,
        sampleIntervalMs: options.sampleIntervalMs ?? 100,
      },
    },
  })
  try {
    return runSimulation({ ...options, scenario: sc, onRecord: (r) => writer.write(r) })
  } finally {
    await writer.close()
  }
}
