/**
 * Turns a trace (recorded, or simulated in-process) into what training and evaluation need: one
 * row per forecastable replica per second, with its feature vector, the baselines' alarms, the
 * detectors' inputs, and the failures that actually started (onsets.ts). Labels are derived from
 * the onsets afterwards, since they need the future.
 *
 * The replay goes through the monitor's own core, so the features seen here are the features
 * the live monitor computes.
 */
import { MonitorCore } from '../monitor/core.js'
import { coreOptionsFromHeader } from '../monitor/replay.js'
import { loadTraceCsv, type TraceRow } from '../sim/arrivals.js'
import { createRng } from '../sim/random.js'
import { runSimulation } from '../sim/run.js'
import { scenario as namedScenario, type ScenarioOptions } from '../sim/scenarios.js'
import type { Checkpoint, TelemetryRecord } from '../telemetry/types.js'
import type { TraceHeader } from '../trace/format.js'
import { readTrace } from '../trace/reader.js'
import { Baselines } from './baselines.js'
import {
  EccHistory,
  HARDWARE_FEATURES,
  hardwareFeatures,
  NETWORK_FEATURES,
  networkFeatures,
} from './detectors.js'
import { FEATURE_COUNT, FeatureExtractor, forecastTargets, isForecastable } from './features.js'
import { type FailureOnset, OnsetTracker, type TimedLabel } from './onsets.js'
import { DEFAULT_SLO, FAILURE_TYPES, FORECAST_STEP_MS, MODEL_OUTPUTS, type SloOptions } from './spec.js'

const NT = FAILURE_TYPES.length
const NH = HARDWARE_FEATURES.length
const NN = NETWORK_FEATURES.length

export interface TraceDataset {
  name: string
  rows: number
  t: Float64Array
  /** Index into `replicas` per row. */
  replica: Uint16Array
  replicas: string[]
  /** rows x FEATURE_COUNT */
  features: Float32Array
  /** rows x FAILURE_TYPES: the static-threshold and predict_linear rules' value / limit (>= 1 fires). */
  threshold: Float32Array
  linear: Float32Array
  /** rows x detector features. */
  hardware: Float32Array
  network: Float32Array
  /** 1 where the replica was serving (forecastable); detection rows after a failure have 0. */
  serving: Uint8Array
  /** rows x FAILURE_TYPES: the failure was under way at this row. */
  ongoing: Uint8Array
  onsets: FailureOnset[]
  /** When the simulator injected a fault, per replica (empty for recorded traces). */
  injections: { replica: string; t: number }[]
  durationMs: number
}

class Grow {
  buf: Float32Array
  n = 0
  constructor(readonly width: number) {
    this.buf = new Float32Array(width * 1024)
  }
  reserve(): number {
    if ((this.n + 1) * this.width > this.buf.length) {
      const b = new Float32Array(this.buf.length * 2)
      b.set(this.buf)
      this.buf = b
    }
    return this.n++ * this.width
  }
  done(): Float32Array {
    return this.buf.slice(0, this.n * this.width)
  }
}

export interface DatasetOptions {
  name: string
  slo?: SloOptions
  header?: TraceHeader | null
}

/** Builds the dataset of one run from its records (time-ordered, as a trace holds them). */
export async function datasetFromRecords(
  records: Iterable<TelemetryRecord> | AsyncIterable<TelemetryRecord>,
  options: DatasetOptions,
): Promise<TraceDataset> {
  const core = new MonitorCore({ ...coreOptionsFromHeader(options.header ?? null) })
  for (const r of options.header?.replicas ?? []) core.addReplica(r.name)
  const b = new Builder(core, options.slo ?? DEFAULT_SLO)
  const step = core.options.checkpointIntervalMs
  let next = 0
  let last = 0
  for await (const rec of records as AsyncIterable<TelemetryRecord>) {
    while (next < rec.t) {
      b.tick(core.tick(next))
      next += step
    }
    if (rec.kind === 'label') b.labels.push(rec as TimedLabel)
    core.push(rec)
    last = rec.t
  }
  while (next <= last) {
    b.tick(core.tick(next))
    next += step
  }
  return b.finish(options.name, last)
}

/** Builds the dataset of a trace file (`.jsonl` or `.jsonl.gz`). */
export async function datasetFromTrace(
  path: string,
  options: Partial<DatasetOptions> = {},
): Promise<TraceDataset> {
  const trace = readTrace(path)
  const it = trace[Symbol.asyncIterator]()
  const first = await it.next()
  const header = trace.header
  const records = {
    async *[Symbol.asyncIterator]() {
      if (!first.done) yield first.value
      for (;;) {
        const n = await it.next()
        if (n.done) return
        yield n.value
      }
    },
  }
  return datasetFromRecords(records, {
    name: options.name ?? path,
    header,
    ...(options.slo ? { slo: options.slo } : {}),
  })
}

/** Simulates a named scenario in-process and builds its dataset (no trace file written). */
export async function datasetFromScenario(
  name: string,
  options: ScenarioOptions & {
    slo?: SloOptions
    durationMs?: number
    /** Move every fault this much later (and run as much longer). */
    faultDelayMs?: number
  } = {},
): Promise<TraceDataset> {
  const sc = namedScenario(name, options)
  const delay = options.faultDelayMs ?? 0
  if (delay > 0) {
    sc.fleet.faults = (sc.fleet.faults ?? []).map((f) => ({ ...f, atMs: f.atMs + delay }))
    sc.durationMs += delay
  }
  const records: TelemetryRecord[] = []
  runSimulation({
    scenario: sc,
    ...(options.durationMs === undefined ? {} : { durationMs: options.durationMs }),
    onRecord: (r) => records.push(r),
  })
  // Log lines and GPU events are stamped as they happen and may precede the sample at the same t.
  records.sort((a, b) => a.t - b.t)
  const header = {
    replicas: [
      ...new Set(records.filter((r) => r.kind === 'engine').map((r) => (r as { replica: string }).replica)),
    ].map((n) => ({ name: n })),
  } as unknown as TraceHeader
  return datasetFromRecords(records, {
    name: `${name}/seed${String(options.seed ?? 1)}`,
    header,
    ...(options.slo ? { slo: options.slo } : {}),
  })
}

class Builder {
  readonly labels: TimedLabel[] = []
  private nextT = 0
  private readonly features = new Grow(FEATURE_COUNT)
  private readonly thr = new Grow(NT)
  private readonly lin = new Grow(NT)
  private readonly hw = new Grow(NH)
  private readonly net = new Grow(NN)
  private readonly on = new Grow(NT)
  private readonly t: number[] = []
  private readonly serving: number[] = []
  private readonly rep: number[] = []
  private readonly replicas: string[] = []
  private readonly onsets: FailureOnset[] = []
  private readonly injections: { replica: string; t: number }[] = []
  private readonly extractor: FeatureExtractor
  private readonly baselines: Baselines
  private readonly tracker: OnsetTracker
  private readonly ecc = new EccHistory()

  constructor(
    private readonly core: MonitorCore,
    slo: SloOptions,
  ) {
    this.extractor = new FeatureExtractor(core.store)
    this.baselines = new Baselines(core.store, slo)
    this.tracker = new OnsetTracker({ slo })
  }

  tick(cp: Checkpoint): void {
    // One row per second: the first checkpoint at or after each whole second (a trace recorded
    // with a checkpoint interval that does not divide a second still gives a row a second).
    if (cp.t < this.nextT) return
    this.nextT = (Math.floor(cp.t / FORECAST_STEP_MS) + 1) * FORECAST_STEP_MS
    const labels = this.labels.splice(0)
    for (const l of labels) if (l.phase === 'injected') this.injections.push({ replica: l.replica, t: l.t })
    this.onsets.push(...this.tracker.observe(cp, labels))
    for (const target of forecastTargets(cp, { includeFailed: true })) {
      const snap = cp.engines.find((e) => e.replica === target.replica)!
      const state = snap.lifecycleState
      this.serving.push(isForecastable(state) && !snap.stale ? 1 : 0)
      const o = this.features.reserve()
      this.extractor.extract(cp.t, target, state, this.features.buf, o)
      const ob = this.thr.reserve()
      this.lin.reserve()
      this.baselines.score(cp.t, target, cp, this.thr.buf, this.lin.buf, ob)
      hardwareFeatures(cp, target, this.hw.buf, this.hw.reserve(), this.ecc)
      networkFeatures(cp, target, this.net.buf, this.net.reserve())
      const oo = this.on.reserve()
      for (let k = 0; k < NT; k++)
        this.on.buf[oo + k] = this.tracker.ongoing(FAILURE_TYPES[k]!, target.replica) ? 1 : 0
      this.t.push(cp.t)
      let ri = this.replicas.indexOf(target.replica)
      if (ri < 0) ri = this.replicas.push(target.replica) - 1
      this.rep.push(ri)
    }
  }

  finish(name: string, lastT: number): TraceDataset {
    void this.core
    return {
      name,
      rows: this.t.length,
      t: Float64Array.from(this.t),
      replica: Uint16Array.from(this.rep),
      replicas: this.replicas,
      features: this.features.done(),
      threshold: this.thr.done(),
      linear: this.lin.done(),
      hardware: this.hw.done(),
      network: this.net.done(),
      ongoing: Uint8Array.from(this.on.done()),
      serving: Uint8Array.from(this.serving),
      onsets: this.onsets,
      injections: this.injections,
      durationMs: lastT,
    }
  }
}

/**
 * Training labels, rows x MODEL_OUTPUTS: 1 when a failure of the head's type starts on the row's
 * replica within the head's horizon, or is under way at the row.
 */
export function labelRows(ds: TraceDataset): Uint8Array {
  const nO = MODEL_OUTPUTS.length
  const y = new Uint8Array(ds.rows * nO)
  const byKey = onsetIndex(ds)
  for (let r = 0; r < ds.rows; r++) {
    const t = ds.t[r]!
    const rep = ds.replicas[ds.replica[r]!]!
    for (let k = 0; k < nO; k++) {
      const out = MODEL_OUTPUTS[k]!
      const ti = FAILURE_TYPES.indexOf(out.failureType)
      let v = ds.ongoing[r * NT + ti]!
      if (v === 0) {
        const times = byKey.get(`${out.failureType}|${rep}`)
        if (times !== undefined) for (const ft of times) if (ft > t && ft <= t + out.horizonS * 1000) v = 1
      }
      y[r * nO + k] = v
    }
  }
  return y
}

/** Detector labels for a failure type: starts within 30 s, or under way. */
export function detectorLabels(ds: TraceDataset, type: (typeof FAILURE_TYPES)[number]): Uint8Array {
  const y = new Uint8Array(ds.rows)
  const ti = FAILURE_TYPES.indexOf(type)
  const byKey = onsetIndex(ds)
  for (let r = 0; r < ds.rows; r++) {
    const t = ds.t[r]!
    let v = ds.ongoing[r * NT + ti]!
    const times = byKey.get(`${type}|${ds.replicas[ds.replica[r]!]}`)
    if (v === 0 && times !== undefined) for (const ft of times) if (ft > t && ft <= t + 30_000) v = 1
    y[r] = v
  }
  return y
}

/**
 * Rows fit to train on: a row that is positive only because of a failure whose fault the
 * simulator injected after the row was taken carries no information (nothing in the data could
 * foretell the injection), so it is left out rather than taught as "this looks like a failure".
 */
export function trainableRows(ds: TraceDataset, labels: Uint8Array): Uint8Array {
  const nO = MODEL_OUTPUTS.length
  const keep = new Uint8Array(ds.rows).fill(1)
  if (ds.injections.length === 0) return keep
  for (let r = 0; r < ds.rows; r++) {
    const t = ds.t[r]!
    const rep = ds.replicas[ds.replica[r]!]!
    for (let k = 0; k < nO && keep[r] === 1; k++) {
      if (labels[r * nO + k] === 0) continue
      const out = MODEL_OUTPUTS[k]!
      if (ds.ongoing[r * NT + FAILURE_TYPES.indexOf(out.failureType)] === 1) continue
      const foreseeable = ds.onsets.some(
        (o) =>
          o.failureType === out.failureType &&
          o.replica === rep &&
          o.t > t &&
          o.t <= t + out.horizonS * 1000 &&
          !ds.injections.some((i) => i.replica === rep && i.t > t && i.t <= o.t),
      )
      if (!foreseeable) keep[r] = 0
    }
  }
  return keep
}

function onsetIndex(ds: TraceDataset): Map<string, number[]> {
  const m = new Map<string, number[]>()
  for (const o of ds.onsets) {
    const k = `${o.failureType}|${o.replica}`
    const a = m.get(k) ?? []
    a.push(o.t)
    m.set(k, a)
  }
  return m
}

/**
 * The trace started at a point fixed by `key` (scenario and seed), wrapped around: the
 * simulator's seed only varies the Poisson background, and without this every run would meet
 * the same bursts at the same instants, which a model learns by heart.
 */
export function rotateRows(rows: readonly TraceRow[], key: number | string): TraceRow[] {
  if (rows.length < 2) return [...rows]
  const first = rows[0]!.atMs
  const span = rows[rows.length - 1]!.atMs - first
  const gap = span / (rows.length - 1)
  const cut = createRng(`trace-rotation/${key}`).int(rows.length)
  const t0 = rows[cut]!.atMs
  const out: TraceRow[] = []
  for (let i = cut; i < rows.length; i++) out.push({ ...rows[i]!, atMs: rows[i]!.atMs - t0 })
  const shift = rows[rows.length - 1]!.atMs - t0 + gap
  for (let i = 0; i < cut; i++) out.push({ ...rows[i]!, atMs: rows[i]!.atMs - first + shift })
  return out
}

/**
 * Benign bursts for training and validation runs: now and then (every 100 s of trace time on
 * average), 15-60 of the segment's own requests arrive within 0.3-1.5 s of trace time. A scenario
 * replays the trace faster than it was recorded (`rateMultiplier`), so in simulated time the
 * bursts come more often and tighter, and they add about a tenth to the requests. Real traffic
 * has such bursts (the trace's later stretches more than its first 60 %): the KV cache jumps by a
 * tenth in a second and drains again. Without them the model meets a fast KV rise only at the start of a step
 * surge that exhausts the cache, and learns that one fast second means exhaustion; the burst's
 * rows, labelled by what happened next, teach it otherwise, and validation thresholds are
 * chosen with them present. Held-out runs replay the trace as it is.
 */
export function withBursts(rows: readonly TraceRow[], key: number | string): TraceRow[] {
  if (rows.length < 10) return [...rows]
  const rng = createRng(`benign-bursts/${key}`)
  const endMs = rows[rows.length - 1]!.atMs
  const out = [...rows]
  for (let t = rng.exponential(1 / BURST_EVERY_MS); t < endMs; t += rng.exponential(1 / BURST_EVERY_MS)) {
    const n = 15 + rng.int(46)
    const spreadMs = rng.uniform(300, 1500)
    for (let i = 0; i < n; i++) {
      const r = rows[rng.int(rows.length)]!
      out.push({
        atMs: t + rng.uniform(0, spreadMs),
        promptTokens: r.promptTokens,
        outputTokens: r.outputTokens,
      })
    }
  }
  return out.sort((a, b) => a.atMs - b.atMs)
}

const BURST_EVERY_MS = 100_000

/** 0-120 s, fixed per scenario and seed. */
export function faultDelayMs(scenario: string, seed: number): number {
  return createRng(`fault-delay/${scenario}/${seed}`).int(121) * 1000
}

export type SuiteSplit = 'train' | 'val' | 'test' | 'all'

/**
 * The part of the request trace a split draws from: training the first 60 % of its time span,
 * validation the next 20 %, test the last 20 %. Splitting by time (forecasting.md §6.2) keeps
 * held-out runs from replaying request sequences the model was trained on.
 */
export function traceSegment(rows: readonly TraceRow[], split: SuiteSplit): TraceRow[] {
  if (split === 'all' || rows.length < 10) return [...rows]
  const first = rows[0]!.atMs
  const span = rows[rows.length - 1]!.atMs - first
  const [lo, hi] = split === 'train' ? [0, 0.6] : split === 'val' ? [0.6, 0.8] : [0.8, 1.0001]
  const part = rows.filter((r) => r.atMs - first >= lo * span && r.atMs - first < hi * span)
  const t0 = part[0]?.atMs ?? first
  return part.map((r) => ({ ...r, atMs: r.atMs - t0 }))
}

/**
 * One run of the standard suite as training and evaluation use it: the scenario over the split's
 * segment of the trace, started at a point that depends on the scenario and the seed, with the faults delayed by an amount
 * fixed per scenario and seed (so a seed is another stretch of traffic and another moment of
 * failure, reproducibly). `bench/forecast-quality` uses the test split.
 */
export function suiteDataset(
  scenario: string,
  seed: number,
  options: { rows?: readonly TraceRow[]; split?: SuiteSplit } = {},
): Promise<TraceDataset> {
  const split = options.split ?? 'all'
  const rows = traceSegment(options.rows ?? loadTraceCsv(), split)
  // Per scenario and seed: runs sharing a seed would otherwise meet the same bursts, and one
  // burst would be scored once per scenario.
  const rotated = rotateRows(rows, `${scenario}/${seed}`)
  return datasetFromScenario(scenario, {
    seed,
    traceRows: split === 'train' || split === 'val' ? withBursts(rotated, `${scenario}/${seed}`) : rotated,
    // Faults strike at a fixed time in each scenario; the features carry traces of the boot for a
    // minute, and a model would learn "a minute after boot, the KV cache fills" from that alone.
    faultDelayMs: faultDelayMs(scenario, seed),
  })
}
