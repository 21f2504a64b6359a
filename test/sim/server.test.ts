import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { SimFleet } from '../../src/sim/fleet.js'
import { SimServer, type SimServerOptions } from '../../src/sim/server.js'
import { parseExposition, type Sample } from '../../src/vllm/exposition.js'
import { type Answer, request } from '../helpers/sim-http.js'

const MODEL = 'meta-llama/Llama-3.1-8B-Instruct'
const MAX_MODEL_LEN = 4096
const DEAD = 'EngineCore encountered an issue. See stack trace (above) for the root cause.'

const json = <T>(a: Answer): T => JSON.parse(a.body) as T

async function health(url: string): Promise<number | string> {
  const a = await request(`${url}/health`, 'GET', undefined, 2000)
  return a.status ?? (a.error as string)
}

async function metrics(url: string): Promise<Sample[]> {
  const a = await request(`${url}/metrics`)
  expect(a.status).toBe(200)
  const parsed = parseExposition(a.body)
  expect(parsed.errors).toEqual([])
  return parsed.samples
}

function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  return samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    ?.value
}

/** Parses an SSE body into its `data:` payloads. */
function sseData(body: string): string[] {
  return body
    .split('\n\n')
    .map((e) => e.trim())
    .filter((e) => e !== '')
    .map((e) => {
      expect(e.startsWith('data: ')).toBe(true)
      return e.slice('data: '.length)
    })
}

const servers: SimServer[] = []
async function start(
  o: Partial<SimServerOptions> = {},
  fleetOptions: ConstructorParameters<typeof SimFleet>[0] = {},
) {
  const fleet = new SimFleet({ replicas: 1, maxModelLen: MAX_MODEL_LEN, arrivals: null, ...fleetOptions })
  const s = await SimServer.start({ fleet, speed: 50, ...o })
  servers.push(s)
  return s
}
async function closeAll() {
  await Promise.all(servers.splice(0).map((s) => s.close()))
}

function urlOf(s: SimServer, replica = 'r0'): string {
  const u = s.urls[replica]
  if (u === undefined) throw new Error(`no ${replica}`)
  return u
}

/** Polls an async condition (every 10 ms, wall `timeoutMs`). */
async function until(cond: () => Promise<boolean>, what: () => string, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what()}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

async function waitHealthy(url: string, timeoutMs = 10_000): Promise<void> {
  let last: number | string = ''
  await until(
    async () => {
      last = await health(url)
      return last === 200
    },
    () => `${url}/health to answer 200 (last: ${last})`,
    timeoutMs,
  )
}

describe('SimServer start-up', () => {
  afterEach(closeAll)

  it('refuses connections until vLLM would open its port, then answers /health 200', async () => {
    // Slow enough that start-up (≈12 s simulated) takes ≈1.2 s of wall time.
    const s = await start({ speed: 10 })
    const url = urlOf(s)
    expect(await health(url)).toBe('ECONNREFUSED')
    expect((await request(`${url}/metrics`)).error).toBe('ECONNREFUSED')
    const state = json<{ replicas: Array<{ phase: string }> }>(await request(`${s.controlUrl}/sim/state`))
    expect(state.replicas[0]?.phase).toBe('starting')
    await waitHealthy(url)
    // It opened when the start-up sequence had played out, not before.
    expect(s.simNow()).toBeGreaterThan(10_000)
    const after = json<{ replicas: Array<{ phase: string; exitCode: number | null }> }>(
      await request(`${s.controlUrl}/sim/state`),
    )
    expect(after.replicas[0]).toMatchObject({ phase: 'serving', exitCode: null })
  })

  it('serves V0 metric names with metricsGeneration v0', async () => {
    const s = await start({ metricsGeneration: 'v0', speed: 100 })
    const url = urlOf(s)
    await waitHealthy(url)
    const samples = await metrics(url)
    const names = new Set(samples.map((x) => x.name))
    expect(names.has('vllm:gpu_cache_usage_perc')).toBe(true)
    expect(names.has('vllm:num_requests_swapped')).toBe(true)
    expect(names.has('vllm:time_per_output_token_seconds_bucket')).toBe(true)
    expect(names.has('vllm:kv_cache_usage_perc')).toBe(false)
    expect(names.has('vllm:cache_config_info')).toBe(false)
    const running = samples.find((x) => x.name === 'vllm:num_requests_running')
    expect(running?.labels).toEqual({ model_name: MODEL })
  })
})

describe('SimServer vLLM API', () => {
  let s: SimServer
  let url: string
  beforeAll(async () => {
    s = await start({ speed: 100 })
    url = urlOf(s)
    await waitHealthy(url)
  })
  afterAll(closeAll)

  it('answers /version and /v1/models', async () => {
    const v = await request(`${url}/version`)
    expect(v.status).toBe(200)
    expect(json<{ version: string }>(v).version).toMatch(/^\d+\.\d+\.\d+/)
    const m = await request(`${url}/v1/models`)
    expect(m.status).toBe(200)
    const list = json<{
      object: string
      data: Array<{ id: string; max_model_len: number; owned_by: string }>
    }>(m)
    expect(list.object).toBe('list')
    expect(list.data).toHaveLength(1)
    expect(list.data[0]).toMatchObject({ id: MODEL, max_model_len: MAX_MODEL_LEN, owned_by: 'vllm' })
  })

  it('serves /metrics with V1 names and the engine label, parsed without errors', async () => {
    const samples = await metrics(url)
    const names = new Set(samples.map((x) => x.name))
    for (const n of [
      'vllm:num_requests_running',
      'vllm:num_requests_waiting',
      'vllm:kv_cache_usage_perc',
      'vllm:num_preemptions_total',
      'vllm:prompt_tokens_total',
      'vllm:generation_tokens_total',
      'vllm:request_success_total',
      'vllm:iteration_tokens_total_count',
      'vllm:time_to_first_token_seconds_bucket',
      'vllm:inter_token_latency_seconds_sum',
      'vllm:cache_config_info',
    ]) {
      expect(names.has(n), n).toBe(true)
    }
    expect(names.has('vllm:gpu_cache_usage_perc')).toBe(false)
    for (const x of samples.filter((y) => y.name.startsWith('vllm:'))) {
      expect(x.labels).toMatchObject({ engine: '0', model_name: MODEL })
    }
    const cfg = samples.find((x) => x.name === 'vllm:cache_config_info')
    expect(Number(cfg?.labels.num_gpu_blocks)).toBeGreaterThan(1000)
  })

  it('completes a non-streaming completion with usage.completion_tokens == max_tokens', async () => {
    const before = value(await metrics(url), 'vllm:generation_tokens_total') ?? 0
    const a = await request(`${url}/v1/completions`, 'POST', {
      model: MODEL,
      prompt: 'Say hello to the world',
      max_tokens: 7,
    })
    expect(a.status).toBe(200)
    const body = json<{
      id: string
      object: string
      model: string
      choices: Array<{ text: string; finish_reason: string }>
      usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number }
    }>(a)
    expect(body.object).toBe('text_completion')
    expect(body.id).toMatch(/^cmpl-/)
    expect(body.model).toBe(MODEL)
    expect(body.usage.completion_tokens).toBe(7)
    expect(body.usage.prompt_tokens).toBeGreaterThan(0)
    expect(body.usage.total_tokens).toBe(body.usage.prompt_tokens + 7)
    expect(body.choices[0]?.finish_reason).toBe('length')
    expect(body.choices[0]?.text.trim().split(/\s+/)).toHaveLength(7)
    const after = value(await metrics(url), 'vllm:generation_tokens_total') ?? 0
    expect(after - before).toBe(7)
  })

  it('streams a chat completion as SSE: chunks, a finish_reason chunk, usage, then [DONE]', async () => {
    const res = await fetch(`${url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: MODEL,
        messages: [{ role: 'user', content: 'Count to five.' }],
        max_tokens: 5,
        stream: true,
        stream_options: { include_usage: true },
      }),
    })
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/)
    const events = sseData(await res.text())
    expect(events.at(-1)).toBe('[DONE]')
    const chunks = events.slice(0, -1).map(
      (e) =>
        JSON.parse(e) as {
          id: string
          object: string
          choices: Array<{ delta: { content?: string }; finish_reason: string | null }>
          usage?: { completion_tokens: number; prompt_tokens: number }
        },
    )
    for (const c of chunks) {
      expect(c.object).toBe('chat.completion.chunk')
      expect(c.id).toBe(chunks[0]?.id)
    }
    const content = chunks.filter((c) => c.choices[0]?.delta.content !== undefined)
    expect(content).toHaveLength(5)
    const finish = chunks.filter((c) => c.choices[0]?.finish_reason != null)
    expect(finish).toHaveLength(1)
    expect(finish[0]?.choices[0]?.finish_reason).toBe('length')
    // The usage chunk comes last, with no choices.
    const last = chunks.at(-1)
    expect(last?.choices).toEqual([])
    expect(last?.usage?.completion_tokens).toBe(5)
    expect(last?.usage?.prompt_tokens).toBeGreaterThan(0)
  })

  it('streams without a usage chunk when include_usage is not set', async () => {
    const res = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt: 'abc', max_tokens: 3, stream: true }),
    })
    const events = sseData(await res.text())
    expect(events.at(-1)).toBe('[DONE]')
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e) as { object: string; usage?: unknown })
    expect(chunks).toHaveLength(4)
    expect(chunks.every((c) => c.object === 'text_completion' && c.usage === undefined)).toBe(true)
  })

  it("rejects a prompt over the context window with 400 and vLLM's message", async () => {
    const a = await request(`${url}/v1/completions`, 'POST', {
      model: MODEL,
      prompt: 'x'.repeat(4 * MAX_MODEL_LEN),
      max_tokens: 16,
    })
    expect(a.status).toBe(400)
    const body = json<{ object: string; message: string; type: string; code: number }>(a)
    expect(body).toMatchObject({ object: 'error', type: 'BadRequestError', code: 400 })
    expect(body.message).toMatch(
      new RegExp(`^This model's maximum context length is ${MAX_MODEL_LEN} tokens\\.`),
    )
  })

  it('answers 404 for another model, and never 429', async () => {
    const a = await request(`${url}/v1/chat/completions`, 'POST', {
      model: 'some/other-model',
      messages: [{ role: 'user', content: 'hi' }],
    })
    expect(a.status).toBe(404)
    const body = json<{ message: string; type: string; code: number }>(a)
    expect(body).toMatchObject({ type: 'NotFoundError', code: 404 })
    expect(body.message).toBe('The model `some/other-model` does not exist.')
    // A burst is queued, not refused: vLLM has no admission control.
    const burst = await Promise.all(
      Array.from({ length: 20 }, () =>
        request(`${url}/v1/completions`, 'POST', { model: MODEL, prompt: 'p', max_tokens: 2 }),
      ),
    )
    expect(burst.map((b) => b.status)).toEqual(Array(20).fill(200))
  })

  it('aborts the request of a client that disconnects mid-stream', async () => {
    const abortLabel = { finished_reason: 'abort' }
    const before = value(await metrics(url), 'vllm:request_success_total', abortLabel) ?? 0
    const ctrl = new AbortController()
    const res = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt: 'write a long story', max_tokens: 3000, stream: true }),
      signal: ctrl.signal,
    })
    expect(res.status).toBe(200)
    const reader = (res.body as ReadableStream<Uint8Array>).getReader()
    const first = await reader.read()
    expect(new TextDecoder().decode(first.value)).toMatch(/^data: /)
    ctrl.abort()
    await reader.cancel().catch(() => {})
    let aborted = before
    let running = -1
    await until(
      async () => {
        const m = await metrics(url)
        aborted = value(m, 'vllm:request_success_total', abortLabel) ?? -1
        running = value(m, 'vllm:num_requests_running') ?? -1
        return aborted === before + 1 && running === 0
      },
      () => `abort counted (abort=${aborted}, running=${running})`,
    )
    // The engine did not run the aborted request to its end.
    expect(value(await metrics(url), 'vllm:generation_tokens_total')).toBeLessThan(3000)
  })
})

describe('SimServer engine death and restart', () => {
  afterEach(closeAll)

  it('fails in-flight requests with 500, answers /health 503, exits 0, refuses; /sim/restart brings it back', async () => {
    // 5 s of simulated "dying" (the API server's watchdog) is 250 ms of wall time at 20x.
    const s = await start({ speed: 20 })
    const url = urlOf(s)
    await waitHealthy(url)
    // A long request, in flight when the engine dies.
    const inFlight = request(`${url}/v1/completions`, 'POST', {
      model: MODEL,
      prompt: 'long',
      max_tokens: 3000,
    })
    const streaming = fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt: 'long', max_tokens: 3000, stream: true }),
    })
    const started = await streaming
    expect(started.status).toBe(200)
    let n = 0
    await until(
      async () => {
        n = value(await metrics(url), 'vllm:num_requests_running') ?? 0
        return n >= 2
      },
      () => `both requests running (running=${n})`,
    )

    const fault = await request(`${s.controlUrl}/sim/faults`, 'POST', { fault: 'engine-death' })
    expect(fault.status).toBe(200)
    expect(json<{ injected: { fault: string } }>(fault).injected.fault).toBe('engine-death')
    expect(await health(url)).toBe(503)

    const failed = await inFlight
    expect(failed.status).toBe(500)
    expect(json<{ message: string; type: string; code: number }>(failed)).toMatchObject({
      message: DEAD,
      type: 'EngineDeadError',
      code: 500,
    })
    // The stream had started: its last event carries the error.
    const streamed = await started.text()
    expect(streamed).toContain(DEAD)
    expect(streamed).not.toContain('[DONE]')
    // A new request while the engine is dead also gets 500, not a hang.
    const late = await request(`${url}/v1/completions`, 'POST', { model: MODEL, prompt: 'x', max_tokens: 4 })
    if (late.status !== null) {
      expect(late.status).toBe(500)
      expect(json<{ type: string }>(late).type).toBe('EngineDeadError')
    }

    // uvicorn shuts down: the port refuses, and the process exited with code 0 (#48966).
    const seen: Array<number | string> = []
    const deadline = Date.now() + 10_000
    for (;;) {
      const h = await health(url)
      if (seen.at(-1) !== h) seen.push(h)
      if (h === 'ECONNREFUSED') break
      if (Date.now() > deadline) throw new Error(`port never closed: ${seen.join(' -> ')}`)
      await new Promise((r) => setTimeout(r, 5))
    }
    // A probe caught while uvicorn closes its connections may be reset, as with a real server.
    expect(seen.filter((h) => h !== 'ECONNRESET')).toEqual([503, 'ECONNREFUSED'])
    const state = json<{ replicas: Array<{ phase: string; exitCode: number | null; restarts: number }> }>(
      await request(`${s.controlUrl}/sim/state`),
    )
    expect(state.replicas[0]).toMatchObject({ phase: 'exited', exitCode: 0, restarts: 0 })

    const restart = await request(`${s.controlUrl}/sim/restart`, 'POST', { replica: 'r0' })
    expect(restart.status).toBe(200)
    expect(json<{ restarted: string }>(restart).restarted).toBe('r0')
    expect(await health(url)).toBe('ECONNREFUSED')
    await waitHealthy(url)
    const again = json<{ replicas: Array<{ phase: string; exitCode: number | null; restarts: number }> }>(
      await request(`${s.controlUrl}/sim/state`),
    )
    expect(again.replicas[0]).toMatchObject({ phase: 'serving', exitCode: null, restarts: 1 })
    const ok = await request(`${url}/v1/completions`, 'POST', { model: MODEL, prompt: 'back', max_tokens: 3 })
    expect(ok.status).toBe(200)
    // The restarted process's counters start from zero.
    expect(value(await metrics(url), 'vllm:request_success_total', { finished_reason: 'error' })).toBe(0)
  })
})

describe('SimServer control port', () => {
  afterEach(closeAll)

  it('rejects an unknown fault with 400 naming it, and serves GPU readings', async () => {
    const s = await start({ speed: 100 }, { replicas: 2 })
    const bad = await request(`${s.controlUrl}/sim/faults`, 'POST', { fault: 'gremlins' })
    expect(bad.status).toBe(400)
    expect(json<{ error: string }>(bad).error).toMatch(
      /unknown fault "gremlins"; expected one of .*engine-death/,
    )
    const badReplica = await request(`${s.controlUrl}/sim/faults`, 'POST', {
      fault: 'engine-death',
      replica: 'r9',
    })
    expect(badReplica.status).toBe(400)
    expect(json<{ error: string }>(badReplica).error).toMatch(/r9/)
    const noFault = await request(`${s.controlUrl}/sim/faults`, 'POST', undefined)
    expect(noFault.status).toBe(400)
    expect((await request(`${s.controlUrl}/sim/nothing`)).status).toBe(404)

    const g = await request(`${s.controlUrl}/sim/gpus`)
    expect(g.status).toBe(200)
    const gpus = json<{
      t: number
      gpus: Array<{
        gpu: number
        replica: string
        name: string
        lost: boolean
        memoryTotalBytes: number
        temperatureCelsius: number
      }>
    }>(g)
    expect(gpus.gpus.map((x) => [x.gpu, x.replica])).toEqual([
      [0, 'r0'],
      [1, 'r1'],
    ])
    for (const x of gpus.gpus) {
      expect(x.lost).toBe(false)
      expect(x.name).toMatch(/H100/)
      expect(x.memoryTotalBytes).toBeGreaterThan(70 * 1024 ** 3)
      expect(x.temperatureCelsius).toBeGreaterThan(20)
    }
    const labels = await request(`${s.controlUrl}/sim/labels`)
    expect(json<{ labels: unknown[] }>(labels).labels).toEqual([])
  })
})
