import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import OpenAI from 'openai'
import { afterAll, beforeAll, beforeEach, describe, expect, expectTypeOf, it, vi } from 'vitest'
import { InvalidArgumentError } from '../../src/errors.js'
import { AdmissionRejectedError } from '../../src/gateway/admission.js'
import { Gateway, type GatewayOptions } from '../../src/gateway/gateway.js'
import { DEFAULT_WRAPPED_METHODS, wrap } from '../../src/gateway/wrap.js'

function gateway(admission: GatewayOptions['admission'] = {}): Gateway {
  return new Gateway({
    replicas: [{ name: 'r0', url: 'http://127.0.0.1:1' }],
    admission: { initialLimit: 1, minLimit: 1, maxLimit: 1, maxQueue: 0, ...admission },
  })
}

const tick = () => new Promise((r) => setImmediate(r))

/** `gc()` without --expose-gc: the flag set at run time reaches a fresh context's global. */
function collectGarbage(): () => void {
  setFlagsFromString('--expose-gc')
  return runInNewContext('gc') as () => void
}

class Tokenizer {
  count(text: string): number {
    return text.split(' ').length
  }
  // An admitted name on a nested object.
  async generate(text: string): Promise<{ text: string; usage: { completionTokens: number } }> {
    await tick()
    return { text: text.toUpperCase(), usage: { completionTokens: this.count(text) } }
  }
}

/** An engine-like object: private state, a getter, sync and async methods, a stream, `this` everywhere. */
class FakeEngine {
  #secret = 7
  calls = 0
  name = 'fake'
  readonly config = { model: 'm', limits: { maxTokens: 16 } }
  readonly tokenizer = new Tokenizer()
  readonly history: string[] = []
  readonly started = new Date(0)
  readonly controller = new AbortController()

  get secret(): number {
    return this.#secret
  }

  helper(x: number): number {
    return x * this.#secret
  }

  complete(prompt: string): { text: string; usage: { prompt_tokens: number; completion_tokens: number } } {
    this.calls++
    this.history.push(prompt)
    if (prompt === 'throw') throw new Error('engine exploded')
    return { text: `${prompt}:${this.#secret}`, usage: { prompt_tokens: 1, completion_tokens: 2 } }
  }

  async create(
    prompt: string,
  ): Promise<{ text: string; usage: { prompt_tokens: number; completion_tokens: number } }> {
    this.calls++
    await tick()
    if (prompt === 'bad') throw Object.assign(new Error('bad request'), { status: 400 })
    if (prompt === 'down') throw Object.assign(new Error('upstream 503'), { status: 503 })
    return { text: `${prompt}!${this.helper(1)}`, usage: { prompt_tokens: 3, completion_tokens: 4 } }
  }

  async *stream(n: number): AsyncGenerator<{ token: string; usage?: { completion_tokens: number } }> {
    this.calls++
    for (let i = 0; i < n; i++) {
      await tick()
      yield { token: `t${i}:${this.#secret}` }
    }
    yield { token: '', usage: { completion_tokens: n } }
  }
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = []
  for await (const x of it) out.push(x)
  return out
}

describe('wrap() around an engine-like object', () => {
  let gw: Gateway
  let engine: FakeEngine
  let w: FakeEngine
  beforeEach(() => {
    gw = gateway({ maxQueue: 4 })
    engine = new FakeEngine()
    w = wrap(gw, engine)
  })

  it('keeps the type, prototype, own keys, getters, private fields and non-function members', () => {
    expectTypeOf(w).toEqualTypeOf<FakeEngine>()
    expect(w).toBeInstanceOf(FakeEngine)
    expect(Object.keys(w)).toEqual(Object.keys(engine))
    expect(w.secret).toBe(7)
    expect(w.helper(3)).toBe(21)
    expect(w.name).toBe('fake')
    expect(w.config).toEqual({ model: 'm', limits: { maxTokens: 16 } })
    expect(w.config.limits.maxTokens).toBe(16)
    expect(JSON.stringify(w)).toBe(JSON.stringify(engine))
    expect('complete' in w).toBe(true)
    // Built-ins with internal slots are handed out as they are.
    expect(w.started).toBe(engine.started)
    expect(w.controller).toBe(engine.controller)
    expect(w.started.getTime()).toBe(0)
  })

  it('returns stable proxies for nested objects and writes through to the real object', () => {
    expect(w.tokenizer).toBe(w.tokenizer)
    expect(w.config).toBe(w.config)
    expect(w.tokenizer).not.toBe(engine.tokenizer)
    expect(w.tokenizer.count('a b c')).toBe(3)
    w.name = 'renamed'
    expect(engine.name).toBe('renamed')
    w.history.push('x')
    expect(engine.history).toEqual(['x'])
    expect(w.history.length).toBe(1)
  })

  it('runs a sync method synchronously with the same result, and counts it with its tokens', () => {
    const r = w.complete('hi')
    expect(r).toEqual(new FakeEngine().complete('hi'))
    expect(engine.calls).toBe(1)
    expect(gw.inFlight()).toBe(0)
    expect(gw.requestStats('r0')).toMatchObject({ requests: 1, errors: 0, completionTokens: 2 })
  })

  it('runs an async method with the same result and counts it when it resolves', async () => {
    const p = w.create('hello')
    expect(p).toBeInstanceOf(Promise)
    expect(gw.inFlight()).toBe(1)
    expect(await p).toEqual({ text: 'hello!7', usage: { prompt_tokens: 3, completion_tokens: 4 } })
    expect(gw.inFlight()).toBe(0)
    expect(gw.requestStats('r0')).toMatchObject({ requests: 1, completionTokens: 4 })
  })

  it('admits allow-listed methods of nested objects, with their own `this`', async () => {
    expect(await w.tokenizer.generate('a b')).toEqual({ text: 'A B', usage: { completionTokens: 2 } })
    expect(gw.requestStats('r0')).toMatchObject({ requests: 1, completionTokens: 2 })
  })

  it('leaves other methods alone', () => {
    w.helper(2)
    w.tokenizer.count('x')
    expect(gw.admission.state('r0').admitted).toBe(0)
  })

  it('follows a stream chunk by chunk and ends the request with it', async () => {
    const stream = w.stream(3)
    expect(gw.inFlight()).toBe(1)
    const chunks = await collect(stream)
    expect(chunks).toEqual(await collect(new FakeEngine().stream(3)))
    expect(gw.inFlight()).toBe(0)
    const stats = gw.requestStats('r0')
    expect(stats).toMatchObject({ requests: 1, errors: 0, completionTokens: 3 })
    expect(stats?.ttftMs).not.toBeNull()
    expect(stats?.interTokenMs).not.toBeNull()
  })

  it('releases the slot without counting a request when the consumer stops early', async () => {
    for await (const c of w.stream(5)) if (c.token.startsWith('t1')) break
    expect(gw.inFlight()).toBe(0)
    expect(gw.requestStats('r0')).toMatchObject({ requests: 0, errors: 0 })
  })

  it('passes errors through: a thrown error is a server error, a 4xx is the caller’s, a 5xx is the replica’s', async () => {
    expect(() => w.complete('throw')).toThrow('engine exploded')
    expect(gw.requestStats('r0')).toMatchObject({ requests: 1, errors: 1 })
    await expect(w.create('bad')).rejects.toMatchObject({ status: 400 })
    expect(gw.requestStats('r0')).toMatchObject({ requests: 2, errors: 1 })
    await expect(w.create('down')).rejects.toMatchObject({ status: 503 })
    expect(gw.requestStats('r0')).toMatchObject({ requests: 3, errors: 2 })
    expect(gw.inFlight()).toBe(0)
  })

  it('throws AdmissionRejectedError without calling the method when no replica can take it', () => {
    gw.picker.setDraining('r0', true)
    let caught: unknown
    try {
      w.complete('x')
    } catch (err) {
      caught = err
    }
    expect(caught).toBeInstanceOf(AdmissionRejectedError)
    expect((caught as AdmissionRejectedError).rejection).toMatchObject({ reason: 'no-replica', status: 503 })
    expect(engine.calls).toBe(0)
  })

  it('queues a call while the slot is taken and runs it once admitted', async () => {
    const first = w.create('a')
    const second = w.create('b')
    expect(gw.admission.state('r0').queued).toBe(1)
    expect(engine.calls).toBe(1)
    expect(await first).toMatchObject({ text: 'a!7' })
    expect(await second).toMatchObject({ text: 'b!7' })
    expect(engine.calls).toBe(2)
    expect(gw.requestStats('r0')?.requests).toBe(2)
  })

  it('iterates a queued stream once admitted', async () => {
    const first = w.create('a')
    const queued = w.stream(2)
    expect(gw.admission.state('r0').queued).toBe(1)
    await first
    expect((await collect(queued)).map((c) => c.token)).toEqual(['t0:7', 't1:7', ''])
    expect(gw.inFlight()).toBe(0)
    expect(gw.requestStats('r0')).toMatchObject({ requests: 2, completionTokens: 4 + 2 })
  })

  it('rejects a queued call with AdmissionRejectedError (429) when the queue is full, without calling', async () => {
    const full = gateway({ maxQueue: 0 })
    const e = new FakeEngine()
    const we = wrap(full, e)
    const first = we.create('a')
    await expect(we.create('b')).rejects.toSatisfy(
      (err) => err instanceof AdmissionRejectedError && err.rejection.status === 429,
    )
    expect(e.calls).toBe(1)
    await first
  })

  it('aborts a result nobody consumes once it is collected, so no slot leaks', async () => {
    const gc = collectGarbage()
    const wide = gateway({ initialLimit: 2, maxLimit: 2 })
    // Dropped unread: a sync-returned stream, and a promise-like never awaited.
    wrap(wide, engine).stream(3)
    class SubPromise extends Promise<number> {}
    wrap(wide, { create: () => new SubPromise((ok) => ok(1)) }).create()
    expect(wide.inFlight()).toBe(2)
    await vi.waitFor(async () => {
      gc()
      await tick()
      expect(wide.inFlight()).toBe(0)
    })
    expect(wide.requestStats('r0')?.requests).toBe(0)
  })

  it('takes the allow-list and the priority from options', () => {
    const seen: unknown[] = []
    const we = wrap(gw, engine, {
      methods: ['helper'],
      priority: (method, args) => {
        seen.push(method, args[0])
        return 1
      },
    })
    expect(we.helper(2)).toBe(14)
    we.complete('x')
    expect(seen).toEqual(['helper', 2])
    expect(gw.admission.state('r0').admitted).toBe(1)
  })

  it('validates its arguments with exact messages', () => {
    expect(DEFAULT_WRAPPED_METHODS).toEqual(['create', 'createStream', 'generate', 'stream', 'complete'])
    expect(() => wrap({} as Gateway, engine)).toThrow(
      new InvalidArgumentError('wrap: gateway must be a Gateway'),
    )
    expect(() => wrap(gw, 1 as unknown as object)).toThrow('wrap: client must be an object')
    expect(() => wrap(gw, engine, { methods: 'create' as unknown as string[] })).toThrow(
      'wrap: options.methods must be an array of method names',
    )
    expect(() => wrap(gw, engine, { priority: Number.NaN })).toThrow(
      'wrap: options.priority must be a number or a function',
    )
  })
})

// A tiny OpenAI-compatible server: JSON and SSE answers, errors on request.
interface FakeServer {
  url: string
  hits: number
  close(): Promise<void>
}

const USAGE = { prompt_tokens: 5, completion_tokens: 3, total_tokens: 8 }

function chunk(i: number, usage: typeof USAGE | null): string {
  return `data: ${JSON.stringify({
    id: 'chatcmpl-1',
    object: 'chat.completion.chunk',
    created: 1,
    model: 'm',
    choices: usage ? [] : [{ index: 0, delta: { content: `tok${i}` }, finish_reason: null }],
    usage,
  })}\n\n`
}

async function answer(req: IncomingMessage, res: ServerResponse, server: FakeServer): Promise<void> {
  server.hits++
  let raw = ''
  for await (const c of req) raw += c
  const body = JSON.parse(raw) as {
    stream?: boolean
    model: string
    stream_options?: { include_usage?: boolean }
  }
  const json = (status: number, value: unknown) => {
    res.writeHead(status, { 'content-type': 'application/json' })
    res.end(JSON.stringify(value))
  }
  if (body.model === 'bad')
    return json(400, { error: { message: 'bad model', type: 'invalid_request_error' } })
  if (body.model === 'down') return json(500, { error: { message: 'engine dead', type: 'server_error' } })
  if (req.url === '/v1/completions')
    return json(200, {
      id: 'cmpl-1',
      object: 'text_completion',
      created: 1,
      model: body.model,
      choices: [{ index: 0, text: 'done', finish_reason: 'stop' }],
      usage: USAGE,
    })
  if (!body.stream)
    return json(200, {
      id: 'chatcmpl-1',
      object: 'chat.completion',
      created: 1,
      model: body.model,
      choices: [{ index: 0, message: { role: 'assistant', content: 'tok0tok1tok2' }, finish_reason: 'stop' }],
      usage: USAGE,
    })
  res.writeHead(200, { 'content-type': 'text/event-stream' })
  for (let i = 0; i < 3; i++) {
    res.write(chunk(i, null))
    await tick()
  }
  if (body.stream_options?.include_usage) res.write(chunk(3, USAGE))
  res.end('data: [DONE]\n\n')
}

describe('wrap() around the OpenAI client', () => {
  let server: FakeServer
  let http: Server
  let gw: Gateway
  let client: OpenAI
  let w: OpenAI

  beforeAll(async () => {
    http = createServer((req, res) => {
      answer(req, res, server).catch((err: unknown) => res.destroy(err as Error))
    })
    await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve))
    const { port } = http.address() as AddressInfo
    server = {
      url: `http://127.0.0.1:${port}/v1`,
      hits: 0,
      close: () =>
        new Promise<void>((done) => {
          http.closeAllConnections()
          http.close(() => done())
        }),
    }
  })
  afterAll(() => server.close())

  beforeEach(() => {
    server.hits = 0
    gw = gateway({ maxQueue: 4 })
    client = new OpenAI({ apiKey: 'test', baseURL: server.url, maxRetries: 0 })
    w = wrap(gw, client)
  })

  const messages = [{ role: 'user' as const, content: 'hi' }]

  it('keeps the client’s type and members', () => {
    expectTypeOf(w).toEqualTypeOf<OpenAI>()
    expect(w).toBeInstanceOf(OpenAI)
    expect(w.baseURL).toBe(server.url)
    expect(w.chat.completions).toBe(w.chat.completions)
    expect(w.buildURL('/models', null)).toBe(client.buildURL('/models', null))
  })

  it('answers a chat completion unchanged and counts the request and its tokens', async () => {
    const viaWrap = await w.chat.completions.create({ model: 'm', messages })
    const direct = await client.chat.completions.create({ model: 'm', messages })
    expect(viaWrap).toEqual(direct)
    expect(viaWrap.choices[0]?.message.content).toBe('tok0tok1tok2')
    expect(gw.requestStats('r0')).toMatchObject({ requests: 1, errors: 0, completionTokens: 3 })
    expect(gw.inFlight()).toBe(0)
  })

  it("keeps APIPromise's helpers: withResponse() and asResponse()", async () => {
    const { data, response } = await w.chat.completions.create({ model: 'm', messages }).withResponse()
    expect(data.usage).toEqual(USAGE)
    expect(response.status).toBe(200)
    expect(gw.requestStats('r0')).toMatchObject({ requests: 1, completionTokens: 3 })
    const raw = await w.chat.completions.create({ model: 'm', messages }).asResponse()
    expect(((await raw.json()) as { usage: unknown }).usage).toEqual(USAGE)
    expect(gw.requestStats('r0')?.requests).toBe(2)
    expect(gw.inFlight()).toBe(0)
  })

  it('streams unchanged, chunk by chunk, and takes the tokens from the final usage chunk', async () => {
    const stream = await w.chat.completions.create({
      model: 'm',
      messages,
      stream: true,
      stream_options: { include_usage: true },
    })
    expect(gw.inFlight()).toBe(1)
    const viaWrap = []
    for await (const c of stream) viaWrap.push(c)
    const direct = []
    for await (const c of await client.chat.completions.create({
      model: 'm',
      messages,
      stream: true,
      stream_options: { include_usage: true },
    }))
      direct.push(c)
    expect(viaWrap).toEqual(direct)
    expect(viaWrap.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe('tok0tok1tok2')
    expect(gw.inFlight()).toBe(0)
    const stats = gw.requestStats('r0')
    expect(stats).toMatchObject({ requests: 1, errors: 0, completionTokens: 3 })
    expect(stats?.interTokenMs).not.toBeNull()
  })

  it('counts a stream without usage as a request with no tokens', async () => {
    const chunks = []
    for await (const c of await w.chat.completions.create({ model: 'm', messages, stream: true }))
      chunks.push(c)
    expect(chunks).toHaveLength(3)
    expect(gw.requestStats('r0')).toMatchObject({ requests: 1, completionTokens: 0 })
  })

  it('wraps the legacy completions endpoint too', async () => {
    const r = await w.completions.create({ model: 'm', prompt: 'hi' })
    expect(r.choices[0]?.text).toBe('done')
    expect(gw.requestStats('r0')).toMatchObject({ requests: 1, completionTokens: 3 })
  })

  it('throws the SDK’s own errors: a 400 is the caller’s, a 500 counts against the replica', async () => {
    await expect(w.chat.completions.create({ model: 'bad', messages })).rejects.toBeInstanceOf(
      OpenAI.BadRequestError,
    )
    expect(gw.requestStats('r0')).toMatchObject({ requests: 1, errors: 0 })
    await expect(w.chat.completions.create({ model: 'down', messages })).rejects.toBeInstanceOf(
      OpenAI.InternalServerError,
    )
    expect(gw.requestStats('r0')).toMatchObject({ requests: 2, errors: 1 })
    expect(gw.inFlight()).toBe(0)
  })

  it('records a refused connection as a failure of the replica', async () => {
    const dead = wrap(gw, new OpenAI({ apiKey: 'test', baseURL: 'http://127.0.0.1:1/v1', maxRetries: 0 }))
    await expect(dead.chat.completions.create({ model: 'm', messages })).rejects.toBeInstanceOf(
      OpenAI.APIConnectionError,
    )
    expect(gw.requestStats('r0')).toMatchObject({ requests: 1, errors: 1 })
    expect(gw.inFlight()).toBe(0)
  })

  it('throws AdmissionRejectedError without calling the server when rejected', async () => {
    gw.picker.setDraining('r0', true)
    expect(() => w.chat.completions.create({ model: 'm', messages })).toThrow(AdmissionRejectedError)
    gw.picker.setDraining('r0', false)
    const full = gateway({ maxQueue: 0 })
    const wf = wrap(full, client)
    const slot = full.tryBegin(0)
    await expect(wf.chat.completions.create({ model: 'm', messages })).rejects.toBeInstanceOf(
      AdmissionRejectedError,
    )
    expect(server.hits).toBe(0)
    if (slot !== null && 'abort' in slot) slot.abort()
  })

  it('runs a queued call once a slot frees, APIPromise helpers included', async () => {
    const slot = gw.tryBegin(0)
    const queued = w.chat.completions.create({ model: 'm', messages }).withResponse()
    expect(gw.admission.state('r0').queued).toBe(1)
    expect(server.hits).toBe(0)
    if (slot !== null && 'end' in slot) slot.end(200)
    const { data } = await queued
    expect(data.choices[0]?.message.content).toBe('tok0tok1tok2')
    expect(server.hits).toBe(1)
    expect(gw.inFlight()).toBe(0)
  })
})
