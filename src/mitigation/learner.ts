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
import { mkdir, readFile, rename } from 'node:fs/promises'
import { basename, dirname } from 'node:path'
import { InvalidArgumentError, InvalidOptionError, LearnerStateError } from '../errors.js'
import { writeAtomic } from '../forecast/model-io.js'
import { FAILURE_TYPES } from '../forecast/spec.js'
import { createRng, type Rng } from '../sim/random.js'
import type { FailureType } from '../telemetry/types.js'
import { MITIGATION_OUTCOMES, type MitigationOutcome, type MitigationStrategy } from './types.js'

/** The context at decision time; null = unknown (it gets its own bin). */
export interface LearnerFeatures {
  /** 0-1. */
  kvCacheUsage: number | null
  requestsWaiting: number | null
  requestsRunning: number | null
  /** Worst GPU of the replica, 0-1. */
  memoryUsedFraction: number | null
  memoryGrowthBytesPerSec: number | null
  /** Memory held by other processes on the replica's GPUs. */
  cotenantMemoryBytes: number | null
  tempCelsius: number | null
  /** 0-1: spare serving capacity on the OTHER replicas (1 = idle, 0 = none / no other replica). */
  fleetHeadroom: number | null
  /** The prediction's probability. */
  probability: number | null
  timeToFailureS: number | null
}

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

export interface LearnerArmState {
  failureType: FailureType
  context: string
  strategy: string
  trials: number
  successes: number
  rewardSum: number
}

/**
 * The ledger of one failure type: every judged decision, whatever its basis. It says what the
 * learner collected; the budget check itself bounds each arm from the arms' own counts, which
 * this ledger must agree with.
 */
export interface LearnerBudgetState {
  trials: number
  rewardSum: number
  explorations: number
}

export interface LearnerState {
  version: 1
  /** Decisions made so far: keys each decision's random stream, so restarts replay the same draws. */
  decisions: number
  arms: LearnerArmState[]
  budget: Partial<Record<FailureType, LearnerBudgetState>>
  /** Clock (ms) of the last update, null before any. */
  updatedAt: number | null
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

/** One binned feature: `token` in the context key is `key + labels[i]`, `phrases[i]` says it in words. */
export interface ContextBin {
  feature: keyof LearnerFeatures
  key: string
  /** Ascending; bin i holds values in [cuts[i-1], cuts[i]). */
  cuts: readonly number[]
  labels: readonly string[]
  phrases: readonly string[]
  /** Said when the feature is null (token `key + '?'`). */
  unknown: string
}

const kMiB = 1_048_576
const kv: ContextBin = {
  feature: 'kvCacheUsage',
  key: 'kv',
  cuts: [0.8, 0.93],
  labels: ['<0.8', '0.8-0.93', '>=0.93'],
  phrases: ['kv_cache_usage < 0.8', '0.8 <= kv_cache_usage < 0.93', 'kv_cache_usage >= 0.93'],
  unknown: 'kv_cache_usage unknown',
}
// Cuts between integers: waiting is a gauge of requests, possibly averaged over a window.
const waiting: ContextBin = {
  feature: 'requestsWaiting',
  key: 'waiting',
  cuts: [0.5, 40.5],
  labels: ['=0', '1-40', '>40'],
  phrases: ['waiting = 0', '1 <= waiting <= 40', 'waiting > 40'],
  unknown: 'waiting unknown',
}
const headroom: ContextBin = {
  feature: 'fleetHeadroom',
  key: 'headroom',
  cuts: [0.3],
  labels: ['<0.3', '>=0.3'],
  phrases: ['fleet_headroom < 0.3', 'fleet_headroom >= 0.3'],
  unknown: 'fleet_headroom unknown',
}
// A leak (steady growth) and a burst call for different remedies than a stable but full GPU.
const growth: ContextBin = {
  feature: 'memoryGrowthBytesPerSec',
  key: 'growth',
  cuts: [kMiB, 100 * kMiB],
  labels: ['<1MiB/s', '1-100MiB/s', '>=100MiB/s'],
  phrases: ['memory_growth < 1 MiB/s', '1 MiB/s <= memory_growth < 100 MiB/s', 'memory_growth >= 100 MiB/s'],
  unknown: 'memory_growth unknown',
}
// A few hundred MiB is a monitoring agent or a CUDA context; more is someone else's workload.
const cotenant: ContextBin = {
  feature: 'cotenantMemoryBytes',
  key: 'cotenant',
  cuts: [256 * kMiB],
  labels: ['<256MiB', '>=256MiB'],
  phrases: ['cotenant_memory < 256 MiB', 'cotenant_memory >= 256 MiB'],
  unknown: 'cotenant_memory unknown',
}
const temp: ContextBin = {
  feature: 'tempCelsius',
  key: 'temp',
  cuts: [85],
  labels: ['<85C', '>=85C'],
  phrases: ['temp < 85 C', 'temp >= 85 C'],
  unknown: 'temp unknown',
}

/**
 * The features each failure type's context is made of. Few and coarse on purpose: every extra bin
 * multiplies the buckets that must each collect `minTrials` before anything is learned there.
 */
export const CONTEXT_BINS: Readonly<Record<FailureType, readonly ContextBin[]>> = Object.freeze({
  'kv-exhaustion': [kv, waiting, headroom],
  oom: [growth, cotenant, headroom],
  'slo-violation': [waiting, kv, headroom],
  'thermal-throttle': [temp, headroom],
  'queue-overflow': [waiting, headroom],
  'hardware-failure': [headroom],
  'network-failure': [headroom],
})

const kPhraseByToken = new Map<string, string>()
for (const bin of [kv, waiting, headroom, growth, cotenant, temp]) {
  for (let i = 0; i < bin.labels.length; i++) kPhraseByToken.set(bin.key + bin.labels[i]!, bin.phrases[i]!)
  kPhraseByToken.set(`${bin.key}?`, bin.unknown)
}

/** The bucket key of a context: the failure type, then one token per binned feature. */
export function contextKey(failureType: FailureType, features: Partial<LearnerFeatures>): string {
  let key: string = failureType
  for (const bin of CONTEXT_BINS[failureType]) {
    const v = features[bin.feature]
    let token = `${bin.key}?`
    if (typeof v === 'number' && Number.isFinite(v)) {
      let i = 0
      while (i < bin.cuts.length && v >= bin.cuts[i]!) i++
      token = bin.key + bin.labels[i]!
    }
    key += `|${token}`
  }
  return key
}

/** A bucket key in words ("kv_cache_usage >= 0.93 and waiting > 40 and fleet_headroom >= 0.3"). */
export function describeContext(context: string): string {
  const tokens = context.split('|').slice(1)
  if (tokens.length === 0) return 'any context'
  return tokens.map((t) => kPhraseByToken.get(t) ?? t).join(' and ')
}

// Thompson sampling from Beta posteriors needs Gamma draws; Marsaglia & Tsang, "A simple method for
// generating gamma variables" (ACM TOMS 2000), with their boost U^(1/a) for shapes below 1.
function sampleGamma(rng: Rng, shape: number): number {
  if (shape < 1) return sampleGamma(rng, shape + 1) * (1 - rng.next()) ** (1 / shape)
  const d = shape - 1 / 3
  const c = 1 / Math.sqrt(9 * d)
  for (;;) {
    let x: number
    let v: number
    do {
      x = rng.normal()
      v = 1 + c * x
    } while (v <= 0)
    v = v * v * v
    const u = rng.next()
    if (u < 1 - 0.0331 * x * x * x * x) return d * v
    if (Math.log(u) < 0.5 * x * x + d * (1 - v + Math.log(v))) return d * v
  }
}

/** A Beta(a, b) draw (both > 0). */
export function sampleBeta(rng: Rng, a: number, b: number): number {
  const x = sampleGamma(rng, a)
  const y = sampleGamma(rng, b)
  const s = x + y
  // Both underflow only for shapes near 0; the mean is then the honest answer.
  return s > 0 ? x / s : a / (a + b)
}

interface ArmStats {
  trials: number
  successes: number
  rewardSum: number
}

interface Bucket {
  /** Judged decisions in this bucket, whatever the strategy. */
  trials: number
  arms: Map<string, ArmStats>
}

// A bucket's prior is what the strategy did in the failure type's other buckets, worth at most this
// many trials: a new context starts from experience, but two of its own trials already outweigh it.
const kPriorTrials = 2
// One-sided 95 % normal quantile: the pessimistic and optimistic bounds of the budget check.
const kZ = 1.645
// Monte Carlo draws per P(no worse): the standard error at p = 0.9 is 0.007.
const kConfidenceDraws = 2000
// An explored decision whose outcome never came (lost, restart) stops holding budget after this.
const kPendingTtlMs = 15 * 60_000

const kEmptyArm: ArmStats = Object.freeze({ trials: 0, successes: 0, rewardSum: 0 })

function isFailureType(x: unknown): x is FailureType {
  return typeof x === 'string' && (FAILURE_TYPES as readonly string[]).includes(x)
}

function betaMeanSd(a: number, b: number): [number, number] {
  const n = a + b
  return [a / n, Math.sqrt((a * b) / (n * n * (n + 1)))]
}

/** One-sided 95 % bounds of an arm's mean from its own trials (uniform prior, normal approximation). */
function lowerBound(arm: ArmStats): number {
  const [mean, sd] = betaMeanSd(1 + arm.rewardSum, 1 + arm.trials - arm.rewardSum)
  return Math.max(0, mean - kZ * sd)
}

function upperBound(arm: ArmStats): number {
  const [mean, sd] = betaMeanSd(1 + arm.rewardSum, 1 + arm.trials - arm.rewardSum)
  return Math.min(1, mean + kZ * sd)
}

function validateOptions(o: ContinuousLearnerOptions): void {
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
    let text: string
    try {
      text = await readFile(path, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        this.#lastError = null
        return
      }
      this.#lastError = new LearnerStateError(
        `learner state ${path}: cannot read it (${(err as Error).message}); learning starts fresh`,
        { cause: err },
      )
      return
    }
    let problem: string | null
    let cause: unknown
    try {
      problem = this.#restore(JSON.parse(text))
    } catch (err) {
      problem = `not valid JSON (${(err as Error).message})`
      cause = err
    }
    if (problem === null) {
      this.#lastError = null
      return
    }
    this.#reset()
    const aside = `${path}.corrupt-${this.#now()}`
    let moved = `moved aside to ${basename(aside)}`
    try {
      await rename(path, aside)
    } catch (err) {
      moved = `could not be moved aside (${(err as Error).message})`
    }
    this.#lastError = new LearnerStateError(
      `learner state ${path}: ${problem}; ${moved}, learning starts fresh`,
      cause === undefined ? undefined : { cause },
    )
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
        await mkdir(dirname(path), { recursive: true })
        await writeAtomic(path, `${JSON.stringify(this.toJSON())}\n`)
      } catch (err) {
        const error = new LearnerStateError(
          `learner state ${path}: cannot write it (${(err as Error).message})`,
          {
            cause: err,
          },
        )
        this.#lastError = error
        throw error
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

  /** Replaces the state with `data`; returns what is wrong with it (and changes nothing) or null. */
  #restore(data: unknown): string | null {
    if (data === null || typeof data !== 'object' || Array.isArray(data)) return 'not a learner state object'
    const s = data as Record<string, unknown>
    if (s.version !== 1) return `version ${JSON.stringify(s.version)} is not the supported version 1`
    if (!(Number.isInteger(s.decisions) && (s.decisions as number) >= 0)) return 'decisions is not a count'
    if (!Array.isArray(s.arms)) return 'arms is not an array'
    if (s.updatedAt !== null && typeof s.updatedAt !== 'number') return 'updatedAt is not a number or null'
    if (s.budget === null || typeof s.budget !== 'object' || Array.isArray(s.budget))
      return 'budget is not an object'
    for (const [i, arm] of (s.arms as unknown[]).entries()) {
      const problem = armProblem(arm)
      if (problem !== null) return `arms[${i}] ${problem}`
    }
    for (const [k, v] of Object.entries(s.budget)) {
      if (!isFailureType(k)) return `budget has an unknown failure type "${k}"`
      const l = v as Record<string, unknown> | null
      if (
        l === null ||
        typeof l !== 'object' ||
        !isCount(l.trials) ||
        !isCount(l.explorations) ||
        !(typeof l.rewardSum === 'number' && l.rewardSum >= 0 && l.rewardSum <= (l.trials as number))
      )
        return `budget["${k}"] is not a ledger of trials, rewardSum and explorations`
    }
    this.#reset()
    // Arms of strategies not registered now are kept: they may be registered later.
    for (const arm of s.arms as LearnerArmState[])
      this.#record(arm.failureType, arm.context, arm.strategy, arm.trials, arm.successes, arm.rewardSum)
    for (const [k, v] of Object.entries(s.budget as Record<string, LearnerBudgetState>))
      this.#budget.set(k as FailureType, {
        trials: v.trials,
        rewardSum: v.rewardSum,
        explorations: v.explorations,
      })
    this.#decisions = s.decisions as number
    this.#updatedAt = s.updatedAt as number | null
    return null
  }
}

function isCount(x: unknown): boolean {
  return Number.isInteger(x) && (x as number) >= 0
}

function armProblem(x: unknown): string | null {
  if (x === null || typeof x !== 'object') return 'is not an object'
  const a = x as Record<string, unknown>
  if (!isFailureType(a.failureType)) return `has an unknown failure type ${JSON.stringify(a.failureType)}`
  if (
    typeof a.context !== 'string' ||
    !(a.context === a.failureType || a.context.startsWith(`${a.failureType}|`))
  )
    return 'has a context that is not of its failure type'
  if (typeof a.strategy !== 'string' || a.strategy.length === 0) return 'has no strategy name'
  if (!isCount(a.trials) || !isCount(a.successes) || (a.successes as number) > (a.trials as number))
    return 'has trials and successes that are not counts (successes <= trials)'
  if (!(typeof a.rewardSum === 'number' && a.rewardSum >= 0 && a.rewardSum <= (a.trials as number)))
    return 'has a rewardSum outside [0, trials]'
  return null
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
