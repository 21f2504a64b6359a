import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import { InvalidOptionError, ScrapeError } from '../../src/errors.js'
import type { TelemetryRecord } from '../../src/telemetry/types.js'
import { emptyEngineReading } from '../../src/vllm/engine-metrics.js'
import { fetchExposition, HttpScrapeSource, scrapeOnce } from '../../src/vllm/scraper.js'
import { fixture } from './helpers.js'

const sample = fixture('vllm-metrics-sample.txt')
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

interface FakeVllm {
  url: string
  server: http.Server
  /** Requests seen per path, and the most that were in flight at once. */
  hits: Record<string, number>
  maxConcurrent: Record<string, number>
  close(): Promise<void>
}

type Handler = (req: http.IncomingMessage, res: http.ServerResponse) => void

const servers: FakeVllm[] = []
const sources: HttpScrapeSource[] = []
afterEach(async () => {
  for (const s of sources.splice(0)) s.stop()
  await Promise.all(servers.splice(0).map((s) => s.close()))
})

async function fakeVllm(handler: Handler = serveSample): Promise<FakeVllm> {
  const hits: Record<string, number> = {}
  const maxConcurrent: Record<string, number> = {}
  const current: Record<string, number> = {}
  const server = http.createServer((req, res) => {
    const path = req.url ?? ''
    hits[path] = (hits[path] ?? 0) + 1
    current[path] = (current[path] ?? 0) + 1
    maxConcurrent[path] = Math.max(maxConcurrent[path] ?? 0, current[path]!)
    res.on('close', () => {
      current[path]! -= 1
    })
    handler(req, res)
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const { port } = server.address() as AddressInfo
  const fake: FakeVllm = {
    url: `http://127.0.0.1:${port}`,
    server,
    hits,
    maxConcurrent,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections()
        server.close(() => r())
      }),
  }
  servers.push(fake)
  return fake
}

function serveSample(req: http.IncomingMessage, res: http.ServerResponse) {
  if (req.url === '/metrics') {
    res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' })
    res.end(sample)
  } else if (req.url === '/health') {
    res.writeHead(200)
    res.end()
  } else {
    res.writeHead(404)
    res.end()
  }
}

function source(options: Partial<ConstructorParameters<typeof HttpScrapeSource>[0]> & { url?: string }) {
  const { url = 'http://127.0.0.1:1', ...rest } = options
  const s = new HttpScrapeSource({ replicas: [{ name: 'r1', url }], now: () => 1234, ...rest })
  sources.push(s)
  return s
}

async function waitFor<T>(f: () => T | undefined, timeoutMs = 3000): Promise<T> {
  const end = Date.now() + timeoutMs
  for (;;) {
    const v = f()
    if (v !== undefined) return v
    if (Date.now() > end) throw new Error('timed out waiting')
    await sleep(5)
  }
}

describe('HttpScrapeSource', () => {
  it('pushes an engine record per engine with the reading, the health status and now()', async () => {
    const vllm = await fakeVllm()
    const records: TelemetryRecord[] = []
    let clock = 0
    const s = source({ url: vllm.url, now: () => (clock += 10) })
    s.start((r) => records.push(r))
    const first = await waitFor(() => records[0])
    expect(first).toMatchObject({
      t: expect.any(Number),
      kind: 'engine',
      replica: 'r1',
      engine: '0',
      modelName: 'meta-llama/Llama-3.1-8B-Instruct',
      reachable: true,
      healthStatus: 200,
      error: null,
      requestsRunning: 8,
      kvCacheUsage: 0.6187341772151899,
      numGpuBlocks: 27810,
    })
    expect(first.t).toBeGreaterThan(0)
    expect(vllm.hits['/metrics']).toBeGreaterThanOrEqual(1)
    expect(vllm.hits['/health']).toBeGreaterThanOrEqual(1)
  })

  it('keeps scraping on the interval over kept-alive sockets', async () => {
    const vllm = await fakeVllm()
    let connections = 0
    vllm.server.on('connection', () => connections++)
    const records: TelemetryRecord[] = []
    source({ url: vllm.url, intervalMs: 20 }).start((r) => records.push(r))
    await waitFor(() => (records.length >= 5 ? true : undefined))
    // One socket for /metrics and one for /health, reused tick after tick.
    expect(connections).toBeLessThanOrEqual(4)
  })

  it('rides out a server that closes idle keep-alive sockets between ticks', async () => {
    const vllm = await fakeVllm()
    // Uvicorn closes idle connections after 5 s; here after 20 ms, racing the 20 ms interval.
    vllm.server.keepAliveTimeout = 20
    const records: TelemetryRecord[] = []
    source({ url: vllm.url, intervalMs: 20 }).start((r) => records.push(r))
    await waitFor(() => (records.length >= 25 ? true : undefined), 5000)
    expect(records.filter((r) => r.kind === 'engine' && !r.reachable)).toEqual([])
  })

  it('reports a refused connection as unreachable with ECONNREFUSED', async () => {
    const vllm = await fakeVllm()
    await vllm.close()
    const records: TelemetryRecord[] = []
    source({ url: vllm.url }).start((r) => records.push(r))
    const r = await waitFor(() => records[0])
    expect(r).toEqual({
      t: 1234,
      kind: 'engine',
      ...emptyEngineReading('r1'),
      reachable: false,
      error: 'ECONNREFUSED',
    })
  })

  it('gives up on a slow server at timeoutMs with ETIMEDOUT', async () => {
    const vllm = await fakeVllm(() => {
      // Never answers.
    })
    const records: TelemetryRecord[] = []
    const started = performance.now()
    source({ url: vllm.url, timeoutMs: 50 }).start((r) => records.push(r))
    const r = await waitFor(() => records[0])
    expect(performance.now() - started).toBeLessThan(1000)
    expect(r).toMatchObject({
      reachable: false,
      error: 'ETIMEDOUT',
      healthStatus: null,
      requestsRunning: null,
    })
  })

  it('times out a body that stalls half way', async () => {
    const vllm = await fakeVllm((req, res) => {
      res.writeHead(200)
      if (req.url === '/metrics') res.write(sample.slice(0, 1000))
      else res.end()
    })
    const [r] = await scrapeOnce(vllm.url, { timeoutMs: 80 })
    expect(r).toMatchObject({ reachable: false, error: 'ETIMEDOUT', healthStatus: 200 })
  })

  it('reports HTTP 500 from /metrics as unreachable with the status', async () => {
    const vllm = await fakeVllm((req, res) => {
      res.writeHead(req.url === '/health' ? 503 : 500)
      res.end('Internal Server Error')
    })
    const [r] = await scrapeOnce(vllm.url)
    expect(r).toMatchObject({ reachable: false, error: 'HTTP 500', healthStatus: 503, kvCacheUsage: null })
  })

  it('reads a garbage body as reachable with null metrics and says why', async () => {
    const vllm = await fakeVllm((req, res) => {
      res.writeHead(200)
      res.end(req.url === '/metrics' ? '<html>\u0000\u00ff not metrics {{{ "\n' : '')
    })
    const readings = await scrapeOnce(vllm.url, { replica: 'g' })
    expect(readings).toEqual([{ ...emptyEngineReading('g'), healthStatus: 200, error: 'BAD_EXPOSITION' }])
  })

  it('reads an exposition without vllm: series as reachable with null metrics', async () => {
    const vllm = await fakeVllm((_req, res) => {
      res.writeHead(200)
      res.end('# TYPE process_open_fds gauge\nprocess_open_fds 45.0\n')
    })
    const [r] = await scrapeOnce(vllm.url, { probeHealth: false })
    expect(r).toEqual({
      ...emptyEngineReading(`127.0.0.1:${new URL(vllm.url).port}`),
      error: 'NO_VLLM_METRICS',
    })
    expect(vllm.hits['/health']).toBeUndefined()
  })

  it('reports a reset connection as ECONNRESET', async () => {
    const vllm = await fakeVllm((req, res) => {
      if (req.url === '/metrics') req.socket.destroy()
      else res.end()
    })
    const [r] = await scrapeOnce(vllm.url)
    expect(r).toMatchObject({ reachable: false, error: 'ECONNRESET' })
  })

  it('never overlaps scrapes of one replica: it skips ticks and counts them', async () => {
    const vllm = await fakeVllm((req, res) => setTimeout(() => serveSample(req, res), 120))
    const records: TelemetryRecord[] = []
    const s = source({ url: vllm.url, intervalMs: 20, timeoutMs: 1000 })
    s.start((r) => records.push(r))
    await waitFor(() => (records.length >= 2 ? true : undefined))
    expect(vllm.maxConcurrent['/metrics']).toBe(1)
    expect(vllm.maxConcurrent['/health']).toBe(1)
    const stats = s.stats
    expect(stats.replicas.r1?.skippedTicks).toBeGreaterThan(0)
    expect(stats.replicas.r1?.scrapes).toBeGreaterThanOrEqual(2)
  })

  it('scrapes replicas independently: a dead one does not delay a live one', async () => {
    const live = await fakeVllm()
    const slow = await fakeVllm(() => {})
    const records: TelemetryRecord[] = []
    const s = new HttpScrapeSource({
      replicas: [
        { name: 'slow', url: slow.url },
        { name: 'live', url: live.url },
      ],
      intervalMs: 20,
      timeoutMs: 2000,
      now: () => 0,
    })
    sources.push(s)
    s.start((r) => records.push(r))
    await waitFor(() =>
      records.filter((r) => r.kind === 'engine' && r.replica === 'live').length >= 3 ? true : undefined,
    )
    expect(records.some((r) => r.kind === 'engine' && r.replica === 'slow')).toBe(false)
    expect(s.stats.replicas.slow?.skippedTicks).toBeGreaterThan(0)
  })

  it('stop() aborts in-flight requests and pushes nothing afterwards', async () => {
    let closed = 0
    const vllm = await fakeVllm((req) => req.socket.on('close', () => closed++))
    const records: TelemetryRecord[] = []
    const s = source({ url: vllm.url, timeoutMs: 5000 })
    s.start((r) => records.push(r))
    await waitFor(() => (vllm.hits['/metrics'] ? true : undefined))
    s.stop()
    await waitFor(() => (closed >= 2 ? true : undefined))
    await sleep(30)
    expect(records).toEqual([])
  })

  it('carries on when push throws', async () => {
    const vllm = await fakeVllm()
    let calls = 0
    const s = source({ url: vllm.url, intervalMs: 20 })
    const warnings: string[] = []
    const onWarning = (w: Error) => warnings.push(w.message)
    process.on('warning', onWarning)
    try {
      s.start(() => {
        calls++
        throw new Error('boom')
      })
      await waitFor(() => (calls >= 3 ? true : undefined))
      expect(s.stats.pushErrors).toBeGreaterThanOrEqual(3)
      await waitFor(() => (warnings.length > 0 ? true : undefined))
      expect(warnings).toHaveLength(1)
    } finally {
      process.off('warning', onWarning)
    }
  })

  it('holds no timer that keeps the process alive', async () => {
    const vllm = await fakeVllm()
    const refTimers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length
    const before = refTimers()
    const s = source({ url: vllm.url, intervalMs: 20, timeoutMs: 5000 })
    const records: TelemetryRecord[] = []
    s.start((r) => records.push(r))
    // The interval and every request deadline are unref'd: the count of ref'd timers does not move.
    expect(refTimers()).toBe(before)
    await waitFor(() => records[0])
    expect(refTimers()).toBe(before)
  })

  it('fills latency quantiles from the buckets of successive scrapes, DP engines merged, resets restarting', async () => {
    // Cumulative TTFT buckets (le 0.1, 0.5, 1, +Inf) of engines "0" and "1", scrape after scrape.
    const stages: Array<[number[], number[]]> = [
      [
        [0, 0, 0, 0],
        [0, 0, 0, 0],
      ],
      [
        [10, 10, 10, 10],
        [0, 5, 5, 5],
      ],
      // The server restarted: counts start again.
      [
        [1, 1, 1, 1],
        [0, 0, 0, 0],
      ],
      [
        [1, 1, 1, 3],
        [0, 0, 0, 0],
      ],
    ]
    const les = ['0.1', '0.5', '1.0', '+Inf']
    const body = (stage: [number[], number[]]) =>
      stage
        .flatMap((counts, engine) =>
          counts.map(
            (c, i) =>
              `vllm:time_to_first_token_seconds_bucket{engine="${engine}",le="${les[i]}",model_name="m"} ${c}`,
          ),
        )
        .join('\n')
    let served = 0
    const vllm = await fakeVllm((req, res) => {
      if (req.url !== '/metrics') return serveSample(req, res)
      res.writeHead(200)
      res.end(body(stages[Math.min(served++, stages.length - 1)]!))
    })
    const records: TelemetryRecord[] = []
    let clock = 0
    source({ url: vllm.url, intervalMs: 20, probeHealth: false, now: () => (clock += 100) }).start((r) =>
      records.push(r),
    )
    await waitFor(() => (records.length >= 4 ? true : undefined))
    const ttft = records.slice(0, 4).map((r) => {
      const e = r as Extract<TelemetryRecord, { kind: 'engine' }>
      return [e.ttftP50Ms, e.ttftP90Ms, e.ttftP99Ms]
    })
    // 1: one scrape, no window. 2: 10 requests <= 0.1 s and 5 in (0.1, 0.5] over both engines.
    // 3: counts went down, the window restarts. 4: 2 requests above the last finite bound.
    expect(ttft[0]).toEqual([null, null, null])
    expect(ttft[1]![0]).toBeCloseTo(75, 9)
    expect(ttft[1]![1]).toBeCloseTo(380, 9)
    expect(ttft[1]![2]).toBeCloseTo(488, 9)
    expect(ttft[2]).toEqual([null, null, null])
    expect(ttft[3]).toEqual([1000, 1000, 1000])
    expect(records[1]).toMatchObject({ engine: '0,1', itlP99Ms: null, e2eP99Ms: null, queueTimeP99Ms: null })
  })

  it('validates its options and names the bad one', () => {
    const ok = { replicas: [{ name: 'a', url: 'http://127.0.0.1:8000' }], now: () => 0 }
    const bad: Array<[object, RegExp]> = [
      [{ ...ok, replicas: [] }, /options\.replicas/],
      [{ ...ok, replicas: [{ name: '', url: 'http://x' }] }, /options\.replicas\[0\]\.name/],
      [{ ...ok, replicas: [{ name: 'a', url: 'not a url' }] }, /options\.replicas\[0\]\.url/],
      [{ ...ok, replicas: [{ name: 'a', url: 'ftp://x' }] }, /options\.replicas\[0\]\.url/],
      [{ ...ok, replicas: [ok.replicas[0], ok.replicas[0]] }, /options\.replicas\[1\]\.name/],
      [{ ...ok, intervalMs: 10 }, /options\.intervalMs/],
      [{ ...ok, intervalMs: Number.NaN }, /options\.intervalMs/],
      [{ ...ok, timeoutMs: 0 }, /options\.timeoutMs/],
      [{ ...ok, probeHealth: 'yes' }, /options\.probeHealth/],
      [{ ...ok, now: 5 }, /options\.now/],
      [{ ...ok, quantileWindowMs: 50 }, /options\.quantileWindowMs/],
      [{ ...ok, quantileWindowMs: Number.NaN }, /options\.quantileWindowMs/],
    ]
    for (const [options, message] of bad) {
      expect(() => new HttpScrapeSource(options as never)).toThrow(InvalidOptionError)
      expect(() => new HttpScrapeSource(options as never)).toThrow(message)
    }
    expect(() => scrapeOnce('nope')).toThrow(InvalidOptionError)
  })
})

describe('scrapeOnce and fetchExposition', () => {
  it('scrapeOnce returns the readings of one scrape', async () => {
    const vllm = await fakeVllm()
    const readings = await scrapeOnce(`${vllm.url}/`, { replica: 'x' })
    expect(readings).toHaveLength(1)
    expect(readings[0]).toMatchObject({ replica: 'x', engine: '0', requestsWaiting: 3, healthStatus: 200 })
  })

  it('keeps a path prefix of the base URL', async () => {
    const vllm = await fakeVllm((req, res) => {
      if (req.url === '/vllm/a/metrics') serveSample({ ...req, url: '/metrics' } as http.IncomingMessage, res)
      else serveSample(req, res)
    })
    const [r] = await scrapeOnce(`${vllm.url}/vllm/a/`, { probeHealth: false })
    expect(r?.requestsRunning).toBe(8)
  })

  it('fetchExposition resolves with the parsed exposition and rejects with a ScrapeError', async () => {
    const vllm = await fakeVllm()
    const parsed = await fetchExposition(vllm.url)
    expect(parsed.status).toBe(200)
    expect(parsed.samples).toHaveLength(436)
    await vllm.close()
    const err = await fetchExposition(vllm.url).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(ScrapeError)
    expect((err as Error).message).toMatch(/^ECONNREFUSED: GET /)
  })
})
