/**
 * A simulated vLLM served over loopback for the control-client, probe and watch tests: start it,
 * talk to it on fresh connections, wait for conditions, close everything in `afterEach`.
 */
import http from 'node:http'
import { type FleetOptions, SimFleet } from '../../src/sim/fleet.js'
import { SimServer, type SimServerOptions } from '../../src/sim/server.js'
import { sleep } from './fake-nvml.js'

export const SIM_MODEL = 'meta-llama/Llama-3.1-8B-Instruct'

export interface Answer {
  status: number | null
  /** errno code when the request failed (ECONNREFUSED...). */
  error: string | null
  body: string
}

/** One request on a fresh connection. Never rejects. */
export function request(url: string, method = 'GET', body?: unknown, timeoutMs = 15_000): Promise<Answer> {
  return new Promise((resolve) => {
    const text = body === undefined ? undefined : JSON.stringify(body)
    const req = http.request(url, {
      method,
      agent: false,
      timeout: timeoutMs,
      headers:
        text === undefined
          ? {}
          : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) },
    })
    req.on('timeout', () => req.destroy(Object.assign(new Error('timeout'), { code: 'ETIMEDOUT' })))
    req.on('error', (err) =>
      resolve({ status: null, error: (err as { code?: string }).code ?? 'ERROR', body: '' }),
    )
    req.on('response', (res) => {
      let data = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => {
        data += c
      })
      res.on('end', () => resolve({ status: res.statusCode ?? null, error: null, body: data }))
      res.on('error', (err) =>
        resolve({
          status: res.statusCode ?? null,
          error: (err as { code?: string }).code ?? 'ERROR',
          body: data,
        }),
      )
    })
    req.end(text)
  })
}

/** A completion's finish_reason (or the failure). */
export async function complete(url: string, maxTokens: number, timeoutMs = 30_000): Promise<string> {
  const a = await request(
    `${url}/v1/completions`,
    'POST',
    { prompt: 'hello there', max_tokens: maxTokens },
    timeoutMs,
  )
  if (a.status !== 200) return `HTTP ${a.status ?? a.error}`
  return (
    (JSON.parse(a.body) as { choices: Array<{ finish_reason: string }> }).choices[0]?.finish_reason ?? '?'
  )
}

/** Polls `cond` until it returns something other than undefined/false; names `what` on timeout. */
export async function until<T>(
  what: string,
  cond: () => T | undefined | false | Promise<T | undefined | false>,
  timeoutMs = 10_000,
  stepMs = 10,
): Promise<T> {
  const end = Date.now() + timeoutMs
  for (;;) {
    const v = await cond()
    if (v !== undefined && v !== false) return v
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(stepMs)
  }
}

export interface Sim {
  server: SimServer
  fleet: SimFleet
  url: string
  /** Every log line, as printed. */
  logs: Array<{ replica: string; text: string }>
  control<T>(path: string, body?: unknown): Promise<T>
}

const open = new Set<SimServer>()

export async function startSim(
  o: Partial<Omit<SimServerOptions, 'fleet'>> = {},
  fleet: FleetOptions = {},
): Promise<Sim> {
  const f = new SimFleet({ replicas: 1, maxModelLen: 4096, arrivals: null, ...fleet })
  const logs: Sim['logs'] = []
  const server = await SimServer.start({
    fleet: f,
    speed: 50,
    ...o,
    onLog: (replica, stream, text, t) => {
      logs.push({ replica, text })
      o.onLog?.(replica, stream, text, t)
    },
  })
  open.add(server)
  const url = server.urls.r0 as string
  return {
    server,
    fleet: f,
    url,
    logs,
    control: async <T>(path: string, body?: unknown) => {
      const a = await request(`${server.controlUrl}${path}`, body === undefined ? 'GET' : 'POST', body)
      return JSON.parse(a.body) as T
    },
  }
}

export async function waitHealthy(url: string, timeoutMs = 15_000): Promise<void> {
  await until(
    `${url}/health 200`,
    async () => (await request(`${url}/health`, 'GET', undefined, 2000)).status === 200,
    timeoutMs,
  )
}

export async function closeSims(): Promise<void> {
  const all = [...open]
  open.clear()
  await Promise.all(all.map((s) => s.close()))
}
