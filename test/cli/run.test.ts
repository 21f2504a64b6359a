// `vllm-monitor run` against the fake vllm (test/fixtures/fake-vllm/vllm), through the built CLI:
// dist/ must be current (`npx tsc -p tsconfig.build.json`; `npm install` builds it).
import { type ChildProcess, spawn } from 'node:child_process'
import { delimiter, join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { exitStatusOf, urlFromVllmArgs } from '../../src/cli/run.js'
import type { ExitInfo } from '../../src/vllm/supervisor.js'
import { freePort } from '../helpers/net.js'

const cli = join(import.meta.dirname, '../../dist/cli/index.js')
const fakeDir = join(import.meta.dirname, '../fixtures/fake-vllm')
const children: ChildProcess[] = []
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL')
})

/** Starts `vllm-monitor run ARGS` with the fake vllm first on PATH. */
function run(args: string[], env: Record<string, string> = {}) {
  const child = spawn(process.execPath, [cli, 'run', ...args], {
    env: {
      ...process.env,
      NO_COLOR: '1',
      PATH: `${fakeDir}${delimiter}${process.env.PATH ?? ''}`,
      FAKE_VLLM_SPEED: '20',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  children.push(child)
  const out = { stdout: '', stderr: '' }
  child.stdout.on('data', (c: Buffer) => {
    out.stdout += c.toString()
  })
  child.stderr.on('data', (c: Buffer) => {
    out.stderr += c.toString()
  })
  const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) =>
    child.on('close', (code, signal) => resolve({ code, signal })),
  )
  const waitFor = async (stream: 'stdout' | 'stderr', pattern: RegExp, timeoutMs = 20_000) => {
    const end = Date.now() + timeoutMs
    while (!pattern.test(out[stream])) {
      if (Date.now() > end || child.exitCode !== null)
        throw new Error(`no ${pattern} on ${stream}; stderr:\n${out.stderr.slice(-3000)}`)
      await new Promise((r) => setTimeout(r, 20))
    }
  }
  return { child, out, exited, waitFor }
}

const serve = async (...extra: string[]) => [
  '--gpu',
  'none',
  ...extra,
  '--',
  'vllm',
  'serve',
  'm',
  '--port',
  String(await freePort()),
]

describe('vllm-monitor run', () => {
  it('keeps vLLM running when the reader of its output goes away (EPIPE), then stops it on SIGTERM', async () => {
    const port = await freePort()
    const r = run(['--gpu', 'none', '--', 'vllm', 'serve', 'm', '--port', String(port)])
    await r.waitFor('stderr', /SERVING/)
    // Like `| head`: the pipe closes while vLLM keeps printing.
    r.child.stdout.destroy()
    r.child.stderr.destroy()
    await new Promise((res) => setTimeout(res, 1500))
    expect(r.child.exitCode).toBeNull()
    const health = await fetch(`http://127.0.0.1:${port}/health`)
    expect(health.status).toBe(200)
    r.child.kill('SIGTERM')
    expect(await r.exited).toEqual({ code: 0, signal: null })
  })

  it('supervises vLLM to SERVING, passes its output through, and SIGTERM stops it gracefully (exit 0)', async () => {
    const r = run(await serve(), { FAKE_VLLM_RATE: '0' })
    await r.waitFor('stderr', /r0: READY -> SERVING/)
    expect(r.out.stderr).toMatch(
      /\[vllm-monitor\] supervising vllm serve m --port \d+; watching http:\/\/127\.0\.0\.1:\d+/,
    )
    expect(r.out.stderr).toMatch(/r0: NOT_STARTED -> INITIALIZING \(process started \(pid \d+\)\)/)
    expect(r.out.stderr).toMatch(/r0: INITIALIZING -> LOADING_MODEL \(log: .*Starting to load model/)
    expect(r.out.stderr).toMatch(/r0: LOADING_MODEL -> READY/)
    // Verbatim: vLLM's log lines on stdout, uvicorn's on stderr.
    expect(r.out.stdout).toMatch(/^\(Worker_TP0 pid=\d+\) INFO .* Starting to load model/m)
    expect(r.out.stderr).toMatch(/^INFO: {5}Application startup complete\.$/m)
    // Other signals are forwarded as they are.
    r.child.kill('SIGUSR2')
    await r.waitFor('stderr', /fake-vllm: received SIGUSR2/)
    r.child.kill('SIGTERM')
    expect(await r.exited).toEqual({ code: 0, signal: null })
    // The signal reached vLLM, which played its graceful shutdown.
    expect(r.out.stdout).toMatch(/Shutdown initiated \(timeout=30\)/)
    expect(r.out.stderr).toMatch(/r0: SERVING -> SHUTTING_DOWN/)
    expect(r.out.stderr).toMatch(/r0: vLLM exited with code 0 \(shutdown\)/)
    expect(r.out.stderr).toMatch(/r0: SHUTTING_DOWN -> NOT_STARTED/)
    expect(r.out.stderr).toMatch(/exit status 0/)
  })

  it('exits 1 when vLLM exits 0 after engine death, naming the cause', async () => {
    const r = run(await serve(), { FAKE_VLLM_FAULT: 'engine-death' })
    expect(await r.exited).toEqual({ code: 1, signal: null })
    // The death line (stdout pipe) and the 503 (scrape) race: either may be seen first.
    expect(r.out.stderr).toMatch(
      /r0: SERVING -> ERROR \((Worker proc VllmWorker-0 died unexpectedly|\/health 503: the engine is dead)/,
    )
    expect(r.out.stderr).toMatch(
      /r0: vLLM exited with code 0 after engine death: worker VllmWorker-0 died unexpectedly/,
    )
  })

  it.each([
    ['kv-too-small', 'KV cache too small'],
    ['nccl-init', 'NCCL error: unhandled system error'],
  ])('a start-up failure (%s) exits 1 and is named', async (mode, name) => {
    const r = run(['--gpu', 'none', '--', 'vllm', 'serve', 'm', '--port', String(await freePort())], {
      FAKE_VLLM_MODE: mode,
    })
    expect(await r.exited).toEqual({ code: 1, signal: null })
    expect(r.out.stderr).toContain(`r0: vLLM exited with code 1 during start-up: ${name}`)
    expect(r.out.stderr).toMatch(/r0: (INITIALIZING|LOADING_MODEL) -> ERROR/)
  })

  it('exits 127 with a clear message when vllm is not on PATH', async () => {
    const r = run(['--gpu', 'none', '--', 'vllm', 'serve', 'm'], { PATH: '/nonexistent' })
    expect(await r.exited).toEqual({ code: 127, signal: null })
    expect(r.out.stderr).toContain(
      'r0: cannot start vLLM: command "vllm" not found (is vLLM installed and on PATH?)',
    )
  })

  it('SIGKILLs vLLM after --grace-ms when it ignores SIGTERM (exit 137)', async () => {
    const r = run(await serve('--grace-ms', '300'), { FAKE_VLLM_IGNORE_SIGTERM: '1' })
    await r.waitFor('stdout', /Starting to load model/)
    r.child.kill('SIGTERM')
    expect(await r.exited).toEqual({ code: 137, signal: null })
    expect(r.out.stderr).toMatch(/fake-vllm: ignoring SIGTERM/)
    expect(r.out.stderr).toMatch(/r0: vLLM was killed by SIGKILL after the 0\.3 s grace period \(shutdown\)/)
  })

  it('a second SIGINT kills vLLM at once', async () => {
    const r = run(await serve(), { FAKE_VLLM_IGNORE_SIGTERM: '1' })
    await r.waitFor('stdout', /Starting to load model/)
    const t0 = Date.now()
    r.child.kill('SIGINT')
    await r.waitFor('stderr', /fake-vllm: ignoring SIGTERM/)
    r.child.kill('SIGINT')
    expect(await r.exited).toEqual({ code: 137, signal: null })
    expect(Date.now() - t0).toBeLessThan(10_000)
    expect(r.out.stderr).toMatch(/SIGINT again: killing vLLM \(SIGKILL\)/)
  })

  it('--json: an NCCL hang is ERROR (hung) after --hang-after-ms, as JSON lines', async () => {
    const r = run(await serve('--json', '--hang-after-ms', '1000'), {
      FAKE_VLLM_FAULT: 'nccl-hang',
      FAKE_VLLM_RATE: '4',
    })
    await r.waitFor('stderr', /"to":"ERROR"/)
    r.child.kill('SIGTERM')
    expect(await r.exited).toEqual({ code: 0, signal: null })
    const ours = r.out.stderr
      .split('\n')
      .filter((l) => l.startsWith('{"source":"vllm-monitor"'))
      .map((l) => JSON.parse(l))
    const error = ours.find((j) => j.kind === 'transition' && j.to === 'ERROR')
    expect(error).toMatchObject({
      replica: 'r0',
      from: 'SERVING',
      reason: expect.stringMatching(/engine hung/),
    })
    expect(ours.at(-1)).toMatchObject({ kind: 'exit', status: 0, exit: { code: 0, requested: true } })
  })

  it('--restart restarts vLLM after a crash with backoff, and gives up after --max-restarts', async () => {
    const r = run(
      [
        '--gpu',
        'none',
        '--restart',
        '--restart-delay-ms',
        '100',
        '--max-restarts',
        '2',
        '--',
        'vllm',
        'serve',
        'm',
      ],
      {
        FAKE_VLLM_MODE: 'kv-too-small',
      },
    )
    expect(await r.exited).toEqual({ code: 1, signal: null })
    expect(r.out.stderr.match(/r0: vLLM started \(pid/g)).toHaveLength(3)
    expect(r.out.stderr).toContain('r0: restarting vLLM in 0.1 s after a crash (attempt 1)')
    expect(r.out.stderr).toContain('r0: restarting vLLM in 0.2 s after a crash (attempt 2)')
    expect(r.out.stderr).toContain(
      'r0: not restarting vLLM: 2 restarts in a row ended in a crash (maxRestarts)',
    )
  })
})

describe('run helpers', () => {
  it('derives the URL from the vLLM arguments', () => {
    expect(urlFromVllmArgs(['serve', 'm'])).toBe('http://127.0.0.1:8000')
    expect(urlFromVllmArgs(['serve', 'm', '--port', '9001'])).toBe('http://127.0.0.1:9001')
    expect(urlFromVllmArgs(['serve', 'm', '--host=0.0.0.0', '--port=9002'])).toBe('http://127.0.0.1:9002')
    expect(urlFromVllmArgs(['serve', 'm', '--host', '10.0.0.7'])).toBe('http://10.0.0.7:8000')
    expect(urlFromVllmArgs(['serve', 'm', '--host', '::'])).toBe('http://[::1]:8000')
    expect(urlFromVllmArgs(['serve', 'm', '--host', 'fd00::1', '--port', '1'])).toBe('http://[fd00::1]:1')
  })

  it('maps how vLLM ended to an exit status', () => {
    const base: ExitInfo = {
      t: 0,
      pid: 1,
      code: 0,
      signal: null,
      cause: null,
      message: '',
      detail: null,
      uptimeMs: 1,
      requested: false,
      forced: false,
      errno: null,
    }
    expect(exitStatusOf(base, false)).toBe(0)
    expect(exitStatusOf({ ...base, cause: 'cuda-oom' }, false)).toBe(1)
    expect(exitStatusOf(base, true)).toBe(1)
    expect(exitStatusOf({ ...base, requested: true }, true)).toBe(0)
    expect(exitStatusOf({ ...base, code: 3, cause: 'exit-code' }, false)).toBe(3)
    expect(exitStatusOf({ ...base, code: null, signal: 'SIGKILL', cause: 'signal' }, false)).toBe(137)
    expect(exitStatusOf({ ...base, code: null, cause: 'spawn-failed', errno: 'ENOENT' }, false)).toBe(127)
    expect(exitStatusOf({ ...base, code: null, cause: 'spawn-failed', errno: 'EACCES' }, false)).toBe(126)
    expect(exitStatusOf(null, false)).toBe(1)
  })
})
