// Overload: a simulated two-replica vLLM fleet (real HTTP, real time) offered three times what it
// can serve at once, first directly (round robin, as a plain proxy would) and then through the
// gateway proxy with admission control, in one run. Capacity = max_num_seqs x replicas concurrent
// streams; the load is closed-loop clients, 3x that many, each sending streamed chat completions
// back to back for `--seconds`. Reported per path: admitted requests, TTFT p50/p99 of the admitted
// ones (time to the first SSE chunk, including any wait in the gateway's queue), how many were
// rejected and whether each rejection was a 429 with Retry-After, and requests that failed any
// other way or never settled (must be 0).
//   node bench/gateway-overload.mjs [--seconds 20] [--slo-ms 2000] [--max-num-seqs 16] [--json]
import { request } from 'undici'
import { createMonitor, GatewayProxy, SimFleet, SimServer, scenario } from '../dist/index.js'

const args = process.argv.slice(2)
const opt = (name, fallback) => {
  const i = args.indexOf(name)
  return i >= 0 ? Number(args[i + 1]) : fallback
}
const seconds = opt('--seconds', 20)
const sloMs = opt('--slo-ms', 2000)
const maxNumSeqs = opt('--max-num-seqs', 16)
const json = args.includes('--json')

const replicas = 2
const clients = 3 * maxNumSeqs * replicas

async function fleetUp() {
  const sc = scenario('steady', { replicas, seed: 9 })
  const fleet = new SimFleet({ ...sc.fleet, arrivals: null, maxNumSeqs, loadBytesPerSec: 64 * 1024 ** 3 })
  const server = await SimServer.start({ fleet, speed: 1 })
  // Wait until both replicas serve.
  for (;;) {
    const ok = await Promise.all(
      Object.values(server.urls).map((u) =>
        request(`${u}/health`)
          .then((r) => {
            r.body.resume()
            return r.statusCode === 200
          })
          .catch(() => false),
      ),
    )
    if (ok.every(Boolean)) break
    await new Promise((r) => setTimeout(r, 200))
  }
  return server
}

const BODY = JSON.stringify({
  model: 'meta-llama/Llama-3.1-8B-Instruct',
  messages: [{ role: 'user', content: 'Summarise the history of the printing press in detail.' }],
  max_tokens: 96,
  stream: true,
})

async function drive(targets) {
  const stats = {
    admitted: 0,
    ttft: [],
    rejected429WithRetryAfter: 0,
    rejectedOther: 0,
    failed: 0,
    unsettled: 0,
  }
  const end = performance.now() + seconds * 1000
  let rr = 0
  let pending = 0
  const one = async () => {
    const url = targets[rr++ % targets.length]
    const t0 = performance.now()
    pending++
    try {
      const res = await request(`${url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: BODY,
        headersTimeout: 120_000,
        bodyTimeout: 120_000,
      })
      if (res.statusCode === 200) {
        let first = true
        for await (const _chunk of res.body) {
          if (first) {
            stats.ttft.push(performance.now() - t0)
            first = false
          }
        }
        stats.admitted++
      } else {
        await res.body.text()
        if (res.statusCode === 429 && Number(res.headers['retry-after']) >= 1)
          stats.rejected429WithRetryAfter++
        else stats.rejectedOther++
        // A rejected client backs off as told (capped so the load stays on).
        await new Promise((r) => setTimeout(r, Math.min(1000, Number(res.headers['retry-after'] ?? 1) * 100)))
      }
    } catch {
      stats.failed++
    } finally {
      pending--
    }
  }
  await Promise.all(
    Array.from({ length: clients }, async () => {
      while (performance.now() < end) await one()
    }),
  )
  stats.unsettled = pending
  stats.ttft.sort((a, b) => a - b)
  const p = (q) =>
    stats.ttft.length === 0
      ? null
      : stats.ttft[Math.min(stats.ttft.length - 1, Math.floor(q * stats.ttft.length))]
  return {
    admitted: stats.admitted,
    ttftP50Ms: p(0.5),
    ttftP99Ms: p(0.99),
    rejected429WithRetryAfter: stats.rejected429WithRetryAfter,
    rejectedOther: stats.rejectedOther,
    failed: stats.failed,
    unsettled: stats.unsettled,
  }
}

// Direct: round robin over the replicas, nothing refused, everything queues inside vLLM.
let server = await fleetUp()
const direct = await drive(Object.values(server.urls))
await server.close()

// Through the gateway: a fresh fleet, a monitor scraping it, the proxy admitting on its behalf.
server = await fleetUp()
const monitor = createMonitor({
  replicas: Object.entries(server.urls).map(([name, url]) => ({ name, url })),
  gpu: { simUrl: server.controlUrl },
  http: false,
  predictive: false,
})
const proxy = await GatewayProxy.start({
  upstreams: Object.entries(server.urls).map(([name, url]) => ({ name, url })),
  port: 0,
  monitor,
  // Admitted requests must reach their first token within the SLO, so none may wait in the
  // gateway's queue for long: shed instead.
  admission: {
    initialLimit: maxNumSeqs,
    minLimit: 4,
    maxLimit: maxNumSeqs * 4,
    maxQueue: maxNumSeqs,
    queueTimeoutMs: Math.round(sloMs / 2),
  },
})
const gateway = await drive([proxy.url])
await proxy.close()
await monitor.close()
await server.close()

const result = { clients, capacity: maxNumSeqs * replicas, seconds, sloMs, direct, gateway }
if (json) console.log(JSON.stringify(result))
else {
  console.log(
    `overload: ${clients} clients against ${replicas} replicas x max_num_seqs ${maxNumSeqs} (3x capacity), ${seconds} s each`,
  )
  for (const [name, r] of [
    ['direct', direct],
    ['gateway', gateway],
  ])
    console.log(
      `  ${name.padEnd(8)} admitted ${r.admitted}  TTFT p50 ${r.ttftP50Ms?.toFixed(0)} ms  p99 ${r.ttftP99Ms?.toFixed(0)} ms (SLO ${sloMs} ms)  ` +
        `429+Retry-After ${r.rejected429WithRetryAfter}  other rejections ${r.rejectedOther}  failed ${r.failed}  unsettled ${r.unsettled}`,
    )
}
