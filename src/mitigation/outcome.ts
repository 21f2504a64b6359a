/**
 * Outcome evaluation: within a window after each action, was the predicted failure avoided, and is
 * the replica inside its SLO again? The same judgement is made for holdout decisions (the action
 * chosen but not taken), which is the counterfactual: the failure rate of held-out alarms is what
 * the alarms would have cost with no mitigation.
 *
 * The truth is read from the data, as the forecaster's labels are (`OnsetTracker`): a preemption
 * at KV >= 0.9, CUDA OOM, a thermal reason bit, a hang, p99 over the SLO. A failure that had
 * already started when the action ran (a hang is detected after it starts) can still be
 * *recovered*: the replica serves again, with progress, inside the window.
 */
import type { FailureOnset } from '../forecast/onsets.js'
import type { SloOptions } from '../forecast/spec.js'
import type { Checkpoint, FailureType } from '../telemetry/types.js'

export type Verdict = 'avoided' | 'recovered' | 'occurred'

export interface JudgementInput {
  id: string
  replica: string
  failureType: FailureType
  /** null for a holdout (nothing was done). */
  strategy: string | null
  /** When the action ran (or would have), monitor ms. */
  t: number
  /** The failure had already started when the action ran (a detected hang, a fired alarm that is an onset). */
  alreadyFailing: boolean
}

export interface Judgement extends JudgementInput {
  verdict: Verdict
  /** p99 TTFT and ITL at the end of the window were within the SLO; null when unknown. */
  sloRestored: boolean | null
  /** 0-1, what the learner is taught. */
  reward: number
  /** When the failure started inside the window, null when it did not. */
  failedAt: number | null
  judgedAt: number
  detail: string
}

/** How long after an action its outcome is judged, per failure type (ms). */
export const DEFAULT_JUDGE_WINDOW_MS: Readonly<Record<FailureType, number>> = {
  'kv-exhaustion': 120_000,
  oom: 120_000,
  'slo-violation': 90_000,
  'thermal-throttle': 180_000,
  'queue-overflow': 90_000,
  'hardware-failure': 120_000,
  'network-failure': 180_000,
}

/**
 * The reward scale. Avoiding the failure is what matters most; an SLO still broken at the end of
 * the window halves the credit (a cap that avoids preemption by queueing everyone for 10 s is not
 * a success); recovering from a failure that happened is worth less than not having it.
 */
export function rewardOf(verdict: Verdict, sloRestored: boolean | null): number {
  const slo = sloRestored !== false
  if (verdict === 'avoided') return slo ? 1 : 0.5
  if (verdict === 'recovered') return slo ? 0.7 : 0.35
  return 0
}

interface Open extends JudgementInput {
  failedAt: number | null
  endsAt: number
  /** The window is stretched while the risk stays predicted, up to here. */
  latestEndsAt: number
}

/** A window stretches while the failure is still predicted, up to this many times its length. */
const MAX_STRETCH = 3

export class OutcomeJudge {
  readonly slo: SloOptions
  readonly windowMs: Readonly<Record<FailureType, number>>
  private open: Open[] = []

  constructor(options: { slo: SloOptions; windowMs?: Partial<Record<FailureType, number>> }) {
    this.slo = options.slo
    this.windowMs = { ...DEFAULT_JUDGE_WINDOW_MS, ...options.windowMs }
  }

  /** Starts the window of one action (or holdout). */
  start(input: JudgementInput): void {
    const w = this.windowMs[input.failureType]
    this.open.push({ ...input, failedAt: null, endsAt: input.t + w, latestEndsAt: input.t + MAX_STRETCH * w })
  }

  pending(): readonly JudgementInput[] {
    return this.open
  }

  /** Is an action for this replica and failure type still inside its window? */
  isOpen(replica: string, failureType: FailureType): boolean {
    return this.open.some((o) => o.replica === replica && o.failureType === failureType)
  }

  /**
   * Notes the onsets of this checkpoint and returns the actions whose window ended. A failure
   * that starts inside the window does not end it (recovery can still be seen); a window whose
   * failure is still predicted (`atRisk`) runs on, up to three times its length.
   */
  observe(
    cp: Checkpoint,
    onsets: readonly FailureOnset[],
    atRisk: (replica: string, failureType: FailureType) => boolean = () => false,
  ): Judgement[] {
    if (this.open.length === 0) return []
    for (const on of onsets) {
      for (const o of this.open) {
        if (
          o.replica === on.replica &&
          o.failureType === on.failureType &&
          o.failedAt === null &&
          on.t >= o.t
        ) {
          o.failedAt = on.t
        }
      }
    }
    const done: Judgement[] = []
    const keep: Open[] = []
    for (const o of this.open) {
      // "Not yet" is not "avoided": a slow leak predicted three minutes out is judged once the
      // forecaster stops predicting it (or the stretched window ends), not at the first window.
      const waiting =
        cp.t < o.endsAt || (o.failedAt === null && cp.t < o.latestEndsAt && atRisk(o.replica, o.failureType))
      if (waiting) keep.push(o)
      else done.push(this.judge(o, cp))
    }
    this.open = keep
    return done
  }

  /** Judges every open window now (on close). */
  flush(cp: Checkpoint): Judgement[] {
    const out = this.open.map((o) => this.judge(o, cp))
    this.open = []
    return out
  }

  private judge(o: Open, cp: Checkpoint): Judgement {
    const engine = cp.engines.find((e) => e.replica === o.replica)
    const r = engine?.reading ?? null
    const serving =
      engine !== undefined && (engine.lifecycleState === 'SERVING' || engine.lifecycleState === 'DEGRADED')
    let sloRestored: boolean | null = null
    if (serving && r?.reachable) {
      const ttft = r.ttftP99Ms ?? null
      const itl = r.itlP99Ms ?? null
      if (ttft !== null || itl !== null) {
        sloRestored =
          (ttft === null || ttft <= this.slo.ttftP99Ms) && (itl === null || itl <= this.slo.itlP99Ms)
      }
    } else if (engine !== undefined) sloRestored = false
    const failed = o.failedAt !== null || o.alreadyFailing
    let verdict: Verdict
    if (!failed) verdict = 'avoided'
    else if (serving && (engine?.derived.stalledForMs ?? 0) === 0) verdict = 'recovered'
    else verdict = 'occurred'
    // Hardware and network failures are not avoided by anything we do; being back in service is the win.
    const reward = rewardOf(verdict, sloRestored)
    const what = o.strategy === null ? 'holdout (no action)' : o.strategy
    const detail =
      verdict === 'avoided'
        ? `${o.failureType} on ${o.replica} avoided after ${what}`
        : verdict === 'recovered'
          ? `${o.failureType} on ${o.replica} recovered after ${what}`
          : `${o.failureType} on ${o.replica} happened despite ${what}` +
            (o.failedAt !== null ? ` (at t=${Math.round(o.failedAt / 1000)} s)` : '')
    return {
      id: o.id,
      replica: o.replica,
      failureType: o.failureType,
      strategy: o.strategy,
      t: o.t,
      alreadyFailing: o.alreadyFailing,
      verdict,
      sloRestored,
      reward,
      failedAt: o.failedAt,
      judgedAt: cp.t,
      detail: `${detail}; SLO ${sloRestored === null ? 'unknown' : sloRestored ? 'met' : 'violated'} at the end of the window`,
    }
  }
}
