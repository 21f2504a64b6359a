/**
 * The live terminal view of `vllm-monitor demo` (and `watch`-style commands): fleet state,
 * per-replica load and KV usage, GPUs, and the newest events, predictions and actions.
 * Pure: a checkpoint and a status in, lines of text out.
 */
import { FAULT_FAILURE_TYPE } from '../forecast/onsets.js'
import type { Recommendation } from '../mitigation/learner.js'
import type { ActionRecord } from '../mitigation/orchestrator.js'
import { DEFAULT_JUDGE_WINDOW_MS } from '../mitigation/outcome.js'
import type { MonitorStatus } from '../monitor/status.js'
import type {
  Checkpoint,
  FailureType,
  FaultLabel,
  LifecycleState,
  Prediction,
  TimedEvent,
} from '../telemetry/types.js'

const ESC = '\u001b['
const COLORS: Record<LifecycleState, string> = {
  NOT_STARTED: '90',
  INITIALIZING: '36',
  LOADING_MODEL: '36',
  READY: '36',
  SERVING: '32',
  DEGRADED: '33',
  ERROR: '31',
  SHUTTING_DOWN: '35',
}

export interface ViewOptions {
  color: boolean
  title: string
  /** Simulated (or monitor) seconds shown in the header. */
  clockLabel: string
  width?: number
  /** Simulator ground truth to show beside what the monitor concluded (the demo only). */
  groundTruth?: string[]
  /** Every mitigation action and judgement so far (default: those still among the checkpoint's events). */
  mitigations?: readonly TimedEvent[]
}

/** The mitigation side's events: an action taken, and its judgement after the window. */
export const MITIGATION_EVENT_TYPES: readonly string[] = ['mitigation', 'mitigation-outcome']

function paint(on: boolean, code: string, text: string): string {
  return on ? `${ESC}${code}m${text}${ESC}0m` : text
}

function bar(fraction: number | null, width: number): string {
  if (fraction === null || !Number.isFinite(fraction)) return `[${' '.repeat(width)}]`
  const n = Math.max(0, Math.min(width, Math.round(fraction * width)))
  return `[${'#'.repeat(n)}${'.'.repeat(width - n)}]`
}

function num(v: number | null | undefined, digits = 0, unit = ''): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return '-'
  return `${v.toFixed(digits)}${unit}`
}

function pad(s: string, n: number): string {
  return s.length >= n ? s.slice(0, n) : s + ' '.repeat(n - s.length)
}

export function renderDemoView(cp: Checkpoint | null, status: MonitorStatus, o: ViewOptions): string {
  const c = o.color
  const width = o.width ?? 110
  const lines: string[] = []
  const fleet = status.lifecycleState
  lines.push(
    `${paint(c, '1', o.title)}  ${o.clockLabel}  fleet ${paint(c, COLORS[fleet], fleet)}  ` +
      `running ${num(status.activeRequests)}  tokens ${num(status.tokensGenerated)}`,
  )
  lines.push('')
  lines.push(
    paint(
      c,
      '2',
      `${pad('replica', 8)}${pad('state', 14)}${pad('run', 6)}${pad('wait', 7)}${pad('KV cache', 21)}` +
        `${pad('preempt/s', 10)}${pad('gen tok/s', 10)}${pad('TTFT p99', 10)}${pad('ITL p99', 9)}`,
    ),
  )
  for (const e of cp?.engines ?? []) {
    const r = e.reading
    const d = e.derived
    const kv = r?.kvCacheUsage ?? null
    lines.push(
      `${pad(e.replica, 8)}${paint(c, COLORS[e.lifecycleState], pad(e.lifecycleState, 14))}` +
        `${pad(num(r?.requestsRunning), 6)}${pad(num(r?.requestsWaiting), 7)}` +
        `${pad(`${bar(kv, 12)} ${num(kv === null ? null : kv * 100, 0, '%')}`, 21)}` +
        `${pad(num(d.preemptionsPerSec, 1), 10)}${pad(num(d.generationTokensPerSec, 0), 10)}` +
        // p99 over the scraper's window (60 s); the interval mean where no window exists yet.
        `${pad(num(r?.ttftP99Ms ?? d.ttftMeanMs, 0, 'ms'), 10)}${pad(num(r?.itlP99Ms ?? d.itlMeanMs, 1, 'ms'), 9)}`,
    )
    lines.push(paint(c, '2', `        ${e.reason}`.slice(0, width)))
  }
  lines.push('')
  lines.push(
    paint(
      c,
      '2',
      `${pad('gpu', 5)}${pad('replica', 8)}${pad('memory', 30)}${pad('util', 6)}${pad('power', 9)}` +
        `${pad('temp', 7)}${pad('SM clock', 10)}throttle`,
    ),
  )
  for (const g of cp?.gpus ?? []) {
    if (g.lost) {
      lines.push(
        `${pad(String(g.gpu), 5)}${pad(g.replica ?? '-', 8)}${paint(c, '31', 'LOST (fell off the bus)')}`,
      )
      continue
    }
    const used = g.memoryUsedBytes
    const total = g.memoryTotalBytes
    const frac = used !== null && total ? used / total : null
    const mem = `${bar(frac, 12)} ${num(used === null ? null : used / 2 ** 30, 1)}/${num(total ? total / 2 ** 30 : null, 0)} GiB`
    const reasons = g.clockEventReasons ?? 0
    const throttle = [
      reasons & 0x4 ? 'power-cap' : '',
      reasons & 0x20 ? paint(c, '33', 'SW-thermal') : '',
      reasons & 0x40 ? paint(c, '31', 'HW-thermal') : '',
      reasons & 0x8 ? paint(c, '31', 'HW-slowdown') : '',
    ]
      .filter((x) => x !== '')
      .join(',')
    lines.push(
      `${pad(String(g.gpu), 5)}${pad(g.replica ?? '-', 8)}${pad(mem, 30)}${pad(num(g.gpuUtilizationPercent, 0, '%'), 6)}` +
        `${pad(num(g.powerWatts, 0, ' W'), 9)}${pad(num(g.temperatureCelsius, 0, ' C'), 7)}` +
        `${pad(num(g.smClockMhz, 0, ' MHz'), 10)}${throttle || '-'}`,
    )
  }
  lines.push('')
  const preds = status.predictions
  lines.push(
    paint(c, '1', 'predictions  ') +
      (preds.length === 0
        ? paint(c, '2', status.predictiveEnabled ? 'none above threshold' : 'off')
        : topPredictions(preds)
            .map(
              (p) =>
                `${p.target.replica ?? '*'} ${p.failureType} ${(p.probability * 100).toFixed(0)}%` +
                (p.timeToFailureS === null ? ` <${p.horizonS}s` : ` ~${p.timeToFailureS}s`),
            )
            .join('  ') ||
          paint(
            c,
            '2',
            `all below 30% (${preds.find((p) => p.model !== 'detector')?.model ?? 'detectors'})`,
          )),
  )
  lines.push(
    paint(c, '1', 'actions      ') +
      (status.autoMitigate
        ? status.mitigations.length === 0
          ? paint(c, '2', 'none yet')
          : `${formatMitigationCounts(status.mitigations)}${status.mitigationInProgress ? paint(c, '2', '  (in progress)') : ''}`
        : paint(c, '2', 'auto-mitigation off')),
  )
  const acted = (
    o.mitigations ?? (cp?.events ?? []).filter((e) => MITIGATION_EVENT_TYPES.includes(e.type))
  ).slice(-4)
  for (const e of acted) lines.push(`  ${formatEvent(e, c)}`.slice(0, width + 20))
  if (o.groundTruth !== undefined) {
    lines.push('')
    lines.push(paint(c, '1', 'ground truth (simulator)'))
    if (o.groundTruth.length === 0) lines.push(paint(c, '2', '  no fault injected yet'))
    for (const g of o.groundTruth.slice(-4)) lines.push(`  ${g}`.slice(0, width))
  }
  lines.push('')
  lines.push(paint(c, '1', 'events'))
  const events = (cp?.events ?? []).filter((e) => e.type !== 'lifecycle-hint').slice(-10)
  for (const e of events) lines.push(formatEvent(e, c).slice(0, width + 20))
  return lines.join('\n')
}

/** Mitigation events stand out from what the monitor saw: an upper-case label, their own colour. */
function eventLabel(e: TimedEvent): { label: string; colour: string } | null {
  if (e.type === 'mitigation')
    return { label: 'MITIGATION', colour: e.data?.outcome === 'FAILURE' ? '1;31' : '1;35' }
  if (e.type === 'mitigation-outcome')
    return { label: 'JUDGEMENT', colour: e.data?.verdict === 'occurred' ? '1;31' : '1;32' }
  return null
}

export function formatEvent(e: TimedEvent, color: boolean): string {
  const sev = e.severity === 'critical' ? '31' : e.severity === 'warning' ? '33' : '2'
  const where = e.replica ?? (e.gpu !== null ? `gpu${e.gpu}` : '-')
  const own = eventLabel(e)
  const label = paint(color, own?.colour ?? sev, pad(own?.label ?? e.type, 16))
  return `${pad(`${(e.t / 1000).toFixed(1)}s`, 9)}${pad(where, 6)}${label}${e.message}`
}

/** "ReduceBatchSize SUCCESS 1, EmergencyGPUMemoryCleanup SUCCESS 1". */
export function formatMitigationCounts(
  counts: ReadonlyArray<{ strategy: string; outcome: string; count: number }>,
): string {
  return counts.map((m) => `${m.strategy} ${m.outcome} ${m.count}`).join(', ')
}

/** Per replica and failure type the longest-horizon prediction, the likeliest four at >= 30 %. */
function topPredictions(preds: readonly Prediction[]): Prediction[] {
  const best = new Map<string, Prediction>()
  for (const p of preds) {
    const key = `${p.target.replica}|${p.failureType}`
    const prev = best.get(key)
    if (prev === undefined || p.horizonS > prev.horizonS) best.set(key, p)
  }
  return [...best.values()]
    .filter((p) => p.probability >= 0.3)
    .sort((a, b) => b.probability - a.probability)
    .slice(0, 4)
}

/** The learner's recommendation for one replica and failure type, and its context in words. */
export interface IncidentRecommendation {
  replica: string
  failureType: FailureType
  context: string
  recommendation: Recommendation
}

/** What the demo saw, did and learned: the input of `renderIncidentSummary`. */
export interface IncidentInput {
  /** The simulator's fault labels (the ground truth). */
  labels: ReadonlyArray<FaultLabel & { t: number }>
  /** The monitor's `prediction` events (alarm starts); the first per replica and failure type counts. */
  predictions: readonly TimedEvent[]
  actions: readonly ActionRecord[]
  /** False under `--no-mitigate`. */
  mitigate: boolean
  counts: ReadonlyArray<{ strategy: string; outcome: string; count: number }>
  recommendations: readonly IncidentRecommendation[]
  /** `learner.rules()` in words. */
  rules: readonly string[]
  /** Monitor ms at the end of the run. */
  endT: number
}

const secs = (ms: number) => `${(ms / 1000).toFixed(1)}s`
const step = (what: string, t: number | null, text: string) =>
  `    ${pad(what, 10)}${(t === null ? '-' : secs(t)).padStart(8)}  ${text}`

/** A fault's `failure` label as the forecaster's failure type (`gpu-oom-cotenant` is an `oom`). */
function failureTypeOf(label: FaultLabel): string {
  return FAULT_FAILURE_TYPE[label.fault] ?? label.fault
}

/**
 * Per replica and failure type, in the order they first showed: what was predicted (and how long
 * before the failure), what was done, how it was judged, what the simulator says happened, and
 * what the learner recommends; then the counts and the rules learned so far.
 */
export function renderIncidentSummary(x: IncidentInput): string[] {
  const groups = new Map<string, { replica: string; failureType: string; first: number }>()
  const note = (replica: string, failureType: string, t: number) => {
    const key = `${replica}|${failureType}`
    const g = groups.get(key)
    if (g === undefined) groups.set(key, { replica, failureType, first: t })
    else g.first = Math.min(g.first, t)
  }
  for (const p of x.predictions) note(p.replica ?? '*', String(p.data?.failureType), p.t)
  for (const a of x.actions) note(a.replica, a.failureType, a.t)
  for (const l of x.labels) if (l.phase !== 'cleared') note(l.replica, failureTypeOf(l), l.t)
  const lines = ['Incident: predicted -> mitigated -> judged, against the ground truth']
  for (const g of [...groups.values()].sort((a, b) => a.first - b.first)) {
    const mine = (r: { replica: string | null }) => (r.replica ?? '*') === g.replica
    const labels = x.labels.filter((l) => mine(l) && failureTypeOf(l) === g.failureType)
    const failure = labels.find((l) => l.phase === 'failure') ?? null
    const alarm =
      x.predictions
        .filter((p) => mine(p) && p.data?.failureType === g.failureType)
        .sort((a, b) => a.t - b.t)[0] ?? null
    lines.push(`  ${g.replica} ${g.failureType}`)
    lines.push(predictedLine(alarm, failure))
    const actions = x.actions.filter((a) => a.replica === g.replica && a.failureType === g.failureType)
    if (actions.length === 0)
      lines.push(step('mitigated', null, x.mitigate ? 'no action' : 'auto-mitigation off (--no-mitigate)'))
    for (const a of actions) lines.push(...actionLines(a))
    lines.push(...truthLines(g, labels, x.endT))
    const rec = x.recommendations.find((r) => r.replica === g.replica && r.failureType === g.failureType)
    if (rec !== undefined) lines.push(`    ${recommendationLine(rec)}`)
  }
  if (groups.size === 0) lines.push('  nothing predicted, done or injected')
  lines.push(
    `mitigations: ${x.mitigate ? (x.counts.length === 0 ? 'none' : formatMitigationCounts(x.counts)) : 'off'}`,
  )
  if (x.rules.length === 0)
    lines.push(
      'learned rules: none yet (each needs several judged trials in one context; --learner-state keeps them across runs)',
    )
  else lines.push('learned rules:', ...x.rules.map((r) => `  ${r}`))
  return lines
}

function predictedLine(alarm: TimedEvent | null, failure: { t: number } | null): string {
  if (alarm === null)
    return step('predicted', null, failure === null ? 'not predicted' : 'not predicted before the failure')
  const d = alarm.data ?? {}
  const ttf = typeof d.timeToFailureS === 'number' ? `, failure in ~${d.timeToFailureS} s` : ''
  const p = typeof d.probability === 'number' ? d.probability.toFixed(2) : '?'
  let lead = ''
  if (failure !== null) {
    const s = (failure.t - alarm.t) / 1000
    lead =
      s >= 0 ? `; ${s.toFixed(1)} s before the failure` : `; ${(-s).toFixed(1)} s after the failure began`
  }
  return step('predicted', alarm.t, `p ${p} within ${String(d.horizonS)} s${ttf} (${String(d.model)})${lead}`)
}

function actionLines(a: ActionRecord): string[] {
  const what = `${a.strategy} (${a.basis})`
  const done = a.holdout
    ? step('held out', a.t, `${what}: chosen, not run (the no-action baseline)`)
    : a.result === null
      ? step('mitigated', a.t, `${what}: running`)
      : step('mitigated', a.t, `${what}: ${a.result.outcome} (${a.result.detail})`)
  const j = a.judgement
  if (j !== null) return [done, step('judged', j.judgedAt, `${j.detail} (reward ${j.reward.toFixed(2)})`)]
  if (a.result?.outcome === 'SKIPPED') return [done, step('judged', null, 'not judged: it did not act')]
  const until = a.t + DEFAULT_JUDGE_WINDOW_MS[a.failureType]
  return [
    done,
    step('judged', null, `not yet: its window runs to t=${secs(until)} (longer while still predicted)`),
  ]
}

function truthLines(
  g: { replica: string; failureType: string },
  labels: ReadonlyArray<FaultLabel & { t: number }>,
  endT: number,
): string[] {
  if (labels.length === 0) return [step('truth', null, `no ${g.failureType} fault injected on ${g.replica}`)]
  const out: string[] = []
  for (const inj of labels.filter((l) => l.phase === 'injected')) {
    const after = (phase: FaultLabel['phase']) =>
      labels.find((l) => l.phase === phase && l.fault === inj.fault && l.t >= inj.t)
    const failed = after('failure')
    const cleared = after('cleared')
    if (failed !== undefined) {
      out.push(step('truth', failed.t, `${inj.fault} failure (injected at ${secs(inj.t)}): ${failed.detail}`))
      continue
    }
    const how =
      cleared === undefined
        ? `no failure by the end (${secs(endT)})`
        : `cleared at ${secs(cleared.t)} (${cleared.detail}), no failure`
    out.push(step('truth', null, `${inj.fault} injected at ${secs(inj.t)}; ${how}`))
  }
  return out
}

/** "learner: for kv-exhaustion on r0 (kv_cache_usage >= 0.93 and ...) recommend ReduceBatchSize (runbook, confidence 1.00)". */
export function recommendationLine(r: IncidentRecommendation): string {
  const rec = r.recommendation
  const trials = rec.trials > 0 ? `, ${rec.trials} judged` : ''
  return (
    `learner: for ${r.failureType} on ${r.replica} (${r.context}) recommend ${rec.strategy} ` +
    `(${rec.basis}, confidence ${rec.confidence.toFixed(2)}${trials})` +
    (rec.rule === null
      ? ''
      : `: ${rec.rule.startsWith(`${r.context}: `) ? rec.rule.slice(r.context.length + 2) : rec.rule}`)
  )
}
