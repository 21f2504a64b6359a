// The gateway's cost on the request path, in one run against three targets that share one
// upstream: the upstream directly, a bare undici pass-through proxy (the baseline: the least any
// Node proxy costs), and vllm-monitor's gateway proxy (admission, picking, telemetry). The
// upstream is a fixed-latency OpenAI-like server (`--upstream-ms`, default 20 ms; JSON, or SSE
// with --stream).
// - Throughput: autocannon (a real load generator), `--connections` (64) for `--seconds` per target.
//   autocannon reports latency in whole milliseconds, too coarse for the added-latency figure, so:
// - Latency: a client timing each request with hrtime at a load that leaves the CPU idle part of
//   the time (8 in flight), the bare proxy and the gateway alternating in rounds to cancel drift.
//   Reported: p50/p99 per target, the gateway's added p50/p99 over the bare proxy (target: p99
//   <= 200 µs), and event-loop delay p99 under load.
// - The Fastify plugin's own cost per request: its hooks (onRequest then onResponse) timed around
//   a request object and a reply, the way Fastify calls them (target: p99 <= 20 µs), and, for
//   scale, the same Fastify route through inject() with and without the plugin.
//   node bench/gateway.mjs [--seconds 10] [--connections 64] [--upstream-ms 20] [--stream] [--json]
import { createServer, request as httpRequest } from 'node:http'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import autocannon from 'autocannon'
import Fastify from 'fastify'
import { Pool } from 'undici'
import { fastifyPlugin, Gateway, GatewayProxy } from '../dist/index.js'

const args = process.argv.slice(2)
const opt = (name, fallback) => {
  const i = args.indexOf(name)
  return i >= 0 ? Number(args[i + 1]) : fallback
}
const seconds = opt('--seconds', 10)
const connections = opt('--connections', 64)
const upstreamMs = opt('--upstream-ms', 20)
const stream = args.includes('--stream')
const json = args.includes('--json')

const BODY = JSON.stringify({
  id: 'cmpl-1',
  object: 'chat.completion',
  choices: [{ index: 0, message: { role: 'assistant', content: 'hello world' }, finish_reason: 'stop' }],
  usage: { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 },
})
const CHUNKS = Array.from(
  { length: 8 },
  (_, i) =>
    `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content: `t${i}` } }] })}\n\n`,
)

// The upstream: answers after `upstreamMs` (the model's time), JSON or 8 SSE chunks.
const upstream = createServer((req, res) => {
  req.resume()
  req.on('end', () => {
    const answer = () => {
      if (!stream) {
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(BODY) })
        res.end(BODY)
        return
      }
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
      for (const c of CHUNKS) res.write(c)
      res.end('data: [DONE]\n\n')
    }
    // 0 answers at once: the proxies' own cost is then most of what is measured.
    if (upstreamMs > 0) setTimeout(answer, upstreamMs)
    else answer()
  })
})
await new Promise((r) => upstream.listen(0, '127.0.0.1', r))
const upstreamUrl = `http://127.0.0.1:${upstream.address().port}`

// The baseline: a bare undici pass-through, the least a Node proxy costs.
const pool = new Pool(upstreamUrl, { connections: 256 })
const bare = createServer((req, res) => {
  pool.stream(
    { path: req.url, method: req.method, headers: req.headers, body: req },
    ({ statusCode, headers }) => {
      res.writeHead(statusCode, headers)
      return res
    },
    (err) => {
      if (err && !res.headersSent) {
        res.writeHead(502)
        res.end()
      }
    },
  )
})
await new Promise((r) => bare.listen(0, '127.0.0.1', r))
const bareUrl = `http://127.0.0.1:${bare.address().port}`

const gw = await GatewayProxy.start({
  upstreams: [{ name: 'r0', url: upstreamUrl }],
  port: 0,
  gateway: new Gateway({
    replicas: [{ name: 'r0', url: upstreamUrl }],
    admission: { initialLimit: 512, maxLimit: 1024, minLimit: 256 },
  }),
})

const targets = [
  { name: 'direct', url: upstreamUrl },
  { name: 'bare-undici', url: bareUrl },
  { name: 'gateway', url: gw.url },
]

async function load(url) {
  const h = monitorEventLoopDelay({ resolution: 1 })
  h.enable()
  const r = await autocannon({
    url: `${url}/v1/chat/completions`,
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }], stream }),
    connections,
    duration: seconds,
  })
  h.disable()
  return {
    p50Ms: r.latency.p50,
    p99Ms: r.latency.p99,
    reqPerSec: r.requests.average,
    non2xx: r.non2xx,
    errors: r.errors,
    eventLoopP99Ms: h.percentile(99) / 1e6,
  }
}

// Warm every path first.
for (const t of targets)
  await autocannon({
    url: `${t.url}/v1/chat/completions`,
    method: 'POST',
    body: '{}',
    connections: 8,
    duration: 1,
  })
const results = {}
for (const t of targets) results[t.name] = await load(t.url)

// Latency with hrtime: 8 requests in flight, rounds alternating bare / gateway / direct.
const latency = { direct: [], 'bare-undici': [], gateway: [] }
const clients = new Map(targets.map((t) => [t.name, new Pool(t.url, { connections: 8 })]))
const payload = JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }], stream })
async function sample(name, n) {
  const c = clients.get(name)
  let left = n
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      while (left-- > 0) {
        const t0 = process.hrtime.bigint()
        const r = await c.request({
          path: '/v1/chat/completions',
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: payload,
        })
        await r.body.arrayBuffer()
        latency[name].push(Number(process.hrtime.bigint() - t0) / 1000)
      }
    }),
  )
}
const rounds = Math.max(4, Math.round(seconds))
for (let i = 0; i < rounds; i++)
  for (const name of ['bare-undici', 'gateway', 'direct']) await sample(name, 400)
const q = (v, p) => v[Math.min(v.length - 1, Math.floor(p * v.length))]
for (const name of Object.keys(latency)) {
  latency[name].sort((a, b) => a - b)
  results[name].p50Us = q(latency[name], 0.5)
  results[name].p99Us = q(latency[name], 0.99)
}
for (const c of clients.values()) await c.close()

// The plugin's own cost: its hooks, called as Fastify calls them, around one request each.
async function hookCost() {
  const g = new Gateway({
    replicas: [{ name: 'r0', url: upstreamUrl }],
    admission: { initialLimit: 1024, maxLimit: 2048, minLimit: 512 },
  })
  const hooks = {}
  const instance = {
    addHook: (name, fn) => {
      hooks[name] = fn
    },
    decorateRequest: () => {},
    hasRequestDecorator: () => false,
  }
  const plugin = fastifyPlugin(g)
  await new Promise((resolve, reject) => {
    const r = plugin(instance, {}, (err) => (err ? reject(err) : resolve()))
    if (r && typeof r.then === 'function') r.then(resolve, reject)
  })
  const lat = []
  const call = (fn, ...a) =>
    new Promise((resolve, reject) => {
      const r = fn(...a, (err) => (err ? reject(err) : resolve()))
      if (r && typeof r.then === 'function') r.then(resolve, reject)
    })
  for (let i = 0; i < 60_000; i++) {
    const request = { headers: {}, raw: { headers: {} }, vllm: null }
    const reply = {
      statusCode: 200,
      code() {
        return this
      },
      header() {
        return this
      },
      send() {
        return this
      },
      raw: {},
      sent: false,
    }
    const t0 = process.hrtime.bigint()
    await call(hooks.onRequest, request, reply)
    await call(hooks.onResponse, request, reply)
    if (i >= 10_000) lat.push(Number(process.hrtime.bigint() - t0) / 1000)
  }
  lat.sort((a, b) => a - b)
  return {
    p50Us: lat[lat.length >> 1],
    p99Us: lat[Math.floor(lat.length * 0.99)],
    inFlightAfter: g.inFlight(),
  }
}
const hooks = await hookCost()

// For scale: the same Fastify route through inject(), with and without the plugin.
async function fastifyCost(withPlugin) {
  const app = Fastify()
  if (withPlugin) {
    const g = new Gateway({
      replicas: [{ name: 'r0', url: upstreamUrl }],
      admission: { initialLimit: 1024, maxLimit: 2048, minLimit: 512 },
    })
    await app.register(fastifyPlugin(g))
  }
  app.post('/v1/chat/completions', async () => BODY)
  await app.ready()
  const lat = []
  for (let i = 0; i < 25_000; i++) {
    const t0 = process.hrtime.bigint()
    await app.inject({ method: 'POST', url: '/v1/chat/completions', payload: '{}' })
    if (i >= 5_000) lat.push(Number(process.hrtime.bigint() - t0) / 1000)
  }
  await app.close()
  lat.sort((a, b) => a - b)
  return { p50Us: lat[lat.length >> 1], p99Us: lat[Math.floor(lat.length * 0.99)] }
}
const without = await fastifyCost(false)
const withPlugin = await fastifyCost(true)

await gw.close()
await pool.close()
bare.close()
upstream.close()

const g = results.gateway
const b = results['bare-undici']
const summary = {
  upstreamMs,
  stream,
  connections,
  seconds,
  results,
  addedP50Us: g.p50Us - b.p50Us,
  addedP99Us: g.p99Us - b.p99Us,
  throughputShareOfBare: g.reqPerSec / b.reqPerSec,
  fastify: {
    hooks,
    without,
    withPlugin,
    addedP50Us: withPlugin.p50Us - without.p50Us,
    addedP99Us: withPlugin.p99Us - without.p99Us,
  },
}
void httpRequest
if (json) console.log(JSON.stringify(summary))
else {
  console.log(
    `gateway bench: upstream ${upstreamMs} ms ${stream ? 'SSE (8 chunks)' : 'JSON'}, ${connections} connections, ${seconds} s per run`,
  )
  for (const [name, r] of Object.entries(results))
    console.log(
      `  ${name.padEnd(12)} latency p50 ${(r.p50Us / 1000).toFixed(3)} ms  p99 ${(r.p99Us / 1000).toFixed(3)} ms | ` +
        `autocannon ${r.reqPerSec.toFixed(0)} req/s  non-2xx ${r.non2xx}  errors ${r.errors}  event-loop p99 ${r.eventLoopP99Ms.toFixed(2)} ms`,
    )
  console.log(
    `  gateway over bare undici: p50 +${summary.addedP50Us.toFixed(0)} µs, p99 +${summary.addedP99Us.toFixed(0)} µs (target <= 200 µs); throughput ${(summary.throughputShareOfBare * 100).toFixed(1)} % (target >= 90 %)`,
  )
  console.log(
    `  fastify plugin hooks per request: p50 ${hooks.p50Us.toFixed(1)} µs, p99 ${hooks.p99Us.toFixed(1)} µs (target p99 <= 20 µs)`,
  )
  console.log(
    `  fastify inject() with vs without the plugin: p50 ${summary.fastify.addedP50Us >= 0 ? '+' : ''}${summary.fastify.addedP50Us.toFixed(1)} µs, p99 ${summary.fastify.addedP99Us >= 0 ? '+' : ''}${summary.fastify.addedP99Us.toFixed(1)} µs (inject's own noise dominates)`,
  )
}
