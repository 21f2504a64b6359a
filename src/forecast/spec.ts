/**
 * What the forecaster predicts and how each failure type is scored: the model's outputs, the
 * alarm horizon (Salfner's prediction period Δt_p) and the minimal warning time (Δt_w) a hit needs.
 */
import type { FailureType } from '../telemetry/types.js'

export type { FailureType } from '../telemetry/types.js'

export const FAILURE_TYPES: readonly FailureType[] = [
  'kv-exhaustion',
  'oom',
  'slo-violation',
  'thermal-throttle',
  'queue-overflow',
  'hardware-failure',
  'network-failure',
]

/** One sigmoid head of the model: P(failure of this type within horizonS, or under way). */
export interface ModelOutput {
  failureType: FailureType
  horizonS: number
}

/** The model's heads, in output order. Hardware and network failures are the detectors' (detectors.ts). */
export const MODEL_OUTPUTS: readonly ModelOutput[] = [
  { failureType: 'kv-exhaustion', horizonS: 5 },
  { failureType: 'kv-exhaustion', horizonS: 30 },
  { failureType: 'kv-exhaustion', horizonS: 120 },
  { failureType: 'oom', horizonS: 5 },
  { failureType: 'oom', horizonS: 30 },
  { failureType: 'oom', horizonS: 120 },
  { failureType: 'slo-violation', horizonS: 30 },
  { failureType: 'thermal-throttle', horizonS: 60 },
  { failureType: 'queue-overflow', horizonS: 30 },
]

export interface ScoringRule {
  /** Δt_p: an alarm claims the failure within this many seconds. */
  horizonS: number
  /**
   * Δt_w: the least lead a hit needs (the time the mitigation takes). Negative for failures that
   * have no precursor and are scored as detection: detected within |minLeadS| seconds counts.
   */
  minLeadS: number
}

/**
 * Per failure type. Admission caps act within milliseconds and a replica drains in seconds, so
 * a few seconds of warning is enough for load-driven failures (forecasting.md §0.3); thermal
 * needs longer because clocks fall before anything can cool.
 */
export const SCORING: Readonly<Record<FailureType, ScoringRule>> = {
  'kv-exhaustion': { horizonS: 120, minLeadS: 5 },
  oom: { horizonS: 120, minLeadS: 5 },
  'slo-violation': { horizonS: 30, minLeadS: 2 },
  'thermal-throttle': { horizonS: 60, minLeadS: 10 },
  'queue-overflow': { horizonS: 30, minLeadS: 2 },
  'hardware-failure': { horizonS: 30, minLeadS: -30 },
  'network-failure': { horizonS: 30, minLeadS: -30 },
}

/** The service-level objectives that define an SLO violation and a queue overflow. */
export interface SloOptions {
  /** p99 time to first token over the scraper's window, ms. */
  ttftP99Ms: number
  /** p99 inter-token latency, ms. */
  itlP99Ms: number
  /** The longest a newly queued request should wait: waiting / drain rate, seconds. */
  queueS: number
}

export const DEFAULT_SLO: SloOptions = { ttftP99Ms: 2000, itlP99Ms: 200, queueS: 10 }

/**
 * Alarm hysteresis: an alarm raised at the threshold stays raised until the probability falls
 * below RELEASE x threshold, so a forecast hovering at its threshold (a slow leak, a noisy ramp)
 * makes one alarm, not a flapping series of them.
 */
export const ALARM_RELEASE = 0.5

/** Samples are taken, and onsets and alarms scored, on this grid. */
export const FORECAST_STEP_MS = 1000

/**
 * Time to failure from a type's horizon heads, read as points of a cumulative distribution
 * (P(failure within 5 s), within 30 s, within 120 s; made monotone): the time at which it
 * crosses 0.5, interpolated linearly; null when it does not within the longest horizon.
 */
export function timeToFailureS(horizons: readonly number[], probs: readonly number[]): number | null {
  let prevT = 0
  let prevP = 0
  for (let i = 0; i < horizons.length; i++) {
    const p = Math.max(prevP, probs[i]!)
    const t = horizons[i]!
    if (p >= 0.5) {
      if (prevP >= 0.5) return prevT
      return prevT + ((0.5 - prevP) / Math.max(p - prevP, 1e-9)) * (t - prevT)
    }
    prevT = t
    prevP = p
  }
  return null
}
