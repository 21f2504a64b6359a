/**
 * One candidate's way from decision to outcome: the learner chooses (or an escalation forces) a
 * strategy, a share is held out as the no-action baseline, the safety gate admits it or not (or
 * makes it a dry run), the strategy executes under a deadline, and the judged window teaches the
 * learner. The orchestrator decides when a candidate gets here (one per key at a time); this
 * module decides what happens to it.
 */
import { MitigationError } from '../errors.js'
import type { Checkpoint } from '../telemetry/types.js'
import { type Candidate, strategyContext } from './candidates.js'
import { contextFeatures, failingNow, type MemoryGrowth } from './context.js'
import type { InPlaceActions } from './in-place.js'
import type { Decision, LearnerFeatures } from './learner.js'
import { contextKey } from './learner-context.js'
import type { OrchestratorOptions } from './orchestrator.js'
import { bounded, messageOf, noop, sanitize } from './orchestrator-util.js'
import type { Judgement, OutcomeJudge } from './outcome.js'
import type { ActionRecord, MitigationReporter } from './reporting.js'
import type { MitigationContext, MitigationResult, MitigationStrategy } from './types.js'

/** How long a refusal without a retry time (denied, busy, bound reached) holds a key back. */
const DEFER_MS = 60_000
/** Reading co-tenants must not hold a decision (or close()) for longer than nvidia-smi's own deadline. */
const FEATURES_TIMEOUT_MS = 5_000

export interface PipelineDeps {
  options: OrchestratorOptions
  judge: OutcomeJudge
  report: MitigationReporter
  placed: InPlaceActions
  /** Refused keys and when they may be asked again (the orchestrator's map). */
  deferUntil: Map<string, number>
  memory: MemoryGrowth
  /** Draws in [0, 1) for the holdout. */
  rand: () => number
  /** The orchestrator's sequence, shared with the native reflex's audit ids. */
  nextSeq: () => number
  isClosed: () => boolean
  /** Aborts on close(). */
  closing: AbortSignal
}

export class ActionPipeline {
  private readonly deps: PipelineDeps
  /** Decisions started and not judged yet, by action id. */
  private readonly pending = new Map<
    string,
    { record: ActionRecord; decision: Decision; strategy: MitigationStrategy }
  >()
  private savingChain: Promise<void> = Promise.resolve()

  constructor(deps: PipelineDeps) {
    this.deps = deps
  }

  /** The learner saves queued so far (close() awaits them before its own). */
  get saving(): Promise<void> {
    return this.savingChain
  }

  async act(c: Candidate, cp: Checkpoint, key: string): Promise<void> {
    const { options: o, report, judge } = this.deps
    if (o.ready !== undefined) await o.ready.then(noop, noop)
    const t = o.now()
    const features = await this.features(cp, c)
    if (this.deps.isClosed()) return
    const decision: Decision | null =
      c.forced === undefined
        ? o.learner.choose(c.failureType, features, o.candidates?.(c.failureType))
        : {
            strategy: c.forced,
            basis: 'runbook',
            confidence: 1,
            context: contextKey(c.failureType, features),
            runbook: c.forced,
          }
    const id = `m${t.toFixed(0)}-${this.deps.nextSeq()}`
    const base = { id, replica: c.replica, failureType: c.failureType }
    if (decision === null) {
      report.writeAudit({ t, kind: 'skipped', ...base, strategy: null, reason: 'no strategy handles it' })
      return
    }
    const strategy = o.learner.strategy(decision.strategy)
    if (strategy === undefined) return
    report.writeAudit({
      t,
      kind: 'decision',
      ...base,
      strategy: decision.strategy,
      basis: c.forced === undefined ? decision.basis : 'escalation',
      confidence: decision.confidence,
      context: decision.context,
      runbook: decision.runbook,
      trigger: c.trigger,
      features,
    })
    const record: ActionRecord = {
      id,
      t,
      replica: c.replica,
      failureType: c.failureType,
      strategy: decision.strategy,
      basis: c.forced === undefined ? decision.basis : 'escalation',
      context: decision.context,
      features,
      trigger: c.trigger,
      result: null,
      holdout: false,
      judgement: null,
      rolledBack: false,
    }
    const alreadyFailing = failingNow(cp, c.replica, c.failureType)
    if ((o.holdout ?? 0) > 0 && this.deps.rand() < (o.holdout ?? 0)) {
      record.holdout = true
      this.release(decision)
      report.remember(record)
      report.writeAudit({ t, kind: 'skipped', ...base, strategy: decision.strategy, reason: 'holdout' })
      judge.start({ id, replica: c.replica, failureType: c.failureType, strategy: null, t, alreadyFailing })
      this.pending.set(id, { record, decision, strategy })
      return
    }
    const verdict = await o.safety.admit({
      id,
      replica: c.replica,
      failureType: c.failureType,
      strategy: decision.strategy,
      disruptive: strategy.disruptive,
      reason: c.trigger.detail,
      ...(c.forced === undefined ? {} : { escalation: true }),
    })
    if (!verdict.allowed) {
      this.release(decision)
      // Asking again every tick would only repeat the refusal (and re-ask a human who said no).
      this.deps.deferUntil.set(key, o.now() + (verdict.retryAfterMs ?? DEFER_MS))
      report.count(decision.strategy, 'SKIPPED')
      report.writeAudit({
        t: o.now(),
        kind: 'skipped',
        ...base,
        strategy: decision.strategy,
        reason: verdict.reason,
        detail: verdict.detail,
      })
      return
    }
    if (verdict.dryRun) {
      o.safety.finish(id)
      this.release(decision)
      report.count(decision.strategy, 'SKIPPED')
      report.writeAudit({
        t: o.now(),
        kind: 'skipped',
        ...base,
        strategy: decision.strategy,
        reason: 'dry-run',
      })
      report.emitEvent(
        'info',
        c.replica,
        `dry run: would run ${decision.strategy} for ${c.failureType} on ${c.replica} (${c.trigger.detail})`,
        { strategy: decision.strategy, failureType: c.failureType, dryRun: true },
      )
      return
    }
    const ctx = strategyContext(c, cp, o.actuators, o.now, this.deps.closing)
    let result: MitigationResult
    try {
      result = await this.execute(strategy, ctx)
    } finally {
      o.safety.finish(id)
    }
    record.result = result
    report.remember(record)
    report.count(decision.strategy, result.outcome)
    report.writeAudit({
      t: o.now(),
      kind: 'action',
      ...base,
      strategy: decision.strategy,
      outcome: result.outcome,
      detail: result.detail,
      actions: result.actions,
    })
    report.emitEvent(
      result.outcome === 'FAILURE' ? 'warning' : 'info',
      c.replica,
      `${decision.strategy} for ${c.failureType} on ${c.replica}: ${result.outcome} (${result.detail})`,
      {
        strategy: decision.strategy,
        outcome: result.outcome,
        failureType: c.failureType,
        basis: decision.basis,
        trigger: c.trigger.kind,
      },
      'mitigation',
    )
    if (result.outcome === 'SKIPPED') {
      this.release(decision)
      return
    }
    judge.start({
      id,
      replica: c.replica,
      failureType: c.failureType,
      strategy: decision.strategy,
      t,
      alreadyFailing,
    })
    this.pending.set(id, { record, decision, strategy })
    // An escalation sits beside the action it escalated: each is rolled back on its own.
    if (strategy.rollback !== undefined)
      this.deps.placed.place(c.forced === undefined ? key : `${key}|escalation`, record, strategy)
  }

  /** A judged window: the learner learns from it (a holdout teaches nothing), then it is reported. */
  judged(j: Judgement): void {
    const p = this.pending.get(j.id)
    this.pending.delete(j.id)
    if (p !== undefined) {
      p.record.judgement = j
      // A holdout teaches nothing about a strategy; it is the no-action baseline.
      if (!p.record.holdout && p.record.result !== null) {
        this.deps.options.learner.update(p.decision, j.reward, p.record.result.outcome)
        this.saveLearner()
      }
    }
    this.deps.report.outcome(j)
  }

  private async execute(strategy: MitigationStrategy, ctx: MitigationContext): Promise<MitigationResult> {
    const o = this.deps.options
    const timeoutMs = o.actionTimeoutMs ?? 60_000
    const done = await bounded(this.deps.closing, timeoutMs, (signal) =>
      Promise.resolve()
        .then(() => strategy.execute({ ...ctx, signal }))
        .then(
          (r) => sanitize(strategy.name, r),
          (err: unknown) => {
            const e = new MitigationError(`${strategy.name} threw: ${messageOf(err)}`, {
              cause: err,
            })
            o.reportError(e.code, e.message)
            return { outcome: 'FAILURE' as const, detail: e.message, actions: [] }
          },
        ),
    )
    return (
      done?.value ?? {
        outcome: 'FAILURE',
        detail: `${strategy.name} did not finish within ${timeoutMs} ms`,
        actions: [],
      }
    )
  }

  /**
   * A decision that will never be judged (held out, refused, a dry run, a strategy that did not
   * act): tell the learner, so a declined exploration stops holding its exploration budget.
   */
  private release(decision: Decision): void {
    try {
      this.deps.options.learner.update(decision, 0, 'SKIPPED')
    } catch (err) {
      this.deps.options.reportError('VLLM_MONITOR_MITIGATION_FAILED', `learner: ${messageOf(err)}`)
    }
  }

  /** The learner's context; co-tenants are read through the process actuator, bounded. */
  private async features(cp: Checkpoint, c: Candidate): Promise<LearnerFeatures> {
    let cotenant: number | null = null
    const procs = this.deps.options.actuators.processes
    if (procs !== null) {
      try {
        const list = await bounded(this.deps.closing, FEATURES_TIMEOUT_MS, () => procs.cotenants(c.replica))
        cotenant = list === null ? null : list.value.reduce((s, p) => s + (p.memoryUsedBytes ?? 0), 0)
      } catch {
        cotenant = null
      }
    }
    return contextFeatures(cp, c.replica, c.prediction, this.deps.memory, cotenant)
  }

  private saveLearner(): void {
    const o = this.deps.options
    this.savingChain = this.savingChain
      .then(() => o.learner.save())
      .catch((err: unknown) => {
        o.reportError('VLLM_MONITOR_LEARNER_STATE', `saving the learner failed: ${messageOf(err)}`)
      })
  }
}
