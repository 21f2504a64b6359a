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
 *
 * This module is the coordinator: which candidate may start when (one response per replica and
 * failure type at a time), the reflex, and close(). The pieces it composes: `candidates.ts`
 * (what to act on), `pipeline.ts` (decision to outcome), `in-place.ts` (what stays in place and
 * its undoing), `reporting.ts` (audit, events, counts).
 */
import { type FailureOnset, OnsetTracker } from '../forecast/onsets.js'
import type { SloOptions } from '../forecast/spec.js'
import { createRng } from '../sim/random.js'
import type { Checkpoint, FailureType, MonitorEvent, Prediction } from '../telemetry/types.js'
import type { AuditLog } from './audit.js'
import { type Candidate, selectCandidates } from './candidates.js'
import { MemoryGrowth } from './context.js'
import { InPlaceActions } from './in-place.js'
import type { ContinuousLearner } from './learner.js'
import { capOf, messageOf, validateOptions } from './orchestrator-util.js'
import { OutcomeJudge } from './outcome.js'
import { ActionPipeline } from './pipeline.js'
import { type ActionRecord, type MitigationCount, MitigationReporter } from './reporting.js'
import type { SafetyGate } from './safety.js'
import type { MitigationActuators, MitigationTrigger } from './types.js'

export type { ActionRecord, MitigationCount } from './reporting.js'

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

/** An alarm this recent means the failure is still predicted. */
const STILL_AT_RISK_MS = 5_000
/** How often the per-key maps drop what replicas that left (or went quiet) left behind. */
const SWEEP_MS = 60_000

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
  /** Actions running now, by `replica|failureType` (rollbacks by `...|rollback`). */
  private readonly running = new Map<string, Promise<void>>()
  private readonly lastAlarmAt = new Map<string, number>()
  /** A refused action (cooldown, denial, rate limit) is not asked again for this key before then. */
  private readonly deferUntil = new Map<string, number>()
  private readonly memory = new MemoryGrowth()
  private readonly controller = new AbortController()
  private readonly report: MitigationReporter
  private readonly placed: InPlaceActions
  private readonly pipeline: ActionPipeline

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
    this.report = new MitigationReporter(options)
    const closing = this.controller.signal
    this.placed = new InPlaceActions({
      options,
      report: this.report,
      closing,
      running: this.running,
      lastAlarmAt: this.lastAlarmAt,
    })
    this.pipeline = new ActionPipeline({
      options,
      judge: this.judge,
      report: this.report,
      placed: this.placed,
      deferUntil: this.deferUntil,
      memory: this.memory,
      rand: this.rand,
      nextSeq: () => ++this.seq,
      isClosed: () => this.closed,
      closing,
    })
  }

  /** Recent actions, oldest first. */
  actions(): readonly ActionRecord[] {
    return this.report.actions()
  }

  /** Actions so far by strategy and outcome (the `vllm:monitor_mitigation_triggered` counter). */
  triggered(): MitigationCount[] {
    return this.report.triggered()
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
    const candidates = selectCandidates(predictions, alarms, this.options.threshold)
    for (const c of candidates) this.lastAlarmAt.set(`${c.replica}|${c.failureType}`, t)
    const atRisk = (replica: string, type: FailureType) =>
      t - (this.lastAlarmAt.get(`${replica}|${type}`) ?? Number.NEGATIVE_INFINITY) <= STILL_AT_RISK_MS
    for (const on of onsets) this.escalate(on, cp)
    for (const j of this.judge.observe(cp, onsets, atRisk)) this.pipeline.judged(j)
    this.placed.rollbacks(t, this.lastCp)
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
          // Until a strategy takes the cap over, it is the reflex's to lift (see in-place.ts).
          this.placed.reflexCapped(replica)
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
      this.report.writeAudit({
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
    await this.placed.liftAll(this.lastCp)
    await this.pipeline.saving
    await this.options.learner.save().catch((err: unknown) => {
      this.options.reportError('VLLM_MONITOR_LEARNER_STATE', `saving the learner failed: ${messageOf(err)}`)
    })
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
      (c.forced === undefined && (this.placed.has(key) || this.judge.isOpen(c.replica, c.failureType)))
    )
      return
    if ((this.deferUntil.get(key) ?? Number.NEGATIVE_INFINITY) > this.options.now()) return
    const p = this.pipeline
      .act(c, cp, key)
      .catch((err: unknown) => {
        this.options.reportError(
          'VLLM_MONITOR_MITIGATION_FAILED',
          `mitigating ${c.failureType} on ${c.replica} failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`,
        )
      })
      .finally(() => this.running.delete(key))
    this.running.set(key, p)
  }

  /** The failure started despite an action in place: its escalation, through the same gate. */
  private escalate(on: FailureOnset, cp: Checkpoint): void {
    const c = this.placed.escalation(on, (name) => this.options.learner.strategy(name))
    if (c !== null) this.consider(c, cp)
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
      if (t - at <= quiet || this.placed.has(key) || this.running.has(key)) continue
      this.lastAlarmAt.delete(key)
    }
    const now = this.options.now()
    for (const [key, until] of this.deferUntil) if (until <= now) this.deferUntil.delete(key)
    this.memory.sweep(t)
    this.placed.sweep()
  }
}
