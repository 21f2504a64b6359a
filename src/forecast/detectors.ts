/**
 * Hardware and network failures mostly have no numeric precursor (a GPU falls off the bus; an
 * NCCL peer stops answering), so they are detected rather than forecast: small logistic models
 * over the evidence the monitor has, whose coefficients `vllm-monitor train` fits on the
 * simulator's labelled runs (Platt-style calibration), so that the probability they report is
 * the observed frequency of a failure within 30 s, not an arbitrary score.
 *
 * - hardware: corrected-ECC growth over the last minute, any Xid but an application's (13, 31,
 *   43, 45) in the last two minutes, a fatal
 *   Xid / lost GPU / uncorrectable ECC in the last 30 s, temperature at or above 90 °C.
 * - network: how long progress has stalled while requests run, shared-memory broadcast stalls and
 *   RPC timeouts (the V1 engine's symptom of a hung worker), NCCL errors and timeouts, steps
 *   stopped with requests running.
 */
import { FATAL_XIDS } from '../monitor/core.js'
import type { Checkpoint, Prediction } from '../telemetry/types.js'
import type { ForecastTarget } from './features.js'

export interface LogisticModel {
  features: string[]
  weights: number[]
  bias: number
}

export interface DetectorCoefficients {
  hardware: LogisticModel
  network: LogisticModel
}

export const HARDWARE_FEATURES = ['eccRise60s', 'xid120s', 'fatal30s', 'hot90'] as const
export const NETWORK_FEATURES = ['stalledMin', 'shmStall60s', 'ncclEvent60s', 'stepsStopped'] as const

/** Used until a model directory brings fitted ones: conservative hand-set weights. */
export const DEFAULT_DETECTORS: DetectorCoefficients = {
  hardware: { features: [...HARDWARE_FEATURES], weights: [1.2, 1.5, 8, 1], bias: -5 },
  network: { features: [...NETWORK_FEATURES], weights: [3, 2, 6, 1], bias: -5 },
}

/**
 * Xids an application causes: 13 graphics engine exception, 31 MMU fault (an illegal address),
 * 43 GPU stopped processing (the context was killed), 45 preemptive cleanup (a process ended).
 */
export const APPLICATION_XIDS = new Set([13, 31, 43, 45])

export function sigmoid(z: number): number {
  return 1 / (1 + Math.exp(-z))
}

export function logistic(m: LogisticModel, x: ArrayLike<number>, offset = 0): number {
  let z = m.bias
  for (let i = 0; i < m.weights.length; i++) z += m.weights[i]! * x[offset + i]!
  return sigmoid(z)
}

/** Writes the hardware features (HARDWARE_FEATURES order) for a target at `t`. */
export function hardwareFeatures(
  cp: Checkpoint,
  target: ForecastTarget,
  out: Float32Array,
  o: number,
  ecc: EccHistory,
): void {
  let rise = 0
  let hot = 0
  let fatal = 0
  for (const g of target.gpus) {
    const r = cp.gpus.find((x) => x.gpu === g)
    if (r === undefined) continue
    rise = Math.max(rise, ecc.rise(g, cp.t, r.eccCorrectedVolatile))
    if ((r.temperatureCelsius ?? 0) >= 90) hot = 1
    if (r.lost || (r.eccUncorrectedVolatile ?? 0) > 0) fatal = 1
  }
  let xid = 0
  for (let i = cp.events.length - 1; i >= 0; i--) {
    const e = cp.events[i]!
    if (e.t < cp.t - 120_000) break
    const mine = e.replica === target.replica || (e.gpu !== null && target.gpus.includes(e.gpu))
    if (!mine) continue
    if (e.type === 'xid') {
      // Application-level Xids (a kernel's fault, not the GPU's) say nothing about the hardware.
      if (!APPLICATION_XIDS.has(Number(e.data?.xid))) xid = 1
      if (e.t >= cp.t - 30_000 && FATAL_XIDS.has(Number(e.data?.xid))) fatal = 1
    }
    if (
      (e.type === 'gpu-lost' || e.type === 'ecc-double-bit' || e.type === 'uncorrectable-ecc') &&
      e.t >= cp.t - 30_000
    )
      fatal = 1
  }
  out[o] = Math.log1p(rise)
  out[o + 1] = xid
  out[o + 2] = fatal
  out[o + 3] = hot
}

/** Writes the network features (NETWORK_FEATURES order) for a target at `t`. */
export function networkFeatures(cp: Checkpoint, target: ForecastTarget, out: Float32Array, o: number): void {
  const e = cp.engines.find((x) => x.replica === target.replica)
  const stalled = e?.derived.stalledForMs ?? 0
  let shm = 0
  let nccl = 0
  for (let i = cp.events.length - 1; i >= 0; i--) {
    const ev = cp.events[i]!
    if (ev.t < cp.t - 60_000) break
    if (ev.replica !== target.replica) continue
    if (ev.type === 'shm-broadcast-stall' || ev.type === 'rpc-timeout') shm = 1
    if (ev.type === 'nccl-timeout' || ev.type === 'nccl-error' || ev.type === 'hang') nccl = 1
  }
  const running = e?.reading?.requestsRunning ?? 0
  const steps = e?.derived.stepsPerSec ?? null
  out[o] = Math.min(2, stalled / 60_000)
  out[o + 1] = shm
  out[o + 2] = nccl
  out[o + 3] = running > 0 && steps === 0 ? 1 : 0
}

/** Corrected-ECC counts per GPU over the last minute (one sample per call, pruned). */
export class EccHistory {
  private readonly byGpu = new Map<number, { t: number[]; v: number[] }>()

  rise(gpu: number, t: number, value: number | null): number {
    if (value === null) return 0
    let h = this.byGpu.get(gpu)
    if (h === undefined) {
      h = { t: [], v: [] }
      this.byGpu.set(gpu, h)
    }
    if (h.v.length > 0 && value < h.v[h.v.length - 1]!) {
      h.t.length = 0
      h.v.length = 0
    }
    if (h.t.length === 0 || t > h.t[h.t.length - 1]!) {
      h.t.push(t)
      h.v.push(value)
    }
    while (h.t.length > 1 && t - h.t[0]! > 60_000) {
      h.t.shift()
      h.v.shift()
    }
    return value - h.v[0]!
  }
}

/**
 * Fits a logistic model by Newton's method. The L2 penalty is not small on purpose: the labelled
 * runs often separate perfectly (a stall of 20 s always preceded a hang), and unpenalised weights
 * then run off to infinity and turn the probability into a step.
 */
export function fitLogistic(
  names: readonly string[],
  x: Float32Array,
  y: Uint8Array,
  rows: number,
  l2 = 1,
): LogisticModel {
  const d = names.length
  const p = d + 1
  const w = new Float64Array(p)
  for (let iter = 0; iter < 50; iter++) {
    const g = new Float64Array(p)
    const h = new Float64Array(p * p)
    for (let r = 0; r < rows; r++) {
      let z = w[d]!
      for (let j = 0; j < d; j++) z += w[j]! * x[r * d + j]!
      const mu = sigmoid(z)
      const err = mu - y[r]!
      const s = Math.max(mu * (1 - mu), 1e-9)
      for (let j = 0; j < p; j++) {
        const xj = j === d ? 1 : x[r * d + j]!
        g[j]! += err * xj
        for (let k = 0; k < p; k++) h[j * p + k]! += s * xj * (k === d ? 1 : x[r * d + k]!)
      }
    }
    for (let j = 0; j < d; j++) {
      g[j]! += l2 * w[j]!
      h[j * p + j]! += l2
    }
    h[d * p + d]! += 1e-9
    const step = solve(h, g, p)
    let moved = 0
    for (let j = 0; j < p; j++) {
      w[j]! -= step[j]!
      moved = Math.max(moved, Math.abs(step[j]!))
    }
    if (moved < 1e-6) break
  }
  return { features: [...names], weights: Array.from(w.subarray(0, d)), bias: w[d]! }
}

/** Gaussian elimination with partial pivoting; a singular system yields zeros. */
function solve(a: Float64Array, b: Float64Array, n: number): Float64Array {
  const m = Float64Array.from(a)
  const v = Float64Array.from(b)
  for (let c = 0; c < n; c++) {
    let piv = c
    for (let r = c + 1; r < n; r++) if (Math.abs(m[r * n + c]!) > Math.abs(m[piv * n + c]!)) piv = r
    if (Math.abs(m[piv * n + c]!) < 1e-12) return new Float64Array(n)
    if (piv !== c) {
      for (let k = 0; k < n; k++) {
        const tmp = m[c * n + k]!
        m[c * n + k] = m[piv * n + k]!
        m[piv * n + k] = tmp
      }
      const tv = v[c]!
      v[c] = v[piv]!
      v[piv] = tv
    }
    for (let r = c + 1; r < n; r++) {
      const f = m[r * n + c]! / m[c * n + c]!
      for (let k = c; k < n; k++) m[r * n + k]! -= f * m[c * n + k]!
      v[r]! -= f * v[c]!
    }
  }
  const out = new Float64Array(n)
  for (let r = n - 1; r >= 0; r--) {
    let s = v[r]!
    for (let k = r + 1; k < n; k++) s -= m[r * n + k]! * out[k]!
    out[r] = s / m[r * n + r]!
  }
  return out
}

/** The detector predictions for one target from its feature rows. */
export function detectorPredictions(
  coeffs: DetectorCoefficients,
  target: ForecastTarget,
  hw: Float32Array,
  net: Float32Array,
): Prediction[] {
  const ph = logistic(coeffs.hardware, hw)
  const pn = logistic(coeffs.network, net)
  const tgt = { replica: target.replica, gpu: target.gpus[0] ?? null }
  const hwWhy: string[] = []
  if (hw[0]! > 0) hwWhy.push(`corrected ECC +${Math.round(Math.expm1(hw[0]!))} in 60 s`)
  if (hw[1]! > 0) hwWhy.push('Xid in the last 2 min')
  if (hw[2]! > 0) hwWhy.push('fatal Xid / lost GPU / uncorrectable ECC')
  if (hw[3]! > 0) hwWhy.push('GPU at >= 90 °C')
  const netWhy: string[] = []
  if (net[0]! > 0) netWhy.push(`no progress for ${(net[0]! * 60).toFixed(0)} s with requests running`)
  if (net[1]! > 0) netWhy.push('shared-memory broadcast stall / RPC timeout')
  if (net[2]! > 0) netWhy.push('NCCL error or timeout')
  if (net[3]! > 0) netWhy.push('engine steps stopped')
  return [
    {
      failureType: 'hardware-failure',
      probability: ph,
      timeToFailureS: null,
      horizonS: 30,
      target: tgt,
      evidence: hwWhy,
      model: 'detector',
    },
    {
      failureType: 'network-failure',
      probability: pn,
      timeToFailureS: null,
      horizonS: 30,
      target: tgt,
      evidence: netWhy,
      model: 'detector',
    },
  ]
}
