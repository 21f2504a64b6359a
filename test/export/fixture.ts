// A fleet caught mid-incident, shared by the export tests: replica r0 serving normally on GPU 0,
// replica r1 DEGRADED (KV cache nearly full, preempting, GPU 1 thermally throttled), a fleet
// roll-up of DEGRADED, a few events and two forecasts. Builders return fresh objects.
import { spawnSync } from 'node:child_process'
import type { MonitorStatus, ReplicaStatus } from '../../src/monitor/status.js'
import type {
  Checkpoint,
  EngineDerived,
  EngineReading,
  EngineSnapshot,
  GpuReading,
  Prediction,
  TimedEvent,
} from '../../src/telemetry/types.js'
import { engineReading } from '../helpers/records.js'

const T = 600_000

function reading(replica: string, over: Partial<EngineReading>): EngineReading {
  return engineReading(replica, {
    modelName: 'meta-llama/Llama-3.1-8B-Instruct',
    requestsRunning: 12,
    requestsWaiting: 0,
    kvCacheUsage: 0.41,
    promptTokensTotal: 4_812_330,
    generationTokensTotal: 1_904_221,
    stepsTotal: 388_102,
    requestsFinishedTotal: 9_211,
    numGpuBlocks: 27_264,
    ttftSecondsSum: 640.2,
    ttftCount: 9_223,
    itlSecondsSum: 21_402.7,
    itlCount: 1_895_010,
    e2eSecondsSum: 41_550.1,
    e2eCount: 9_211,
    queueTimeSecondsSum: 12.4,
    queueTimeCount: 9_223,
    ...over,
  })
}

function pred(
  failureType: Prediction['failureType'],
  probability: number,
  ttf: number | null,
  model: string,
): Prediction {
  return {
    failureType,
    probability,
    timeToFailureS: ttf,
    horizonS: 120,
    target: { replica: 'r1', gpu: 1 },
    evidence: [],
    model,
  }
}

function derived(over: Partial<EngineDerived>): EngineDerived {
  return {
    preemptionsPerSec: 0,
    promptTokensPerSec: 8_120,
    generationTokensPerSec: 1_410,
    stepsPerSec: 118,
    errorsPerSec: 0,
    requestsFinishedPerSec: 11,
    ttftMeanMs: 71,
    itlMeanMs: 11.3,
    e2eMeanMs: 4_480,
    queueTimeMeanMs: 1.2,
    stalledForMs: 0,
    ...over,
  }
}

export function makeEngines(): EngineSnapshot[] {
  return [
    {
      replica: 'r0',
      lifecycleState: 'SERVING',
      since: 42_000,
      reason: 'first request finished',
      reading: reading('r0', {}),
      readingAt: T - 40,
      stale: false,
      derived: derived({}),
    },
    {
      replica: 'r1',
      lifecycleState: 'DEGRADED',
      since: T - 35_000,
      reason: 'KV cache above 95 % with 3.5 preemptions/s',
      reading: reading('r1', {
        requestsRunning: 31,
        requestsWaiting: 17,
        kvCacheUsage: 0.97,
        preemptionsTotal: 412,
        generationTokensTotal: 2_310_775,
        ttftP99Ms: 2_480,
        itlP99Ms: 96.5,
      }),
      readingAt: T - 25,
      stale: false,
      derived: derived({ preemptionsPerSec: 3.5, generationTokensPerSec: 690, stalledForMs: 250 }),
    },
  ]
}

export function makeGpus(): GpuReading[] {
  const h200 = {
    uuid: null,
    name: 'NVIDIA H200',
    lost: false,
    memoryTotalBytes: 150_754_820_096,
    powerLimitWatts: 700,
    eccCorrectedVolatile: 0,
    eccUncorrectedVolatile: 0,
  }
  return [
    {
      ...h200,
      gpu: 0,
      replica: 'r0',
      uuid: 'GPU-5f0c9a1e-7d7b-4c55-9b1e-0b6d5d1f0a01',
      memoryUsedBytes: 135_812_939_776,
      gpuUtilizationPercent: 87,
      powerWatts: 512.4,
      temperatureCelsius: 63,
      smClockMhz: 1980,
      clockEventReasons: 0,
    },
    {
      ...h200,
      gpu: 1,
      replica: 'r1',
      uuid: 'GPU-a2c41d77-3e0b-4e8e-8f51-6b7c2d9e1b02',
      memoryUsedBytes: 141_001_293_824,
      gpuUtilizationPercent: 99,
      powerWatts: 688.9,
      temperatureCelsius: 89,
      smClockMhz: 1410,
      // 0x20 software thermal slowdown | 0x40 hardware thermal slowdown
      clockEventReasons: 0x60,
    },
  ]
}

export function makeEvents(): TimedEvent[] {
  return [
    {
      t: T - 60_000,
      type: 'kv-pressure',
      severity: 'warning',
      replica: 'r1',
      gpu: null,
      message: 'KV cache 91 % full',
    },
    {
      t: T - 35_000,
      type: 'lifecycle',
      severity: 'warning',
      replica: 'r1',
      gpu: null,
      message: 'SERVING -> DEGRADED',
      data: { from: 'SERVING', to: 'DEGRADED' },
    },
    {
      t: T - 2_000,
      type: 'thermal',
      severity: 'critical',
      replica: 'r1',
      gpu: 1,
      message: 'GPU 1 hardware thermal slowdown',
      data: { clockEventReasons: 0x60 },
    },
  ]
}

export function makeCheckpoint(over: Partial<Checkpoint> = {}): Checkpoint {
  return {
    t: T,
    lifecycleState: 'DEGRADED',
    engines: makeEngines(),
    gpus: makeGpus(),
    events: makeEvents(),
    errors: [{ t: T - 35_000, code: 'KV_PRESSURE', message: 'r1: 3.5 preemptions/s' }],
    predictions: [
      pred('kv-exhaustion', 0.82, 45, 'forecaster-v1'),
      pred('kv-exhaustion', 0.61, 60, 'predict_linear'),
      pred('thermal-throttle', 0.35, null, 'forecaster-v1'),
    ],
    ...over,
  }
}

function replicaStatus(e: EngineSnapshot, url: string): ReplicaStatus {
  const r = e.reading!
  return {
    replica: e.replica,
    url,
    lifecycleState: e.lifecycleState,
    reason: e.reason,
    activeRequests: r.requestsRunning,
    waitingRequests: r.requestsWaiting,
    kvCacheUsage: r.kvCacheUsage,
    tokensGenerated: r.generationTokensTotal,
    preemptionsTotal: r.preemptionsTotal,
    generationTokensPerSec: e.derived.generationTokensPerSec,
    avgStepDurationMs: 8.5,
    ttftMeanMs: e.derived.ttftMeanMs,
    itlMeanMs: e.derived.itlMeanMs,
    ttftP99Ms: r.ttftP99Ms,
    itlP99Ms: r.itlP99Ms,
  }
}

export function makeStatus(over: Partial<MonitorStatus> = {}): MonitorStatus {
  const [e0, e1] = makeEngines() as [EngineSnapshot, EngineSnapshot]
  return {
    monitorActive: true,
    lifecycleState: 'DEGRADED',
    activeRequests: 43,
    tokensGenerated: 4_214_996,
    avgStepDurationMs: 8.5,
    mitigationInProgress: true,
    mitigationsTriggered: 2,
    mitigations: [
      { strategy: 'ReduceBatchSize', outcome: 'SUCCESS', count: 2 },
      { strategy: 'RestartNCCL', outcome: 'SKIPPED', count: 1 },
    ],
    predictionAccuracy: 0.875,
    predictiveEnabled: true,
    learningEnabled: false,
    autoMitigate: true,
    uptimeMs: T,
    replicas: [replicaStatus(e0, 'http://10.0.0.5:8000'), replicaStatus(e1, 'http://10.0.0.6:8000')],
    gpus: makeGpus(),
    predictions: makeCheckpoint().predictions,
    labels: {},
    ...over,
  }
}

export interface ParsedSample {
  name: string
  labels: Record<string, string>
  value: number
}

/** Reads the samples of a text exposition (enough of the format for prom-client's output). */
export function parseSamples(text: string): ParsedSample[] {
  const out: ParsedSample[] = []
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (m === null) throw new Error(`not a sample line: ${line}`)
    const labels: Record<string, string> = {}
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[l[1]!] = l[2]!
    }
    out.push({ name: m[1]!, labels, value: Number(m[3]) })
  }
  return out
}

/** The value of the one sample named `name` whose labels include `labels`, or undefined if none. */
export function sampleValue(
  text: string,
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  const found = parseSamples(text).filter(
    (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  )
  if (found.length > 1) throw new Error(`${found.length} samples of ${name} match ${JSON.stringify(labels)}`)
  return found[0]?.value
}

export interface PromtoolResult {
  /** promtool's exit status: 0 clean, 3 lint problems, 1 the text did not parse. */
  status: number | null
  /** One line per lint problem or parse error. */
  problems: string[]
}

/**
 * Runs the real `promtool check metrics` (Debian package `prometheus`) over `text`. Without
 * promtool this throws: the exposition format is only proven by the reference parser, so a
 * machine without it must not pass these tests silently.
 */
export function promtoolCheckMetrics(text: string): PromtoolResult {
  const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8', timeout: 10_000 })
  if (r.error !== undefined) {
    throw new Error(
      `promtool is required to validate the exposition (apt-get install prometheus, or put promtool on PATH): ${r.error.message}`,
    )
  }
  const problems = `${r.stdout}${r.stderr}`.split('\n').filter((l) => l.trim() !== '')
  return { status: r.status, problems }
}
