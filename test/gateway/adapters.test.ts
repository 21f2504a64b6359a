import { createServer, type IncomingMessage, request, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Readable } from 'node:stream'
import { serve } from '@hono/node-server'
import express from 'express'
import Fastify from 'fastify'
import { Hono } from 'hono'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { InvalidArgumentError } from '../../src/errors.js'
import {
  createHttpHandler,
  expressMiddleware,
  FASTIFY_PLUGIN_NAME,
  fastifyPlugin,
  honoMiddleware,
  parsePriority,
  rejectionBody,
  type VllmContext,
  type VllmVariables,
} from '../../src/gateway/adapters/index.js'
import { Gateway, type GatewayOptions } from '../../src/gateway/gateway.js'

declare global {
  namespace Express {
    interface Request {
      vllm?: VllmContext
    }
  }
}

declare module 'fastify' {
  interface FastifyRequest {
    vllm: VllmContext | null
  }
}

const REPLICA = { name: 'r0', url: 'http://10.0.0.5:8000/' }

function gateway(admission: GatewayOptions['admission'] = {}): Gateway {
  return new Gateway({
    replicas: [REPLICA],
    // One slot, so a second request has to queue (or is shed when the queue is full).
    admission: { initialLimit: 1, minLimit: 1, maxLimit: 1, maxQueue: 0, ...admission },
  })
}

class Gate {
  release!: () => void
  readonly promise = new Promise<void>((resolve) => {
    this.release = resolve
  })
}

/** What the routes saw, shared by every framework's app. */
class AppState {
  readonly calls: Record<string, number> = {}
  readonly contexts: VllmContext[] = []
  gate = new Gate()
  saw(route: string, ctx: VllmContext | null | undefined): void {
    this.calls[route] = (this.calls[route] ?? 0) + 1
    if (ctx) this.contexts.push(ctx)
  }
}

interface Running {
  url: string
  close(): Promise<void>
}

const CHUNKS = ['data: 1\n\n', 'data: 2\n\n', 'data: 3\n\n']

function listen(server: Server): Promise<Running> {
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo
      resolve({
        url: `http://127.0.0.1:${port}`,
        close: () =>
          new Promise<void>((done) => {
            server.closeAllConnections()
            server.close(() => done())
          }),
      })
    })
  })
}

function body(ctx: VllmContext | null | undefined): string {
  return JSON.stringify({ replica: ctx?.replica, url: ctx?.url })
}

async function startNode(gw: Gateway, s: AppState): Promise<Running> {
  const handler = createHttpHandler(gw, async (req, res) => {
    const route = req.url ?? ''
    s.saw(route, req.vllm)
    if (route === '/ok') {
      res.setHeader('content-type', 'application/json')
      res.end(body(req.vllm))
    } else if (route === '/hold') {
      await s.gate.promise
      res.end('held')
    } else if (route === '/stream') {
      res.setHeader('content-type', 'text/event-stream')
      for (const c of CHUNKS) {
        res.write(c)
        await new Promise((r) => setImmediate(r))
      }
      res.end()
    } else if (route === '/stream-hang') {
      res.setHeader('content-type', 'text/event-stream')
      res.write(CHUNKS[0])
      await s.gate.promise
      res.end()
    } else if (route === '/throw') {
      throw new Error('boom')
    } else if (route === '/bad-gateway') {
      res.statusCode = 502
      res.end()
    }
  })
  return listen(createServer(handler))
}

async function startExpress(gw: Gateway, s: AppState): Promise<Running> {
  const app = express()
  app.use(expressMiddleware(gw))
  app.get('/ok', (req, res) => {
    s.saw('/ok', req.vllm)
    res.type('json').send(body(req.vllm))
  })
  app.get('/hold', async (req, res) => {
    s.saw('/hold', req.vllm)
    await s.gate.promise
    res.send('held')
  })
  app.get('/stream', async (req, res) => {
    s.saw('/stream', req.vllm)
    res.type('text/event-stream')
    for (const c of CHUNKS) {
      res.write(c)
      await new Promise((r) => setImmediate(r))
    }
    res.end()
  })
  app.get('/stream-hang', async (req, res) => {
    s.saw('/stream-hang', req.vllm)
    res.type('text/event-stream')
    res.write(CHUNKS[0])
    await s.gate.promise
    res.end()
  })
  app.get('/throw', async (req) => {
    s.saw('/throw', req.vllm)
    throw new Error('boom')
  })
  app.get('/bad-gateway', (req, res) => {
    s.saw('/bad-gateway', req.vllm)
    res.sendStatus(502)
  })
  return listen(createServer(app))
}

async function startFastify(gw: Gateway, s: AppState): Promise<Running> {
  const app = Fastify()
  await app.register(fastifyPlugin(gw))
  // Routes in a child context: the plugin's hooks must reach them (skip-override).
  await app.register(async (child) => {
    child.get('/ok', async (req, reply) => {
      s.saw('/ok', req.vllm)
      reply.type('application/json')
      return body(req.vllm)
    })
    child.get('/hold', async (req) => {
      s.saw('/hold', req.vllm)
      await s.gate.promise
      return 'held'
    })
    child.get('/stream', async (req, reply) => {
      s.saw('/stream', req.vllm)
      reply.type('text/event-stream')
      return reply.send(
        Readable.from(
          (async function* () {
            for (const c of CHUNKS) {
              yield c
              await new Promise((r) => setImmediate(r))
            }
          })(),
        ),
      )
    })
    child.get('/stream-hang', async (req, reply) => {
      s.saw('/stream-hang', req.vllm)
      reply.type('text/event-stream')
      return reply.send(
        Readable.from(
          (async function* () {
            yield CHUNKS[0]
            await s.gate.promise
          })(),
        ),
      )
    })
    child.get('/throw', async (req) => {
      s.saw('/throw', req.vllm)
      throw new Error('boom')
    })
    child.get('/bad-gateway', async (req, reply) => {
      s.saw('/bad-gateway', req.vllm)
      return reply.code(502).send()
    })
  })
  const address = await app.listen({ port: 0, host: '127.0.0.1' })
  return { url: address, close: () => app.close() }
}

async function startHono(gw: Gateway, s: AppState): Promise<Running> {
  const app = new Hono<{ Variables: VllmVariables }>()
  app.use(honoMiddleware(gw))
  app.onError((_err, c) => c.text('boom', 500))
  app.get('/ok', (c) => {
    s.saw('/ok', c.get('vllm'))
    return c.body(body(c.get('vllm')), 200, { 'content-type': 'application/json' })
  })
  app.get('/hold', async (c) => {
    s.saw('/hold', c.get('vllm'))
    await s.gate.promise
    return c.text('held')
  })
  app.get('/stream', (c) => {
    s.saw('/stream', c.get('vllm'))
    let i = 0
    const enc = new TextEncoder()
    const stream = new ReadableStream<Uint8Array>({
      async pull(ctrl) {
        await new Promise((r) => setImmediate(r))
        const chunk = CHUNKS[i++]
        if (chunk === undefined) ctrl.close()
        else ctrl.enqueue(enc.encode(chunk))
      },
    })
    return c.body(stream, 200, { 'content-type': 'text/event-stream' })
  })
  app.get('/stream-hang', (c) => {
    s.saw('/stream-hang', c.get('vllm'))
    let sent = false
    const stream = new ReadableStream<Uint8Array>({
      async pull(ctrl) {
        if (!sent) {
          sent = true
          ctrl.enqueue(new TextEncoder().encode(CHUNKS[0]))
          return
        }
        await s.gate.promise
        ctrl.close()
      },
    })
    return c.body(stream, 200, { 'content-type': 'text/event-stream' })
  })
  app.get('/throw', (c) => {
    s.saw('/throw', c.get('vllm'))
    throw new Error('boom')
  })
  app.get('/bad-gateway', (c) => {
    s.saw('/bad-gateway', c.get('vllm'))
    return c.body(null, 502)
  })
  const server = await new Promise<Server>((resolve) => {
    const srv = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(srv as Server))
  })
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((done) => {
        server.closeAllConnections()
        server.close(() => done())
      }),
  }
}

interface Reply {
  status: number
  headers: IncomingMessage['headers']
  body: string
}

/** A GET over a fresh socket; `open` returns the request so a test can abort it. */
function get(url: string, headers: Record<string, string> = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request(url, { agent: false, headers }, (res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => {
        text += c
      })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}

function open(url: string): { abort(): void; firstChunk: Promise<void> } {
  const req = request(url, { agent: false })
  req.on('error', () => {})
  const firstChunk = new Promise<void>((resolve) => {
    req.on('response', (res) => res.once('data', () => resolve()))
  })
  req.end()
  return { abort: () => req.destroy(), firstChunk }
}

const frameworks = [
  { name: 'node:http createHttpHandler', start: startNode },
  { name: 'Express 5 expressMiddleware', start: startExpress },
  { name: 'Fastify 5 fastifyPlugin', start: startFastify },
  { name: 'Hono 4 honoMiddleware', start: startHono },
] as const

describe.each(frameworks)('$name', ({ start }) => {
  let running: Running[] = []
  let state: AppState

  beforeEach(() => {
    state = new AppState()
  })

  afterEach(async () => {
    state.gate.release()
    await Promise.all(running.map((r) => r.close()))
    running = []
  })

  async function boot(gw: Gateway): Promise<string> {
    const r = await start(gw, state)
    running.push(r)
    return r.url
  }

  it('gives an admitted request the chosen replica, then releases its slot', async () => {
    const gw = gateway()
    const url = await boot(gw)
    const res = await get(`${url}/ok`)
    expect(res.status).toBe(200)
    expect(JSON.parse(res.body)).toEqual({ replica: 'r0', url: 'http://10.0.0.5:8000' })
    expect(state.contexts[0]?.handle.replica).toBe('r0')
    await vi.waitFor(() => expect(gw.inFlight()).toBe(0))
    expect(gw.requestStats('r0')).toMatchObject({ requests: 1, errors: 0 })
    expect(gw.admission.state('r0').inflight).toBe(0)
  })

  it('answers 429 with Retry-After and an OpenAI-style error when overloaded, without calling the route', async () => {
    const gw = gateway()
    const url = await boot(gw)
    const held = get(`${url}/hold`)
    await vi.waitFor(() => expect(gw.inFlight()).toBe(1))
    const res = await get(`${url}/ok`)
    expect(res.status).toBe(429)
    expect(Number(res.headers['retry-after'])).toBeGreaterThanOrEqual(1)
    expect(res.headers['content-type']).toMatch(/^application\/json/)
    expect(JSON.parse(res.body)).toEqual({
      error: {
        message: 'replica r0 is overloaded',
        type: 'rate_limit_exceeded',
        param: null,
        code: 'overloaded',
      },
    })
    expect(state.calls['/ok']).toBeUndefined()
    state.gate.release()
    expect((await held).status).toBe(200)
    await vi.waitFor(() => expect(gw.inFlight()).toBe(0))
    expect(gw.admission.state('r0').rejected).toBe(1)
  })

  it('answers 503 when no replica can take requests', async () => {
    const gw = gateway()
    gw.picker.setDraining('r0', true)
    const url = await boot(gw)
    const res = await get(`${url}/ok`)
    expect(res.status).toBe(503)
    expect(res.headers['retry-after']).toBe('5')
    expect(JSON.parse(res.body).error).toMatchObject({ type: 'service_unavailable', code: 'no-replica' })
    expect(state.calls['/ok']).toBeUndefined()
  })

  it('sheds a request whose x-priority is sheddable (< 0) while the replica is full, even with queue room', async () => {
    const gw = gateway({ maxQueue: 4 })
    const url = await boot(gw)
    const held = get(`${url}/hold`)
    await vi.waitFor(() => expect(gw.inFlight()).toBe(1))
    const res = await get(`${url}/ok`, { 'x-priority': '-1' })
    expect(res.status).toBe(429)
    expect(state.calls['/ok']).toBeUndefined()
    state.gate.release()
    await held
  })

  it('queues a request while the slot is taken and admits it when the slot frees', async () => {
    const gw = gateway({ maxQueue: 4 })
    const url = await boot(gw)
    const held = get(`${url}/hold`)
    await vi.waitFor(() => expect(gw.inFlight()).toBe(1))
    const queued = get(`${url}/ok`)
    await vi.waitFor(() => expect(gw.admission.state('r0').queued).toBe(1))
    expect(state.calls['/ok']).toBeUndefined()
    state.gate.release()
    const [a, b] = await Promise.all([held, queued])
    expect(a.status).toBe(200)
    expect(b.status).toBe(200)
    await vi.waitFor(() => expect(gw.inFlight()).toBe(0))
    expect(gw.requestStats('r0')?.requests).toBe(2)
  })

  it('takes a queued request out of the queue when its client leaves', async () => {
    const gw = gateway({ maxQueue: 4 })
    const url = await boot(gw)
    const held = get(`${url}/hold`)
    await vi.waitFor(() => expect(gw.inFlight()).toBe(1))
    const queued = open(`${url}/ok`)
    await vi.waitFor(() => expect(gw.admission.state('r0').queued).toBe(1))
    queued.abort()
    await vi.waitFor(() => expect(gw.admission.state('r0').queued).toBe(0))
    state.gate.release()
    await held
    await vi.waitFor(() => expect(gw.inFlight()).toBe(0))
    expect(state.calls['/ok']).toBeUndefined()
    expect(gw.admission.state('r0').inflight).toBe(0)
  })

  it('releases the slot when the client aborts mid-request, without counting a request', async () => {
    const gw = gateway()
    const url = await boot(gw)
    const req = open(`${url}/hold`)
    await vi.waitFor(() => expect(state.calls['/hold']).toBe(1))
    expect(gw.inFlight()).toBe(1)
    req.abort()
    await vi.waitFor(() => expect(gw.inFlight()).toBe(0))
    expect(gw.admission.state('r0').inflight).toBe(0)
    expect(gw.requestStats('r0')).toMatchObject({ requests: 0, errors: 0 })
    // The slot is free again.
    expect((await get(`${url}/ok`)).status).toBe(200)
  })

  it('releases the slot when the client aborts mid-stream, after the first chunk', async () => {
    const gw = gateway()
    const url = await boot(gw)
    const req = open(`${url}/stream-hang`)
    await req.firstChunk
    expect(gw.inFlight()).toBe(1)
    req.abort()
    await vi.waitFor(() => expect(gw.inFlight()).toBe(0))
    expect(gw.admission.state('r0').inflight).toBe(0)
    expect(gw.requestStats('r0')).toMatchObject({ requests: 0, errors: 0 })
  })

  it('releases the slot when the route throws, and counts a 500 against the replica', async () => {
    const gw = gateway()
    const url = await boot(gw)
    const res = await get(`${url}/throw`)
    expect(res.status).toBe(500)
    await vi.waitFor(() => expect(gw.inFlight()).toBe(0))
    expect(gw.requestStats('r0')).toMatchObject({ requests: 1, errors: 1 })
    expect(gw.admission.state('r0').inflight).toBe(0)
  })

  it('records the status sent: a 502 is an upstream error, a 200 is not', async () => {
    const gw = gateway()
    const url = await boot(gw)
    expect((await get(`${url}/bad-gateway`)).status).toBe(502)
    await vi.waitFor(() => expect(gw.requestStats('r0')?.requests).toBe(1))
    expect(gw.requestStats('r0')?.errors).toBe(1)
    expect((await get(`${url}/ok`)).status).toBe(200)
    await vi.waitFor(() => expect(gw.requestStats('r0')?.requests).toBe(2))
    expect(gw.requestStats('r0')?.errors).toBe(1)
  })

  it('counts a streamed body chunk by chunk (time to first byte, inter-chunk gaps)', async () => {
    const gw = gateway()
    const url = await boot(gw)
    const res = await get(`${url}/stream`)
    expect(res.body).toBe(CHUNKS.join(''))
    await vi.waitFor(() => expect(gw.requestStats('r0')?.requests).toBe(1))
    const stats = gw.requestStats('r0')
    expect(stats?.ttftMs).not.toBeNull()
    expect(stats?.interTokenMs).not.toBeNull()
    expect(gw.inFlight()).toBe(0)
  })
})

describe('fastifyPlugin', () => {
  it("carries fastify-plugin's marks so its hooks escape encapsulation", () => {
    const plugin = fastifyPlugin(gateway())
    expect(plugin[Symbol.for('skip-override')]).toBe(true)
    expect(plugin[Symbol.for('fastify.display-name')]).toBe(FASTIFY_PLUGIN_NAME)
    expect(plugin[Symbol.for('plugin-meta')]).toEqual({ name: FASTIFY_PLUGIN_NAME, fastify: '5.x' })
  })

  it('sheds in onRequest, before the body is parsed (inject)', async () => {
    const gw = gateway()
    gw.picker.setDraining('r0', true)
    const app = Fastify()
    await app.register(fastifyPlugin(gw))
    let parsed = false
    app.post('/v1/chat/completions', async (req) => {
      parsed = req.body !== undefined
      return 'ok'
    })
    const res = await app.inject({ method: 'POST', url: '/v1/chat/completions', payload: { model: 'm' } })
    expect(res.statusCode).toBe(503)
    expect(res.headers['retry-after']).toBe('5')
    expect(parsed).toBe(false)
    await app.close()
  })

  it('records a connection refused thrown by the route as a connect error of the replica', async () => {
    const gw = gateway()
    const app = Fastify()
    await app.register(fastifyPlugin(gw))
    app.get('/', async () => {
      throw Object.assign(new TypeError('fetch failed'), { cause: { code: 'ECONNREFUSED' } })
    })
    const res = await app.inject({ method: 'GET', url: '/' })
    expect(res.statusCode).toBe(500)
    expect(gw.requestStats('r0')).toMatchObject({ requests: 1, errors: 1 })
    expect(gw.inFlight()).toBe(0)
    await app.close()
  })
})

describe('adapter helpers', () => {
  it('reads x-priority as a safe integer, else 0', () => {
    expect(parsePriority('3')).toBe(3)
    expect(parsePriority('-2')).toBe(-2)
    expect(parsePriority(['7', '1'])).toBe(7)
    expect(parsePriority(undefined)).toBe(0)
    expect(parsePriority('')).toBe(0)
    expect(parsePriority('1.5')).toBe(0)
    expect(parsePriority('high')).toBe(0)
    expect(parsePriority('1e400')).toBe(0)
  })

  it('shapes a rejection like an OpenAI error', () => {
    expect(
      JSON.parse(
        rejectionBody({ reason: 'draining', status: 503, retryAfterS: 2, message: 'replica r0 is draining' }),
      ),
    ).toEqual({
      error: {
        message: 'replica r0 is draining',
        type: 'service_unavailable',
        param: null,
        code: 'draining',
      },
    })
  })

  it('rejects a missing gateway or handler with exact messages', () => {
    expect(() => createHttpHandler(null as unknown as Gateway, () => {})).toThrow(
      new InvalidArgumentError('createHttpHandler: gateway must be a Gateway'),
    )
    expect(() => createHttpHandler(gateway(), null as unknown as () => void)).toThrow(
      'createHttpHandler: handler must be a function',
    )
    expect(() => expressMiddleware(gateway(), { priority: 1 as unknown as () => number })).toThrow(
      'expressMiddleware: options.priority must be a function',
    )
    expect(() => honoMiddleware({} as Gateway)).toThrow(InvalidArgumentError)
    expect(() => fastifyPlugin({} as Gateway)).toThrow('fastifyPlugin: gateway must be a Gateway')
  })

  it('takes the priority from a custom function instead of the header', async () => {
    const gw = gateway({ maxQueue: 4 })
    const seen: number[] = []
    const handler = createHttpHandler(gw, (_req, res) => res.end('ok'), {
      priority: (req) => {
        const p = req.headers['x-tenant'] === 'batch' ? -1 : 0
        seen.push(p)
        return p
      },
    })
    const r = await listen(createServer(handler))
    try {
      await get(r.url, { 'x-tenant': 'batch', 'x-priority': '9' })
      expect(seen).toEqual([-1])
    } finally {
      await r.close()
    }
  })

  it('type-checks against each framework without casts', () => {
    const gw = gateway()
    express().use(expressMiddleware(gw))
    Fastify().register(fastifyPlugin(gw))
    new Hono().use(honoMiddleware(gw))
    new Hono<{ Variables: VllmVariables }>().use('/v1/*', honoMiddleware(gw))
    createServer(createHttpHandler(gw, (req, res) => res.end(req.vllm.url)))
  })
})
