// Mitigation end to end in the simulator, in three parts, one run:
//
// 1. Oracle. Every training episode (a failure scenario on a two-replica fleet, one seed) is run
//    once per candidate strategy, that strategy forced for the scenario's failure type. The
//    simulator's truth says which is best: the failure avoided (or the hang recovered) first, then
//    fewer SLO-violating minutes, then fewer requests not served.
// 2. Learner. The continuous learner meets the training episodes in a seeded random order, many
//    times over: it chooses from the episode's context, and is taught the reward the orchestrator
//    judged for that strategy on that episode in part 1 (the simulator is deterministic per
//    scenario, seed and strategy, so this is the outcome the choice would have had). Reported: how
//    often it picks the simulator's best after N episodes, and its cumulative reward against the
//    fixed runbook's at every episode (it must never be more than 5 % behind).
// 3. On/off. Held-out seeds of every failure scenario with the monitor off, with the fixed runbook
//    and with the trained learner (exploiting only): failures avoided or recovered, SLO-violating
//    minutes, requests failed or lost, requests answered 429.
// 4. Holdout. The same held-out runs with the learner and a randomized holdout of 30 %: decisions
//    chosen and judged but not executed, the counterfactual the orchestrator measures by itself
//    (0 by default in production). Reported: how the judge scored held-out decisions against the
//    ones acted on.
//
//   node bench/mitigation.mjs [--quick] [--train-seeds 1-8] [--test-seeds 101-103] [--episodes 2000] [--json]
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  builtinStrategies,
  ContinuousLearner,
  DEFAULT_RUNBOOK,
  runClosedLoop,
  SCENARIO_FAILURE_TYPE,
  SIM_CANDIDATES,
} from '../dist/index.js'

const args = process.argv.slice(2)
const flag = (name) => args.includes(name)
const opt = (name, fallback) => {
  const i = args.indexOf(name)
  return i >= 0 ? args[i + 1] : fallback
}
const range = (s) => {
  const [a, b] = s.split('-').map(Number)
  return Array.from({ length: (b ?? a) - a + 1 }, (_, i) => a + i)
}
const quick = flag('--quick')
const json = flag('--json')
const trainSeeds = range(opt('--train-seeds', quick ? '1-3' : '1-8'))
const testSeeds = range(opt('--test-seeds', quick ? '101' : '101-103'))
const episodes = Number(opt('--episodes', quick ? 600 : 2000))
const log = (s) => {
  if (!json) process.stderr.write(`${s}\n`)
}

/** The scenarios a strategy choice matters for (one failure type each, on r0). */
const LEARN_SUITE = [
  'kv-exhaustion',
  'kv-surge',
  'gpu-oom-spike',
  'gpu-oom-cotenant',
  'memory-leak',
  'thermal-throttle',
]
/** Every failure scenario for the on/off table (perf-drift is slow to play out: left to --full). */
const ONOFF_SUITE = [
  ...LEARN_SUITE,
  'nccl-hang',
  'xid-48',
  'xid-79',
  'engine-death',
  ...(flag('--full') ? ['perf-drift'] : []),
]
const DURATION_MS = {}

const strategies = () => builtinStrategies({ EmergencyGPUMemoryCleanup: { killCotenants: true } })
const unserved = (r) => r.requests.failed + r.requests.lost + r.requests.shed + r.requests.queueTimeout
const saved = (r) => r.faults.every((f) => f.verdict !== 'occurred')
/** The simulator's ranking: the failure avoided first, then SLO minutes, then requests not served. */
const simScore = (r) => (saved(r) ? 100 : 0) - 10 * r.sloMinutes - 0.01 * unserved(r)

// --- 1. oracle ---------------------------------------------------------------------------------
const t0 = performance.now()
const rows = []
for (const name of LEARN_SUITE) {
  const type = SCENARIO_FAILURE_TYPE[name]
  const cands = SIM_CANDIDATES[type]
  for (const seed of trainSeeds) {
    const row = { scenario: name, seed, type, features: null, outcomes: {} }
    for (const strategy of cands) {
      const r = await runClosedLoop({
        scenario: name,
        seed,
        mode: 'runbook',
        force: { [type]: strategy },
        durationMs: DURATION_MS[name],
      })
      const first = r.actions.find((a) => a.failureType === type && !a.holdout)
      if (first !== undefined && row.features === null) row.features = first.features
      row.outcomes[strategy] = {
        acted: first !== undefined,
        reward: first?.judgement?.reward ?? null,
        score: simScore(r),
        saved: saved(r),
        sloMinutes: r.sloMinutes,
        unserved: unserved(r),
      }
    }
    const acted = Object.values(row.outcomes).every((o) => o.acted && o.reward !== null)
    if (acted) rows.push(row)
    const best = Object.entries(row.outcomes).sort((a, b) => b[1].score - a[1].score)[0]
    log(
      `oracle ${name} seed ${seed}: ${Object.entries(row.outcomes)
        .map(
          ([s, o]) =>
            `${s} ${o.saved ? 'saved' : 'failed'} slo ${o.sloMinutes} min reward ${o.reward ?? '-'}`,
        )
        .join(' | ')} → best ${best?.[0]}${acted ? '' : ' (not every strategy acted: left out)'}`,
    )
  }
}
const oracleWallS = (performance.now() - t0) / 1000

/** Strategies within one point of the best score (the simulator cannot tell them apart). */
const bestSet = (row) => {
  const top = Math.max(...Object.values(row.outcomes).map((o) => o.score))
  return new Set(
    Object.entries(row.outcomes)
      .filter(([, o]) => o.score >= top - 1)
      .map(([s]) => s),
  )
}

// --- 2. learner --------------------------------------------------------------------------------
const dir = await mkdtemp(join(tmpdir(), 'vllm-monitor-bench-'))
const statePath = join(dir, 'learner.json')
let clock = 0
const learner = new ContinuousLearner({ seed: 7, statePath, now: () => clock })
for (const s of strategies()) learner.registerStrategy(s.name, s)
// A seeded shuffle of the episode order, repeated.
let rs = 12345
const rand = () => {
  rs = (Math.imul(rs, 1664525) + 1013904223) >>> 0
  return rs / 4294967296
}
const order = []
while (order.length < episodes) {
  const idx = rows.map((_, i) => i)
  for (let i = idx.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1))
    ;[idx[i], idx[j]] = [idx[j], idx[i]]
  }
  order.push(...idx)
}
order.length = episodes
let learnerSum = 0
let runbookSum = 0
let worstRatio = Number.POSITIVE_INFINITY
let worstAt = 0
const picks = []
const checkpoints = []
for (let e = 0; e < order.length; e++) {
  clock += 600_000
  const row = rows[order[e]]
  const decision = learner.choose(row.type, row.features, SIM_CANDIDATES[row.type])
  const got = row.outcomes[decision.strategy]
  learner.update(decision, got.reward, 'SUCCESS')
  learnerSum += got.reward
  runbookSum += row.outcomes[DEFAULT_RUNBOOK[row.type]].reward
  const ratio = runbookSum > 0 ? learnerSum / runbookSum : 1
  if (e >= 9 && ratio < worstRatio) {
    worstRatio = ratio
    worstAt = e + 1
  }
  picks.push(bestSet(row).has(decision.strategy) ? 1 : 0)
  if ((e + 1) % 100 === 0) {
    const last = picks.slice(-100)
    checkpoints.push({
      episodes: e + 1,
      bestPickRate: last.reduce((a, b) => a + b, 0) / last.length,
      rewardVsRunbook: ratio,
    })
  }
}
await learner.save()
// The first checkpoint from which the rolling best-pick rate stays >= 90 %.
let convergedAt = null
for (let i = checkpoints.length - 1; i >= 0 && checkpoints[i].bestPickRate >= 0.9; i--)
  convergedAt = checkpoints[i].episodes
const runbookBest =
  rows.filter((row) => bestSet(row).has(DEFAULT_RUNBOOK[row.type])).length / Math.max(1, rows.length)

// --- 3. on/off ---------------------------------------------------------------------------------
const trained = new ContinuousLearner({ seed: 7, statePath, explore: false })
for (const s of strategies()) trained.registerStrategy(s.name, s)
await trained.load()
const table = []
const t3 = performance.now()
for (const name of ONOFF_SUITE) {
  for (const mode of ['off', 'runbook', 'learner']) {
    const agg = {
      scenario: name,
      mode,
      runs: 0,
      preventable: 0,
      saved: 0,
      sloMinutes: 0,
      failedOrLost: 0,
      rejected429: 0,
    }
    for (const seed of testSeeds) {
      const r = await runClosedLoop({
        scenario: name,
        seed,
        mode,
        ...(mode === 'learner' ? { learner: trained } : {}),
        durationMs: DURATION_MS[name],
      })
      agg.runs++
      for (const f of r.faults) {
        if (!f.preventable) continue
        agg.preventable++
        if (f.verdict !== 'occurred') agg.saved++
      }
      agg.sloMinutes += r.sloMinutes
      agg.failedOrLost += r.requests.failed + r.requests.lost
      agg.rejected429 += r.requests.shed + r.requests.queueTimeout
    }
    table.push(agg)
    log(
      `on/off ${name} ${mode}: saved ${agg.saved}/${agg.preventable}, SLO ${agg.sloMinutes} min, failed/lost ${agg.failedOrLost}, 429 ${agg.rejected429}`,
    )
  }
}
const onoffWallS = (performance.now() - t3) / 1000

// --- 4. holdout --------------------------------------------------------------------------------
const HOLDOUT = 0.3
const judged = {
  acted: { n: 0, avoided: 0, recovered: 0, occurred: 0 },
  holdout: { n: 0, avoided: 0, recovered: 0, occurred: 0 },
}
for (const name of LEARN_SUITE) {
  for (const seed of testSeeds) {
    const r = await runClosedLoop({
      scenario: name,
      seed,
      mode: 'learner',
      learner: trained,
      holdout: HOLDOUT,
    })
    const type = SCENARIO_FAILURE_TYPE[name]
    for (const a of r.actions) {
      if (a.failureType !== type || a.judgement === null) continue
      const side = a.holdout ? judged.holdout : judged.acted
      side.n++
      side[a.judgement.verdict]++
    }
  }
}
log(`holdout ${HOLDOUT}: acted ${JSON.stringify(judged.acted)}, held out ${JSON.stringify(judged.holdout)}`)
await rm(dir, { recursive: true, force: true })

const total = (mode, k) => table.filter((r) => r.mode === mode).reduce((a, r) => a + r[k], 0)
const summary = {}
for (const mode of ['off', 'runbook', 'learner']) {
  summary[mode] = {
    preventableSaved: total(mode, 'saved'),
    preventable: total(mode, 'preventable'),
    savedShare: total(mode, 'saved') / Math.max(1, total(mode, 'preventable')),
    sloMinutes: total(mode, 'sloMinutes'),
    failedOrLost: total(mode, 'failedOrLost'),
    rejected429: total(mode, 'rejected429'),
  }
}
const result = {
  node: process.version,
  date: new Date().toISOString(),
  trainSeeds,
  testSeeds,
  oracle: { episodes: rows.length, wallS: oracleWallS, runbookIsBestShare: runbookBest },
  learner: {
    episodes,
    convergedAtEpisodes: convergedAt,
    finalBestPickRate: checkpoints.at(-1)?.bestPickRate ?? null,
    worstRewardVsRunbook: worstRatio,
    worstAtEpisode: worstAt,
    checkpoints,
    rules: learner.rules().map((r) => r.text),
  },
  onoff: { wallS: onoffWallS, summary, table },
  holdout: { share: HOLDOUT, ...judged },
}
if (json) {
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`)
} else {
  const pct = (x) => `${(100 * x).toFixed(0)} %`
  const out = (s) => process.stdout.write(`${s}\n`)
  out(
    `\nmitigation in the simulator (train seeds ${trainSeeds.join(',')}, held-out seeds ${testSeeds.join(',')})`,
  )
  out(
    `\n1. oracle: ${rows.length} training episodes, every candidate strategy run on each (${oracleWallS.toFixed(0)} s)`,
  )
  out(`   the runbook's strategy is the simulator's best in ${pct(runbookBest)} of them`)
  out(`\n2. learner over ${episodes} episodes`)
  for (const c of checkpoints.filter(
    (_, i) => i % Math.max(1, Math.floor(checkpoints.length / 10)) === 0 || i === checkpoints.length - 1,
  ))
    out(
      `   after ${String(c.episodes).padStart(5)}: picks the best ${pct(c.bestPickRate)} of the last 100; reward ${pct(c.rewardVsRunbook)} of the runbook's`,
    )
  out(
    `   picks the best >= 90 % of the time from episode ${convergedAt ?? 'never'}; never below ${pct(worstRatio)} of the runbook's reward (episode ${worstAt})`,
  )
  out('   learned rules:')
  for (const r of result.learner.rules) out(`     ${r}`)
  out(`\n3. on/off on held-out seeds (${onoffWallS.toFixed(0)} s)`)
  out(`   ${'scenario'.padEnd(18)} ${'mode'.padEnd(8)} saved  SLO-min  failed/lost  429s`)
  for (const r of table)
    out(
      `   ${r.scenario.padEnd(18)} ${r.mode.padEnd(8)} ${`${r.saved}/${r.preventable}`.padStart(5)}  ${String(r.sloMinutes).padStart(7)}  ${String(r.failedOrLost).padStart(11)}  ${String(r.rejected429).padStart(4)}`,
    )
  for (const mode of ['off', 'runbook', 'learner']) {
    const s = summary[mode]
    out(
      `   ${mode.padEnd(8)} preventable failures avoided or recovered ${s.preventableSaved}/${s.preventable} (${pct(s.savedShare)}), SLO-violating minutes ${s.sloMinutes}, requests failed or lost ${s.failedOrLost}, 429s ${s.rejected429}`,
    )
  }
  const h = result.holdout
  const share = (x) => (x.n === 0 ? '-' : pct(x.avoided / x.n))
  out(`\n4. holdout ${pct(h.share)} on the same held-out runs (the learner, its judge's own counterfactual)`)
  out(
    `   acted on:  ${h.acted.n} decisions, ${h.acted.avoided} avoided, ${h.acted.recovered} recovered, ${h.acted.occurred} occurred (${share(h.acted)} avoided)`,
  )
  out(
    `   held out:  ${h.holdout.n} decisions, ${h.holdout.avoided} avoided, ${h.holdout.recovered} recovered, ${h.holdout.occurred} occurred (${share(h.holdout)} avoided)`,
  )
}
