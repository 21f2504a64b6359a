/**
 * The continuous learner: which mitigation strategy to use for a failure type in a context.
 *
 * A conservative contextual bandit over the runbook (forecasting.md §"bandits"; Narya, Levy et al.
 * OSDI'20, replaced a static policy by online experiments and cut VM interruptions 26 %):
 *
 * - Contexts are buckets: per failure type, two or three features binned coarsely (`CONTEXT_BINS`),
 *   so a bucket fills up within weeks and every learned choice can be said in words (`rules()`).
 * - Each (failure type, bucket, strategy) arm has a Beta posterior over its mean reward, updated
 *   with fractional rewards (a += r, b += 1 - r). Thompson sampling (Chapelle & Li 2011) picks what
 *   to try; it copes with the 30 s–10 min delay before a mitigation is judged.
 * - The runbook default is played unless a learned arm is confidently no worse than it, or trying
 *   another arm keeps the conservative budget of Wu et al. 2016: the reward collected so far stays
 *   above (1 - alpha) times what the runbook alone would have collected.
 *
 * Everything random derives from the seed and a decision counter that is persisted, so a learner
 * restarted from its state file makes the decisions it would have made without the restart.
 */
import { InvalidArgumentError, InvalidOptionError } from '../errors.js'
import { FAILURE_TYPES } from '../forecast/spec.js'
import { createRng, type Rng } from '../sim/random.js'
import type { FailureType } from '../telemetry/types.js'
import { contextKey, describeContext, type LearnerFeatures } from './learner-context.js'
import {
  type ContinuousLearnerOptions,
  DEFAULT_RUNBOOK,
  type Decision,
  type LearnedRule,
  type Recommendation,
  validateOptions,
} from './learner-options.js'
import {
  isFailureType,
  type LearnerArmState,
  type LearnerBudgetState,
  type LearnerState,
  readLearnerState,
  writeLearnerState,
} from './learner-state.js'
import { type ArmStats, kEmptyArm, lowerBound, sampleBeta, upperBound } from './learner-stats.js'
import { MITIGATION_OUTCOMES, type MitigationOutcome, type MitigationStrategy } from './types.js'

export {
  CONTEXT_BINS,
  type ContextBin,
  contextKey,
  describeContext,
  type LearnerFeatures,
} from './learner-context.js'
export {
  type ContinuousLearnerOptions,
  DEFAULT_RUNBOOK,
  type Decision,
  type LearnedRule,
  type Recommendation,
} from './learner-options.js'
export type { LearnerArmState, LearnerBudgetState, LearnerState } from './learner-state.js'
export { sampleBeta } from './learner-stats.js'

interface Bucket {
  /** Judged decisions in this bucket, whatever the strategy. */
  trials: number
  arms: Map<string, ArmStats>
}

// A bucket's prior is what the strategy did in the failure type's other buckets, worth at most this
// many trials: a new context starts from experience, but two of its own trials already outweigh it.
const kPriorTrials = 2
// Monte Carlo draws per P(no worse): the standard error at p = 0.9 is 0.007.
const kConfidenceDraws = 2000
// An explored decision whose outcome never came (lost, restart) stops holding budget after this.
const kPendingTtlMs = 15 * 60_000

export class ContinuousLearner {
  readonly #runbook: Record<FailureType, string>
  readonly #statePath: string | null
  readonly #confidence: number
  readonly #minTrials: number
  readonly #alpha: number
  readonly #explore: boolean
  readonly #rng: Rng
  readonly #now: () => number
  readonly #strategies = new Map<string, MitigationStrategy>()
  #buckets = new Map<FailureType, Map<string, Bucket>>()
  /** Per `${failureType}|${strategy}`: the arm's totals over all buckets, for the borrowed priors. */
  #pooled = new Map<string, ArmStats>()
  #budget = new Map<FailureType, LearnerBudgetState>()
  /** Explorations awaiting their outcome: their budget is held as if they earned their lower bound. */
  readonly #pending = new Map<object, { failureType: FailureType; atMs: number; slack: number }>()
  #decisions = 0
  #updatedAt: number | null = null
  #lastError: Error | null = null
  #saveQueued: Promise<void> | null = null
  #saveChain: Promise<void> = Promise.resolve()

  constructor(options: ContinuousLearnerOptions = {}) {
    if (options === null || typeof options !== 'object')
      throw new InvalidOptionError('ContinuousLearner: options must be an object')
    validateOptions(options)
    this.#runbook = { ...DEFAULT_RUNBOOK, ...options.runbook }
    this.#statePath = options.statePath ?? null
    this.#confidence = options.confidence ?? 0.9
    this.#minTrials = options.minTrials ?? 5
    this.#alpha = options.alpha ?? 0.05
    this.#explore = options.explore ?? true
    this.#rng = createRng(options.seed ?? 'vllm-monitor-learner')
    this.#now = options.now ?? Date.now
  }

  /** The last problem with the state file (load or save), null when none. */
  get lastError(): Error | null {
    return this.#lastError
  }

  registerStrategy(name: string, strategy: MitigationStrategy): void {
    const fail = (m: string) => {
      throw new InvalidArgumentError(`registerStrategy: ${m}`)
    }
    if (typeof name !== 'string' || name.length === 0) fail('name must be a non-empty string')
    if (strategy === null || typeof strategy !== 'object') fail(`strategy "${name}" must be an object`)
    if (!Array.isArray(strategy.handles) || strategy.handles.length === 0)
      fail(`strategy "${name}" must handle a non-empty array of failure types`)
    for (const t of strategy.handles)
      if (!isFailureType(t)) fail(`strategy "${name}" handles an unknown failure type "${String(t)}"`)
    if (typeof strategy.execute !== 'function') fail(`strategy "${name}" must have an execute function`)
    this.#strategies.set(name, strategy)
  }

  unregisterStrategy(name: string): boolean {
    return this.#strategies.delete(name)
  }

  strategies(): MitigationStrategy[] {
    return [...this.#strategies.values()]
  }

  strategy(name: string): MitigationStrategy | undefined {
    return this.#strategies.get(name)
  }

  /** Registered strategies that handle `failureType`, in registration order. */
  candidates(failureType: FailureType): string[] {
    const out: string[] = []
    for (const [name, s] of this.#strategies) if (s.handles.includes(failureType)) out.push(name)
    return out
  }

  /** The strategy for this failure in this context; null when there is no candidate. */
  choose(
    failureType: FailureType,
    features: LearnerFeatures,
    candidates?: readonly string[],
  ): Decision | null {
    checkFailureType('choose', failureType)
    const names = this.#candidateList(failureType, candidates)
    if (names.length === 0) return null
    const runbook = this.#runbookAmong(failureType, names)
    const context = contextKey(failureType, features ?? {})
    const decision = this.#exploit(failureType, context, names, runbook)
    // The stream depends on the seed and the decision count only: scores() or a restart in between
    // leave the next decision unchanged.
    const n = this.#decisions++
    if (!this.#explore || names.length < 2) return decision
    const rng = this.#rng.fork(`decision-${n}`)
    let pick = runbook
    let top = Number.NEGATIVE_INFINITY
    for (const name of names) {
      const [a, b] = this.#posterior(failureType, context, name)
      const draw = sampleBeta(rng, a, b)
      if (draw > top) {
        top = draw
        pick = name
      }
    }
    // Sampling the runbook is always within budget: it is the baseline the budget is measured by.
    if (pick === runbook) return { strategy: runbook, basis: 'runbook', confidence: 1, context, runbook }
    if (pick === decision.strategy) return decision
    const slack = this.#explorationSlack(failureType, context, runbook, pick)
    if (slack === null) return decision
    const explored: Decision = {
      strategy: pick,
      basis: 'explore',
      confidence: this.#probNoWorse(failureType, context, pick, runbook),
      context,
      runbook,
    }
    this.#pending.set(explored, { failureType, atMs: this.#now(), slack })
    return explored
  }

  /** Learns from a judged decision; reward in [0, 1]. SKIPPED outcomes teach nothing (nothing was done). */
  update(
    decision: Decision | { failureType: FailureType; strategy: string; context: string },
    reward: number,
    outcome: MitigationOutcome,
  ): void {
    if (decision === null || typeof decision !== 'object')
      throw new InvalidArgumentError('update: decision must be an object')
    if (!MITIGATION_OUTCOMES.includes(outcome))
      throw new InvalidArgumentError(`update: unknown outcome "${String(outcome)}"`)
    const { strategy, context } = decision
    if (typeof strategy !== 'string' || strategy.length === 0)
      throw new InvalidArgumentError('update: decision.strategy must be a non-empty string')
    if (typeof context !== 'string')
      throw new InvalidArgumentError('update: decision.context must be a string')
    const failureType = 'failureType' in decision ? decision.failureType : context.split('|', 1)[0]
    if (!isFailureType(failureType) || !(context === failureType || context.startsWith(`${failureType}|`)))
      throw new InvalidArgumentError(`update: "${context}" is not a context of a known failure type`)
    this.#pending.delete(decision)
    if (outcome === 'SKIPPED') return
    if (typeof reward !== 'number' || !(reward >= 0 && reward <= 1))
      throw new InvalidArgumentError(`update: reward must be a number in [0, 1], got ${reward}`)
    this.#record(failureType, context, strategy, 1, reward >= 0.5 ? 1 : 0, reward)
    let ledger = this.#budget.get(failureType)
    if (ledger === undefined) {
      ledger = { trials: 0, rewardSum: 0, explorations: 0 }
      this.#budget.set(failureType, ledger)
    }
    ledger.trials++
    ledger.rewardSum += reward
    if ('basis' in decision && decision.basis === 'explore') ledger.explorations++
    this.#updatedAt = this.#now()
  }

  /** Each candidate's standing in this context, the runbook default first. */
  scores(
    failureType: FailureType,
    features: LearnerFeatures,
  ): Array<{ strategy: string; trials: number; meanReward: number | null; probNoWorseThanRunbook: number }> {
    checkFailureType('scores', failureType)
    const context = contextKey(failureType, features ?? {})
    let names = this.candidates(failureType)
    if (names.length === 0) {
      const seen = [...(this.#buckets.get(failureType)?.get(context)?.arms.keys() ?? [])].sort()
      names = [this.#runbook[failureType], ...seen]
    }
    const runbook = this.#runbookAmong(failureType, names)
    const ordered = [runbook, ...names.filter((n) => n !== runbook)]
    return ordered.map((strategy) => {
      const own = this.#arm(failureType, context, strategy)
      return {
        strategy,
        trials: own.trials,
        meanReward: own.trials > 0 ? own.rewardSum / own.trials : null,
        probNoWorseThanRunbook: this.#probNoWorse(failureType, context, strategy, runbook),
      }
    })
  }

  /**
   * What has been learned, one rule per context: the strategy with the best mean reward among those
   * tried at least `minTrials` times there. Ordered by failure type, then by evidence.
   */
  rules(minTrials: number = this.#minTrials): LearnedRule[] {
    if (!(Number.isInteger(minTrials) && minTrials >= 1))
      throw new InvalidArgumentError(`rules: minTrials must be a positive integer, got ${minTrials}`)
    const out: LearnedRule[] = []
    for (const failureType of FAILURE_TYPES) {
      const rules: LearnedRule[] = []
      for (const [context, bucket] of this.#buckets.get(failureType) ?? []) {
        let best: LearnedRule | null = null
        for (const [strategy, arm] of bucket.arms) {
          if (arm.trials < minTrials) continue
          const rule = toRule(failureType, context, strategy, arm)
          if (
            best === null ||
            rule.meanReward > best.meanReward ||
            (rule.meanReward === best.meanReward && rule.trials > best.trials)
          )
            best = rule
        }
        if (best !== null) rules.push(best)
      }
      rules.sort((x, y) => y.trials - x.trials || (x.context < y.context ? -1 : 1))
      out.push(...rules)
    }
    return out
  }

  /**
   * One recommendation per failure type named in `errors` (duplicates once): the strategy the
   * learner would pick without exploring, in the context `metrics` describes, and its rule.
   * `state` is accepted for the monitor's call shape; the context comes from `metrics` only.
   */
  getLearningRecommendations(
    _state: { replica?: string; lifecycleState?: string } | null,
    errors: readonly (FailureType | { failureType: FailureType })[],
    metrics: Partial<LearnerFeatures>,
  ): Recommendation[] {
    if (!Array.isArray(errors))
      throw new InvalidArgumentError('getLearningRecommendations: errors must be an array')
    const seen = new Set<FailureType>()
    const out: Recommendation[] = []
    for (const e of errors) {
      const failureType = typeof e === 'string' ? e : e?.failureType
      checkFailureType('getLearningRecommendations', failureType)
      if (seen.has(failureType)) continue
      seen.add(failureType)
      const context = contextKey(failureType, metrics ?? {})
      const registered = this.candidates(failureType)
      const names = registered.length > 0 ? registered : [this.#runbook[failureType]]
      const runbook = this.#runbookAmong(failureType, names)
      const d = this.#exploit(failureType, context, names, runbook)
      const own = this.#arm(failureType, context, d.strategy)
      const pooled = this.#pooled.get(`${failureType}|${d.strategy}`) ?? kEmptyArm
      const [a, b] = this.#posterior(failureType, context, d.strategy)
      out.push({
        failureType,
        strategy: d.strategy,
        basis: d.basis === 'learned' ? 'learned' : 'runbook',
        confidence: d.confidence,
        expectedReward: pooled.trials > 0 ? a / (a + b) : null,
        trials: own.trials,
        rule: own.trials > 0 ? toRule(failureType, context, d.strategy, own).text : null,
      })
    }
    return out
  }

  /**
   * Restores `statePath`. A missing file means a fresh start. An unreadable, corrupt or foreign
   * file is moved aside to `<path>.corrupt-<ms>` and learning starts fresh; the problem is kept in
   * `lastError`, never thrown: losing what was learned must not stop the monitor.
   */
  async load(): Promise<void> {
    const path = this.#statePath
    if (path === null) return
    const read = await readLearnerState(path, this.#now)
    if (read.kind === 'ok') this.#restore(read.state)
    // A file there but unreadable leaves the state as it is; a corrupt one (set aside) resets it.
    else if (read.kind === 'corrupt') this.#reset()
    this.#lastError = read.kind === 'unreadable' || read.kind === 'corrupt' ? read.error : null
  }

  /**
   * Writes the state atomically (a reader sees the old file or the new one). Saves run one at a
   * time; calls made while one is waiting share it, and it writes the state as of when it starts.
   */
  save(): Promise<void> {
    const path = this.#statePath
    if (path === null) return Promise.resolve()
    if (this.#saveQueued !== null) return this.#saveQueued
    const run = this.#saveChain.then(async () => {
      this.#saveQueued = null
      try {
        await writeLearnerState(path, this.toJSON())
      } catch (err) {
        this.#lastError = err as Error
        throw err
      }
    })
    this.#saveQueued = run
    this.#saveChain = run.catch(() => {})
    return run
  }

  toJSON(): LearnerState {
    const arms: LearnerArmState[] = []
    const budget: Partial<Record<FailureType, LearnerBudgetState>> = {}
    for (const failureType of FAILURE_TYPES) {
      for (const [context, bucket] of this.#buckets.get(failureType) ?? [])
        for (const [strategy, arm] of bucket.arms) arms.push({ failureType, context, strategy, ...arm })
      const ledger = this.#budget.get(failureType)
      if (ledger !== undefined) budget[failureType] = { ...ledger }
    }
    return { version: 1, decisions: this.#decisions, arms, budget, updatedAt: this.#updatedAt }
  }

  #candidateList(failureType: FailureType, candidates: readonly string[] | undefined): string[] {
    if (candidates === undefined) return this.candidates(failureType)
    if (!Array.isArray(candidates)) throw new InvalidArgumentError('choose: candidates must be an array')
    const out: string[] = []
    for (const c of candidates) {
      if (typeof c !== 'string' || c.length === 0)
        throw new InvalidArgumentError('choose: candidates must be non-empty strategy names')
      if (!out.includes(c)) out.push(c)
    }
    return out
  }

  #runbookAmong(failureType: FailureType, names: readonly string[]): string {
    const preferred = this.#runbook[failureType]
    return names.includes(preferred) ? preferred : names[0]!
  }

  /** Without exploring: a learned arm confidently no worse than the runbook, else the runbook. */
  #exploit(failureType: FailureType, context: string, names: readonly string[], runbook: string): Decision {
    let best: Decision = { strategy: runbook, basis: 'runbook', confidence: 1, context, runbook }
    let bestMean = Number.NEGATIVE_INFINITY
    for (const name of names) {
      if (name === runbook || this.#arm(failureType, context, name).trials < this.#minTrials) continue
      const p = this.#probNoWorse(failureType, context, name, runbook)
      if (p < this.#confidence) continue
      const [a, b] = this.#posterior(failureType, context, name)
      if (a / (a + b) > bestMean) {
        bestMean = a / (a + b)
        best = { strategy: name, basis: 'learned', confidence: p, context, runbook }
      }
    }
    return best
  }

  #arm(failureType: FailureType, context: string, strategy: string): ArmStats {
    return this.#buckets.get(failureType)?.get(context)?.arms.get(strategy) ?? kEmptyArm
  }

  /** Beta(a, b) of the arm in this bucket: its own trials over a prior borrowed from other buckets. */
  #posterior(failureType: FailureType, context: string, strategy: string): [number, number] {
    const own = this.#arm(failureType, context, strategy)
    const pooled = this.#pooled.get(`${failureType}|${strategy}`) ?? kEmptyArm
    // The other buckets only: a bucket must not count its own trials twice.
    const elsewhereMean = (1 + pooled.rewardSum - own.rewardSum) / (2 + pooled.trials - own.trials)
    return [
      kPriorTrials * elsewhereMean + own.rewardSum,
      kPriorTrials * (1 - elsewhereMean) + own.trials - own.rewardSum,
    ]
  }

  /**
   * P(arm's mean >= runbook's mean) under the posteriors, by Monte Carlo. Both streams restart from
   * fixed seeds on every call: the answer is a function of the posteriors, and comparing several
   * arms against the same runbook draws (common random numbers) keeps their ranking stable.
   */
  #probNoWorse(failureType: FailureType, context: string, strategy: string, runbook: string): number {
    if (strategy === runbook) return 1
    const [a, b] = this.#posterior(failureType, context, strategy)
    const [a0, b0] = this.#posterior(failureType, context, runbook)
    const armRng = this.#rng.fork('confidence-arm')
    const runbookRng = this.#rng.fork('confidence-runbook')
    let noWorse = 0
    for (let i = 0; i < kConfidenceDraws; i++)
      if (sampleBeta(armRng, a, b) >= sampleBeta(runbookRng, a0, b0)) noWorse++
    return noWorse / kConfidenceDraws
  }

  /**
   * Wu et al. 2016, conservative bandits: explore `arm` only if what was collected so far, plus a
   * pessimistic value for this play, stays >= (1 - alpha) x what the runbook would have earned in
   * the same contexts, this one included. Neither side is known, so each is bounded the safe way,
   * bucket by bucket, from own trials only (borrowed strength must not relax a safety check):
   * - the runbook's own plays count at what they earned on both sides, so their luck cancels;
   * - every other play counts at its arm's lower bound (n x LB), against the runbook's upper
   *   bound (an unknown runbook counts as nearly perfect, which only makes the learner careful).
   * This is stricter than comparing raw reward sums, where a lucky streak of an explored arm, or an
   * unlucky one of the runbook, reads as budget that is not there.
   * Returns the slack this play consumes (held until its outcome arrives), or null when the
   * budget does not allow it.
   */
  #explorationSlack(failureType: FailureType, context: string, runbook: string, arm: string): number | null {
    let collected = 0
    let baseline = 0
    for (const b of this.#buckets.get(failureType)?.values() ?? []) {
      const rb = b.arms.get(runbook) ?? kEmptyArm
      collected += rb.rewardSum
      baseline += rb.rewardSum + (b.trials - rb.trials) * upperBound(rb)
      for (const [name, a] of b.arms) if (name !== runbook) collected += a.trials * lowerBound(a)
    }
    // Outcomes arrive minutes later: explorations still in flight count at their pessimistic value.
    const nowMs = this.#now()
    for (const [key, p] of this.#pending) {
      if (nowMs - p.atMs > kPendingTtlMs) this.#pending.delete(key)
      else if (p.failureType === failureType) collected += p.slack
    }
    const here = upperBound(this.#arm(failureType, context, runbook))
    const slack = lowerBound(this.#arm(failureType, context, arm)) - (1 - this.#alpha) * here
    return collected + slack >= (1 - this.#alpha) * baseline ? slack : null
  }

  #record(
    failureType: FailureType,
    context: string,
    strategy: string,
    trials: number,
    successes: number,
    rewardSum: number,
  ): void {
    let buckets = this.#buckets.get(failureType)
    if (buckets === undefined) {
      buckets = new Map()
      this.#buckets.set(failureType, buckets)
    }
    let bucket = buckets.get(context)
    if (bucket === undefined) {
      bucket = { trials: 0, arms: new Map() }
      buckets.set(context, bucket)
    }
    bucket.trials += trials
    for (const stats of [
      bucket.arms.get(strategy) ??
        bucket.arms.set(strategy, { trials: 0, successes: 0, rewardSum: 0 }).get(strategy)!,
      this.#pooledArm(`${failureType}|${strategy}`),
    ]) {
      stats.trials += trials
      stats.successes += successes
      stats.rewardSum += rewardSum
    }
  }

  #pooledArm(key: string): ArmStats {
    let arm = this.#pooled.get(key)
    if (arm === undefined) {
      arm = { trials: 0, successes: 0, rewardSum: 0 }
      this.#pooled.set(key, arm)
    }
    return arm
  }

  #reset(): void {
    this.#buckets = new Map()
    this.#pooled = new Map()
    this.#budget = new Map()
    this.#pending.clear()
    this.#decisions = 0
    this.#updatedAt = null
  }

  /** Replaces the state with `s` (checked by `stateProblem`). */
  #restore(s: LearnerState): void {
    this.#reset()
    // Arms of strategies not registered now are kept: they may be registered later.
    for (const arm of s.arms)
      this.#record(arm.failureType, arm.context, arm.strategy, arm.trials, arm.successes, arm.rewardSum)
    for (const [k, v] of Object.entries(s.budget) as Array<[FailureType, LearnerBudgetState]>)
      this.#budget.set(k, { trials: v.trials, rewardSum: v.rewardSum, explorations: v.explorations })
    this.#decisions = s.decisions
    this.#updatedAt = s.updatedAt
  }
}

function toRule(failureType: FailureType, context: string, strategy: string, arm: ArmStats): LearnedRule {
  return {
    failureType,
    strategy,
    context,
    text: `${describeContext(context)}: ${strategy} succeeded ${arm.successes}/${arm.trials}`,
    successes: arm.successes,
    trials: arm.trials,
    meanReward: arm.rewardSum / arm.trials,
  }
}

function checkFailureType(fn: string, x: unknown): asserts x is FailureType {
  if (!isFailureType(x)) throw new InvalidArgumentError(`${fn}: unknown failure type "${String(x)}"`)
}
