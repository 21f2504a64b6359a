// Forecast tick cost on the main thread, for 4 replicas on 8 GPUs (tensor parallel 2).
// A simulated fleet fills a monitor core's telemetry store (2 minutes of 10 Hz readings); then the
// PredictiveDetector with the shipped model forecasts at 10 Hz, in the same process and in
// alternating phases: as configured by default (`auto`: a batch this small runs the worker-checked
// Dense loops on the main thread, see ForecastPoolOptions.inlineMaxMacs), with every tick sent to
// the worker (`worker`: inlineMaxMacs 0), and with forecasting off (the baseline). For each route:
// - tick latency: from the main thread's request (features read from the store, batched, run or
//   sent) to the predictions back, p50/p99 at 10 Hz (target: p99 <= 2 ms), back to back (threads
//   awake: the work without waking an idle thread), and the p99 of the ticks no main-thread GC
//   pause landed in;
// - event-loop delay (perf_hooks.monitorEventLoopDelay, 1 ms resolution) p99 with forecasting on,
//   minus the same with it off (target: < 0.5 ms);
// - the main thread's CPU time per tick (Linux: /proc/self/task/<pid>/schedstat), minus the same
//   timer loop with forecasting off.
//   node bench/forecast-speed.mjs [--seconds 60] [--json]
// `--seconds` is the forecasting time of both routes together (default 60: 300 ticks each at
// 10 Hz, in two phases; the off baseline runs as long again as one route, 90 s in all). The p99
// of 100 ticks was nearly their maximum.
import { readFileSync } from 'node:fs'
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks'
import { MonitorCore, PredictiveDetector, runSimulation, scenario } from '../dist/index.js'

const args = process.argv.slice(2)
const opt = (name, fallback) => {
  const i = args.indexOf(name)
  return i >= 0 ? Number(args[i + 1]) : fallback
}
const seconds = opt('--seconds', 60)
const json = args.includes('--json')

// The simulated records are dropped once the store holds them (a monitor keeps no such array):
// kept alive, they were most of the heap every full GC had to mark during the measurement.
function filledCore() {
  const sc = scenario('steady', { replicas: 4, seed: 5, ratePerReplica: 6 })
  sc.fleet.tensorParallelSize = 2
  const records = []
  runSimulation({ scenario: sc, durationMs: 150_000, onRecord: (r) => records.push(r) })
  records.sort((a, b) => a.t - b.t)
  const core = new MonitorCore()
  let next = 0
  for (const r of records) {
    while (next < r.t) {
      core.tick(next)
      next += 100
    }
    core.push(r)
  }
  return { core, cp: core.tick(next) }
}
const { core, cp } = filledCore()
const gpus = cp.gpus.length
const serving = cp.engines.filter(
  (e) => e.lifecycleState === 'SERVING' || e.lifecycleState === 'DEGRADED',
).length

const onError = (code, m) => console.error(`${code}: ${m}`)
const routes = {
  auto: new PredictiveDetector(core.store, { onError }),
  worker: new PredictiveDetector(core.store, { onError, inlineMaxMacs: 0 }),
}
for (const d of Object.values(routes)) {
  await d.ready
  // Warm-up: start the worker, load the model, JIT the paths.
  for (let i = 0; i < 50; i++) await d.analyzeCheckpoint(cp)
  if (d.modelName === null) {
    console.error(`no model answering (${d.status().reason}); run npm run build and npm run train`)
    process.exit(1)
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]
const mean = (v) => v.reduce((a, b) => a + b, 0) / v.length
let statFile = null
try {
  statFile = `/proc/self/task/${process.pid}/schedstat`
  readFileSync(statFile)
} catch {
  statFile = null
}
const mainCpuNs = () => (statFile === null ? 0 : Number(readFileSync(statFile, 'utf8').split(' ')[0]))

// The main thread's GC pauses, to tell which ticks one of them landed in. They are the process's,
// not the tick's: V8's memory reducer runs full collections of the whole heap (every module this
// process loaded; in a gateway, the gateway's too) while the thread idles between ticks.
const gcs = []
const gcObserver = new PerformanceObserver((list) => {
  for (const e of list.getEntries()) gcs.push(e.startTime, e.startTime + e.duration)
})
gcObserver.observe({ entryTypes: ['gc'] })

const runs = {
  off: { delays: [], cpuNs: 0, ticks: 0 },
  auto: { lat: [], spans: [], delays: [], cpuNs: 0, ticks: 0 },
  worker: { lat: [], spans: [], delays: [], cpuNs: 0, ticks: 0 },
}

async function phase(route, ticks) {
  const r = runs[route]
  const detector = routes[route]
  const h = monitorEventLoopDelay({ resolution: 1 })
  h.enable()
  const c0 = mainCpuNs()
  for (let i = 0; i < ticks; i++) {
    const t0 = performance.now()
    if (detector !== undefined) {
      await detector.analyzeCheckpoint(cp)
      const t1 = performance.now()
      r.lat.push(t1 - t0)
      r.spans.push(t0, t1)
    }
    await sleep(Math.max(0, 100 - (performance.now() - t0)))
  }
  r.cpuNs += mainCpuNs() - c0
  r.ticks += ticks
  h.disable()
  r.delays.push(h.percentile(99) / 1e6)
}

// The simulation's garbage is collected (a full GC, tens of ms) while the thread first idles:
// not in a measured phase, and the two rounds run the routes in opposite orders.
await sleep(3000)
const perPhase = Math.max(10, Math.round((seconds * 10) / 4))
for (const order of [
  ['auto', 'worker', 'off'],
  ['off', 'worker', 'auto'],
])
  for (const route of order) await phase(route, perPhase)
// Entries arrive asynchronously: let the last ones in.
await sleep(50)
gcObserver.disconnect()

const result = { replicas: serving, gpus, model: routes.auto.modelName, ticksPerRoute: 2 * perPhase }
for (const route of ['auto', 'worker']) {
  const r = runs[route]
  const clean = []
  let withGc = 0
  for (let i = 0; i < r.spans.length; i += 2) {
    let hit = false
    for (let j = 0; j < gcs.length && !hit; j += 2) hit = gcs[j] < r.spans[i + 1] && gcs[j + 1] > r.spans[i]
    if (hit) withGc++
    else clean.push(r.spans[i + 1] - r.spans[i])
  }
  clean.sort((a, b) => a - b)
  r.lat.sort((a, b) => a - b)
  // The same tick back to back: what the work costs when the threads are awake, against which the
  // 10 Hz figures show the cost of waking idle threads (and the host's scheduler).
  const hot = []
  for (let i = 0; i < 300; i++) {
    const t0 = performance.now()
    await routes[route].analyzeCheckpoint(cp)
    hot.push(performance.now() - t0)
  }
  hot.sort((a, b) => a - b)
  const st = routes[route].status()
  result[route] = {
    inlineTicks: st.inlineTicks,
    tickP50Ms: pct(r.lat, 50),
    tickP99Ms: pct(r.lat, 99),
    ticksWithGcPause: withGc,
    tickP99WithoutGcPauseMs: clean.length > 0 ? pct(clean, 99) : null,
    backToBackP50Ms: pct(hot, 50),
    backToBackP99Ms: pct(hot, 99),
    eventLoopDelayP99AddedMs: mean(r.delays) - mean(runs.off.delays),
    mainThreadCpuMsPerTick:
      statFile === null ? null : (r.cpuNs / r.ticks - runs.off.cpuNs / runs.off.ticks) / 1e6,
  }
}
result.eventLoopDelayP99OffMs = mean(runs.off.delays)
for (const d of Object.values(routes)) await d.close()
if (json) console.log(JSON.stringify(result))
else {
  const f = (x) => (x === null || x === undefined ? '-' : x.toFixed(3))
  console.log(
    `forecast tick, ${serving} replicas on ${gpus} GPUs, ${result.model}, ${result.ticksPerRoute} ticks per route at 10 Hz` +
      ` (event-loop delay p99 with forecasting off: ${f(result.eventLoopDelayP99OffMs)} ms):`,
  )
  for (const route of ['auto', 'worker']) {
    const r = result[route]
    console.log(
      `${route === 'auto' ? 'default (auto)' : 'every tick to the worker'}: ${r.inlineTicks} of its ticks (warm-up and back to back included) ran on the main thread`,
    )
    console.log(
      `  request -> predictions   p50 ${f(r.tickP50Ms)} ms   p99 ${f(r.tickP99Ms)} ms  (target p99 <= 2 ms)`,
    )
    console.log(
      `  without a GC pause       p99 ${f(r.tickP99WithoutGcPauseMs)} ms  (${r.ticksWithGcPause} ticks had a main-thread GC pause in them)`,
    )
    console.log(`  back to back             p50 ${f(r.backToBackP50Ms)} ms   p99 ${f(r.backToBackP99Ms)} ms`)
    console.log(`  event-loop delay p99 added ${f(r.eventLoopDelayP99AddedMs)} ms  (target < 0.5 ms)`)
    console.log(`  main-thread CPU per tick   ${f(r.mainThreadCpuMsPerTick)} ms`)
  }
}
