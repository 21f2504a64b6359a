// Overload: a simulated vLLM fleet (real HTTP, real time, in its own process) offered `overload`
// times what it can serve at once, first directly (round robin, as a plain proxy would) and then
// through the gateway proxy (admission control and a TTFT SLO). Capacity =
// max_num_seqs x replicas concurrent streams; the load is closed-loop clients, `overload` x that
// many, each sending streamed chat completions back to back for `seconds`. Reported per path:
// admitted requests, TTFT p50/p99 of the admitted ones (time to the first SSE chunk, including any
// wait in the gateway's queue), the same p99 without the requests started in the first 2 s (the
// cold start: no scrape yet, no first-byte estimate, the adaptive limit still growing), how many
// were rejected and whether each rejection was a 429 with Retry-After, and requests that failed
// any other way or never settled (must be 0).
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { request } from 'undici'
import { createMonitor, GatewayProxy } from '../../dist/index.js'

const kChild = fileURLToPath(new URL('./sim-fleet-child.mjs', import.meta.url))

const BODY = JSON.stringify({
  model: 'meta-llama/Llama-3.1-8B-Instruct',
  messages: [{ role: 'user', content: 'Summarise the history of the printing press in detail.' }],
  max_tokens: 96,
  stream: true,
})

async function healthy(url) {
  try {
    const r = await request(`${url}/health`)
    r.body.resume()
    return r.statusCode === 200
  } catch {
    return false
  }
}

export async function startFleet(replicas, maxNumSeqs) {
  const child = spawn(process.execPath, [kChild, String(replicas), String(maxNumSeqs)], {
    stdio: ['pipe', 'pipe', 'inherit'],
  })
  const [line] = await once(createInterface({ input: child.stdout }), 'line')
  const { urls, controlUrl } = JSON.parse(line)
  while (!(await Promise.all(Object.values(urls).map(healthy))).every(Boolean))
    await new Promise((r) => setTimeout(r, 100))
  return {
    urls,
    controlUrl,
    close: async () => {
      child.stdin.end()
      if (child.exitCode === null) await once(child, 'exit')
    },
  }
}

/** Requests started this long after the load began count as steady state, s. */
const kWarmupS = 2

async function drive(targets, clients, seconds) {
  const ttft = []
  const steady = []
  const s = { admitted: 0, rejected429WithRetryAfter: 0, rejectedOther: 0, failed: 0, unsettled: 0 }
  let rr = 0
  const start = performance.now()
  const end = start + seconds * 1000
  const steadyFrom = start + kWarmupS * 1000
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
            const ms = performance.now() - t0
            ttft.push(ms)
            if (t0 >= steadyFrom) steady.push(ms)
            first = false
          }
        }
        s.admitted++
      } else {
        await res.body.text()
        const retryAfter = Number(res.headers['retry-after'])
        if (res.statusCode === 429 && retryAfter >= 1) s.rejected429WithRetryAfter++
        else s.rejectedOther++
        // A rejected client backs off as told (scaled down and capped so the load stays on).
        await new Promise((r) => setTimeout(r, Math.min(1000, (retryAfter || 1) * 100)))
      }
    } catch {
      s.failed++
    } finally {
      pending--
    }
  }
  await Promise.all(
    Array.from({ length: clients }, async () => {
      while (performance.now() < end) await one()
    }),
  )
  s.unsettled = pending
  const q = (v, p) => (v.length === 0 ? null : v[Math.min(v.length - 1, Math.floor(p * v.length))])
  ttft.sort((a, b) => a - b)
  steady.sort((a, b) => a - b)
  return {
    ...s,
    ttftP50Ms: q(ttft, 0.5),
    ttftP99Ms: q(ttft, 0.99),
    // The same without the requests started in the first kWarmupS seconds (cold start).
    steadyAdmitted: steady.length,
    steadyTtftP99Ms: q(steady, 0.99),
  }
}

/**
 * Runs both paths; `paths` picks which (default both). Returns { clients, capacity, overload,
 * seconds, sloMs, direct?, gateway? }.
 */
export async function runOverload({
  seconds = 20,
  sloMs = 1000,
  maxNumSeqs = 16,
  overload = 3,
  replicas = 2,
  paths = ['direct', 'gateway'],
} = {}) {
  const capacity = maxNumSeqs * replicas
  const clients = Math.round(overload * capacity)
  const out = { clients, capacity, overload, seconds, sloMs }
  // One fleet for both paths: its replicas take ~7 s of simulated startup, and after a path's
  // clients stop every request has ended, so the next path starts on idle engines.
  const fleet = await startFleet(replicas, maxNumSeqs)
  try {
    // Direct: round robin over the replicas, nothing refused, everything queues inside vLLM.
    if (paths.includes('direct')) out.direct = await drive(Object.values(fleet.urls), clients, seconds)
    if (paths.includes('gateway'))
      out.gateway = await throughGateway(fleet, clients, seconds, sloMs, maxNumSeqs)
  } finally {
    await fleet.close()
  }
  return out
}

/** A monitor scraping the fleet and the proxy admitting on its behalf to keep the SLO. */
async function throughGateway(fleet, clients, seconds, sloMs, maxNumSeqs) {
  const upstreams = Object.entries(fleet.urls).map(([name, url]) => ({ name, url }))
  const monitor = createMonitor({
    replicas: upstreams,
    gpu: { simUrl: fleet.controlUrl },
    http: false,
    predictive: false,
  })
  const proxy = await GatewayProxy.start({
    upstreams,
    port: 0,
    monitor,
    slo: { ttftMs: sloMs },
    admission: { initialLimit: maxNumSeqs, minLimit: 4, maxLimit: maxNumSeqs * 4, maxQueue: maxNumSeqs },
  })
  try {
    return await drive([proxy.url], clients, seconds)
  } finally {
    await proxy.close()
    await monitor.close()
  }
}

export function formatOverload(r) {
  const lines = [
    `overload: ${r.clients} clients against a fleet serving ${r.capacity} streams at once (${r.overload}x capacity), ${r.seconds} s per path, TTFT SLO ${r.sloMs} ms`,
  ]
  for (const name of ['direct', 'gateway']) {
    const p = r[name]
    if (p === undefined) continue
    lines.push(
      `  ${name.padEnd(8)} admitted ${p.admitted}  TTFT p50 ${p.ttftP50Ms?.toFixed(0)} ms  p99 ${p.ttftP99Ms?.toFixed(0)} ms ${p.ttftP99Ms !== null && p.ttftP99Ms <= r.sloMs ? '(within' : '(breaks'} the SLO), after ${kWarmupS} s p99 ${p.steadyTtftP99Ms?.toFixed(0)} ms  ` +
        `429+Retry-After ${p.rejected429WithRetryAfter}  other rejections ${p.rejectedOther}  failed ${p.failed}  unsettled ${p.unsettled}`,
    )
  }
  return lines.join('\n')
}
