/**
 * The orchestrator closes the loop: predictions (and the native fast path's alerts) become
 * candidate actions, the learner chooses a strategy, the safety gate decides whether it may run
 * now, the strategy acts through the actuators, and the outcome judge scores it after a window;
 * the score teaches the learner and labels the forecaster's online retraining. Every decision,
 * action and outcome goes to the audit log and out as events and metrics.
 *
 * Nothing here throws into the monitor: a strategy that throws is a FAILURE, an actuator that
 * fails is reported, an audit log that cannot be written is reported and the action still runs.
 *
 * The native path is a reflex, not a decision: when the sampler thread sees GPU memory cross its
 * bound, `nativeAlert` caps admissions to the replica synchronously (no await, no allocation
 * beyond the cap's reason string) and then queues the considered response (EmergencyGPUMemoryCleanup
 * or whatever the learner prefers) on the normal path.
 */
import { MitigationError } from '../errors.js'
import { type FailureOnset, OnsetTracker } from '../forecast/onsets.js'
import { SCORING, type SloOptions } from '../forecast/spec.js'
import { createRng } from '../sim/random.js'
import type { Checkpoint, FailureType, MonitorEvent, Prediction } from '../telemetry/types.js'
import type { AuditEntry, AuditLog } from './audit.js'
import { contextFeatures, failingNow, MemoryGrowth } from './context.js'
import type { ContinuousLearner, Decision, LearnerFeatures } from './learner.js'
import { contextKey } from './learner-context.js'
import { capOf, messageOf, noop, queuedFor, sanitize, validateOptions } from './orchestrator-util.js'
import { type Judgement, OutcomeJudge } from './outcome.js'
import type { SafetyGate } from './safety.js'
import type {
  MitigationActuators,
  MitigationContext,
  MitigationOutcome,
  MitigationResult,
  MitigationStrategy,
  MitigationTrigger,
} from './types.js'

export interface OrchestratorOptions {
  learner: ContinuousLearner
  actuators: MitigationActuators
  safety: SafetyGate
  /** Where decisions, actions and outcomes are appended (an `AuditLog`). */
  audit?: Pick<AuditLog, 'append'> | null
  /**
   * Act on predictions at or above this probability (at each type's alarm horizon). Undefined:
   * act on the forecaster's alarms, whose per-type thresholds were tuned to <= 0.5 false alarms per
   * replica-hour on validation runs.
   */
  threshold?: number
  /** Share of decisions held out (chosen, not executed, judged anyway): the counterfactual. Default 0. */
  holdout?: number
  slo: SloOptions
  judgeWindowMs?: Partial<Record<FailureType, number>>
  /** Deadline of one strategy's execute (default 60 s); it is aborted past it. */
  actionTimeoutMs?: number
  /** An action left in place is rolled back once its alarm has been quiet this long (default 30 s). */
  rollbackQuietMs?: number
  /**
   * The strategies the learner may choose from for a failure type (default: every registered one
   * that handles it). Leave out those whose actuators this deployment lacks.
   */
  candidates?: (failureType: FailureType) => readonly string[]
  /** Share of the running requests the native reflex caps a replica at (default 0.5). */
  nativeCapFraction?: number
  now: () => number
  /** Seeds the holdout draws. */
  seed?: number
  /**
   * Resolves once the learner's state was restored. No decision is made before it: a choice made
   * on the empty state would be wiped by the restore (and its save could overwrite the file).
   */
  ready?: Promise<unknown>
  emit: (event: MonitorEvent) => void
  reportError: (code: string, message: string) => void
  /** Labels for the forecaster's online retraining. */
  reportOutcome?: (o: {
    t: number
    replica: string
    failureType: FailureType
    outcome: 'occurred' | 'avoided' | 'false-alarm'
  }) => void
}

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

interface Candidate {
  replica: string
  failureType: FailureType
  prediction: Prediction | null
  trigger: MitigationTrigger
  /** Run this strategy, not the learner's choice: the escalation of one that was not enough. */
  forced?: string
}

const MAX_RECORDS = 500
/** Rolling back at close must not hold the host's shutdown for long. */
const CLOSE_ROLLBACK_MS = 5_000
/** An alarm this recent means the failure is still predicted. */
const STILL_AT_RISK_MS = 5_000
/** How long a refusal without a retry time (denied, busy, bound reached) holds a key back. */
const DEFER_MS = 60_000
/** How often the per-key maps drop what replicas that left (or went quiet) left behind. */
const SWEEP_MS = 60_000
/** Reading co-tenants must not hold a decision (or close()) for longer than nvidia-smi's own deadline. */
const FEATURES_TIMEOUT_MS = 5_000

export class MitigationOrchestrator {
  readonly options: OrchestratorOptions
  readonly judge: OutcomeJudge
  private readonly tracker: OnsetTracker
  private readonly rand: () => number
  private seq = 0
  private closed = false
  private lastCp: Checkpoint | null = null
  private lastOnsetSecond = -1
  private lastSweepAt = Number.NEGATIVE_INFINITY
  /** Actions running now, by `replica|failureType`. */
  private readonly running = new Map<string, Promise<void>>()
  /** Actions left in place (caps, weights) until their alarm has been quiet, by key. */
  private readonly inPlace = new Map<string, { record: ActionRecord; strategy: MitigationStrategy }>()
  /** Replicas capped by the native reflex and not yet by a strategy: replica → when. */
  private readonly reflexCaps = new Map<string, number>()
  /** Ids of actions in place that were escalated already (each escalates once). */
  private readonly escalated = new Set<string>()
  private readonly lastAlarmAt = new Map<string, number>()
  /** A refused action (cooldown, denial, rate limit) is not asked again for this key before then. */
  private readonly deferUntil = new Map<string, number>()
  private readonly records: ActionRecord[] = []
  private readonly counts = new Map<string, MitigationCount>()
  private readonly memory = new MemoryGrowth()
  private readonly controller = new AbortController()
  private saving: Promise<void> = Promise.resolve()

  constructor(options: OrchestratorOptions) {
    validateOptions(options)
    this.options = options
    this.judge = new OutcomeJudge({
      slo: options.slo,
      ...(options.judgeWindowMs === undefined ? {} : { windowMs: options.judgeWindowMs }),
    })
    this.tracker = new OnsetTracker({ slo: options.slo })
    // Seeds that differ by one must not draw alike: the holdout is a randomized trial.
    const rng = createRng(`${options.seed ?? 1}/holdout`)
    this.rand = () => rng.next()
  }

  /** Recent actions, oldest first. */
  actions(): readonly ActionRecord[] {
    return this.records
  }

  /** Actions so far by strategy and outcome (the `vllm:monitor_mitigation_triggered` counter). */
  triggered(): MitigationCount[] {
    return [...this.counts.values()]
  }

  /** Whether an action is running or left in place now. */
  get inProgress(): boolean {
    return this.running.size > 0
  }

  /** Resolves once every running action has finished (tests, the simulator loop). */
  async settle(): Promise<void> {
    while (this.running.size > 0) await Promise.allSettled([...this.running.values()])
  }

  /**
   * One forecast tick: judges the windows that ended, rolls back what is no longer needed, and
   * starts actions for new candidates. `alarms` are the forecaster's alarms of `predictions`.
   */
  observe(cp: Checkpoint, predictions: readonly Prediction[], alarms: readonly Prediction[]): void {
    if (this.closed) return
    this.lastCp = cp
    this.memory.observe(cp)
    const sec = Math.floor(cp.t / 1000)
    let onsets: FailureOnset[] = []
    if (sec > this.lastOnsetSecond) {
      this.lastOnsetSecond = sec
      onsets = this.tracker.observe(cp)
    }
    const t = cp.t
    const candidates = this.candidates(predictions, alarms)
    for (const c of candidates) this.lastAlarmAt.set(`${c.replica}|${c.failureType}`, t)
    const atRisk = (replica: string, type: FailureType) =>
      t - (this.lastAlarmAt.get(`${replica}|${type}`) ?? Number.NEGATIVE_INFINITY) <= STILL_AT_RISK_MS
    for (const on of onsets) this.escalate(on, cp)
    for (const j of this.judge.observe(cp, onsets, atRisk)) this.judged(j)
    this.rollbacks(t)
    for (const c of candidates) this.consider(c, cp)
    if (t - this.lastSweepAt >= SWEEP_MS) {
      this.lastSweepAt = t
      this.sweep(t)
    }
  }

  /**
   * The native fast path: GPU memory of `replica` crossed its bound. Caps admissions at once
   * (synchronously) and queues the considered response. Returns the cap applied, or null.
   */
  nativeAlert(replica: string, detail: string): number | null {
    if (this.closed) return null
    const admission = this.options.actuators.admission
    const dryRun = this.options.safety.dryRun
    let limit: number | null = null
    if (admission !== null && !dryRun) {
      const running = this.runningOf(replica)
      limit = Math.max(1, Math.floor((running ?? 8) * (this.options.nativeCapFraction ?? 0.5)))
      try {
        // A repeated alert must not loosen a tighter cap already held (the considered response's).
        const held = capOf(admission, replica)
        if (held !== null && held <= limit) limit = held
        else {
          admission.cap(replica, limit, 'native memory watch')
          // Until a strategy takes the cap over, it is the reflex's to lift (see rollbacks()).
          if (!this.inPlace.has(`${replica}|oom`)) this.reflexCaps.set(replica, this.options.now())
        }
      } catch (err) {
        this.options.reportError(
          'VLLM_MONITOR_MITIGATION_FAILED',
          `native reflex: capping ${replica} failed: ${messageOf(err)}`,
        )
        limit = null
      }
    }
    const trigger: MitigationTrigger = { kind: 'native-alert', detail }
    queueMicrotask(() => {
      this.writeAudit({
        t: this.options.now(),
        kind: 'action',
        id: `native-${++this.seq}`,
        replica,
        failureType: 'oom',
        strategy: 'native-reflex',
        outcome: limit === null ? 'SKIPPED' : 'SUCCESS',
        detail: dryRun
          ? `${detail}; dry run: no cap`
          : limit === null
            ? `${detail}; no admission actuator`
            : `${detail}; capped ${replica} at ${limit}`,
      })
      if (this.lastCp !== null)
        this.consider({ replica, failureType: 'oom', prediction: null, trigger }, this.lastCp)
    })
    return limit
  }

  /**
   * Stops acting, judges nothing further, waits for running actions, lifts what is still in place
   * (nobody would be left to lift a cap of 1 on a gateway that goes on serving), saves the learner.
   */
  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.controller.abort()
    await this.settle()
    await this.liftAll()
    await this.saving
    await this.options.learner.save().catch((err: unknown) => {
      this.options.reportError('VLLM_MONITOR_LEARNER_STATE', `saving the learner failed: ${messageOf(err)}`)
    })
  }

  /** On close: the reflex's caps released, every action in place rolled back (bounded). */
  private async liftAll(): Promise<void> {
    const admission = this.options.actuators.admission
    for (const replica of this.reflexCaps.keys()) {
      try {
        admission?.release(replica)
      } catch (err) {
        this.options.reportError(
          'VLLM_MONITOR_MITIGATION_FAILED',
          `lifting the reflex cap on ${replica}: ${messageOf(err)}`,
        )
      }
    }
    this.reflexCaps.clear()
    const timeoutMs = Math.min(this.options.actionTimeoutMs ?? 60_000, CLOSE_ROLLBACK_MS)
    const placed = [...this.inPlace.values()]
    this.inPlace.clear()
    await Promise.all(
      placed.map(async ({ record, strategy }) => {
        const ctx = this.context(
          {
            replica: record.replica,
            failureType: record.failureType,
            prediction: null,
            trigger: record.trigger,
          },
          this.lastCp,
        )
        try {
          const done = await this.bounded(timeoutMs, (signal) =>
            Promise.resolve().then(() => strategy.rollback?.({ ...ctx, signal })),
          )
          if (done === null) throw new MitigationError(`it did not finish within ${timeoutMs} ms`)
          record.rolledBack = true
          this.writeAudit({
            t: this.options.now(),
            kind: 'rollback',
            id: record.id,
            replica: record.replica,
            failureType: record.failureType,
            strategy: record.strategy,
            detail: 'monitor closing',
          })
        } catch (err) {
          this.options.reportError(
            'VLLM_MONITOR_MITIGATION_FAILED',
            `rolling back ${record.strategy} on ${record.replica} at close failed: ${messageOf(err)}`,
          )
        }
      }),
    )
  }

  private candidates(predictions: readonly Prediction[], alarms: readonly Prediction[]): Candidate[] {
    const thr = this.options.threshold
    const chosen = new Map<string, Prediction>()
    const source =
      thr === undefined
        ? alarms
        : predictions.filter((p) => p.horizonS === SCORING[p.failureType].horizonS && p.probability >= thr)
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

  private consider(c: Candidate, cp: Checkpoint): void {
    // A native alert's queued response can come after close().
    if (this.closed) return
    const key = `${c.replica}|${c.failureType}`
    // One response per replica and failure type at a time: running, in place, being judged, or
    // being rolled back (a rollback finishing after a new action would lift the new action's cap).
    // An escalation is the exception: it follows an action in place that the failure got past.
    if (
      this.running.has(key) ||
      this.running.has(`${key}|rollback`) ||
      (c.forced === undefined && (this.inPlace.has(key) || this.judge.isOpen(c.replica, c.failureType)))
    )
      return
    if ((this.deferUntil.get(key) ?? Number.NEGATIVE_INFINITY) > this.options.now()) return
    const p = this.act(c, cp, key)
      .catch((err: unknown) => {
        this.options.reportError(
          'VLLM_MONITOR_MITIGATION_FAILED',
          `mitigating ${c.failureType} on ${c.replica} failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`,
        )
      })
      .finally(() => this.running.delete(key))
    this.running.set(key, p)
  }

  private async act(c: Candidate, cp: Checkpoint, key: string): Promise<void> {
    const o = this.options
    if (o.ready !== undefined) await o.ready.then(noop, noop)
    const t = o.now()
    const features = await this.features(cp, c)
    if (this.closed) return
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
    const id = `m${t.toFixed(0)}-${++this.seq}`
    const base = { id, replica: c.replica, failureType: c.failureType }
    if (decision === null) {
      this.writeAudit({ t, kind: 'skipped', ...base, strategy: null, reason: 'no strategy handles it' })
      return
    }
    const strategy = o.learner.strategy(decision.strategy)
    if (strategy === undefined) return
    this.writeAudit({
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
    if ((o.holdout ?? 0) > 0 && this.rand() < (o.holdout ?? 0)) {
      record.holdout = true
      this.release(decision)
      this.remember(record)
      this.writeAudit({ t, kind: 'skipped', ...base, strategy: decision.strategy, reason: 'holdout' })
      this.judge.start({
        id,
        replica: c.replica,
        failureType: c.failureType,
        strategy: null,
        t,
        alreadyFailing,
      })
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
      this.deferUntil.set(key, o.now() + (verdict.retryAfterMs ?? DEFER_MS))
      this.count(decision.strategy, 'SKIPPED')
      this.writeAudit({
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
      this.count(decision.strategy, 'SKIPPED')
      this.writeAudit({
        t: o.now(),
        kind: 'skipped',
        ...base,
        strategy: decision.strategy,
        reason: 'dry-run',
      })
      this.emitEvent(
        'info',
        c.replica,
        `dry run: would run ${decision.strategy} for ${c.failureType} on ${c.replica} (${c.trigger.detail})`,
        { strategy: decision.strategy, failureType: c.failureType, dryRun: true },
      )
      return
    }
    const ctx = this.context(c, cp)
    let result: MitigationResult
    try {
      result = await this.execute(strategy, ctx)
    } finally {
      o.safety.finish(id)
    }
    record.result = result
    this.remember(record)
    this.count(decision.strategy, result.outcome)
    this.writeAudit({
      t: o.now(),
      kind: 'action',
      ...base,
      strategy: decision.strategy,
      outcome: result.outcome,
      detail: result.detail,
      actions: result.actions,
    })
    this.emitEvent(
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
    this.judge.start({
      id,
      replica: c.replica,
      failureType: c.failureType,
      strategy: decision.strategy,
      t,
      alreadyFailing,
    })
    this.pending.set(id, { record, decision, strategy })
    // An escalation sits beside the action it escalated: each is rolled back on its own.
    if (strategy.rollback !== undefined) {
      this.inPlace.set(c.forced === undefined ? key : `${key}|escalation`, { record, strategy })
      // A strategy now holds the replica's admission for this OOM: its rollback lifts the cap.
      if (c.failureType === 'oom') this.reflexCaps.delete(c.replica)
    }
  }

  private readonly pending = new Map<
    string,
    { record: ActionRecord; decision: Decision; strategy: MitigationStrategy }
  >()

  private async execute(strategy: MitigationStrategy, ctx: MitigationContext): Promise<MitigationResult> {
    const timeoutMs = this.options.actionTimeoutMs ?? 60_000
    const done = await this.bounded(timeoutMs, (signal) =>
      Promise.resolve()
        .then(() => strategy.execute({ ...ctx, signal }))
        .then(
          (r) => sanitize(strategy.name, r),
          (err: unknown) => {
            const e = new MitigationError(`${strategy.name} threw: ${messageOf(err)}`, {
              cause: err,
            })
            this.options.reportError(e.code, e.message)
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
   * Runs `work` with a signal that aborts on close() or past `timeoutMs`; past it, resolves null
   * without waiting for `work` any longer (a strategy that ignores its signal must not hold a key,
   * a safety slot or close() forever).
   */
  private async bounded<T>(
    timeoutMs: number,
    work: (signal: AbortSignal) => Promise<T>,
  ): Promise<{ value: T } | null> {
    const ac = new AbortController()
    const closing = this.controller.signal
    const onClose = () => ac.abort(closing.reason)
    // Started after close() (a native alert's queued response): the abort event has already fired.
    if (closing.aborted) onClose()
    else closing.addEventListener('abort', onClose, { once: true })
    let timer: ReturnType<typeof setTimeout> | null = null
    const deadline = new Promise<null>((resolve) => {
      timer = setTimeout(() => {
        ac.abort(new Error(`deadline of ${timeoutMs} ms passed`))
        resolve(null)
      }, timeoutMs)
      timer.unref?.()
    })
    try {
      return await Promise.race([work(ac.signal).then((value) => ({ value })), deadline])
    } finally {
      if (timer !== null) clearTimeout(timer)
      closing.removeEventListener('abort', onClose)
    }
  }

  private judged(j: Judgement): void {
    const o = this.options
    const p = this.pending.get(j.id)
    this.pending.delete(j.id)
    if (p !== undefined) {
      p.record.judgement = j
      // A holdout teaches nothing about a strategy; it is the no-action baseline.
      if (!p.record.holdout && p.record.result !== null) {
        o.learner.update(p.decision, j.reward, p.record.result.outcome)
        this.saveLearner()
      }
    }
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
    const outcome =
      j.verdict === 'avoided' ? (j.strategy === null ? 'false-alarm' : 'avoided') : ('occurred' as const)
    try {
      o.reportOutcome?.({ t: j.judgedAt, replica: j.replica, failureType: j.failureType, outcome })
    } catch (err) {
      o.reportError('VLLM_MONITOR_MITIGATION_FAILED', `reporting an outcome failed: ${messageOf(err)}`)
    }
  }

  /** Undoes actions left in place once their alarm has been quiet long enough (and they were judged). */
  private rollbacks(t: number): void {
    const quiet = this.options.rollbackQuietMs ?? 30_000
    const admission = this.options.actuators.admission
    for (const [replica, at] of this.reflexCaps) {
      // The reflex's own cap, when no strategy took it over (refused, dry run, nothing to choose):
      // lifted once the OOM alarm has been quiet and the gateway holds nothing back for it.
      const key = `${replica}|oom`
      if (this.inPlace.has(key) || this.running.has(key)) continue
      const last = Math.max(at, this.lastAlarmAt.get(key) ?? Number.NEGATIVE_INFINITY)
      if (t - last < quiet || queuedFor(admission, replica) > 0) continue
      this.reflexCaps.delete(replica)
      try {
        admission?.release(replica)
        this.writeAudit({
          t: this.options.now(),
          kind: 'rollback',
          id: `native-${replica}-${Math.round(at)}`,
          replica,
          failureType: 'oom',
          strategy: 'native-reflex',
          detail: `no OOM alarm for ${Math.round((t - last) / 1000)} s`,
        })
      } catch (err) {
        this.options.reportError(
          'VLLM_MONITOR_MITIGATION_FAILED',
          `lifting the reflex cap on ${replica}: ${messageOf(err)}`,
        )
      }
    }
    for (const [key, { record, strategy }] of this.inPlace) {
      if (record.judgement === null) continue
      const alarmKey = `${record.replica}|${record.failureType}`
      const last = this.lastAlarmAt.get(alarmKey) ?? Number.NEGATIVE_INFINITY
      if (t - last < quiet || this.running.has(alarmKey)) continue
      // Quiet because the cap holds the demand back at the gateway is not over: lifting it now
      // would let the queue flood the replica. Wait until the gateway holds nothing for it.
      if (queuedFor(this.options.actuators.admission, record.replica) > 0) continue
      this.inPlace.delete(key)
      const cp = this.lastCp
      const ctx = this.context(
        {
          replica: record.replica,
          failureType: record.failureType,
          prediction: null,
          trigger: record.trigger,
        },
        cp,
      )
      const timeoutMs = this.options.actionTimeoutMs ?? 60_000
      const p = this.bounded(timeoutMs, (signal) =>
        Promise.resolve().then(() => strategy.rollback?.({ ...ctx, signal })),
      )
        .then((done) => {
          if (done === null) throw new MitigationError(`it did not finish within ${timeoutMs} ms`)
          record.rolledBack = true
        })
        .then(
          () =>
            this.writeAudit({
              t: this.options.now(),
              kind: 'rollback',
              id: record.id,
              replica: record.replica,
              failureType: record.failureType,
              strategy: record.strategy,
              detail: `alarm quiet for ${Math.round((t - last) / 1000)} s`,
            }),
          (err: unknown) =>
            this.options.reportError(
              'VLLM_MONITOR_MITIGATION_FAILED',
              `rolling back ${record.strategy} on ${record.replica} failed: ${messageOf(err)}`,
            ),
        )
        .finally(() => this.running.delete(`${key}|rollback`))
      this.running.set(`${key}|rollback`, p)
    }
  }

  private context(c: Candidate, cp: Checkpoint | null): MitigationContext {
    return {
      replica: c.replica,
      failureType: c.failureType,
      prediction: c.prediction,
      trigger: c.trigger,
      checkpoint: cp,
      replicas: cp === null ? [c.replica] : cp.engines.map((e) => e.replica),
      actuators: this.options.actuators,
      now: this.options.now,
      signal: this.controller.signal,
    }
  }

  private runningOf(replica: string): number | null {
    const e = this.lastCp?.engines.find((x) => x.replica === replica)
    return e?.reading?.requestsRunning ?? null
  }

  /** Drops what keys of replicas that left (or went quiet) left behind; the maps would grow with churn. */
  private sweep(t: number): void {
    const quiet = Math.max(STILL_AT_RISK_MS, this.options.rollbackQuietMs ?? 30_000)
    for (const [key, at] of this.lastAlarmAt) {
      // An action running or in place still reads its alarm's time to decide its rollback.
      if (t - at <= quiet || this.inPlace.has(key) || this.running.has(key)) continue
      this.lastAlarmAt.delete(key)
    }
    const now = this.options.now()
    for (const [key, until] of this.deferUntil) if (until <= now) this.deferUntil.delete(key)
    this.memory.sweep(t)
    const placed = new Set<string>()
    for (const p of this.inPlace.values()) placed.add(p.record.id)
    for (const id of this.escalated) if (!placed.has(id)) this.escalated.delete(id)
  }

  /**
   * The failure started although an action for it is in place (a cap the storm got past): run
   * the strategy that action names as its next step (ReduceBatchSize → RestartWithSmallerBatch),
   * once per action, through the same safety gate.
   */
  private escalate(on: FailureOnset, cp: Checkpoint): void {
    const placed = this.inPlace.get(`${on.replica}|${on.failureType}`)
    const next = placed?.strategy.escalatesTo
    if (placed === undefined || next === undefined || this.escalated.has(placed.record.id)) return
    // Only to a strategy that is there and handles this failure (a cap used for heat does not
    // escalate to a restart meant for a KV storm).
    if (!this.options.learner.strategy(next)?.handles.includes(on.failureType)) return
    this.escalated.add(placed.record.id)
    this.consider(
      {
        replica: on.replica,
        failureType: on.failureType,
        prediction: null,
        trigger: {
          kind: 'event',
          detail: `${on.failureType} started despite ${placed.record.strategy} (${on.detail}): escalating to ${next}`,
        },
        forced: next,
      },
      cp,
    )
  }

  /**
   * A decision that will never be judged (held out, refused, a dry run, a strategy that did not
   * act): tell the learner, so a declined exploration stops holding its exploration budget.
   */
  private release(decision: Decision): void {
    try {
      this.options.learner.update(decision, 0, 'SKIPPED')
    } catch (err) {
      this.options.reportError('VLLM_MONITOR_MITIGATION_FAILED', `learner: ${messageOf(err)}`)
    }
  }

  /** The learner's context; co-tenants are read through the process actuator, bounded. */
  private async features(cp: Checkpoint, c: Candidate): Promise<LearnerFeatures> {
    let cotenant: number | null = null
    const procs = this.options.actuators.processes
    if (procs !== null) {
      try {
        const list = await this.bounded(FEATURES_TIMEOUT_MS, () => procs.cotenants(c.replica))
        cotenant = list === null ? null : list.value.reduce((s, p) => s + (p.memoryUsedBytes ?? 0), 0)
      } catch {
        cotenant = null
      }
    }
    return contextFeatures(cp, c.replica, c.prediction, this.memory, cotenant)
  }

  private remember(r: ActionRecord): void {
    if (!this.records.includes(r)) this.records.push(r)
    if (this.records.length > MAX_RECORDS) this.records.splice(0, this.records.length - MAX_RECORDS)
  }

  private count(strategy: string, outcome: MitigationOutcome): void {
    const key = `${strategy}|${outcome}`
    const c = this.counts.get(key)
    if (c === undefined) this.counts.set(key, { strategy, outcome, count: 1 })
    else c.count++
  }

  private emitEvent(
    severity: MonitorEvent['severity'],
    replica: string,
    message: string,
    data: Record<string, unknown>,
    type = 'mitigation',
  ): void {
    try {
      this.options.emit({ type, severity, replica, gpu: null, message, data })
    } catch (err) {
      this.options.reportError(
        'VLLM_MONITOR_MITIGATION_FAILED',
        `emitting an event failed: ${messageOf(err)}`,
      )
    }
  }

  private writeAudit(entry: Omit<AuditEntry, 'at'>): void {
    const log = this.options.audit
    if (log == null) return
    // A log that throws instead of rejecting must not throw into the native reflex's microtask
    // (an uncaught exception there ends the host process).
    const report = (err: unknown) => this.options.reportError('VLLM_MONITOR_AUDIT_LOG', messageOf(err))
    try {
      log.append(entry).catch(report)
    } catch (err) {
      report(err)
    }
  }

  private saveLearner(): void {
    this.saving = this.saving
      .then(() => this.options.learner.save())
      .catch((err: unknown) => {
        this.options.reportError('VLLM_MONITOR_LEARNER_STATE', `saving the learner failed: ${messageOf(err)}`)
      })
  }
}
