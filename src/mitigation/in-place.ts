/**
 * What the orchestrator left in place after acting: caps and weights a strategy holds until its
 * alarm has been quiet, the native reflex's own caps that no strategy took over, and which of them
 * were escalated already. Owns their undoing: rollbacks once quiet, and everything lifted at close
 * (nobody would be left to lift a cap of 1 on a gateway that goes on serving).
 *
 * The alarm times and the running actions are the orchestrator's; they are read here (and a
 * rollback is registered as running under `key|rollback`, so no new action starts on the key
 * before it finished).
 */
import { MitigationError } from '../errors.js'
import type { FailureOnset } from '../forecast/onsets.js'
import type { Checkpoint } from '../telemetry/types.js'
import { type Candidate, strategyContext } from './candidates.js'
import type { OrchestratorOptions } from './orchestrator.js'
import { bounded, messageOf, queuedFor } from './orchestrator-util.js'
import type { ActionRecord, MitigationReporter } from './reporting.js'
import type { MitigationStrategy } from './types.js'

/** Rolling back at close must not hold the host's shutdown for long. */
const CLOSE_ROLLBACK_MS = 5_000

export interface InPlaceDeps {
  options: Pick<
    OrchestratorOptions,
    'actuators' | 'now' | 'reportError' | 'rollbackQuietMs' | 'actionTimeoutMs'
  >
  report: Pick<MitigationReporter, 'writeAudit'>
  /** Aborts on close(). */
  closing: AbortSignal
  /** Actions running now, by key (the orchestrator's map). */
  running: Map<string, Promise<void>>
  /** When each `replica|failureType` last alarmed (the orchestrator's map). */
  lastAlarmAt: ReadonlyMap<string, number>
}

export class InPlaceActions {
  private readonly deps: InPlaceDeps
  /** Actions left in place (caps, weights) until their alarm has been quiet, by key. */
  private readonly inPlace = new Map<string, { record: ActionRecord; strategy: MitigationStrategy }>()
  /** Replicas capped by the native reflex and not yet by a strategy: replica → when. */
  private readonly reflexCaps = new Map<string, number>()
  /** Ids of actions in place that were escalated already (each escalates once). */
  private readonly escalated = new Set<string>()

  constructor(deps: InPlaceDeps) {
    this.deps = deps
  }

  has(key: string): boolean {
    return this.inPlace.has(key)
  }

  /** Leaves an action in place until its alarm has been quiet (see rollbacks()). */
  place(key: string, record: ActionRecord, strategy: MitigationStrategy): void {
    this.inPlace.set(key, { record, strategy })
    // A strategy now holds the replica's admission for this OOM: its rollback lifts the cap.
    if (record.failureType === 'oom') this.reflexCaps.delete(record.replica)
  }

  /** The native reflex capped `replica`: until a strategy takes the cap over, it is the reflex's to lift. */
  reflexCapped(replica: string): void {
    if (!this.inPlace.has(`${replica}|oom`)) this.reflexCaps.set(replica, this.deps.options.now())
  }

  /**
   * The failure started although an action for it is in place (a cap the storm got past): the
   * candidate that runs the strategy that action names as its next step (ReduceBatchSize →
   * RestartWithSmallerBatch), once per action; null when there is none.
   */
  escalation(
    on: FailureOnset,
    strategyOf: (name: string) => MitigationStrategy | undefined,
  ): Candidate | null {
    const placed = this.inPlace.get(`${on.replica}|${on.failureType}`)
    const next = placed?.strategy.escalatesTo
    if (placed === undefined || next === undefined || this.escalated.has(placed.record.id)) return null
    // Only to a strategy that is there and handles this failure (a cap used for heat does not
    // escalate to a restart meant for a KV storm).
    if (!strategyOf(next)?.handles.includes(on.failureType)) return null
    this.escalated.add(placed.record.id)
    return {
      replica: on.replica,
      failureType: on.failureType,
      prediction: null,
      trigger: {
        kind: 'event',
        detail: `${on.failureType} started despite ${placed.record.strategy} (${on.detail}): escalating to ${next}`,
      },
      forced: next,
    }
  }

  /** Forgets the escalations of actions no longer in place. */
  sweep(): void {
    const placed = new Set<string>()
    for (const p of this.inPlace.values()) placed.add(p.record.id)
    for (const id of this.escalated) if (!placed.has(id)) this.escalated.delete(id)
  }

  /** Undoes actions left in place once their alarm has been quiet long enough (and they were judged). */
  rollbacks(t: number, cp: Checkpoint | null): void {
    const { options: o, report, running, lastAlarmAt } = this.deps
    const quiet = o.rollbackQuietMs ?? 30_000
    const admission = o.actuators.admission
    for (const [replica, at] of this.reflexCaps) {
      // The reflex's own cap, when no strategy took it over (refused, dry run, nothing to choose):
      // lifted once the OOM alarm has been quiet and the gateway holds nothing back for it.
      const key = `${replica}|oom`
      if (this.inPlace.has(key) || running.has(key)) continue
      const last = Math.max(at, lastAlarmAt.get(key) ?? Number.NEGATIVE_INFINITY)
      if (t - last < quiet || queuedFor(admission, replica) > 0) continue
      this.reflexCaps.delete(replica)
      try {
        admission?.release(replica)
        report.writeAudit({
          t: o.now(),
          kind: 'rollback',
          id: `native-${replica}-${Math.round(at)}`,
          replica,
          failureType: 'oom',
          strategy: 'native-reflex',
          detail: `no OOM alarm for ${Math.round((t - last) / 1000)} s`,
        })
      } catch (err) {
        o.reportError(
          'VLLM_MONITOR_MITIGATION_FAILED',
          `lifting the reflex cap on ${replica}: ${messageOf(err)}`,
        )
      }
    }
    for (const [key, { record, strategy }] of this.inPlace) {
      if (record.judgement === null) continue
      const alarmKey = `${record.replica}|${record.failureType}`
      const last = lastAlarmAt.get(alarmKey) ?? Number.NEGATIVE_INFINITY
      if (t - last < quiet || running.has(alarmKey)) continue
      // Quiet because the cap holds the demand back at the gateway is not over: lifting it now
      // would let the queue flood the replica. Wait until the gateway holds nothing for it.
      if (queuedFor(o.actuators.admission, record.replica) > 0) continue
      this.inPlace.delete(key)
      const detail = `alarm quiet for ${Math.round((t - last) / 1000)} s`
      const p = this.rollBack(record, strategy, cp, o.actionTimeoutMs ?? 60_000, detail, '').finally(() =>
        running.delete(`${key}|rollback`),
      )
      running.set(`${key}|rollback`, p)
    }
  }

  /**
   * Rolls one action in place back within `timeoutMs` and audits it; a failure (or a rollback that
   * runs out of time) is reported with `when` in the message, never thrown.
   */
  private async rollBack(
    record: ActionRecord,
    strategy: MitigationStrategy,
    cp: Checkpoint | null,
    timeoutMs: number,
    detail: string,
    when: string,
  ): Promise<void> {
    const { options: o, report } = this.deps
    const ctx = this.contextOf(record, cp)
    try {
      const done = await bounded(this.deps.closing, timeoutMs, (signal) =>
        Promise.resolve().then(() => strategy.rollback?.({ ...ctx, signal })),
      )
      if (done === null) throw new MitigationError(`it did not finish within ${timeoutMs} ms`)
      record.rolledBack = true
      report.writeAudit({
        t: o.now(),
        kind: 'rollback',
        id: record.id,
        replica: record.replica,
        failureType: record.failureType,
        strategy: record.strategy,
        detail,
      })
    } catch (err) {
      o.reportError(
        'VLLM_MONITOR_MITIGATION_FAILED',
        `rolling back ${record.strategy} on ${record.replica}${when} failed: ${messageOf(err)}`,
      )
    }
  }

  /** On close: the reflex's caps released, every action in place rolled back (bounded). */
  async liftAll(cp: Checkpoint | null): Promise<void> {
    const { options: o } = this.deps
    const admission = o.actuators.admission
    for (const replica of this.reflexCaps.keys()) {
      try {
        admission?.release(replica)
      } catch (err) {
        o.reportError(
          'VLLM_MONITOR_MITIGATION_FAILED',
          `lifting the reflex cap on ${replica}: ${messageOf(err)}`,
        )
      }
    }
    this.reflexCaps.clear()
    const timeoutMs = Math.min(o.actionTimeoutMs ?? 60_000, CLOSE_ROLLBACK_MS)
    const placed = [...this.inPlace.values()]
    this.inPlace.clear()
    await Promise.all(
      placed.map(({ record, strategy }) =>
        this.rollBack(record, strategy, cp, timeoutMs, 'monitor closing', ' at close'),
      ),
    )
  }

  /** The context a rollback runs in: the action's own replica, failure type and trigger. */
  private contextOf(record: ActionRecord, cp: Checkpoint | null) {
    const c: Candidate = {
      replica: record.replica,
      failureType: record.failureType,
      prediction: null,
      trigger: record.trigger,
    }
    return strategyContext(c, cp, this.deps.options.actuators, this.deps.options.now, this.deps.closing)
  }
}
