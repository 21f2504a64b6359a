/**
 * Where the orchestrator's decisions, actions and outcomes go out: the audit log, monitor events,
 * the per-strategy counter, the recent actions, and the forecaster's retraining labels. None of it
 * throws: a sink that fails is reported through `reportError` and the mitigation goes on.
 */
import type { FailureType, MonitorEvent } from '../telemetry/types.js'
import type { AuditEntry } from './audit.js'
import type { Decision, LearnerFeatures } from './learner.js'
import type { OrchestratorOptions } from './orchestrator.js'
import { messageOf } from './orchestrator-util.js'
import type { Judgement } from './outcome.js'
import type { MitigationOutcome, MitigationResult, MitigationTrigger } from './types.js'

/** One action (or holdout) as the orchestrator remembers it. */
export interface ActionRecord {
  id: string
  t: number
  replica: string
  failureType: FailureType
  strategy: string
  /** `escalation`: the next step of an action in place that did not stop the failure. */
  basis: Decision['basis'] | 'escalation'
  /** The learner's context bucket and the features it was built from. */
  context: string
  features: LearnerFeatures
  trigger: MitigationTrigger
  /** What execute returned; null for a holdout or while it runs. */
  result: MitigationResult | null
  holdout: boolean
  judgement: Judgement | null
  rolledBack: boolean
}

export interface MitigationCount {
  strategy: string
  outcome: MitigationOutcome
  count: number
}

const MAX_RECORDS = 500

type Sinks = Pick<OrchestratorOptions, 'audit' | 'emit' | 'reportError' | 'reportOutcome'>

export class MitigationReporter {
  // The orchestrator's options object itself: its sinks are read at each use, as before the split.
  private readonly sinks: Sinks
  private readonly records: ActionRecord[] = []
  private readonly counts = new Map<string, MitigationCount>()

  constructor(sinks: Sinks) {
    this.sinks = sinks
  }

  /** Recent actions, oldest first. */
  actions(): readonly ActionRecord[] {
    return this.records
  }

  /** Actions so far by strategy and outcome. */
  triggered(): MitigationCount[] {
    return [...this.counts.values()]
  }

  remember(r: ActionRecord): void {
    if (!this.records.includes(r)) this.records.push(r)
    if (this.records.length > MAX_RECORDS) this.records.splice(0, this.records.length - MAX_RECORDS)
  }

  count(strategy: string, outcome: MitigationOutcome): void {
    const key = `${strategy}|${outcome}`
    const c = this.counts.get(key)
    if (c === undefined) this.counts.set(key, { strategy, outcome, count: 1 })
    else c.count++
  }

  emitEvent(
    severity: MonitorEvent['severity'],
    replica: string,
    message: string,
    data: Record<string, unknown>,
    type = 'mitigation',
  ): void {
    try {
      this.sinks.emit({ type, severity, replica, gpu: null, message, data })
    } catch (err) {
      this.sinks.reportError('VLLM_MONITOR_MITIGATION_FAILED', `emitting an event failed: ${messageOf(err)}`)
    }
  }

  writeAudit(entry: Omit<AuditEntry, 'at'>): void {
    const log = this.sinks.audit
    if (log == null) return
    // A log that throws instead of rejecting must not throw into the native reflex's microtask
    // (an uncaught exception there ends the host process).
    const report = (err: unknown) => this.sinks.reportError('VLLM_MONITOR_AUDIT_LOG', messageOf(err))
    try {
      log.append(entry).catch(report)
    } catch (err) {
      report(err)
    }
  }

  /** A judged window: its audit entry, its event, and the label for the forecaster's retraining. */
  outcome(j: Judgement): void {
    this.writeAudit({
      t: j.judgedAt,
      kind: 'outcome',
      id: j.id,
      replica: j.replica,
      failureType: j.failureType,
      strategy: j.strategy,
      verdict: j.verdict,
      sloRestored: j.sloRestored,
      reward: j.reward,
      failedAt: j.failedAt,
      detail: j.detail,
    })
    this.emitEvent(
      j.verdict === 'occurred' ? 'warning' : 'info',
      j.replica,
      j.detail,
      {
        strategy: j.strategy,
        failureType: j.failureType,
        verdict: j.verdict,
        reward: j.reward,
        sloRestored: j.sloRestored,
      },
      'mitigation-outcome',
    )
    // A held-out window (no strategy) that ended well was a false alarm, not an avoided failure.
    const outcome =
      j.verdict === 'avoided' ? (j.strategy === null ? 'false-alarm' : 'avoided') : ('occurred' as const)
    try {
      this.sinks.reportOutcome?.({ t: j.judgedAt, replica: j.replica, failureType: j.failureType, outcome })
    } catch (err) {
      this.sinks.reportError(
        'VLLM_MONITOR_MITIGATION_FAILED',
        `reporting an outcome failed: ${messageOf(err)}`,
      )
    }
  }
}
