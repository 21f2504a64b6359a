// Forecast tick cost on the main thread, for 4 replicas on 8 GPUs (tensor parallel 2).
// A simulated fleet fills a monitor core's telemetry store (2 minutes of 10 Hz readings); then the
// PredictiveDetector with the shipped model forecasts at 10 Hz for `--seconds`, and the same 10 Hz
// timer runs for as long with forecasting off, in the same process, in alternating halves. Reported:
// - tick latency: from the main thread's request (features read from the store, batched, sent)
//   to the predictions back, p50/p99 at 10 Hz (target: p99 <= 2 ms), and back to back (threads
//   awake: the cost of the work itself, without waking an idle worker), and the p99 of the ticks
//   no main-thread GC pause landed in;
// - event-loop delay (perf_hooks.monitorEventLoopDelay, 1 ms resolution) p99 with forecasting on
//   and off, and the difference (target: < 0.5 ms).
//   node bench/forecast-speed.mjs [--seconds 60] [--json]
// 60 s gives 300 ticks at 10 Hz with forecasting on (half of the run): the p99 of 100 ticks was
// nearly their maximum, one GC pause or one late thread wake-up.
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

const detector = new PredictiveDetector(core.store, { onError: (code, m) => console.error(`${code}: ${m}`) })
await detector.ready
// Warm-up: start the worker, load the model, JIT the paths.
for (let i = 0; i < 50; i++) await detector.analyzeCheckpoint(cp)
if (detector.modelName === null) {
  console.error(`no model answering (${detector.status().reason}); run npm run build and npm run train`)
  process.exit(1)
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]

// The main thread's GC pauses, to tell which ticks one of them landed in. They are the process's,
// not the tick's: V8's memory reducer runs full collections of the whole heap (every module this
// process loaded; in a gateway, the gateway's too) while the thread idles between ticks.
const gcs = []
const gcObserver = new PerformanceObserver((list) => {
  for (const e of list.getEntries()) gcs.push(e.startTime, e.startTime + e.duration)
})
gcObserver.observe({ entryTypes: ['gc'] })
const spans = []

async function phase(on, ticks, lat) {
  const h = monitorEventLoopDelay({ resolution: 1 })
  h.enable()
  for (let i = 0; i < ticks; i++) {
    const t0 = performance.now()
    if (on) {
      await detector.analyzeCheckpoint(cp)
      const t1 = performance.now()
      lat.push(t1 - t0)
      spans.push(t0, t1)
    }
    await sleep(Math.max(0, 100 - (performance.now() - t0)))
  }
  h.disable()
  return h
}

const lat = []
const delays = { on: [], off: [] }
const halves = 4
const perHalf = Math.max(10, Math.round((seconds * 10) / halves))
for (let k = 0; k < halves; k++) {
  const on = k % 2 === 1
  const h = await phase(on, perHalf, lat)
  delays[on ? 'on' : 'off'].push(h.percentile(99) / 1e6)
}
// Entries arrive asynchronously: let the last ones in.
await sleep(50)
gcObserver.disconnect()
const clean = []
let withGc = 0
for (let i = 0; i < spans.length; i += 2) {
  let hit = false
  for (let j = 0; j < gcs.length && !hit; j += 2) hit = gcs[j] < spans[i + 1] && gcs[j + 1] > spans[i]
  if (hit) withGc++
  else clean.push(spans[i + 1] - spans[i])
}
clean.sort((a, b) => a - b)
lat.sort((a, b) => a - b)
// The same tick back to back: what the work costs when the threads are awake, against which the
// 10 Hz figures show the cost of waking an idle worker thread (and this VM's scheduler).
const hot = []
for (let i = 0; i < 300; i++) {
  const t0 = performance.now()
  await detector.analyzeCheckpoint(cp)
  hot.push(performance.now() - t0)
}
hot.sort((a, b) => a - b)
const mean = (v) => v.reduce((a, b) => a + b, 0) / v.length
const result = {
  replicas: serving,
  gpus,
  ticks: lat.length,
  model: detector.modelName,
  tickP50Ms: pct(lat, 50),
  tickP99Ms: pct(lat, 99),
  ticksWithGcPause: withGc,
  tickP99WithoutGcPauseMs: clean.length > 0 ? pct(clean, 99) : null,
  backToBackP50Ms: pct(hot, 50),
  backToBackP99Ms: pct(hot, 99),
  eventLoopDelayP99OffMs: mean(delays.off),
  eventLoopDelayP99OnMs: mean(delays.on),
}
result.eventLoopDelayP99AddedMs = result.eventLoopDelayP99OnMs - result.eventLoopDelayP99OffMs
await detector.close()
if (json) console.log(JSON.stringify(result))
else {
  console.log(
    `forecast tick, ${serving} replicas on ${gpus} GPUs, ${result.model}, ${result.ticks} ticks at 10 Hz:`,
  )
  console.log(
    `  request -> predictions   p50 ${result.tickP50Ms.toFixed(3)} ms   p99 ${result.tickP99Ms.toFixed(3)} ms  (target p99 <= 2 ms)`,
  )
  console.log(
    `  without a GC pause       p99 ${result.tickP99WithoutGcPauseMs?.toFixed(3) ?? '-'} ms  (${result.ticks - result.ticksWithGcPause} ticks; ${result.ticksWithGcPause} had a main-thread GC pause in them)`,
  )
  console.log(
    `  back to back             p50 ${result.backToBackP50Ms.toFixed(3)} ms   p99 ${result.backToBackP99Ms.toFixed(3)} ms`,
  )
  console.log(
    `  event-loop delay p99     off ${result.eventLoopDelayP99OffMs.toFixed(3)} ms   on ${result.eventLoopDelayP99OnMs.toFixed(3)} ms` +
      `   added ${result.eventLoopDelayP99AddedMs.toFixed(3)} ms  (target < 0.5 ms)`,
  )
}
