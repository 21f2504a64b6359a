/**
 * `vllm-monitor watch` (dist/cli/index.js, built by the global setup or `npx tsc -p
 * tsconfig.build.json`) attached to three simulated vLLM servers it did not start, each with its
 * log file and a PID: it follows them through start-up (refused port, then the log's phases),
 * serving, KV exhaustion (DEGRADED), an NCCL hang with /health still 200 (ERROR), engine death
 * (ERROR) and the disappearance of a process (ERROR), printing each transition as a JSON line.
 * Times: the simulator runs at 50x; the watcher's thresholds are wall-clock ms.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { appendFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterEach, beforeAll, describe, expect, it } from 'vitest'
import { SimFleet } from '../../src/sim/fleet.js'
import { SimServer } from '../../src/sim/server.js'
import { until } from '../helpers/sim-http.js'

const root = fileURLToPath(new URL('../../', import.meta.url))
const cli = join(root, 'dist/cli/index.js')

interface Line {
  type: string
  replica?: string
  from?: string
  to?: string
  reason?: string
  [k: string]: unknown
}

const cleanups: Array<() => unknown> = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

beforeAll(() => {
  if (!existsSync(cli)) throw new Error(`${cli} is missing: run npx tsc -p tsconfig.build.json first`)
})

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer()
    s.once('error', () => resolve(false))
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)))
  })
}

/** A base port with `n` free ports after it (the simulator numbers its replicas' ports so). */
async function freePorts(n: number): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const base = 20_000 + Math.floor(Math.random() * 30_000)
    let ok = true
    for (let i = 0; i < n && ok; i++) ok = await portFree(base + i)
    if (ok) return base
  }
  throw new Error('no free port range')
}

function run(args: string[]): {
  child: ChildProcess
  lines: Line[]
  stderr: () => string
  exit: Promise<number | null>
} {
  const child = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  const lines: Line[] = []
  let err = ''
  let buf = ''
  child.stderr?.setEncoding('utf8')
  child.stderr?.on('data', (chunk: string) => {
    err += chunk
    buf += chunk
    let nl = buf.indexOf('\n')
    while (nl >= 0) {
      const line = buf.slice(0, nl)
      buf = buf.slice(nl + 1)
      try {
        lines.push(JSON.parse(line) as Line)
      } catch {
        // not a JSON line (a warning): kept in stderr()
      }
      nl = buf.indexOf('\n')
    }
  })
  child.stdout?.resume()
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  cleanups.push(async () => {
    if (child.exitCode === null) {
      child.kill('SIGKILL')
      await exit
    }
  })
  return { child, lines, stderr: () => err, exit }
}

describe('vllm-monitor watch', () => {
  it('follows servers it did not start through load, serve, degrade, hang, death and a vanished PID', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vllm-monitor-watch-'))
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }))
    const base = await freePorts(3)
    const urls = [0, 1, 2].map((i) => `http://127.0.0.1:${base + i}`)
    const logs = [0, 1, 2].map((i) => join(dir, `r${i}.log`))
    // r2's "server process": a child we kill later. r0 and r1 are watched through this process.
    const victim = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1e6)'], { stdio: 'ignore' })
    cleanups.push(() => {
      if (victim.exitCode === null) victim.kill('SIGKILL')
    })
    const pids = [process.pid, process.pid, victim.pid as number]

    const w = run([
      'watch',
      ...urls.flatMap((u) => ['--url', u]),
      ...pids.flatMap((p) => ['--pid', String(p)]),
      ...logs.flatMap((l) => ['--log', l]),
      '--json',
      '--gpu',
      'none',
      '--hang-after-ms',
      '1500',
      '--scrape-interval-ms',
      '50',
      '--probe-interval-ms',
      '200',
      '--e2e-interval-ms',
      '200',
      '--e2e-timeout-ms',
      '1000',
    ])
    const transitions = (replica: string) =>
      w.lines.filter((l) => l.type === 'transition' && l.replica === replica)
    const reach = (replica: string, to: string, after = 0) =>
      until(
        `${replica} -> ${to} (watch stderr: ${w.stderr().slice(-2000)})`,
        () =>
          transitions(replica)
            .slice(after)
            .find((l) => l.to === to),
        20_000,
        20,
      )
    await until('watching', () => w.lines.find((l) => l.type === 'watching'), 10_000)
    // Nothing listens yet: a refused port is start-up, not failure.
    await reach('r0', 'INITIALIZING')

    // Now the servers start, writing their logs as vLLM does.
    const fleet = new SimFleet({ replicas: 3, maxModelLen: 4096, arrivals: null })
    const server = await SimServer.start({
      fleet,
      basePort: base,
      speed: 50,
      onLog: (replica, _stream, text) => appendFileSync(join(dir, `${replica}.log`), `${text}\n`),
    })
    cleanups.push(() => server.close())
    expect(Object.values(server.urls)).toEqual(urls)
    for (const r of ['r0', 'r1', 'r2']) await reach(r, 'SERVING')
    for (const r of ['r0', 'r1', 'r2']) {
      expect(transitions(r).map((l) => l.to)).toEqual(['INITIALIZING', 'LOADING_MODEL', 'READY', 'SERVING'])
    }
    // The phases came from the log, SERVING from the port answering.
    expect(transitions('r0')[1]?.reason).toMatch(/^log: .*Starting to load model/)
    expect(transitions('r0')[3]?.reason).toMatch(/answers/)

    const fault = async (body: Record<string, unknown>) => {
      const res = await fetch(`${server.controlUrl}/sim/faults`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
      })
      expect(res.status).toBe(200)
    }
    // r0: a surge of long generations exhausts its KV cache.
    await fault({ fault: 'kv-exhaustion', replica: 'r0', durationMs: 600_000 })
    // r1: its worker is killed.
    await fault({ fault: 'engine-death', replica: 'r1' })
    const degraded = await reach('r0', 'DEGRADED')
    expect(degraded.reason).toMatch(/KV cache exhausted|overloaded/)
    const dead = await reach('r1', 'ERROR')
    expect(dead.reason).toMatch(/died unexpectedly|EngineDeadError|engine is dead|fatal error/)

    // r0: an NCCL deadlock in the middle of the surge; /health keeps answering 200.
    const n0 = transitions('r0').length
    await fault({ fault: 'nccl-hang', replica: 'r0' })
    const hung = await reach('r0', 'ERROR', n0)
    expect(hung.reason).toMatch(/engine hung|engine not answering/)
    expect((await fetch(`${urls[0]}/health`)).status).toBe(200)

    // r2: its process disappears.
    victim.kill('SIGKILL')
    const gone = await reach('r2', 'ERROR')
    expect(gone.reason).toBe(`process ${victim.pid} is gone`)
    // Its port still answers (the simulator, not that process, serves it): as after a restart by a
    // process manager, a server answering again after the process died is a new one.
    const back = await reach('r2', 'SERVING', transitions('r2').indexOf(gone))
    expect(back.reason).toMatch(/a restarted server answers/)

    w.child.kill('SIGTERM')
    expect(await w.exit).toBe(0)
    const final = w.lines.find((l) => l.type === 'final') as unknown as {
      replicas: Array<{ replica: string; state: string }>
    }
    expect(final.replicas.map((r) => r.state)).toEqual(['ERROR', 'ERROR', 'SERVING'])
  })

  it('refuses a PID that does not exist, and more --pid than --url', async () => {
    const a = run(['watch', '--url', 'http://127.0.0.1:9', '--pid', '999999999', '--gpu', 'none'])
    expect(await a.exit).toBe(2)
    expect(a.stderr()).toMatch(/process 999999999 does not exist/)
    const b = run(['watch', '--url', 'http://127.0.0.1:9', '--pid', '1', '--pid', '1', '--gpu', 'none'])
    expect(await b.exit).toBe(2)
    expect(b.stderr()).toMatch(/more --pid or --log than --url/)
  })
})
