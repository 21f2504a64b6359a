/**
 * What the orchestrator may act on, and the context a strategy acts in. Pure: the forecaster's
 * output (and a threshold, when one was set) in, at most one candidate per replica and failure type
 * out; nothing here reads the clock or the orchestrator's state.
 */
import { SCORING } from '../forecast/spec.js'
import type { Checkpoint, FailureType, Prediction } from '../telemetry/types.js'
import type { MitigationActuators, MitigationContext, MitigationTrigger } from './types.js'

export interface Candidate {
  replica: string
  failureType: FailureType
  prediction: Prediction | null
  trigger: MitigationTrigger
  /** Run this strategy, not the learner's choice: the escalation of one that was not enough. */
  forced?: string
}

/**
 * The candidates of one forecast tick: the forecaster's `alarms` when `threshold` is undefined,
 * else the `predictions` at each type's alarm horizon at or above it. Of several for one replica
 * and failure type, the most probable wins.
 */
export function selectCandidates(
  predictions: readonly Prediction[],
  alarms: readonly Prediction[],
  threshold: number | undefined,
): Candidate[] {
  const chosen = new Map<string, Prediction>()
  const source =
    threshold === undefined
      ? alarms
      : predictions.filter(
          (p) => p.horizonS === SCORING[p.failureType].horizonS && p.probability >= threshold,
        )
  for (const p of source) {
    const replica = p.target.replica
    if (replica === null) continue
    const key = `${replica}|${p.failureType}`
    const prev = chosen.get(key)
    if (prev === undefined || p.probability > prev.probability) chosen.set(key, p)
  }
  const out: Candidate[] = []
  for (const p of chosen.values()) {
    const ttf = p.timeToFailureS === null ? '' : `, failure in ~${p.timeToFailureS} s`
    out.push({
      replica: p.target.replica as string,
      failureType: p.failureType,
      prediction: p,
      trigger: {
        kind: 'prediction',
        detail: `${p.failureType} p=${p.probability.toFixed(2)} within ${p.horizonS} s${ttf} (${p.model})`,
      },
    })
  }
  return out
}

/** What a strategy's execute (or rollback) is handed for candidate `c` at checkpoint `cp`. */
export function strategyContext(
  c: Candidate,
  cp: Checkpoint | null,
  actuators: MitigationActuators,
  now: () => number,
  signal: AbortSignal,
): MitigationContext {
  return {
    replica: c.replica,
    failureType: c.failureType,
    prediction: c.prediction,
    trigger: c.trigger,
    checkpoint: cp,
    replicas: cp === null ? [c.replica] : cp.engines.map((e) => e.replica),
    actuators,
    now,
    signal,
  }
}
