import { request } from 'node:http'
import { afterEach, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/errors.js'
import { type HttpSurface, type HttpSurfaceOptions, startHttpSurface } from '../../src/export/http.js'
import { MonitorMetrics } from '../../src/export/registry.js'
import type { MonitorStatus } from '../../src/monitor/status.js'
import { makeCheckpoint, makeStatus, sampleValue } from './fixture.js'

const open: HttpSurface[] = []
afterEach(async () => {
  await Promise.all(open.splice(0).map((s) => s.close()))
})

async function start(over: Partial<HttpSurfaceOptions> = {}): Promise<HttpSurface> {
  const metrics = new MonitorMetrics()
  metrics.update(makeCheckpoint(), makeStatus())
  const s = await startHttpSurface({
    metrics,
    getStatus: () => makeStatus(),
    exportData: () => ({ format: 'vllm-monitor-export', version: 1 }),
    onError: () => {},
    ...over,
  })
  open.push(s)
  return s
}

/** A request over a fresh socket (fetch cannot send every method, nor skip keep-alive). */
function raw(
  url: string,
  method: string,
): Promise<{ status: number; headers: Record<string, unknown>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method, agent: false }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => {
        body += c
      })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }))
    })
    req.on('error', reject)
    req.end()
  })
}

describe('startHttpSurface', () => {
  it('listens on 127.0.0.1 and a free port unless told otherwise', async () => {
    const s = await start()
    expect(s.port).toBeGreaterThan(0)
    expect(s.url).toBe(`http://127.0.0.1:${s.port}`)
  })

  it('serves the Prometheus exposition on GET /metrics', async () => {
    const s = await start()
    const res = await fetch(`${s.url}/metrics`)
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toBe('text/plain; version=0.0.4; charset=utf-8')
    expect(sampleValue(await res.text(), 'vllm:monitor_active_requests', { replica: 'r1' })).toBe(31)
  })

  it('serves the status as JSON on GET /api/status, query strings ignored', async () => {
    const s = await start()
    const res = await fetch(`${s.url}/api/status?pretty=1`)
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toBe('application/json; charset=utf-8')
    expect(await res.json()).toEqual(makeStatus())
  })

  it('serves the export as a JSON attachment on GET /api/export', async () => {
    const s = await start({ exportData: async () => ({ format: 'vllm-monitor-export', value: Number.NaN }) })
    const res = await fetch(`${s.url}/api/export`)
    expect(res.status).toBe(200)
    expect(res.headers.get('content-disposition')).toMatch(
      /^attachment; filename="vllm-monitor-export-[0-9T.Z-]+\.json"$/,
    )
    expect(await res.json()).toEqual({ format: 'vllm-monitor-export', value: null })
  })

  it("answers GET /healthz with 200 'ok'", async () => {
    const s = await start()
    const res = await fetch(`${s.url}/healthz`)
    expect(res.status).toBe(200)
    expect(await res.text()).toBe('ok')
  })

  it('answers 404 with JSON listing the endpoints for any other path', async () => {
    const s = await start()
    const res = await fetch(`${s.url}/metrics/`)
    expect(res.status).toBe(404)
    expect(await res.json()).toEqual({
      error: 'no such endpoint: /metrics/',
      endpoints: ['/metrics', '/api/status', '/api/export', '/healthz'],
    })
  })

  it('answers 405 naming the allowed methods for anything but GET and HEAD', async () => {
    const s = await start()
    for (const method of ['POST', 'PUT', 'DELETE']) {
      const res = await raw(`${s.url}/metrics`, method)
      expect(res.status).toBe(405)
      expect(res.headers.allow).toBe('GET, HEAD')
      expect(JSON.parse(res.body)).toEqual({ error: `${method} is not allowed on /metrics; use GET` })
    }
    const head = await raw(`${s.url}/healthz`, 'HEAD')
    expect(head.status).toBe(200)
    expect(head.body).toBe('')
  })

  it('answers 500 naming the getter that threw, tells onError, and keeps serving', async () => {
    const errors: Error[] = []
    let fail = true
    const s = await start({
      getStatus: () => {
        if (fail) throw new Error('store is closed')
        return makeStatus()
      },
      exportData: () => Promise.reject(new RangeError('history window empty')),
      onError: (e) => errors.push(e),
    })
    const res = await fetch(`${s.url}/api/status`)
    expect(res.status).toBe(500)
    expect(await res.json()).toEqual({ error: 'getStatus() threw: store is closed' })
    const exp = await fetch(`${s.url}/api/export`)
    expect(exp.status).toBe(500)
    expect(exp.headers.get('content-disposition')).toBeNull()
    expect(await exp.json()).toEqual({ error: 'exportData() threw: history window empty' })
    expect(errors.map((e) => e.message)).toEqual([
      'getStatus() threw: store is closed',
      'exportData() threw: history window empty',
    ])
    fail = false
    expect((await fetch(`${s.url}/api/status`)).status).toBe(200)
    expect((await fetch(`${s.url}/metrics`)).status).toBe(200)
  })

  it('answers 500 when the status cannot be serialised to JSON', async () => {
    const s = await start({ getStatus: () => ({ uptimeMs: 1n }) as unknown as MonitorStatus })
    const res = await fetch(`${s.url}/api/status`)
    expect(res.status).toBe(500)
    expect(((await res.json()) as { error: string }).error).toMatch(
      /^getStatus\(\) returned a value JSON cannot hold: .*BigInt/,
    )
  })

  it('warns once per failing route when no onError is given', async () => {
    const warnings: Error[] = []
    const onWarning = (w: Error) => warnings.push(w)
    process.on('warning', onWarning)
    try {
      const s = await start({
        onError: undefined,
        getStatus: () => {
          throw new Error('boom')
        },
      })
      for (let i = 0; i < 3; i++) expect((await fetch(`${s.url}/api/status`)).status).toBe(500)
      await new Promise((r) => setImmediate(r))
      expect(warnings.map((w) => [(w as NodeJS.ErrnoException).code, w.message])).toEqual([
        ['VLLM_MONITOR_HTTP_HANDLER_FAILED', 'getStatus() threw: boom'],
      ])
    } finally {
      process.off('warning', onWarning)
    }
  })

  it('rejects with a message naming host and port when the port is taken', async () => {
    const s = await start()
    const taken = startHttpSurface({
      port: s.port,
      metrics: new MonitorMetrics(),
      getStatus: makeStatus,
      exportData: () => null,
    })
    await expect(taken).rejects.toThrow(InvalidOptionError)
    await expect(taken).rejects.toThrow(
      `cannot listen on 127.0.0.1:${s.port}: the address is already in use (EADDRINUSE)`,
    )
  })

  it('rejects options that cannot work, naming the option', async () => {
    const base = { metrics: new MonitorMetrics(), getStatus: makeStatus, exportData: () => null }
    await expect(startHttpSurface({ ...base, port: 70_000 })).rejects.toThrow(
      'options.port must be an integer from 0 to 65535, found 70000',
    )
    await expect(startHttpSurface({ ...base, host: '' })).rejects.toThrow(InvalidOptionError)
    await expect(
      startHttpSurface({ ...base, getStatus: undefined as unknown as () => MonitorStatus }),
    ).rejects.toThrow('options.getStatus must be a function')
  })

  it('closes keep-alive connections too, so close() resolves at once and the port stops answering', async () => {
    const s = await start()
    expect((await fetch(`${s.url}/healthz`)).status).toBe(200)
    const t0 = performance.now()
    await s.close()
    expect(performance.now() - t0).toBeLessThan(500)
    await expect(fetch(`${s.url}/healthz`)).rejects.toThrow()
    await s.close()
  })
})
