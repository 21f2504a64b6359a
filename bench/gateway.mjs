// Every issue-6 figure in one run: the gateway's cost on the request path, and what it does under
// overload. Prints one summary table at the end (`--json`: one JSON object instead).
// 1. Request path, three targets sharing one upstream: the upstream directly, a bare undici
//    pass-through proxy (the baseline: the least any Node proxy costs), and vllm-monitor's gateway
//    proxy (admission, picking, telemetry). The upstream is a fixed-latency OpenAI-like server
//    (`--upstream-ms`, default 20 ms; JSON, or SSE with --stream).
//    - Throughput: autocannon, `--connections` (64) for `--seconds` per target. autocannon reports
//      latency in whole milliseconds, too coarse for the added-latency figure, so:
//    - Latency: a client timing each request with hrtime at a load that leaves the CPU idle part of
//      the time (8 in flight), the bare proxy and the gateway alternating in rounds to cancel
//      drift. Reported: p50/p99 per target, the gateway's added p50/p99 over the bare proxy
//      (target: p99 <= 200 µs), and event-loop delay p99 under load.
// 2. Middleware and wrap cost per request: the Fastify plugin's hooks (onRequest then onResponse)
//    timed around a request object and a reply, the way Fastify calls them, and `wrap(client)`
//    around an in-process client against the bare client (target: p99 <= 20 µs); for scale, a
//    Fastify route through inject() with and without the plugin.
// 3. Overload (bench/lib/overload.mjs): a simulated two-replica vLLM fleet offered `--overload`
//    (3) times its capacity, directly and through the gateway proxy with a `--slo-ms` (1000) TTFT
//    SLO: admitted-request TTFT p99 within the SLO, every rejection a 429 with Retry-After, none
//    failed or unsettled.
//   node bench/gateway.mjs [--quick] [--seconds 10] [--connections 64] [--upstream-ms 20] [--stream]
//                          [--slo-ms 1000] [--overload 3] [--overload-seconds 20] [--json]
// --quick (< 1 min) shortens every phase: figures are noisier, use it to check the bench runs.
import { createServer } from 'node:http'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import autocannon from 'autocannon'
import Fastify from 'fastify'
import { Pool } from 'undici'
import { fastifyPlugin, Gateway, GatewayProxy, wrap } from '../dist/index.js'
import { runOverload } from './lib/overload.mjs'

const args = process.argv.slice(2)
const opt = (name, fallback) => {
  const i = args.indexOf(name)
  return i >= 0 ? Number(args[i + 1]) : fallback
}
const quick = args.includes('--quick')
const seconds = opt('--seconds', quick ? 2 : 10)
const connections = opt('--connections', 64)
const upstreamMs = opt('--upstream-ms', 20)
const stream = args.includes('--stream')
const json = args.includes('--json')
const sloMs = opt('--slo-ms', 1000)
const overloadX = opt('--overload', 3)
const overloadSeconds = opt('--overload-seconds', quick ? 8 : 20)
/** Iterations of the in-process cost loops (the first fifth is warm-up). */
const loops = quick ? 20_000 : 60_000
const log = (line) => {
  if (!json) process.stderr.write(`${line}\n`)
}

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
    duration: quick ? 0.5 : 1,
  })
log('request path: autocannon against direct, bare undici, gateway')
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
log('request path: hrtime latency, alternating rounds')
const rounds = Math.max(4, Math.round(seconds))
for (let i = 0; i < rounds; i++)
  for (const name of ['bare-undici', 'gateway', 'direct']) await sample(name, quick ? 160 : 400)
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
  for (let i = 0; i < loops; i++) {
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
    if (i >= loops / 5) lat.push(Number(process.hrtime.bigint() - t0) / 1000)
  }
  lat.sort((a, b) => a - b)
  return {
    p50Us: lat[lat.length >> 1],
    p99Us: lat[Math.floor(lat.length * 0.99)],
    inFlightAfter: g.inFlight(),
  }
}
log('middleware: Fastify plugin hooks, wrap(client)')
const hooks = await hookCost()

// wrap(client): an OpenAI-like client whose create() resolves at once, called through wrap() and
// bare, alternating; the difference is wrap's admission, tracking and proxying per call.
async function wrapCost() {
  const g = new Gateway({
    replicas: [{ name: 'r0', url: upstreamUrl }],
    admission: { initialLimit: 1024, maxLimit: 2048, minLimit: 512 },
  })
  const completion = JSON.parse(BODY)
  const client = { chat: { completions: { create: async (_body) => completion } } }
  const wrapped = wrap(g, client)
  const body = { model: 'm', messages: [{ role: 'user', content: 'hi' }] }
  const bare = []
  const through = []
  for (let i = 0; i < loops; i++) {
    const t0 = process.hrtime.bigint()
    await client.chat.completions.create(body)
    const t1 = process.hrtime.bigint()
    await wrapped.chat.completions.create(body)
    const t2 = process.hrtime.bigint()
    if (i >= loops / 5) {
      bare.push(Number(t1 - t0) / 1000)
      through.push(Number(t2 - t1) / 1000)
    }
  }
  bare.sort((a, b) => a - b)
  through.sort((a, b) => a - b)
  const q = (v, p) => v[Math.min(v.length - 1, Math.floor(p * v.length))]
  return {
    bareP50Us: q(bare, 0.5),
    bareP99Us: q(bare, 0.99),
    wrappedP50Us: q(through, 0.5),
    wrappedP99Us: q(through, 0.99),
    addedP50Us: q(through, 0.5) - q(bare, 0.5),
    addedP99Us: q(through, 0.99) - q(bare, 0.99),
    inFlightAfter: g.inFlight(),
  }
}
const wrapped = await wrapCost()

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
  const n = loops / 2
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint()
    await app.inject({ method: 'POST', url: '/v1/chat/completions', payload: '{}' })
    if (i >= n / 5) lat.push(Number(process.hrtime.bigint() - t0) / 1000)
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

log(`overload: ${overloadX}x capacity, ${overloadSeconds} s per path, TTFT SLO ${sloMs} ms`)
const overload = await runOverload({ seconds: overloadSeconds, sloMs, overload: overloadX })

const g = results.gateway
const b = results['bare-undici']
const summary = {
  quick,
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
  wrap: wrapped,
  overload,
}
if (json) console.log(JSON.stringify(summary))
else printSummary(summary)

function printSummary(s) {
  const us = (v) => `${v >= 0 ? '+' : ''}${v.toFixed(0)} µs`
  const ms = (v) => (v === null ? '-' : `${v.toFixed(0)} ms`)
  console.log(
    `gateway bench${s.quick ? ' (--quick)' : ''}: upstream ${s.upstreamMs} ms ${s.stream ? 'SSE (8 chunks)' : 'JSON'}, ${s.connections} connections, ${s.seconds} s per target`,
  )
  for (const [name, r] of Object.entries(s.results))
    console.log(
      `  ${name.padEnd(12)} latency p50 ${(r.p50Us / 1000).toFixed(3)} ms  p99 ${(r.p99Us / 1000).toFixed(3)} ms | ` +
        `autocannon ${r.reqPerSec.toFixed(0)} req/s  non-2xx ${r.non2xx}  errors ${r.errors}  event-loop p99 ${r.eventLoopP99Ms.toFixed(2)} ms`,
    )
  console.log(
    `  fastify inject() with vs without the plugin: p50 ${us(s.fastify.addedP50Us)}, p99 ${us(s.fastify.addedP99Us)} (inject's own noise dominates)`,
  )
  const o = s.overload
  const rows = [
    ['proxy added latency over bare undici, p50', us(s.addedP50Us), '', null],
    ['proxy added latency over bare undici, p99', us(s.addedP99Us), '<= 200 µs', s.addedP99Us <= 200],
    [
      'proxy throughput / bare undici',
      `${(s.throughputShareOfBare * 100).toFixed(1)} %`,
      '>= 90 %',
      s.throughputShareOfBare >= 0.9,
    ],
    ['event-loop delay p99, gateway under load', `${g.eventLoopP99Ms.toFixed(2)} ms`, '', null],
    [
      'Fastify plugin hooks p99 per request',
      `${s.fastify.hooks.p99Us.toFixed(1)} µs`,
      '<= 20 µs',
      s.fastify.hooks.p99Us <= 20,
    ],
    [
      'wrap(client) p99 per call over the bare call',
      us(s.wrap.addedP99Us),
      '<= 20 µs',
      s.wrap.addedP99Us <= 20,
    ],
  ]
  for (const [name, p] of [
    ['direct', o.direct],
    ['gateway', o.gateway],
  ])
    rows.push([
      `overload ${o.overload}x, ${name}: admitted TTFT p99 (${p.admitted} admitted)`,
      ms(p.ttftP99Ms),
      `<= ${o.sloMs} ms`,
      name === 'gateway' ? p.ttftP99Ms !== null && p.ttftP99Ms <= o.sloMs : null,
    ])
  const og = o.gateway
  rows.push(
    [
      'overload, gateway: rejections 429 + Retry-After / other',
      `${og.rejected429WithRetryAfter} / ${og.rejectedOther}`,
      'other = 0',
      og.rejectedOther === 0,
    ],
    [
      'overload, both paths: failed / unsettled',
      `${o.direct.failed + og.failed} / ${o.direct.unsettled + og.unsettled}`,
      '0 / 0',
      o.direct.failed + og.failed + o.direct.unsettled + og.unsettled === 0,
    ],
  )
  const w = Math.max(...rows.map((r) => r[0].length))
  console.log('')
  console.log(`  ${'figure'.padEnd(w)}  ${'measured'.padStart(14)}  ${'target'.padEnd(11)}  ok`)
  for (const [name, v, target, ok] of rows)
    console.log(
      `  ${name.padEnd(w)}  ${v.padStart(14)}  ${target.padEnd(11)}  ${ok === null ? '' : ok ? 'yes' : 'NO'}`,
    )
}
