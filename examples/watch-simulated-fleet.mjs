// Watches a simulated two-replica vLLM fleet through an engine death, the way a gateway would
// watch real servers: HTTP scrapes, log lines, GPU counters. Run after `npm install`:
//   node examples/watch-simulated-fleet.mjs
import { createMonitor, SimFleet, SimServer, scenario } from '../dist/index.js'

const fleet = new SimFleet(scenario('engine-death', { replicas: 2, seed: 1 }).fleet)
let monitor = null
// Simulated time runs 20x faster than the wall clock; the monitor reads the simulator's clock.
const server = await SimServer.start({
  fleet,
  speed: 20,
  onLog: (replica, _stream, line) => monitor?.logLine(replica, line),
})
monitor = createMonitor({
  replicas: Object.entries(server.urls).map(([name, url]) => ({ name, url })),
  gpu: { simUrl: server.controlUrl },
  http: { host: '127.0.0.1', port: 0 },
  now: () => server.simNow(),
})
monitor.on('transition', (replica, t) =>
  console.log(`${(t.t / 1000).toFixed(1).padStart(6)} s  ${replica}: ${t.from} -> ${t.to} (${t.reason})`),
)
await monitor.ready
console.log(`monitor metrics: ${monitor.url}/metrics`)
await new Promise((r) => setTimeout(r, 4000))
const status = monitor.getStatus()
console.log(
  `fleet ${status.lifecycleState}; ${status.replicas.map((r) => `${r.replica} ${r.lifecycleState}`).join(', ')}`,
)
// prints e.g.: fleet DEGRADED; r0 ERROR, r1 DEGRADED (r1 now takes all the load and queues)
await monitor.close()
await server.close()
