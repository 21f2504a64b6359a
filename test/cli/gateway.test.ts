/**
 * `vllm-monitor gateway` (dist/cli/index.js, built by `npm run build:ts`): starts in front of a
 * simulated vLLM (with its monitor) or the fake OpenAI upstream, serves requests, drains and
 * exits 0 on SIGTERM, and refuses bad flags with a clear message.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import http from 'node:http'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterEach, beforeAll, describe, expect, it } from 'vitest'
import { startFakeOpenAI } from '../helpers/fake-openai.js'
import { closeSims, request, startSim, until, waitHealthy } from '../helpers/sim-http.js'

const root = fileURLToPath(new URL('../../', import.meta.url))
const cli = join(root, 'dist/cli/index.js')

const cleanups: Array<() => unknown> = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
  await closeSims()
})

beforeAll(() => {
  if (!existsSync(cli)) throw new Error(`${cli} is missing: run npm run build:ts first`)
})

interface Run {
  child: ChildProcess
  stdout: () => string
  stderr: () => string
  exit: Promise<number | null>
}

function run(args: string[]): Run {
  const child = spawn(process.execPath, [cli, 'gateway', ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  child.stdout?.setEncoding('utf8')
  child.stderr?.setEncoding('utf8')
  child.stdout?.on('data', (c: string) => {
    out += c
  })
  child.stderr?.on('data', (c: string) => {
    err += c
  })
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  cleanups.push(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
  return { child, stdout: () => out, stderr: () => err, exit }
}

async function listening(r: Run): Promise<string> {
  const line = await until(
    'the gateway to print its address',
    () => /gateway listening on (http:\/\/\S+) -> (\d+) upstreams?\n/.exec(r.stdout()) ?? false,
    15_000,
  )
  return line[1] as string
}

describe('vllm-monitor gateway', () => {
  it('serves a request through the gateway and exits 0 on SIGTERM', async () => {
    const sim = await startSim({ speed: 50 })
    await waitHealthy(sim.url)
    const r = run(['--upstream', sim.url, '--port', '0', '--slo-ttft-ms', '5000'])
    const url = await listening(r)
    expect(r.stdout()).toMatch(/^gateway listening on http:\/\/127\.0\.0\.1:\d+ -> 1 upstream\n$/)
    const a = await until(
      'a completion through the gateway',
      async () => {
        const res = await request(`${url}/v1/completions`, 'POST', { prompt: 'hello there', max_tokens: 4 })
        return res.status === 200 ? res : false
      },
      10_000,
      50,
    )
    expect(JSON.parse(a.body).choices[0].finish_reason).toBe('length')
    r.child.kill('SIGTERM')
    expect(await r.exit).toBe(0)
  })

  it('lets an in-flight stream finish when SIGTERM arrives', async () => {
    const f = await startFakeOpenAI({ chunks: 12, intervalMs: 40 })
    cleanups.push(() => f.close())
    const r = run(['--upstream', f.url, '--port', '0', '--no-monitor', '--drain-timeout-ms', '10000'])
    const url = await listening(r)
    const body = new Promise<{ status: number | null; text: string }>((resolve) => {
      const req = http.request(`${url}/v1/completions`, { method: 'POST', agent: false })
      req.on('error', () => resolve({ status: null, text: '' }))
      req.on('response', (res) => {
        let text = ''
        res.setEncoding('utf8')
        res.on('data', (c: string) => {
          text += c
        })
        res.on('end', () => resolve({ status: res.statusCode ?? null, text }))
        res.on('error', () => resolve({ status: res.statusCode ?? null, text }))
      })
      req.end(JSON.stringify({ prompt: 'x', stream: true }))
    })
    await until('the stream to start', () => f.open() === 1, 10_000)
    r.child.kill('SIGTERM')
    const got = await body
    expect(got.status).toBe(200)
    expect(got.text).toContain('data: [DONE]')
    expect(await r.exit).toBe(0)
    expect(r.stderr()).toContain('gateway closed')
  })

  it('refuses a missing --upstream', async () => {
    const r = run(['--port', '0'])
    expect(await r.exit).not.toBe(0)
    expect(r.stderr()).toContain("required option '--upstream <url>' not specified")
  })

  it('refuses an --upstream that is not an http(s) URL and a bad --port', async () => {
    const a = run(['--upstream', 'localhost:8000', '--port', '0'])
    expect(await a.exit).not.toBe(0)
    expect(a.stderr()).toContain('--upstream must be an http(s) URL (got "localhost:8000")')
    const b = run(['--upstream', 'http://127.0.0.1:8000', '--port', '70000'])
    expect(await b.exit).not.toBe(0)
    expect(b.stderr()).toContain('--port must be an integer in 0-65535')
    const c = run(['--upstream', 'http://127.0.0.1:8000', '--port', '0', '--slo-ttft-ms', '0'])
    expect(await c.exit).not.toBe(0)
    expect(c.stderr()).toContain('--slo-ttft-ms must be an integer in 1-')
  })
})
