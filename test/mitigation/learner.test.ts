// The continuous learner (src/mitigation/learner.ts): a conservative contextual bandit over the
// runbook. The synthetic environment below has a known best strategy per context, so the tests can
// say both "it learns" and "it never costs more than alpha = 5 % against the runbook on the way".
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { InvalidArgumentError, InvalidOptionError, LearnerStateError } from '../../src/errors.js'
import {
  ContinuousLearner,
  type ContinuousLearnerOptions,
  contextKey,
  DEFAULT_RUNBOOK,
  type Decision,
  describeContext,
  type LearnerFeatures,
} from '../../src/mitigation/learner.js'
import type { FailureType, MitigationStrategy } from '../../src/mitigation/types.js'
import { createRng, type Rng } from '../../src/sim/random.js'

const kvPressure: LearnerFeatures = {
  kvCacheUsage: 0.95,
  requestsWaiting: 50,
  requestsRunning: 64,
  memoryUsedFraction: 0.9,
  memoryGrowthBytesPerSec: 0,
  cotenantMemoryBytes: 0,
  tempCelsius: 70,
  fleetHeadroom: 0.5,
  probability: 0.9,
  timeToFailureS: 30,
}
const withHeadroom: LearnerFeatures = { ...kvPressure, fleetHeadroom: 0.5 }
const withoutHeadroom: LearnerFeatures = { ...kvPressure, fleetHeadroom: 0.1 }

// kv-exhaustion: with spare capacity elsewhere, moving load away works best; without it, only
// shrinking the batch helps. The runbook default (ReduceBatchSize) is right in one context only.
const kSuccess = {
  roomy: { ReduceBatchSize: 0.6, RebalanceLoad: 0.9 },
  cramped: { ReduceBatchSize: 0.8, RebalanceLoad: 0.2 },
} as const
const kBest = { roomy: 'RebalanceLoad', cramped: 'ReduceBatchSize' } as const
type Situation = keyof typeof kSuccess

function strategy(name: string, handles: readonly FailureType[]): MitigationStrategy {
  return {
    name,
    handles,
    disruptive: false,
    execute: async () => ({ outcome: 'SUCCESS', detail: 'done', actions: [] }),
  }
}

function learner(options: ContinuousLearnerOptions = {}): ContinuousLearner {
  // A fixed clock: updatedAt is part of the state, and the tests compare states.
  const l = new ContinuousLearner({ seed: 1, now: () => 1_700_000_000_000, ...options })
  l.registerStrategy('ReduceBatchSize', strategy('ReduceBatchSize', ['kv-exhaustion']))
  l.registerStrategy('RebalanceLoad', strategy('RebalanceLoad', ['kv-exhaustion', 'thermal-throttle']))
  return l
}

/**
 * Plays `episodes` kv-exhaustion incidents in random situations and feeds back Bernoulli rewards.
 * Tracks, with the true success probabilities (no noise), what the learner's choices earned and
 * what the runbook alone would have earned, and how often the best strategy was picked from
 * episode `countFrom` on.
 */
function play(l: ContinuousLearner, env: Rng, episodes: number, countFrom = 0) {
  let learnerExpected = 0
  let runbookExpected = 0
  let worstRatio = Number.POSITIVE_INFINITY
  let bestPicks = 0
  const bases = new Set<Decision['basis']>()
  for (let i = 0; i < episodes; i++) {
    const situation: Situation = env.next() < 0.5 ? 'roomy' : 'cramped'
    const d = l.choose('kv-exhaustion', situation === 'roomy' ? withHeadroom : withoutHeadroom)!
    bases.add(d.basis)
    const p = kSuccess[situation][d.strategy as keyof (typeof kSuccess)[Situation]]
    learnerExpected += p
    runbookExpected += kSuccess[situation].ReduceBatchSize
    worstRatio = Math.min(worstRatio, learnerExpected / runbookExpected)
    if (i >= countFrom && d.strategy === kBest[situation]) bestPicks++
    const reward = env.next() < p ? 1 : 0
    l.update(d, reward, reward === 1 ? 'SUCCESS' : 'FAILURE')
  }
  return { worstRatio, bestPicks, bases }
}

let dir: string
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vllm-monitor-'))
})
afterEach(async () => {
  await rm(dir, { recursive: true, force: true })
})

describe('ContinuousLearner.choose', () => {
  it('picks the runbook default, with basis runbook, when it knows nothing', () => {
    const d = learner().choose('kv-exhaustion', withHeadroom)
    expect(d).toEqual({
      strategy: 'ReduceBatchSize',
      basis: 'runbook',
      confidence: 1,
      context: 'kv-exhaustion|kv>=0.93|waiting>40|headroom>=0.3',
      runbook: 'ReduceBatchSize',
    })
  })

  it('takes the first candidate as the runbook when the runbook default is not a candidate', () => {
    const d = learner().choose('kv-exhaustion', withHeadroom, ['RebalanceLoad', 'ShedLoad'])
    expect(d?.runbook).toBe('RebalanceLoad')
    expect(d?.strategy).toBe('RebalanceLoad')
  })

  it('returns null when no strategy handles the failure type', () => {
    expect(learner().choose('oom', kvPressure)).toBeNull()
    expect(learner().choose('kv-exhaustion', kvPressure, [])).toBeNull()
  })

  it.each([1, 2, 3])(
    'with seed %i, picks the best strategy per context >= 90 %% of the time after 100 episodes per context, never 5 %% below the runbook',
    (seed) => {
      const l = learner({ seed })
      const env = createRng(`environment-${seed}`)
      // 200 episodes (about 100 per context) to learn, then 100 to count the best picks in.
      const { worstRatio, bestPicks, bases } = play(l, env, 300, 200)
      expect(bestPicks).toBeGreaterThanOrEqual(90)
      expect(worstRatio).toBeGreaterThanOrEqual(0.95)
      expect(bases).toEqual(new Set(['runbook', 'explore', 'learned']))
    },
  )

  it('never explores with explore: false, but still uses what it learned', () => {
    const teacher = learner({ seed: 4 })
    play(teacher, createRng('environment-4'), 200)
    const l = learner({ seed: 4, explore: false })
    for (const arm of teacher.toJSON().arms)
      for (let i = 0; i < arm.trials; i++)
        l.update(arm, i < arm.rewardSum ? 1 : 0, i < arm.rewardSum ? 'SUCCESS' : 'FAILURE')
    const { bases } = play(l, createRng('environment-5'), 200)
    expect(bases.has('explore')).toBe(false)
    expect(bases.has('learned')).toBe(true)
  })

  it('is deterministic under a seed', () => {
    const a = learner({ seed: 'same' })
    const b = learner({ seed: 'same' })
    play(a, createRng('environment'), 120)
    play(b, createRng('environment'), 120)
    expect(a.toJSON()).toEqual(b.toJSON())
  })
})

describe('ContinuousLearner.update', () => {
  it('learns nothing from a SKIPPED outcome', () => {
    const l = learner()
    const d = l.choose('kv-exhaustion', withHeadroom)!
    l.update(d, 0, 'SKIPPED')
    expect(l.toJSON().arms).toEqual([])
  })

  it('accepts a plain { failureType, strategy, context } as well as a decision', () => {
    const l = learner()
    const context = contextKey('kv-exhaustion', withHeadroom)
    l.update({ failureType: 'kv-exhaustion', strategy: 'RebalanceLoad', context }, 0.75, 'PARTIAL')
    expect(l.toJSON().arms).toEqual([
      {
        failureType: 'kv-exhaustion',
        context,
        strategy: 'RebalanceLoad',
        trials: 1,
        successes: 1,
        rewardSum: 0.75,
      },
    ])
  })

  it('refuses a reward outside [0, 1]', () => {
    const l = learner()
    const d = l.choose('kv-exhaustion', withHeadroom)!
    expect(() => l.update(d, 1.5, 'SUCCESS')).toThrow(
      new InvalidArgumentError('update: reward must be a number in [0, 1], got 1.5'),
    )
  })
})

describe('context buckets', () => {
  it('puts unknown features in their own bin and says so in words', () => {
    const context = contextKey('kv-exhaustion', { kvCacheUsage: 0.85, requestsWaiting: 0 })
    expect(context).toBe('kv-exhaustion|kv0.8-0.93|waiting=0|headroom?')
    expect(describeContext(context)).toBe(
      '0.8 <= kv_cache_usage < 0.93 and waiting = 0 and fleet_headroom unknown',
    )
  })
})

describe('ContinuousLearner.scores', () => {
  it('gives each candidate its trials, mean reward and P(no worse than the runbook)', () => {
    const l = learner()
    play(l, createRng('environment-1'), 200)
    const [runbook, rebalance] = l.scores('kv-exhaustion', withHeadroom)
    expect(runbook).toMatchObject({ strategy: 'ReduceBatchSize', probNoWorseThanRunbook: 1 })
    expect(rebalance?.strategy).toBe('RebalanceLoad')
    expect(rebalance?.probNoWorseThanRunbook).toBeGreaterThan(0.9)
    expect(rebalance?.meanReward).toBeGreaterThan(runbook?.meanReward ?? 1)
  })
})

describe('ContinuousLearner.rules', () => {
  it('says in words which strategy worked in which context', () => {
    const l = learner()
    play(l, createRng('environment-1'), 200)
    const texts = l.rules().map((r) => r.text)
    expect(texts).toHaveLength(2)
    expect(texts).toContainEqual(
      expect.stringMatching(
        /^kv_cache_usage >= 0\.93 and waiting > 40 and fleet_headroom >= 0\.3: RebalanceLoad succeeded \d+\/\d+$/,
      ),
    )
    expect(texts).toContainEqual(
      expect.stringMatching(
        /^kv_cache_usage >= 0\.93 and waiting > 40 and fleet_headroom < 0\.3: ReduceBatchSize succeeded \d+\/\d+$/,
      ),
    )
  })

  it('counts rewards >= 0.5 as successes and every update as a trial', () => {
    const l = learner()
    const d = l.choose('kv-exhaustion', withoutHeadroom)!
    for (const reward of [1, 0.5, 0.4, 0]) l.update(d, reward, 'PARTIAL')
    expect(l.rules(4)).toEqual([
      {
        failureType: 'kv-exhaustion',
        strategy: 'ReduceBatchSize',
        context: 'kv-exhaustion|kv>=0.93|waiting>40|headroom<0.3',
        text: 'kv_cache_usage >= 0.93 and waiting > 40 and fleet_headroom < 0.3: ReduceBatchSize succeeded 2/4',
        successes: 2,
        trials: 4,
        meanReward: 0.475,
      },
    ])
    expect(l.rules(5)).toEqual([])
  })
})

describe('ContinuousLearner.getLearningRecommendations', () => {
  it('recommends one strategy per failure type named, with the rule that supports it', () => {
    const l = learner()
    play(l, createRng('environment-1'), 200)
    const recs = l.getLearningRecommendations(
      { replica: 'r0' },
      ['kv-exhaustion', { failureType: 'kv-exhaustion' }, 'oom'],
      withHeadroom,
    )
    expect(recs.map((r) => r.failureType)).toEqual(['kv-exhaustion', 'oom'])
    expect(recs[0]).toMatchObject({ strategy: 'RebalanceLoad', basis: 'learned' })
    expect(recs[0]?.rule).toMatch(/: RebalanceLoad succeeded \d+\/\d+$/)
    expect(recs[0]?.confidence).toBeGreaterThanOrEqual(0.9)
    expect(recs[1]).toEqual({
      failureType: 'oom',
      strategy: DEFAULT_RUNBOOK.oom,
      basis: 'runbook',
      confidence: 1,
      expectedReward: null,
      trials: 0,
      rule: null,
    })
  })
})

describe('ContinuousLearner persistence', () => {
  it('survives a restart: same state, same scores, same next decisions', async () => {
    const statePath = join(dir, 'learner.json')
    const before = learner({ seed: 7, statePath })
    play(before, createRng('environment-7'), 150)
    await before.save()
    const after = learner({ seed: 7, statePath })
    await after.load()
    expect(after.lastError).toBeNull()
    expect(after.toJSON()).toEqual(before.toJSON())
    expect(after.scores('kv-exhaustion', withHeadroom)).toEqual(before.scores('kv-exhaustion', withHeadroom))
    for (const features of [withHeadroom, withoutHeadroom, withHeadroom, withoutHeadroom])
      expect(after.choose('kv-exhaustion', features)).toEqual(before.choose('kv-exhaustion', features))
  })

  it('starts fresh without error when the state file does not exist', async () => {
    const l = learner({ statePath: join(dir, 'missing.json') })
    await l.load()
    expect(l.lastError).toBeNull()
    expect(l.toJSON().arms).toEqual([])
  })

  it.each([
    ['truncated JSON', (good: string) => good.slice(0, good.length / 2), /not valid JSON/],
    [
      'another version',
      (good: string) => JSON.stringify({ ...JSON.parse(good), version: 2 }),
      /version 2 is not the supported version 1/,
    ],
  ])('sets a file with %s aside and starts fresh, reporting it in lastError', async (_, damage, problem) => {
    const statePath = join(dir, 'learner.json')
    const trained = learner({ statePath })
    play(trained, createRng('environment-1'), 50)
    await trained.save()
    await writeFile(statePath, damage(await readFile(statePath, 'utf8')))
    const l = learner({ statePath, now: () => 1_700_000_000_000 })
    await expect(l.load()).resolves.toBeUndefined()
    expect(l.lastError).toBeInstanceOf(LearnerStateError)
    expect(l.lastError?.message).toContain(statePath)
    expect(l.lastError?.message).toMatch(problem)
    expect(await readdir(dir)).toEqual(['learner.json.corrupt-1700000000000'])
    expect(l.toJSON().arms).toEqual([])
    expect(l.choose('kv-exhaustion', withHeadroom)?.basis).toBe('runbook')
    await l.save()
    expect(JSON.parse(await readFile(statePath, 'utf8'))).toEqual(l.toJSON())
  })

  it('keeps the file whole under concurrent saves', async () => {
    const statePath = join(dir, 'learner.json')
    const l = learner({ statePath })
    const env = createRng('environment-1')
    const saves: Promise<void>[] = []
    for (let i = 0; i < 10; i++) {
      play(l, env, 5)
      saves.push(l.save())
    }
    await Promise.all(saves)
    expect(JSON.parse(await readFile(statePath, 'utf8'))).toEqual(l.toJSON())
    expect(await readdir(dir)).toEqual(['learner.json'])
  })

  it('keeps arms of strategies that are not registered when it loads', async () => {
    const statePath = join(dir, 'learner.json')
    const l = learner({ statePath })
    const context = contextKey('oom', {})
    l.update({ failureType: 'oom', strategy: 'KillCotenant', context }, 1, 'SUCCESS')
    await l.save()
    const fresh = new ContinuousLearner({ statePath })
    await fresh.load()
    expect(fresh.toJSON().arms).toEqual(l.toJSON().arms)
  })
})

describe('ContinuousLearner.registerStrategy', () => {
  const good = strategy('ShedLoad', ['slo-violation'])
  it.each([
    ['an empty name', '', good, 'registerStrategy: name must be a non-empty string'],
    [
      'no failure types',
      'ShedLoad',
      { ...good, handles: [] },
      'registerStrategy: strategy "ShedLoad" must handle a non-empty array of failure types',
    ],
    [
      'an unknown failure type',
      'ShedLoad',
      { ...good, handles: ['meltdown'] },
      'registerStrategy: strategy "ShedLoad" handles an unknown failure type "meltdown"',
    ],
    [
      'no execute function',
      'ShedLoad',
      { ...good, execute: undefined },
      'registerStrategy: strategy "ShedLoad" must have an execute function',
    ],
  ])('refuses %s, naming the problem', (_, name, s, message) => {
    const l = new ContinuousLearner()
    expect(() => l.registerStrategy(name, s as unknown as MitigationStrategy)).toThrow(
      new InvalidArgumentError(message),
    )
  })

  it('replaces a strategy registered under the same name and lists the candidates of a failure type', () => {
    const l = learner()
    l.registerStrategy('RebalanceLoad', strategy('RebalanceLoad', ['hardware-failure']))
    expect(l.candidates('kv-exhaustion')).toEqual(['ReduceBatchSize'])
    expect(l.candidates('hardware-failure')).toEqual(['RebalanceLoad'])
    expect(l.unregisterStrategy('RebalanceLoad')).toBe(true)
    expect(l.strategy('RebalanceLoad')).toBeUndefined()
    expect(l.strategies().map((s) => s.name)).toEqual(['ReduceBatchSize'])
  })
})

describe('ContinuousLearner options', () => {
  it.each([
    [
      { confidence: 1 },
      'ContinuousLearner: options.confidence must be a number between 0 and 1 (exclusive), got 1',
    ],
    [{ minTrials: 0 }, 'ContinuousLearner: options.minTrials must be a positive integer, got 0'],
    [{ alpha: -0.1 }, 'ContinuousLearner: options.alpha must be a number in [0, 1), got -0.1'],
    [
      { runbook: { meltdown: 'x' } },
      'ContinuousLearner: options.runbook has an unknown failure type "meltdown"',
    ],
  ])('refuses %j', (options, message) => {
    expect(() => new ContinuousLearner(options as ContinuousLearnerOptions)).toThrow(
      new InvalidOptionError(message),
    )
  })
})
