#!/usr/bin/env node
// bench/sim-speed: how much faster than real time the vLLM fleet simulator runs, the way
// runSimulation drives it (advance 100 ms, read every replica's /metrics view and every GPU).
//
// Loads, each over SECONDS of simulated time after the fleet has booted:
//   - 1 replica, 20 req/s Poisson with the Azure conversation trace's lengths (1155 in / 211 out)
//   - 1 replica, the Azure code trace replayed at 20 req/s (bursty; 2048 in / 28 out)
//   - 8 replicas, 20 req/s each (160 req/s Poisson, conversation lengths, least-loaded routing)
// Each figure is the median of REPS timed runs (interleaved across loads) after an untimed warm-up.
//
// Baseline, measured in the same process: the same fleet with no arrivals (timed over a 10x longer
// span, compared per simulated second). It costs what every simulated 100 ms costs whatever the load (replica timelines, GPU physics,
// memory checks, building the readings), so loaded/idle says how much the engine's work (scheduling,
// steps, latency histograms) adds on top of the fleet's fixed per-tick cost. That ratio hardly
// depends on the machine; "x real time" does.
//
// Needs the compiled simulator: npx tsc -p tsconfig.build.json (or npm run build:ts), then
//   node bench/sim-speed.mjs [--seconds N] [--reps N] [--json [FILE]]
// --json alone prints one JSON object on stdout; with FILE it writes there (and $OUT/sim-speed.json
// is written when $OUT is set).
import { existsSync, mkdirSync, writeFileSync } from 'node:fs'
import { cpus } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const dist = join(here, '../dist/sim')
if (!existsSync(join(dist, 'fleet.js')))
  throw new Error('dist/sim/fleet.js not found: run `npx tsc -p tsconfig.build.json` first')
const { SimFleet } = await import(join(dist, 'fleet.js'))
const { loadTraceCsv, poissonArrivals, traceArrivals } = await import(join(dist, 'arrivals.js'))

function arg(name, fallback) {
  const i = process.argv.indexOf(name)
  return i === -1 ? fallback : Number(process.argv[i + 1])
}
const argi = process.argv.indexOf('--json')
const json = argi !== -1
const jsonFile =
  json && process.argv[argi + 1] && !process.argv[argi + 1].startsWith('--') ? process.argv[argi + 1] : null
const seconds = arg('--seconds', 300)
const reps = arg('--reps', 5)
if (!(seconds > 0) || !(reps >= 1)) throw new Error('--seconds and --reps must be positive')
const log = json && jsonFile === null ? () => {} : (...a) => console.log(...a)

const TICK_MS = 100
/** Boot takes ≈12.5 s of simulated time; timing starts once every replica serves. */
const BOOT_MS = 15_000
const RATE = 20
const TARGET_X = 1000
const CODE_TRACE_MEAN_RATE = 2.57

const rows = loadTraceCsv()

const LOADS = [
  {
    key: 'poisson-1',
    label: '1 replica, 20 req/s Poisson (conversation lengths)',
    replicas: 1,
    arrivals: () => poissonArrivals({ ratePerSec: RATE, seed: 'bench/poisson-1' }),
  },
  {
    key: 'code-trace-1',
    label: '1 replica, Azure code trace at 20 req/s',
    replicas: 1,
    arrivals: () =>
      traceArrivals(rows, { rateMultiplier: RATE / CODE_TRACE_MEAN_RATE, loop: true, maxModelLen: 8192 }),
  },
  {
    key: 'poisson-8',
    label: '8 replicas, 20 req/s each Poisson',
    replicas: 8,
    arrivals: () => poissonArrivals({ ratePerSec: RATE * 8, seed: 'bench/poisson-8' }),
  },
]

/** The latest readings of a timed run (a sink the JIT cannot drop). */
export const sampled = { engine: [], gpu: [] }

/** One timed run: wall ms for `span` ms of simulated serving, and what the engines did meanwhile. */
function runOnce(replicas, arrivals, span) {
  const fleet = new SimFleet({ seed: 1, replicas, arrivals })
  fleet.start()
  fleet.advanceTo(BOOT_MS)
  const before = totals(fleet)
  const end = BOOT_MS + span
  const t0 = performance.now()
  for (let t = BOOT_MS + TICK_MS; t <= end; t += TICK_MS) {
    fleet.advanceTo(t)
    // What a monitor samples every tick (runSimulation emits both). Stored where the optimiser
    // cannot prove them dead, so the reading objects are really built.
    sampled.engine = fleet.engineReadings()
    sampled.gpu = fleet.gpuReadings()
  }
  const wallMs = performance.now() - t0
  const after = totals(fleet)
  if (sampled.engine.length !== replicas) throw new Error('missing readings')
  return {
    wallMs,
    steps: after.steps - before.steps,
    tokens: after.tokens - before.tokens,
    finished: after.finished - before.finished,
    preemptions: after.preemptions - before.preemptions,
    waitingAtEnd: after.waiting,
  }
}

function totals(fleet) {
  const t = { steps: 0, tokens: 0, finished: 0, preemptions: 0, waiting: 0 }
  for (const r of fleet.replicas) {
    const e = r.engine
    if (e === null) continue
    const f = e.finishedTotal
    t.steps += e.iterationTokens.count
    t.tokens += e.promptTokensTotal + e.generationTokensTotal
    t.finished += f.stop + f.length + f.abort + f.error
    t.preemptions += e.preemptionsTotal
    t.waiting += e.numWaiting
  }
  return t
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}

// The idle fleet costs little per simulated second: time it over a 10x longer span so the clock
// resolution and timer noise do not dominate, and compare per simulated second.
const IDLE_SPAN_FACTOR = 10
const spanMs = seconds * 1000
const configs = [
  ...[...new Set(LOADS.map((l) => l.replicas))].map((n) => ({
    key: `idle-${n}`,
    label: `baseline: ${n} idle replica${n > 1 ? 's' : ''} (no arrivals)`,
    replicas: n,
    arrivals: () => null,
    span: spanMs * IDLE_SPAN_FACTOR,
    idle: true,
  })),
  ...LOADS.map((l) => ({ ...l, span: spanMs, idle: false })),
]

const wall0 = performance.now()
log(`vLLM fleet simulator speed: ${seconds} s simulated after boot, median of ${reps} runs`)
log(`node ${process.version}, ${cpus()[0]?.model ?? 'unknown CPU'}`)
log('')

// Warm every code path up (JIT) before timing anything, then interleave the repetitions so that
// drift (thermal, other processes) spreads over all configurations alike.
for (const c of configs) runOnce(c.replicas, c.arrivals(), Math.min(c.span, 60_000))
const runs = new Map(configs.map((c) => [c.key, []]))
for (let i = 0; i < reps; i++)
  for (const c of configs) runs.get(c.key).push(runOnce(c.replicas, c.arrivals(), c.span))

function summarise(c) {
  const rs = runs.get(c.key)
  const wallMs = median(rs.map((r) => r.wallMs))
  const r = rs[0]
  return {
    key: c.key,
    label: c.label,
    replicas: c.replicas,
    simulatedSeconds: c.span / 1000,
    wallMs,
    wallMsRuns: rs.map((x) => Math.round(x.wallMs * 100) / 100),
    /** Wall ms per simulated second. */
    msPerSimSecond: wallMs / (c.span / 1000),
    xRealTime: c.span / wallMs,
    steps: r.steps,
    tokens: r.tokens,
    finished: r.finished,
    preemptions: r.preemptions,
    waitingAtEnd: r.waitingAtEnd,
    usPerStep: r.steps > 0 ? (wallMs * 1000) / r.steps : null,
  }
}

const fmtX = (x) => `${Math.round(x).toLocaleString('en-US').padStart(9)}x real time`
const baselines = new Map()
for (const c of configs.filter((x) => x.idle)) {
  const b = summarise(c)
  baselines.set(c.replicas, b)
  log(
    `${b.label.padEnd(56)}${(b.msPerSimSecond * 1000).toFixed(1).padStart(8)} µs/sim-s  ${fmtX(b.xRealTime)}`,
  )
}
log('')
const results = []
for (const c of configs.filter((x) => !x.idle)) {
  const m = summarise(c)
  const vsIdle = m.msPerSimSecond / baselines.get(c.replicas).msPerSimSecond
  results.push({ ...m, vsIdle })
  log(
    m.label.padEnd(56) +
      `${(m.msPerSimSecond * 1000).toFixed(1).padStart(8)} µs/sim-s  ${fmtX(m.xRealTime)}` +
      `  ${vsIdle.toFixed(1).padStart(6)}x the idle fleet`,
  )
  log(
    ''.padEnd(8) +
      `${m.steps.toLocaleString('en-US')} engine steps (${m.usPerStep?.toFixed(1)} µs each), ` +
      `${m.tokens.toLocaleString('en-US')} tokens, ${m.finished.toLocaleString('en-US')} requests finished, ` +
      `${m.preemptions} preemptions, ${m.waitingAtEnd} waiting at the end`,
  )
}

const headline = results.find((r) => r.key === 'poisson-1')
const met = headline.xRealTime >= TARGET_X
log('')
log(
  `target: >= ${TARGET_X}x real time for 1 replica at 20 req/s: ${met ? 'met' : 'NOT met'} ` +
    `(${Math.round(headline.xRealTime).toLocaleString('en-US')}x)`,
)
log(`total bench time ${((performance.now() - wall0) / 1000).toFixed(1)} s`)

const report = {
  bench: 'sim-speed',
  node: process.version,
  cpu: cpus()[0]?.model ?? null,
  simulatedSeconds: seconds,
  reps,
  baseline: 'the same fleet with no arrivals, per simulated second (the fixed per-tick cost)',
  baselines: [...baselines.values()],
  results,
  target: { xRealTime: TARGET_X, load: 'poisson-1', met },
}
if (json) {
  const text = `${JSON.stringify(report, null, 2)}\n`
  if (jsonFile === null) process.stdout.write(text)
  else {
    mkdirSync(dirname(jsonFile), { recursive: true })
    writeFileSync(jsonFile, text)
  }
  if (process.env.OUT) writeFileSync(join(process.env.OUT, 'sim-speed.json'), text)
}
