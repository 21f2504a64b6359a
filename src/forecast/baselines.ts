/**
 * The two predictors users already have, computed on the same store as the model so they can be
 * compared on the same data (and used live while the forecast workers are down):
 *
 * - `threshold`: static alert rules of the kind DCGM + Prometheus setups carry (KV usage ≥ 0.9,
 *   framebuffer ≥ 97 %, GPU temperature ≥ 83 °C, TTFT p99 ≥ 75 % of the SLO, queue ≥ 50,
 *   any uncorrectable ECC or fatal Xid, no progress for a minute while requests run).
 * - `predict_linear`: Prometheus' `predict_linear(v[range], t) >= limit` on each gauge, computed as
 *   Prometheus does (least squares over the samples in the range, value `t` seconds after the
 *   evaluation time) over the 1 s means: KV usage [60s] 120 s ahead ≥ 1; framebuffer used [120s]
 *   120 s ahead ≥ total; temperature [120s] 60 s ahead ≥ 87 °C; TTFT p99 [60s] 30 s ahead ≥ the
 *   SLO; waiting [60s] 30 s ahead ≥ what drains within the queue SLO. Hardware and network
 *   failures have no trend to extrapolate, so it shares the threshold rules for them.
 *
 * Each rule is kept as the ratio of its value to its limit (it fires at 1), so that the evaluation
 * can also move a baseline's limit until it makes as few false alarms as the model.
 */
import { FATAL_XIDS } from '../monitor/core.js'
import { engineKey, gpuKey, type Series, type TelemetryStore } from '../telemetry/store.js'
import type { Checkpoint, Prediction } from '../telemetry/types.js'
import type { ForecastTarget } from './features.js'
import { DEFAULT_SLO, FAILURE_TYPES, type FailureType, SCORING, type SloOptions } from './spec.js'

export const BASELINE_NAMES = ['threshold', 'predict_linear'] as const
export type BaselineName = (typeof BASELINE_NAMES)[number]

const K = (t: FailureType) => FAILURE_TYPES.indexOf(t)

/**
 * `predict_linear(series[rangeS], aheadS)` at tMs over 1 s means: NaN with fewer than two samples,
 * as in Prometheus.
 */
export function predictLinear(
  s: Series | undefined,
  tMs: number,
  rangeS: number,
  aheadS: number,
  buf: Float64Array,
): number {
  if (s === undefined) return Number.NaN
  s.window('1s', 'mean', rangeS, buf, tMs)
  // Bucket i starts at (end - rangeS + 1 + i) s; its mean sits mid-bucket. x is seconds from tMs.
  const endS = Math.floor(tMs / 1000)
  const t0 = tMs / 1000
  let n = 0
  let sx = 0
  let sy = 0
  let sxx = 0
  let sxy = 0
  for (let i = 0; i < rangeS; i++) {
    const y = buf[i]!
    if (!Number.isFinite(y)) continue
    const x = endS - rangeS + 1 + i + 0.5 - t0
    n++
    sx += x
    sy += y
    sxx += x * x
    sxy += x * y
  }
  if (n < 2) return Number.NaN
  const d = n * sxx - sx * sx
  if (d === 0) return sy / n + 0
  const slope = (n * sxy - sx * sy) / d
  const intercept = (sy - slope * sx) / n
  return intercept + slope * aheadS
}

export class Baselines {
  private readonly store: TelemetryStore
  private readonly slo: SloOptions
  private readonly buf = new Float64Array(300)

  constructor(store: TelemetryStore, slo: SloOptions = DEFAULT_SLO) {
    this.store = store
    this.slo = slo
  }

  /**
   * Writes each failure type's rule ratio (value / limit: the alert fires at >= 1; FAILURE_TYPES
   * order) for both baselines. `evidence`,
   * when given, collects a line per firing rule, keyed `<baseline>/<type>`.
   */
  score(
    tMs: number,
    target: ForecastTarget,
    cp: Checkpoint,
    threshold: Float32Array,
    linear: Float32Array,
    offset: number,
    evidence?: Map<string, string>,
  ): void {
    const st = this.store
    const e = cp.engines.find((x) => x.replica === target.replica)
    const r = e?.reading ?? null
    // Each rule writes value / limit: it fires at 1. Keeping the ratio lets the evaluation tune a
    // baseline to another false-alarm rate by moving its limit.
    const fire = (
      out: Float32Array,
      name: BaselineName,
      type: FailureType,
      ratio: number,
      why: () => string,
    ) => {
      const v = Number.isFinite(ratio) ? Math.max(0, ratio) : 0
      out[offset + K(type)] = v
      if (v >= 1 && evidence !== undefined) evidence.set(`${name}/${type}`, why())
    }
    for (let i = 0; i < FAILURE_TYPES.length; i++) {
      threshold[offset + i] = 0
      linear[offset + i] = 0
    }
    // KV exhaustion.
    const kv = r?.kvCacheUsage ?? null
    fire(
      threshold,
      'threshold',
      'kv-exhaustion',
      (kv ?? Number.NaN) / 0.9,
      () => `KV usage ${pct(kv)} >= 90%`,
    )
    const kvAhead = predictLinear(st.get(engineKey(target.replica, 'kvCacheUsage')), tMs, 60, 120, this.buf)
    fire(
      linear,
      'predict_linear',
      'kv-exhaustion',
      kvAhead,
      () => `predict_linear(kv[60s], 120) = ${kvAhead.toFixed(2)} >= 1`,
    )
    // OOM: the fullest GPU.
    let memFrac = Number.NaN
    let memAhead = Number.NaN
    let temp = Number.NaN
    let tempAhead = Number.NaN
    let fatal: string | null = null
    for (const g of target.gpus) {
      const reading = cp.gpus.find((x) => x.gpu === g)
      const total = reading?.memoryTotalBytes ?? null
      if (reading?.lost === true) fatal = `GPU ${g} lost`
      if ((reading?.eccUncorrectedVolatile ?? 0) > 0) fatal = `GPU ${g} uncorrectable ECC errors`
      if (total !== null && total > 0 && reading?.memoryUsedBytes != null) {
        memFrac = Math.max(Number.isNaN(memFrac) ? 0 : memFrac, reading.memoryUsedBytes / total)
        const ahead = predictLinear(st.get(gpuKey(g, 'memoryUsedBytes')), tMs, 120, 120, this.buf) / total
        // The worst GPU with data: one that reports nothing must not erase another's reading.
        if (Number.isFinite(ahead) && !(memAhead >= ahead)) memAhead = ahead
      }
      const tc = reading?.temperatureCelsius ?? null
      if (tc !== null && !(temp >= tc)) temp = tc
      const ta = predictLinear(st.get(gpuKey(g, 'temperatureCelsius')), tMs, 120, 60, this.buf)
      if (Number.isFinite(ta) && !(tempAhead >= ta)) tempAhead = ta
    }
    fire(threshold, 'threshold', 'oom', memFrac / 0.97, () => `GPU memory ${pct(memFrac)} >= 97%`)
    fire(
      linear,
      'predict_linear',
      'oom',
      memAhead,
      () => `predict_linear(fb_used[120s], 120) = ${pct(memAhead)} of total`,
    )
    fire(threshold, 'threshold', 'thermal-throttle', temp / 83, () => `GPU temperature ${temp} °C >= 83 °C`)
    fire(
      linear,
      'predict_linear',
      'thermal-throttle',
      tempAhead / 87,
      () => `predict_linear(temp[120s], 60) = ${tempAhead.toFixed(1)} °C >= 87 °C`,
    )
    // SLO.
    const ttft = r?.ttftP99Ms ?? null
    fire(
      threshold,
      'threshold',
      'slo-violation',
      (ttft ?? Number.NaN) / (0.75 * this.slo.ttftP99Ms),
      () => `TTFT p99 ${ttft?.toFixed(0)} ms >= 75% of the ${this.slo.ttftP99Ms} ms SLO`,
    )
    const ttftAhead = predictLinear(st.get(engineKey(target.replica, 'ttftP99Ms')), tMs, 60, 30, this.buf)
    fire(
      linear,
      'predict_linear',
      'slo-violation',
      ttftAhead / this.slo.ttftP99Ms,
      () => `predict_linear(ttft_p99[60s], 30) = ${ttftAhead.toFixed(0)} ms`,
    )
    // Queue.
    const waiting = r?.requestsWaiting ?? null
    fire(
      threshold,
      'threshold',
      'queue-overflow',
      (waiting ?? Number.NaN) / 50,
      () => `${waiting} waiting >= 50`,
    )
    const waitAhead = predictLinear(
      st.get(engineKey(target.replica, 'requestsWaiting')),
      tMs,
      60,
      30,
      this.buf,
    )
    const finished = st.get(engineKey(target.replica, 'requestsFinishedPerSec'))
    const drainRate = finished === undefined ? Number.NaN : meanOf(finished, tMs, 10, this.buf)
    const room = Math.max(8, (Number.isFinite(drainRate) ? drainRate : 0) * this.slo.queueS)
    fire(
      linear,
      'predict_linear',
      'queue-overflow',
      waitAhead / room,
      () => `predict_linear(waiting[60s], 30) = ${waitAhead.toFixed(0)} >= ${room.toFixed(0)} drainable`,
    )
    // Hardware: fatal Xids and uncorrectable ECC, as DCGM alert rules count them.
    if (fatal === null) {
      for (let i = cp.events.length - 1; i >= 0; i--) {
        const ev = cp.events[i]!
        if (ev.t < tMs - 30_000) break
        // An Xid names its GPU, or at least its replica (a kernel log tailed for one replica).
        const mine =
          ev.gpu !== null
            ? target.gpus.includes(ev.gpu)
            : ev.replica === null || ev.replica === target.replica
        if (ev.type === 'xid' && FATAL_XIDS.has(Number(ev.data?.xid)) && mine) {
          fatal = ev.message
          break
        }
      }
    }
    fire(threshold, 'threshold', 'hardware-failure', fatal !== null ? 1 : 0, () => fatal ?? '')
    fire(linear, 'predict_linear', 'hardware-failure', fatal !== null ? 1 : 0, () => fatal ?? '')
    // Network: no progress for a minute while requests run (NCCL hangs leave /health at 200).
    const stalled = e?.derived.stalledForMs ?? null
    const hung = (stalled ?? 0) / 60_000
    fire(
      threshold,
      'threshold',
      'network-failure',
      hung,
      () => `no progress for ${((stalled ?? 0) / 1000).toFixed(0)} s`,
    )
    fire(
      linear,
      'predict_linear',
      'network-failure',
      hung,
      () => `no progress for ${((stalled ?? 0) / 1000).toFixed(0)} s`,
    )
  }

  /** The baseline's firing alerts as predictions (probability 1), for use while the model is unavailable. */
  predictions(tMs: number, target: ForecastTarget, cp: Checkpoint, which: BaselineName): Prediction[] {
    const thr = new Float32Array(FAILURE_TYPES.length)
    const lin = new Float32Array(FAILURE_TYPES.length)
    const why = new Map<string, string>()
    this.score(tMs, target, cp, thr, lin, 0, why)
    const flags = which === 'threshold' ? thr : lin
    const out: Prediction[] = []
    for (let i = 0; i < FAILURE_TYPES.length; i++) {
      if (!(flags[i]! >= 1)) continue
      const type = FAILURE_TYPES[i]!
      out.push({
        failureType: type,
        probability: 1,
        timeToFailureS: null,
        horizonS: SCORING[type].horizonS,
        target: { replica: target.replica, gpu: target.gpus[0] ?? null },
        evidence: [why.get(`${which}/${type}`) ?? ''],
        model: which,
      })
    }
    return out
  }
}

function meanOf(s: Series, tMs: number, n: number, buf: Float64Array): number {
  s.window('1s', 'mean', n, buf, tMs)
  let sum = 0
  let k = 0
  for (let i = 0; i < n; i++)
    if (Number.isFinite(buf[i]!)) {
      sum += buf[i]!
      k++
    }
  return k === 0 ? Number.NaN : sum / k
}

function pct(v: number | null): string {
  return v === null || !Number.isFinite(v) ? '?' : `${(v * 100).toFixed(0)}%`
}
