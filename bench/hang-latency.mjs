// Time from an engine stall to the monitor's lifecycle change, against the configured bound.
// A simulated fleet runs in real time (speed 1) over HTTP; one replica at a time is hung (the
// NCCL-hang fault: no more steps, /health stays 200) and the monitor, scraping every 100 ms with
// checkpoints every 100 ms and `hangAfterMs` 1000, must call it ERROR within the bound + 100 ms.
// The lag is measured from the simulator's ground-truth `failure` label (the instant the engine
// stopped) on the same clock as the monitor's (the simulator's).
// Three monitor settings are measured in turn: the library defaults (100 ms scrapes and checkpoints),
// `vllm-monitor run` and `watch` (100 ms scrapes, 10 ms checkpoints), and 50 ms scrapes.
//   node bench/hang-latency.mjs [--replicas N] [--hang-after-ms MS] [--json]
import { createMonitor, SimFleet, SimServer, scenario } from '../dist/index.js'

const args = process.argv.slice(2)
const opt = (name, fallback) => {
  const i = args.indexOf(name)
  return i >= 0 ? Number(args[i + 1]) : fallback
}
const replicas = opt('--replicas', 4)
const hangAfterMs = opt('--hang-after-ms', 1000)
const json = args.includes('--json')

async function measure(scrapeIntervalMs, checkpointIntervalMs) {
  const sc = scenario('steady', { replicas, seed: 3, load: 'poisson', ratePerReplica: 4 })
  const fleet = new SimFleet({ ...sc.fleet, loadBytesPerSec: 64 * 1024 ** 3 })
  const failures = new Map()
  fleet.on({ label: (l, t) => l.phase === 'failure' && failures.set(l.replica, t) })
  let monitor = null
  const server = await SimServer.start({ fleet, speed: 1, onLog: (r, _s, line) => monitor?.logLine(r, line) })
  const errorsAt = new Map()
  monitor = createMonitor({
    replicas: Object.entries(server.urls).map(([name, url]) => ({ name, url })),
    gpu: { simUrl: server.controlUrl },
    http: false,
    now: () => server.simNow(),
    hangAfterMs,
    scrapeIntervalMs,
    checkpointIntervalMs,
  })
  monitor.on('transition', (r, tr) => {
    if (tr.to === 'ERROR' && !errorsAt.has(r)) errorsAt.set(r, tr.t)
  })
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
  while (monitor.getStatus().replicas.some((r) => r.lifecycleState !== 'SERVING')) await sleep(100)
  await sleep(2000)
  for (const r of fleet.replicas) {
    fleet.inject({ fault: 'nccl-hang', replica: r.name, atMs: fleet.now })
    await sleep(hangAfterMs + 1500)
  }
  await monitor.close()
  await server.close()
  const lags = fleet.replicas
    .map((r) => (errorsAt.get(r.name) ?? Number.NaN) - (failures.get(r.name) ?? Number.NaN))
    .sort((a, b) => a - b)
  const over = lags.map((l) => l - hangAfterMs)
  return {
    scrapeIntervalMs,
    checkpointIntervalMs,
    lagsMs: lags.map((l) => Math.round(l)),
    overBoundMs: {
      median: Math.round(over[Math.floor(over.length / 2)]),
      max: Math.round(Math.max(...over)),
    },
    met: Math.max(...over) < 100,
  }
}

const results = [await measure(100, 100), await measure(100, 10), await measure(50, 10)]
if (json) console.log(JSON.stringify({ hangAfterMs, target: 'bound + < 100 ms', results }))
else {
  for (const r of results) {
    console.log(
      `scrape ${r.scrapeIntervalMs} ms, checkpoints ${r.checkpointIntervalMs} ms: stall -> ERROR in ${r.lagsMs.join(', ')} ms ` +
        `(bound ${hangAfterMs}); over the bound: median ${r.overBoundMs.median} ms, max ${r.overBoundMs.max} ms ` +
        `(target < 100 ms: ${r.met ? 'met' : 'not met'})`,
    )
  }
}
