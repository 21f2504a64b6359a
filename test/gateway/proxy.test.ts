/**
 * GatewayProxy against real servers on loopback: the simulator and the fake OpenAI upstream
 * (test/helpers/fake-openai.ts), driven by the official `openai` client and by raw HTTP. No timed
 * assertions beyond generous upper bounds (`until`'s timeouts).
 */
import http from 'node:http'
import net from 'node:net'
import OpenAI from 'openai'
import { afterEach, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/errors.js'
import { Gateway } from '../../src/gateway/gateway.js'
import { GatewayProxy, type GatewayProxyOptions } from '../../src/gateway/proxy.js'
import { type FakeOpenAI, type FakeOpenAIOptions, startFakeOpenAI } from '../helpers/fake-openai.js'
import { closeSims, SIM_MODEL, startSim, until, waitHealthy } from '../helpers/sim-http.js'

const cleanups: Array<() => unknown> = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
  await closeSims()
})

async function fake(o: FakeOpenAIOptions = {}): Promise<FakeOpenAI> {
  const f = await startFakeOpenAI(o)
  cleanups.push(() => f.close())
  return f
}

async function proxy(o: GatewayProxyOptions): Promise<GatewayProxy> {
  const p = await GatewayProxy.start(o)
  cleanups.push(() => p.close())
  return p
}

function client(baseUrl: string): OpenAI {
  return new OpenAI({ baseURL: `${baseUrl}/v1`, apiKey: 'x', maxRetries: 0, timeout: 15_000 })
}

interface Raw {
  status: number | null
  headers: http.IncomingHttpHeaders
  body: Buffer
  /** errno code (ECONNREFUSED...) or 'aborted' when the response broke off. */
  error: string | null
}

/** One request on a fresh connection; never rejects. */
function raw(
  url: string,
  body?: unknown,
  headers: Record<string, string> = {},
  method = body === undefined ? 'GET' : 'POST',
): Promise<Raw> {
  return new Promise((resolve) => {
    const text = body === undefined ? undefined : JSON.stringify(body)
    const req = http.request(url, {
      method,
      agent: false,
      timeout: 15_000,
      headers: {
        ...(text === undefined ? {} : { 'content-type': 'application/json' }),
        ...headers,
      },
    })
    req.on('timeout', () => req.destroy(Object.assign(new Error('timeout'), { code: 'ETIMEDOUT' })))
    req.on('error', (err) =>
      resolve({
        status: null,
        headers: {},
        body: Buffer.alloc(0),
        error: (err as { code?: string }).code ?? 'ERROR',
      }),
    )
    req.on('response', (res) => {
      const parts: Buffer[] = []
      res.on('data', (c: Buffer) => parts.push(c))
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? null,
          headers: res.headers,
          body: Buffer.concat(parts),
          error: null,
        }),
      )
      res.on('aborted', () => undefined)
      res.on('error', () =>
        resolve({
          status: res.statusCode ?? null,
          headers: res.headers,
          body: Buffer.concat(parts),
          error: 'aborted',
        }),
      )
    })
    req.end(text)
  })
}

/** Writes `text` on a raw socket and resolves with everything read until the server closes. */
function rawText(port: number, text: string): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1', () => socket.write(text))
    let out = ''
    socket.setEncoding('latin1')
    socket.on('data', (d: string) => {
      out += d
    })
    socket.on('error', () => undefined)
    socket.on('close', () => resolve(out))
  })
}

const chatBody = (stream: boolean, maxTokens = 6) => ({
  model: 'fake-model',
  messages: [{ role: 'user' as const, content: 'hello' }],
  max_tokens: maxTokens,
  stream,
})

describe('GatewayProxy: pass-through', () => {
  it('answers the openai client through the proxy exactly as the simulator answers directly', async () => {
    const sim = await startSim({ speed: 50 })
    await waitHealthy(sim.url)
    const p = await proxy({ upstreams: [sim.url], port: 0 })
    const direct = client(sim.url)
    const via = client(p.url)

    const req = { model: SIM_MODEL, prompt: 'hello there', max_tokens: 8 }
    const a = await direct.completions.create(req)
    const b = await via.completions.create(req)
    expect(b.choices[0]?.text).toBe(a.choices[0]?.text)
    expect(b.choices[0]?.finish_reason).toBe(a.choices[0]?.finish_reason)
    expect(b.usage).toEqual(a.usage)
    expect(b.choices[0]?.text.length).toBeGreaterThan(0)

    const chat = {
      model: SIM_MODEL,
      messages: [{ role: 'user' as const, content: 'say something' }],
      max_tokens: 7,
      stream: true as const,
      stream_options: { include_usage: true },
    }
    const collect = async (c: OpenAI) => {
      let text = ''
      let chunks = 0
      let usage: unknown = null
      for await (const ch of await c.chat.completions.create(chat)) {
        chunks++
        text += ch.choices[0]?.delta?.content ?? ''
        if (ch.usage) usage = ch.usage
      }
      return { text, chunks, usage }
    }
    const sd = await collect(direct)
    const sp = await collect(via)
    expect(sp).toEqual(sd)
    expect(sp.chunks).toBeGreaterThanOrEqual(8)
    expect(p.gateway.inFlight()).toBe(0)
    const stats = p.gateway.requestStats('r0')
    expect(stats?.requests).toBe(2)
    expect(stats?.errors).toBe(0)
    expect(stats?.ttftMs).not.toBeNull()
  })

  it('streams SSE byte for byte and forwards the request body and headers unchanged', async () => {
    const f = await fake({ name: 'a', chunks: 6, intervalMs: 2 })
    const p = await proxy({ upstreams: [f.url], port: 0 })
    const headers = { authorization: 'Bearer secret', 'x-custom': 'kept', 'x-priority': '3' }
    const direct = await raw(`${f.url}/v1/chat/completions`, chatBody(true), headers)
    const via = await raw(`${p.url}/v1/chat/completions`, chatBody(true), headers)
    expect(direct.status).toBe(200)
    expect(via.status).toBe(200)
    expect(via.error).toBeNull()
    expect(via.body.equals(direct.body)).toBe(true)
    expect(via.body.toString()).toContain('data: [DONE]')
    expect(via.headers['content-type']).toBe('text/event-stream')
    expect(via.headers['x-fake-upstream']).toBe('a')
    expect(via.headers['cache-control']).toBe('no-cache')

    const [d, v] = [f.received[0], f.received[1]]
    expect(v?.body.equals(d?.body as Buffer)).toBe(true)
    expect(v?.method).toBe('POST')
    expect(v?.url).toBe('/v1/chat/completions')
    expect(v?.headers.authorization).toBe('Bearer secret')
    expect(v?.headers['x-custom']).toBe('kept')
    // Host names the upstream, not the proxy.
    expect(v?.headers.host).toBe(new URL(f.url).host)

    const plainDirect = await raw(`${f.url}/v1/completions`, { prompt: 'x', max_tokens: 4 })
    const plainVia = await raw(`${p.url}/v1/completions`, { prompt: 'x', max_tokens: 4 })
    expect(plainVia.body.equals(plainDirect.body)).toBe(true)
    expect(plainVia.headers['content-length']).toBe(plainDirect.headers['content-length'])
    expect((await raw(`${p.url}/v1/models`)).status).toBe(200)
    expect((await raw(`${p.url}/nope`)).status).toBe(404)
    expect(p.gateway.inFlight()).toBe(0)
  })

  it('streams to the openai client with the same content as a direct call', async () => {
    const f = await fake({ name: 'a', chunks: 5, intervalMs: 2 })
    const p = await proxy({ upstreams: [{ name: 'a', url: f.url }], port: 0 })
    const read = async (c: OpenAI) => {
      const parts: string[] = []
      for await (const ch of await c.chat.completions.create({ ...chatBody(true, 5), stream: true }))
        parts.push(JSON.stringify(ch))
      return parts
    }
    const viaParts = await read(client(p.url))
    expect(viaParts).toEqual(await read(client(f.url)))
    expect(viaParts.length).toBe(6)
    const nonStream = await client(p.url).chat.completions.create({ ...chatBody(false, 3), stream: false })
    expect(nonStream.choices[0]?.message.content).toBe(' a-tok0 a-tok1 a-tok2')
  })

  it('passes an upstream 500 through unchanged and counts it against the replica', async () => {
    const f = await fake({ name: 'a', mode: '500' })
    const p = await proxy({ upstreams: [f.url], port: 0 })
    const r = await raw(`${p.url}/v1/completions`, { prompt: 'x' })
    expect(r.status).toBe(500)
    expect(JSON.parse(r.body.toString()).error.message).toBe('internal error')
    expect(p.gateway.requestStats('r0')?.errors).toBe(1)
  })

  it('refuses a non-integer x-priority with 400', async () => {
    const f = await fake()
    const p = await proxy({ upstreams: [f.url], port: 0 })
    const r = await raw(`${p.url}/v1/completions`, { prompt: 'x' }, { 'x-priority': 'high' })
    expect(r.status).toBe(400)
    expect(JSON.parse(r.body.toString()).error.code).toBe('invalid_priority')
    expect(f.received.length).toBe(0)
  })

  it('answers 413 to a body over maxBodyBytes, holds none of it and sends nothing upstream', async () => {
    const f = await fake()
    const p = await proxy({ upstreams: [f.url], port: 0, maxBodyBytes: 4096 })
    const r = await raw(`${p.url}/v1/completions`, { prompt: 'x'.repeat(64 * 1024) })
    expect(r.status).toBe(413)
    expect(JSON.parse(r.body.toString()).error.code).toBe('request_too_large')
    expect(f.received.length).toBe(0)
    expect(p.gateway.inFlight()).toBe(0)
    // A body within the bound still goes through.
    expect((await raw(`${p.url}/v1/completions`, { prompt: 'x' })).status).toBe(200)
  })
})

describe('GatewayProxy: requests undici refuses', () => {
  it('answers `OPTIONS *` 400 without counting it against any replica (its breaker stays closed)', async () => {
    const [a, b] = [await fake({ name: 'a' }), await fake({ name: 'b' })]
    const p = await proxy({ upstreams: [a.url, b.url], port: 0 })
    const port = Number(new URL(p.url).port)
    for (let i = 0; i < 6; i++) {
      const head = await rawText(port, 'OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
      expect(head.split('\r\n')[0]).toBe('HTTP/1.1 400 Bad Request')
    }
    expect([p.gateway.picker.breakerState('r0'), p.gateway.picker.breakerState('r1')]).toEqual([
      'closed',
      'closed',
    ])
    expect(p.gateway.requestStats('r0')?.errors).toBe(0)
    expect((await raw(`${p.url}/v1/models`)).status).toBe(200)
    expect(p.gateway.admission.state('r0').inflight + p.gateway.admission.state('r1').inflight).toBe(0)
  })
})

describe('GatewayProxy: failures', () => {
  it('breaks the client stream when a replica dies mid-stream, then routes to the healthy one', async () => {
    const dying = await fake({ name: 'dying', mode: 'die-mid-stream', killOnDie: true, chunks: 8 })
    const healthy = await fake({ name: 'healthy', chunks: 8 })
    const p = await proxy({
      upstreams: [
        { name: 'dying', url: dying.url },
        { name: 'healthy', url: healthy.url },
      ],
      port: 0,
    })
    // Weight 0: picked only when nothing else is eligible, so the first request goes to `dying`.
    p.gateway.picker.setWeight('healthy', 0)
    const c = client(p.url)
    const got: string[] = []
    const consume = async () => {
      for await (const ch of await c.chat.completions.create({ ...chatBody(true, 8), stream: true }))
        got.push(ch.choices[0]?.delta?.content ?? '')
    }
    await expect(consume()).rejects.toThrow()
    expect(got.length).toBeGreaterThan(0)
    expect(got.join('')).toContain('dying-tok0')
    await until('the failed request to be released', () => p.gateway.inFlight() === 0, 10_000)
    expect(p.gateway.requestStats('dying')?.errors).toBeGreaterThanOrEqual(1)

    const next = await c.chat.completions.create({ ...chatBody(false, 2), stream: false })
    expect(next.choices[0]?.message.content).toBe(' healthy-tok0 healthy-tok1')
    expect(p.inFlight).toBe(0)
  })

  it('reports a replica that hangs after the first chunk as a stall; a client abort frees the slot', async () => {
    const hung = await fake({ name: 'hung', mode: 'hang-after-first-chunk' })
    const p = await proxy({ upstreams: [hung.url], port: 0, stallAfterMs: 200 })
    const ac = new AbortController()
    const stream = await client(p.url).chat.completions.create(
      { ...chatBody(true, 8), stream: true },
      { signal: ac.signal },
    )
    const it = stream[Symbol.asyncIterator]()
    const first = await it.next()
    expect(first.done).toBe(false)
    expect(p.gateway.inFlight()).toBe(1)
    await until('a stall to be reported', () => (p.gateway.requestStats('r0')?.stalls ?? 0) >= 1, 10_000)
    // The stream stays open: the client decides.
    expect(p.gateway.inFlight()).toBe(1)
    expect(hung.open()).toBe(1)
    ac.abort()
    // The client ends its iteration (or throws): either way it does not hang.
    const last = await it.next().catch(() => ({ done: true }))
    expect(last.done).toBe(true)
    await until('the slot to be released', () => p.gateway.inFlight() === 0 && p.inFlight === 0, 10_000)
    expect(p.gateway.admission.state('r0').inflight).toBe(0)
    await until('the upstream request to be aborted', () => hung.open() === 0, 10_000)
    // An abort says nothing about the replica.
    expect(p.gateway.requestStats('r0')?.errors).toBe(0)
  })

  it('fails over from a replica that refuses connections without a client-visible error; its breaker opens', async () => {
    const refusing = await fake({ name: 'refusing', mode: 'refuse' })
    const ok = await fake({ name: 'ok' })
    const p = await proxy({
      upstreams: [
        { name: 'refusing', url: refusing.url },
        { name: 'ok', url: ok.url },
      ],
      port: 0,
      picker: { breaker: { failureThreshold: 2, openMs: 60_000 } },
    })
    const c = client(p.url)
    for (let i = 0; i < 6; i++) {
      const r = await c.completions.create({ model: 'fake-model', prompt: 'x', max_tokens: 2 })
      expect(r.choices[0]?.text).toBe(' ok-tok0 ok-tok1')
    }
    const streamed: string[] = []
    for await (const ch of await c.completions.create({
      model: 'fake-model',
      prompt: 'x',
      max_tokens: 3,
      stream: true,
    }))
      streamed.push(ch.choices[0]?.text ?? '')
    expect(streamed.join('')).toBe(' ok-tok0 ok-tok1 ok-tok2')
    expect(p.gateway.picker.breakerState('refusing')).toBe('open')
    expect(p.gateway.requestStats('refusing')?.errors).toBeGreaterThanOrEqual(1)
    expect(ok.received.length).toBe(7)
    expect(p.gateway.inFlight()).toBe(0)
  })

  it('answers 502 when every replica refuses', async () => {
    const a = await fake({ mode: 'refuse' })
    const b = await fake({ mode: 'refuse' })
    const p = await proxy({ upstreams: [a.url, b.url], port: 0 })
    const r = await raw(`${p.url}/v1/completions`, { prompt: 'x' })
    expect(r.status).toBe(502)
    const body = JSON.parse(r.body.toString())
    expect(body.error.type).toBe('upstream_error')
    expect(body.error.code).toBe('ECONNREFUSED')
    expect(p.gateway.requestStats('r0')?.errors).toBe(1)
    expect(p.gateway.requestStats('r1')?.errors).toBe(1)
    expect(p.gateway.inFlight()).toBe(0)
  })

  it('fails over when the upstream sends no headers within headersTimeoutMs', async () => {
    const slow = await fake({ name: 'slow', latencyMs: 5_000 })
    const ok = await fake({ name: 'ok' })
    const p = await proxy({
      upstreams: [
        { name: 'slow', url: slow.url },
        { name: 'ok', url: ok.url },
      ],
      port: 0,
      headersTimeoutMs: 200,
    })
    p.gateway.picker.setWeight('ok', 0)
    const r = await raw(`${p.url}/v1/completions`, { prompt: 'x', max_tokens: 1 })
    expect(r.status).toBe(200)
    expect(JSON.parse(r.body.toString()).choices[0].text).toBe(' ok-tok0')
    expect(p.gateway.requestStats('slow')?.errors).toBe(1)
  })

  it('rejects overload with 429 + Retry-After; every request settles', async () => {
    const f = await fake({ latencyMs: 150 })
    const p = await proxy({
      upstreams: [f.url],
      port: 0,
      admission: { initialLimit: 1, minLimit: 1, maxLimit: 2, maxQueue: 2 },
    })
    const n = 24
    const answers = await Promise.all(
      Array.from({ length: n }, () => raw(`${p.url}/v1/completions`, { prompt: 'x', max_tokens: 1 })),
    )
    const ok = answers.filter((a) => a.status === 200)
    const rejected = answers.filter((a) => a.status === 429)
    expect(ok.length + rejected.length).toBe(n)
    expect(ok.length).toBeGreaterThanOrEqual(1)
    expect(rejected.length).toBeGreaterThanOrEqual(1)
    for (const r of rejected) {
      expect(Number(r.headers['retry-after'])).toBeGreaterThanOrEqual(1)
      const e = JSON.parse(r.body.toString()).error
      expect(e.type).toBe('rate_limit_exceeded')
      expect(e.code).toBe('overloaded')
      expect(typeof e.message).toBe('string')
    }
    expect(p.gateway.inFlight()).toBe(0)
    expect(p.inFlight).toBe(0)
    expect(p.gateway.admission.state('r0').queued).toBe(0)
  })

  it('with a TTFT SLO, answers 429 + Retry-After to a queued request that could only be admitted late', async () => {
    const f = await fake({ latencyMs: 400 })
    const p = await proxy({
      upstreams: [f.url],
      port: 0,
      admission: { initialLimit: 1, minLimit: 1, maxLimit: 1, maxQueue: 4 },
      slo: { ttftMs: 100 },
    })
    expect(p.gateway.slo?.ttftMs).toBe(100)
    const first = raw(`${p.url}/v1/completions`, { prompt: 'x', max_tokens: 1 })
    await until('the first request to be admitted', () => p.gateway.inFlight() === 1)
    const late = await raw(`${p.url}/v1/completions`, { prompt: 'y', max_tokens: 1 })
    expect(late.status).toBe(429)
    expect(Number(late.headers['retry-after'])).toBeGreaterThanOrEqual(1)
    const e = JSON.parse(late.body.toString()).error
    expect(e).toMatchObject({ type: 'rate_limit_exceeded', code: 'queue-timeout' })
    expect(e.message).toMatch(/can no longer make the 100 ms TTFT SLO/)
    expect((await first).status).toBe(200)
    await until('all to settle', () => p.inFlight === 0 && p.gateway.inFlight() === 0)
    expect(f.received.length).toBe(1)
  })

  it('releases a queued request whose client goes away', async () => {
    const f = await fake({ latencyMs: 300 })
    const p = await proxy({
      upstreams: [f.url],
      port: 0,
      admission: { initialLimit: 1, minLimit: 1, maxLimit: 1, maxQueue: 4 },
    })
    const first = raw(`${p.url}/v1/completions`, { prompt: 'x', max_tokens: 1 })
    await until('the first request to be admitted', () => p.gateway.inFlight() === 1)
    const req = http.request(`${p.url}/v1/completions`, { method: 'POST', agent: false })
    req.on('error', () => undefined)
    req.end(JSON.stringify({ prompt: 'y' }))
    await until('the second request to queue', () => p.gateway.admission.state('r0').queued === 1)
    req.destroy()
    await until(
      'the queued request to leave',
      () => p.gateway.admission.state('r0').queued === 0 && p.inFlight <= 1,
    )
    expect((await first).status).toBe(200)
    await until('all to settle', () => p.inFlight === 0 && p.gateway.inFlight() === 0)
    expect(f.received.length).toBe(1)
  })
})

describe('GatewayProxy: drain and lifecycle', () => {
  it('lets in-flight requests finish, answers new ones 503 + Retry-After, then closes', async () => {
    const f = await fake({ chunks: 10, intervalMs: 40 })
    const p = await proxy({ upstreams: [f.url], port: 0 })
    const inflight = [0, 1, 2].map(() => raw(`${p.url}/v1/chat/completions`, chatBody(true, 10)))
    await until('three streams in flight', () => f.open() === 3, 10_000)
    const drained = p.drain()
    expect(p.draining).toBe(true)
    const late = await raw(`${p.url}/v1/chat/completions`, chatBody(true, 2))
    expect(late.status).toBe(503)
    expect(Number(late.headers['retry-after'])).toBeGreaterThanOrEqual(1)
    expect(late.headers.connection).toBe('close')
    expect(JSON.parse(late.body.toString()).error.type).toBe('service_unavailable')
    for (const r of await Promise.all(inflight)) {
      expect(r.status).toBe(200)
      expect(r.error).toBeNull()
      expect(r.body.toString()).toContain('data: [DONE]')
    }
    await drained
    const after = await raw(`${p.url}/v1/models`)
    expect(after.error).toBe('ECONNREFUSED')
  })

  it('closes at drainTimeoutMs even if a stream never ends', async () => {
    const hung = await fake({ mode: 'hang-after-first-chunk' })
    const p = await proxy({ upstreams: [hung.url], port: 0, drainTimeoutMs: 200 })
    const pending = raw(`${p.url}/v1/chat/completions`, chatBody(true))
    await until('the stream to start', () => hung.open() === 1)
    await p.drain()
    const r = await pending
    expect(r.error).toBe('aborted')
    expect(p.gateway.inFlight()).toBe(0)
  })

  it('close() during a drain ends the drain at once (no timer left holding the process)', async () => {
    const hung = await fake({ mode: 'hang-after-first-chunk' })
    const p = await proxy({ upstreams: [hung.url], port: 0, drainTimeoutMs: 60_000 })
    const pending = raw(`${p.url}/v1/chat/completions`, chatBody(true))
    await until('the stream to start', () => hung.open() === 1)
    const drained = p.drain()
    await p.close()
    const outcome = await Promise.race([
      drained.then(() => 'drained'),
      new Promise((resolve) => setTimeout(resolve, 2_000, 'still waiting')),
    ])
    expect(outcome).toBe('drained')
    expect((await pending).error).toBe('aborted')
  })

  it('refreshes the picker from a monitor and pushes its events into it', async () => {
    const { createMonitor } = await import('../../src/monitor/monitor.js')
    const sim = await startSim({ speed: 50 })
    await waitHealthy(sim.url)
    // The monitor watches the simulator as r0 (so r0 is SERVING with real KV and queue readings)
    // while the proxy's r0 is an upstream that answers 500: an upstream error the gateway reports.
    const f = await fake({ name: 'a', mode: '500' })
    const monitor = createMonitor({
      replicas: [{ name: 'r0', url: sim.url }],
      gpu: 'none',
      http: false,
      predictive: false,
      scrapeIntervalMs: 50,
      checkpointIntervalMs: 20,
    })
    cleanups.push(() => monitor.close())
    const seen: string[] = []
    monitor.on('event', (e) => seen.push(e.type))
    const p = await proxy({ upstreams: [f.url], port: 0, monitor })
    await until(
      'a checkpoint to refresh the gateway',
      () => p.gateway.replicas()[0]?.kvCacheUsage !== null && p.gateway.replicas()[0]?.serving,
      10_000,
    )
    expect((await raw(`${p.url}/v1/completions`, { prompt: 'x' })).status).toBe(500)
    await until(
      'the upstream error to reach the monitor',
      () => seen.includes('gateway-upstream-error'),
      10_000,
    )
    await p.close()
    const before = seen.length
    // Closed: no more checkpoint listener on the monitor.
    expect(monitor.listenerCount('checkpoint')).toBe(0)
    expect(seen.length).toBe(before)
  })

  it('validates its options', async () => {
    await expect(GatewayProxy.start({ upstreams: [], port: 0 })).rejects.toThrow(InvalidOptionError)
    await expect(GatewayProxy.start({ upstreams: [], port: 0 })).rejects.toThrow(
      'GatewayProxy: option "upstreams" must be a non-empty array of URLs or { name, url }',
    )
    await expect(GatewayProxy.start({ upstreams: ['ftp://x'], port: 0 })).rejects.toThrow('upstreams[0]')
    await expect(GatewayProxy.start({ upstreams: ['http://127.0.0.1:1'], port: -1 })).rejects.toThrow(
      'GatewayProxy: option "port" must be an integer in 0-65535',
    )
    await expect(
      GatewayProxy.start({ upstreams: ['http://127.0.0.1:1'], port: 0, maxBodyBytes: 0 }),
    ).rejects.toThrow('GatewayProxy: option "maxBodyBytes" must be a positive integer')
    await expect(
      GatewayProxy.start({ upstreams: ['http://127.0.0.1:1'], port: 0, headersTimeoutMs: 0 }),
    ).rejects.toThrow('headersTimeoutMs')
    const gw = new Gateway({ replicas: [{ name: 'a', url: 'http://127.0.0.1:1' }] })
    await expect(GatewayProxy.start({ gateway: gw, port: 0, stallAfterMs: 5 })).rejects.toThrow(
      'GatewayProxy: option "stallAfterMs" must be set on the gateway passed in, not on the proxy',
    )
    await expect(
      GatewayProxy.start({ gateway: gw, upstreams: [{ name: 'b', url: 'http://127.0.0.1:1' }], port: 0 }),
    ).rejects.toThrow('upstreams')
    await expect(GatewayProxy.start({ gateway: gw, port: 0, slo: { ttftMs: 500 } })).rejects.toThrow(
      'GatewayProxy: option "slo" must be set on the gateway passed in, not on the proxy',
    )
    await expect(
      GatewayProxy.start({ upstreams: ['http://127.0.0.1:1'], port: 0, slo: { ttftMs: -1 } }),
    ).rejects.toThrow('gateway: slo.ttftMs must be a positive number of ms (got -1)')
    const p = await proxy({ gateway: gw, port: 0 })
    expect(p.gateway).toBe(gw)
  })
})
