/**
 * The live terminal view of `vllm-monitor demo` (and `watch`-style commands): fleet state,
 * per-replica load and KV usage, GPUs, and the newest events, predictions and actions.
 * Pure: a checkpoint and a status in, lines of text out.
 */
import type { MonitorStatus } from '../monitor/status.js'
import type { Checkpoint, LifecycleState, Prediction, TimedEvent } from '../telemetry/types.js'

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
}

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
      paint(
        c,
        '2',
        status.autoMitigate ? `${status.mitigationsTriggered} mitigations` : 'auto-mitigation off',
      ),
  )
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

export function formatEvent(e: TimedEvent, color: boolean): string {
  const sev = e.severity === 'critical' ? '31' : e.severity === 'warning' ? '33' : '2'
  const where = e.replica ?? (e.gpu !== null ? `gpu${e.gpu}` : '-')
  return `${pad(`${(e.t / 1000).toFixed(1)}s`, 9)}${pad(where, 6)}${paint(color, sev, pad(e.type, 16))}${e.message}`
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
