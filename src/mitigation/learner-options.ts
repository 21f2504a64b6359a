/**
 * The learner's contract: its options (checked once, at construction), the runbook it starts from,
 * and what it answers (decisions, recommendations, rules in words).
 */
import { InvalidOptionError } from '../errors.js'
import type { FailureType } from '../telemetry/types.js'
import { isFailureType } from './learner-state.js'

export interface Decision {
  strategy: string
  /** Why this one: the runbook default, a learned replacement, or a budgeted experiment. */
  basis: 'runbook' | 'learned' | 'explore'
  /** P(chosen is no worse than the runbook default), 0-1; 1 for the runbook itself. */
  confidence: number
  /** The bucket key, e.g. "kv-exhaustion|kv>=0.93|waiting>40|headroom>=0.3". */
  context: string
  /** The runbook default for this failure type among the candidates. */
  runbook: string
}

export interface Recommendation {
  failureType: FailureType
  strategy: string
  basis: 'runbook' | 'learned'
  confidence: number
  /** Posterior mean reward of the strategy in this context; null when nothing is known of it. */
  expectedReward: number | null
  /** Judged trials of the strategy in this context. */
  trials: number
  /** The rule that supports it (`LearnedRule.text`), null without trials in this context. */
  rule: string | null
}

export interface LearnedRule {
  failureType: FailureType
  strategy: string
  context: string
  /** "kv_cache_usage >= 0.93 and waiting > 40 and fleet_headroom < 0.3: ReduceBatchSize succeeded 27/30". */
  text: string
  /** Trials with reward >= 0.5. */
  successes: number
  trials: number
  meanReward: number
}

export interface ContinuousLearnerOptions {
  /** Default strategy per failure type (`DEFAULT_RUNBOOK` fills the rest). */
  runbook?: Partial<Record<FailureType, string>>
  /** Persisted JSON; null = in memory only. */
  statePath?: string | null
  /** A learned choice replaces the runbook only when P(no worse) >= this. Default 0.9. */
  confidence?: number
  /** Trials of a strategy in a context before it may replace the runbook. Default 5. */
  minTrials?: number
  /** Conservative budget: cumulative reward must stay >= (1 - alpha) x the runbook's. Default 0.05. */
  alpha?: number
  /** False = exploit only (production may turn exploration off). Default true. */
  explore?: boolean
  seed?: number | string
  /** Clock, ms. */
  now?: () => number
}

export const DEFAULT_RUNBOOK: Readonly<Record<FailureType, string>> = Object.freeze({
  'kv-exhaustion': 'ReduceBatchSize',
  oom: 'EmergencyGPUMemoryCleanup',
  'slo-violation': 'ShedLoad',
  'thermal-throttle': 'RebalanceLoad',
  'queue-overflow': 'ShedLoad',
  'hardware-failure': 'RebalanceLoad',
  'network-failure': 'RestartNCCL',
})

export function validateOptions(o: ContinuousLearnerOptions): void {
  const fail = (m: string) => {
    throw new InvalidOptionError(`ContinuousLearner: ${m}`)
  }
  if (o.runbook !== undefined) {
    if (o.runbook === null || typeof o.runbook !== 'object') fail('options.runbook must be an object')
    for (const [k, v] of Object.entries(o.runbook)) {
      if (!isFailureType(k)) fail(`options.runbook has an unknown failure type "${k}"`)
      if (typeof v !== 'string' || v.length === 0)
        fail(`options.runbook["${k}"] must be a non-empty strategy name`)
    }
  }
  if (o.statePath !== undefined && o.statePath !== null && (typeof o.statePath !== 'string' || !o.statePath))
    fail('options.statePath must be a non-empty string or null')
  if (o.confidence !== undefined && !(o.confidence > 0 && o.confidence < 1))
    fail(`options.confidence must be a number between 0 and 1 (exclusive), got ${o.confidence}`)
  if (o.minTrials !== undefined && !(Number.isInteger(o.minTrials) && o.minTrials >= 1))
    fail(`options.minTrials must be a positive integer, got ${o.minTrials}`)
  if (o.alpha !== undefined && !(o.alpha >= 0 && o.alpha < 1))
    fail(`options.alpha must be a number in [0, 1), got ${o.alpha}`)
  if (o.explore !== undefined && typeof o.explore !== 'boolean') fail('options.explore must be a boolean')
  if (
    o.seed !== undefined &&
    !(typeof o.seed === 'string' || (typeof o.seed === 'number' && Number.isFinite(o.seed)))
  )
    fail('options.seed must be a finite number or a string')
  if (o.now !== undefined && typeof o.now !== 'function') fail('options.now must be a function')
}
