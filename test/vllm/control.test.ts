/**
 * VllmControlClient against the simulated vLLM over real sockets, with and without dev mode
 * (vllm.md §2): capability detection, pause semantics with requests in flight, sleep freeing GPU
 * memory, the prefix-cache reset that "succeeds" while blocks are in use, 404 → unavailable, and
 * deadlines without retries for POSTs.
 */
import http from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/errors.js'
import type { SimEngine } from '../../src/sim/engine.js'
import { DEV_MODE_OFF, SLEEP_MODE_OFF, VllmControlClient } from '../../src/vllm/control.js'
import { parseExposition } from '../../src/vllm/exposition.js'
import { sleep } from '../helpers/fake-nvml.js'
import { closeSims, complete, request, type Sim, startSim, until, waitHealthy } from '../helpers/sim-http.js'

const clients: VllmControlClient[] = []
const servers: http.Server[] = []
afterEach(async () => {
  for (const c of clients.splice(0)) c.close()
  await Promise.all(
    servers.splice(0).map(
      (s) =>
        new Promise<void>((r) => {
          s.closeAllConnections()
          s.close(() => r())
        }),
    ),
  )
  await closeSims()
})

function client(url: string, timeoutMs = 5_000): VllmControlClient {
  const c = new VllmControlClient({ url, timeoutMs })
  clients.push(c)
  return c
}

async function ready(o: Parameters<typeof startSim>[0] = {}): Promise<Sim & { engine: SimEngine }> {
  const sim = await startSim(o)
  await waitHealthy(sim.url)
  const engine = sim.fleet.replicas[0]?.engine
  if (!engine) throw new Error('no engine')
  return { ...sim, engine }
}

async function gpuMemory(sim: Sim): Promise<number> {
  const body = await sim.control<{ gpus: Array<{ memoryUsedBytes: number }> }>('/sim/gpus')
  return body.gpus[0]?.memoryUsedBytes ?? Number.NaN
}

async function sleepState(url: string): Promise<Record<string, number>> {
  const parsed = parseExposition((await request(`${url}/metrics`)).body)
  const out: Record<string, number> = {}
  for (const s of parsed.samples) {
    if (s.name === 'vllm:engine_sleep_state') out[s.labels.sleep_state ?? '?'] = s.value
  }
  return out
}

const GiB = 1024 ** 3

describe('VllmControlClient without dev mode', () => {
  it('reports every control endpoint unavailable (404), naming VLLM_SERVER_DEV_MODE', async () => {
    const sim = await ready({ devMode: false })
    const c = client(sim.url)
    const caps = await c.capabilities()
    for (const cap of [caps.pause, caps.sleep, caps.resetPrefixCache, caps.serverInfo]) {
      expect(cap).toEqual({ available: false, reason: DEV_MODE_OFF })
    }
    const r = await c.pause()
    expect(r).toEqual({
      ok: false,
      unavailable: true,
      status: 404,
      error: `${DEV_MODE_OFF}: POST /pause answered 404`,
    })
    expect(await c.isPaused()).toMatchObject({ ok: false, unavailable: true, status: 404 })
    expect(await c.resetPrefixCache()).toMatchObject({ ok: false, unavailable: true })
    expect(await c.sleep({ level: 1 })).toMatchObject({ ok: false, unavailable: true })
  })

  it('says the server is unreachable rather than dev mode off when nothing listens', async () => {
    const sim = await startSim({ devMode: true, speed: 1 })
    // Start-up takes ≈12 s simulated at 1x: the port refuses for now.
    const caps = await client(sim.url).capabilities()
    expect(caps.pause.available).toBe(false)
    expect(caps.pause.reason).toMatch(/server not reachable: GET \/is_paused failed \(ECONNREFUSED\)/)
  })
})

describe('VllmControlClient with dev mode', () => {
  it('finds dev mode on a simulator started with VLLM_SERVER_DEV_MODE=1, as vLLM reads it', async () => {
    const saved = process.env.VLLM_SERVER_DEV_MODE
    process.env.VLLM_SERVER_DEV_MODE = '1'
    try {
      const sim = await ready()
      expect(sim.server.devMode).toBe(true)
      expect((await client(sim.url).capabilities()).pause.available).toBe(true)
    } finally {
      if (saved === undefined) delete process.env.VLLM_SERVER_DEV_MODE
      else process.env.VLLM_SERVER_DEV_MODE = saved
    }
  })

  it('detects pause, prefix-cache reset and server_info, and sleep only with --enable-sleep-mode', async () => {
    const plain = await ready({ devMode: true })
    const caps = await client(plain.url).capabilities()
    expect(caps.pause).toMatchObject({ available: true })
    expect(caps.resetPrefixCache).toMatchObject({ available: true })
    expect(caps.serverInfo).toMatchObject({ available: true })
    expect(caps.sleep).toEqual({ available: false, reason: SLEEP_MODE_OFF })
    // Without sleep mode vLLM's /sleep fails with a bare 500: a failure, not "unavailable".
    const r = await client(plain.url).sleep({ level: 1 })
    expect(r).toMatchObject({ ok: false, status: 500 })
    expect(r.ok === false && r.unavailable).toBeUndefined()

    const sleepy = await ready({ devMode: true, enableSleepMode: true })
    const caps2 = await client(sleepy.url).capabilities()
    expect(caps2.sleep).toMatchObject({ available: true })
    const info = await client(sleepy.url).serverInfo()
    expect(info.ok && (info.info.vllm_config as { model_config: unknown }).model_config).toMatchObject({
      enable_sleep_mode: true,
    })
  })

  it('pause(abort) fails the requests in flight at once; new ones queue until resume()', async () => {
    // 3000 tokens take ≈20 s simulated: still running when the pause comes.
    const sim = await ready({ devMode: true, speed: 10 })
    const c = client(sim.url)
    const inflight = [complete(sim.url, 3000), complete(sim.url, 3000)]
    await until('2 running', () => sim.engine.numRunning === 2)
    const t0 = Date.now()
    expect(await c.pause({ mode: 'abort' })).toEqual({ ok: true, status: 200, paused: true })
    expect(await Promise.all(inflight)).toEqual(['abort', 'abort'])
    expect(Date.now() - t0).toBeLessThan(1000)
    expect(await c.isPaused()).toEqual({ ok: true, status: 200, paused: true })
    // vLLM counts a paused scheduler as sleeping too.
    expect(await c.isSleeping()).toMatchObject({ ok: true, sleeping: true })

    let late: string | null = null
    const pending = complete(sim.url, 5).then((r) => {
      late = r
    })
    await until('queued', () => sim.engine.numWaiting === 1)
    await sleep(300)
    expect(late).toBeNull()
    expect(await c.resume()).toEqual({ ok: true, status: 200 })
    await pending
    expect(late).toBe('length')
    expect(await c.isPaused()).toMatchObject({ ok: true, paused: false })
  })

  it('pause(wait) answers only once the requests in flight finished on their own', async () => {
    const sim = await ready({ devMode: true, speed: 10 })
    const c = client(sim.url)
    const order: string[] = []
    const inflight = [complete(sim.url, 400), complete(sim.url, 300)].map((p) =>
      p.then((r) => {
        order.push(`request:${r}`)
        return r
      }),
    )
    await until('2 running', () => sim.engine.numRunning === 2)
    const paused = c.pause({ mode: 'wait', timeoutMs: 20_000 }).then((r) => {
      order.push('paused')
      return r
    })
    // Admitted after the pause: queued, not run, while the others drain.
    let late: string | null = null
    const pending = complete(sim.url, 5).then((r) => {
      late = r
    })
    expect(await paused).toMatchObject({ ok: true, paused: true })
    expect(await Promise.all(inflight)).toEqual(['length', 'length'])
    expect(order).toEqual(['request:length', 'request:length', 'paused'])
    expect(late).toBeNull()
    expect(sim.engine.numWaiting).toBe(1)
    await c.resume()
    await pending
    expect(late).toBe('length')
  })

  it('sleep(level 1) frees the weights and the KV cache in NVML, logs it, and wake_up() restores them', async () => {
    const sim = await ready({ devMode: true, enableSleepMode: true, speed: 20 })
    const c = client(sim.url)
    const before = await gpuMemory(sim)
    expect(before).toBeGreaterThan(60 * GiB)
    expect(await sleepState(sim.url)).toEqual({ awake: 1, weights_offloaded: 0, discard_all: 0 })

    expect(await c.sleep({ level: 1 })).toEqual({ ok: true, status: 200 })
    const asleep = await until('GPU memory to drop', async () => {
      const m = await gpuMemory(sim)
      return m < before - 50 * GiB ? m : false
    })
    const line = sim.logs.find((l) => l.text.includes('Sleep mode freed'))?.text ?? ''
    const m = /Sleep mode freed ([\d.]+) GiB memory, ([\d.]+) GiB memory is still in use\./.exec(line)
    expect(m, line).not.toBeNull()
    expect(Number(m?.[1]) * GiB).toBeCloseTo(before - asleep, -8)
    expect(Number(m?.[2]) * GiB).toBeCloseTo(asleep, -8)
    expect(await c.isSleeping()).toMatchObject({ ok: true, sleeping: true })
    expect(await sleepState(sim.url)).toEqual({ awake: 0, weights_offloaded: 1, discard_all: 0 })
    // /health stays 200 while asleep; requests queue.
    expect((await request(`${sim.url}/health`)).status).toBe(200)
    let late: string | null = null
    const pending = complete(sim.url, 5).then((r) => {
      late = r
    })
    await sleep(200)
    expect(late).toBeNull()

    // Waking the weights alone leaves the KV cache asleep, and the scheduler paused.
    expect(await c.wakeUp({ tags: ['weights'] })).toEqual({ ok: true, status: 200 })
    expect(await c.isSleeping()).toMatchObject({ sleeping: true })
    expect(await gpuMemory(sim)).toBeLessThan(before - 20 * GiB)
    expect(await c.wakeUp()).toEqual({ ok: true, status: 200 })
    expect(await c.isSleeping()).toMatchObject({ ok: true, sleeping: false })
    expect(Math.abs((await gpuMemory(sim)) - before)).toBeLessThan(1 * GiB)
    expect(await sleepState(sim.url)).toEqual({ awake: 1, weights_offloaded: 0, discard_all: 0 })
    await pending
    expect(late).toBe('length')
    expect(sim.logs.some((l) => l.text.includes("wake up the engine with tags: ['weights']"))).toBe(true)
  })

  it("reset_prefix_cache answers 200 while blocks are in use, and only vLLM's log says it failed", async () => {
    const sim = await ready({ devMode: true, speed: 10 })
    const c = client(sim.url)
    const inflight = [complete(sim.url, 2000), complete(sim.url, 2000)]
    await until('2 running', () => sim.engine.numRunning === 2)
    expect(await c.resetPrefixCache()).toEqual({ ok: true, status: 200 })
    const failed = sim.logs.find((l) => l.text.includes('Failed to reset prefix cache'))?.text ?? ''
    const blocks = /because some blocks \((\d+)\) are not freed yet/.exec(failed)
    expect(blocks, failed).not.toBeNull()
    expect(Number(blocks?.[1])).toBeGreaterThan(0)

    // reset_running_requests preempts everything first: the reset then succeeds.
    const preempted = sim.engine.preemptionsTotal
    expect(await c.resetPrefixCache({ resetRunningRequests: true })).toEqual({ ok: true, status: 200 })
    expect(sim.logs.some((l) => l.text.includes('Successfully reset prefix cache'))).toBe(true)
    expect(sim.engine.preemptionsTotal).toBe(preempted + 2)
    // Preempted requests are recomputed, not failed.
    expect(await Promise.all(inflight)).toEqual(['length', 'length'])
  })

  it('never answers while the engine is hung: the call times out (ok: false) at its deadline', async () => {
    const sim = await ready({ devMode: true, speed: 20 })
    await sim.control('/sim/faults', { fault: 'nccl-hang', replica: 'r0' })
    // The collective deadlocks at the next busy step.
    void complete(sim.url, 200, 2_000)
    await until('hung', () => sim.fleet.replicas[0]?.phase === 'hung')
    const t0 = performance.now()
    const r = await client(sim.url).isPaused({ timeoutMs: 300 })
    expect(r).toMatchObject({ ok: false, error: 'GET /is_paused: ETIMEDOUT' })
    expect(performance.now() - t0).toBeLessThan(1500)
  })
})

describe('VllmControlClient transport', () => {
  /** A server that counts requests and, per `behave`, never answers or resets the connection. */
  async function fakeServer(
    behave: (req: http.IncomingMessage, res: http.ServerResponse, n: number) => void,
  ): Promise<{ url: string; seen: string[] }> {
    const seen: string[] = []
    const sockets = new Set<Socket>()
    const s = http.createServer((req, res) => {
      seen.push(`${req.method} ${req.url}`)
      behave(req, res, seen.length)
    })
    s.on('connection', (sock) => sockets.add(sock))
    servers.push(s)
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r))
    return { url: `http://127.0.0.1:${(s.address() as AddressInfo).port}`, seen }
  }

  it('a POST that gets no answer fails at its deadline and is not retried', async () => {
    const srv = await fakeServer(() => {})
    const c = client(srv.url, 200)
    const t0 = performance.now()
    const r = await c.pause({ mode: 'wait' })
    const took = performance.now() - t0
    expect(r).toEqual({
      ok: false,
      error: 'POST /pause: ETIMEDOUT (no answer in time; the call may still take effect)',
    })
    expect(took).toBeGreaterThanOrEqual(190)
    expect(took).toBeLessThan(1000)
    await sleep(300)
    expect(srv.seen).toEqual(['POST /pause?mode=wait'])
  })

  it('a POST whose connection is reset is not retried; a GET is, once', async () => {
    const srv = await fakeServer((req, res, n) => {
      if (req.method === 'POST' || n === 2) req.socket.destroy()
      else res.writeHead(200, { 'content-type': 'application/json' }).end('{"is_paused":false}')
    })
    const c = client(srv.url, 2000)
    const post = await c.resume()
    expect(post).toMatchObject({ ok: false, error: 'POST /resume: ECONNRESET' })
    expect(srv.seen).toEqual(['POST /resume'])
    // Request 2 (a GET) is reset; the retry (request 3) answers.
    expect(await c.isPaused()).toEqual({ ok: true, status: 200, paused: false })
    expect(srv.seen).toEqual(['POST /resume', 'GET /is_paused', 'GET /is_paused'])
  })

  it('reports HTTP errors with the message of the body', async () => {
    const srv = await fakeServer((_req, res) => {
      res
        .writeHead(500, { 'content-type': 'application/json' })
        .end('{"error":"Failed to pause generation: boom"}')
    })
    expect(await client(srv.url).pause()).toEqual({
      ok: false,
      status: 500,
      error: 'POST /pause answered HTTP 500: Failed to pause generation: boom',
    })
  })

  it('refuses invalid arguments with InvalidOptionError, synchronously', () => {
    expect(() => new VllmControlClient({ url: 'not a url' })).toThrow(InvalidOptionError)
    expect(() => new VllmControlClient({ url: 'ftp://x' })).toThrow(/http: or https:/)
    expect(() => new VllmControlClient({ url: 'http://x', timeoutMs: 0 })).toThrow(/timeoutMs/)
    const c = client('http://127.0.0.1:9')
    expect(() => c.pause({ mode: 'later' as never })).toThrow(/mode must be one of abort, wait, keep/)
    expect(() => c.sleep({ level: 3 as never })).toThrow(/level must be 0, 1 or 2/)
    expect(() => c.wakeUp({ tags: ['gpu'] })).toThrow(InvalidOptionError)
    expect(() => c.isPaused({ timeoutMs: -1 })).toThrow(/timeoutMs/)
  })
})
