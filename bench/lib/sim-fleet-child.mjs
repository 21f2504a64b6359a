// A simulated vLLM fleet in its own process (as vLLM is in production), so the load generator and
// the gateway do not share an event loop with it. Prints {"urls":{...},"controlUrl":...} on one
// line once listening; exits when its stdin closes.
//   node bench/lib/sim-fleet-child.mjs <replicas> <maxNumSeqs>
import { SimFleet, SimServer, scenario } from '../../dist/index.js'

const replicas = Number(process.argv[2] ?? 2)
const maxNumSeqs = Number(process.argv[3] ?? 16)
const sc = scenario('steady', { replicas, seed: 9 })
const fleet = new SimFleet({ ...sc.fleet, arrivals: null, maxNumSeqs, loadBytesPerSec: 64 * 1024 ** 3 })
const server = await SimServer.start({ fleet, speed: 1 })
process.stdout.write(`${JSON.stringify({ urls: server.urls, controlUrl: server.controlUrl })}\n`)
process.stdin.resume()
process.stdin.on('end', async () => {
  await server.close()
  process.exit(0)
})
