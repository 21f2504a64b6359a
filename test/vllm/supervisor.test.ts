import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/errors.js'
import { createMonitor, type VLLMEngineMonitor } from '../../src/monitor/monitor.js'
import type { LifecycleState, TelemetryRecord } from '../../src/telemetry/types.js'
import { judgeExit } from '../../src/vllm/exit-cause.js'
import { LineSplitter } from '../../src/vllm/line-splitter.js'
import { type ExitInfo, VllmSupervisor, type VllmSupervisorOptions } from '../../src/vllm/supervisor.js'
import { freePort } from '../helpers/net.js'

const FAKE = join(import.meta.dirname, '../fixtures/fake-vllm/vllm')
const CAPTURES = join(import.meta.dirname, '../fixtures/vllm')

const cleanups: Array<() => unknown> = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

async function waitFor<T>(what: string, probe: () => T | null | undefined | false, timeoutMs = 15_000) {
  const end = Date.now() + timeoutMs
  for (;;) {
    const v = probe()
    if (v !== null && v !== undefined && v !== false) return v
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

const clock = () => {
  const t0 = performance.now()
  return () => performance.now() - t0
}

type Extra = Partial<Omit<VllmSupervisorOptions, 'replica' | 'command' | 'now'>>

/** A supervisor pushing into an array (no monitor). */
function supervise(command: string, extra: Extra = {}) {
  const records: TelemetryRecord[] = []
  const lines: Array<[string, string]> = []
  const sup = new VllmSupervisor({
    replica: 'r0',
    command,
    now: clock(),
    onOutput: (stream, line) => lines.push([stream, line]),
    ...extra,
  })
  const exits: Array<ExitInfo & { willRestart: boolean }> = []
  sup.on('exit', (e) => exits.push(e))
  sup.start((r) => records.push(r))
  cleanups.push(() => sup.stop())
  const events = (type: string) => records.filter((r) => r.kind === 'event' && r.type === type)
  return { sup, records, lines, exits, events }
}

/** The fake vLLM under a supervisor, watched by a monitor that scrapes it. */
async function watchFake(env: Record<string, string>, extra: Extra = {}, hangAfterMs = 30_000) {
  const port = await freePort()
  const now = clock()
  const lines: Array<[string, string]> = []
  const sup = new VllmSupervisor({
    replica: 'r0',
    command: FAKE,
    args: ['serve', 'meta-llama/Llama-3.1-8B-Instruct', '--port', String(port)],
    env: { FAKE_VLLM_SPEED: '20', ...env },
    now,
    onOutput: (stream, line) => lines.push([stream, line]),
    ...extra,
  })
  const monitor: VLLMEngineMonitor = createMonitor({
    replicas: [{ name: 'r0', url: `http://127.0.0.1:${port}` }],
    gpu: 'none',
    http: false,
    sources: [sup],
    now,
    checkpointIntervalMs: 20,
    hangAfterMs,
  })
  cleanups.push(() => monitor.close())
  cleanups.push(() => sup.stop())
  const state = () => monitor.getStatus().replicas[0]?.lifecycleState
  const until = (s: LifecycleState, timeoutMs?: number) => waitFor(s, () => state() === s, timeoutMs)
  const path = () => monitor.history('r0').map((t) => t.to)
  return { sup, monitor, port, lines, state, until, path }
}

describe('VllmSupervisor options', () => {
  it('refuses bad options with an InvalidOptionError naming the option', () => {
    const ok = { replica: 'r0', command: 'vllm', now: () => 0 }
    const bad: Array<[Partial<VllmSupervisorOptions>, RegExp]> = [
      [{ replica: '' }, /^options\.replica must be a non-empty string/],
      [{ command: '' }, /^options\.command must be a non-empty string/],
      [{ args: ['serve', 1 as unknown as string] }, /^options\.args must be an array of strings/],
      [{ now: undefined as unknown as () => number }, /^options\.now must be a function/],
      [{ gracePeriodMs: -1 }, /^options\.gracePeriodMs must be a non-negative integer \(got -1\)/],
      [{ tailLines: 0 }, /^options\.tailLines must be an integer from 1 to 100000/],
      [{ restart: { onCrash: true, factor: 0.5 } }, /^options\.restart\.factor must be a number >= 1/],
      [{ restart: { onCrash: true, maxRestarts: -1 } }, /^options\.restart\.maxRestarts must be/],
      [
        { restart: { onCrash: true, initialDelayMs: 5000, maxDelayMs: 100 } },
        /^options\.restart\.maxDelayMs must be >= restart\.initialDelayMs \(5000\)/,
      ],
      [{ restart: {} as { onCrash: boolean } }, /^options\.restart\.onCrash must be a boolean/],
    ]
    for (const [patch, message] of bad) {
      const fn = () => new VllmSupervisor({ ...ok, ...patch })
      expect(fn).toThrow(InvalidOptionError)
      expect(fn).toThrow(message)
    }
    const s = new VllmSupervisor({ ...ok, restart: true })
    expect(s.restartPolicy).toEqual({
      onCrash: true,
      initialDelayMs: 1000,
      maxDelayMs: 60_000,
      factor: 2,
      maxRestarts: Number.POSITIVE_INFINITY,
      resetAfterMs: 300_000,
    })
    expect(s.state).toBe('exited')
    expect(s.pid).toBeNull()
  })
})

describe('LineSplitter', () => {
  it('keeps a line whose CRLF is split so that the next chunk starts with the CR', () => {
    const out: string[] = []
    const s = new LineSplitter((l) => out.push(l))
    s.write('abc')
    s.write('\r\ndef\n')
    s.write('ghi')
    s.write('\r')
    s.write('\njkl\n')
    expect(out).toEqual(['abc', 'def', 'ghi', 'jkl'])
  })

  it('joins partial lines and splits on LF, CRLF (even across chunks), keeps the last frame of a CR-rewritten line, strips ANSI', () => {
    const out: string[] = []
    const s = new LineSplitter((l) => out.push(l))
    for (const chunk of [
      'INFO 10-21 09:11:10 [core.py:1] Engine',
      ' up\r',
      '\nsecond\r\nprogress  10%\rprogress  50%',
      '\rprogress 100%\n\u001b[32mINFO\u001b[0m green\n',
      Buffer.from('caf\u00e9 \u00e9'),
      '\ntail without newline',
    ])
      s.write(chunk)
    // A UTF-8 sequence split across chunks.
    const euro = Buffer.from('\n\u20ac\n')
    s.write(euro.subarray(0, 2))
    s.write(euro.subarray(2))
    s.end()
    expect(out).toEqual([
      'INFO 10-21 09:11:10 [core.py:1] Engine up',
      'second',
      'progress 100%',
      'INFO green',
      'café é',
      'tail without newline',
      '\u20ac',
    ])
  })
})

describe('judgeExit', () => {
  const facts = {
    code: 0,
    signal: null,
    requested: false,
    forced: false,
    gracePeriodMs: 30_000,
    sawStartup: true,
    sawServing: true,
  }
  it('names the most specific cause, not the death notice printed before it', () => {
    const v = judgeExit({
      ...facts,
      evidence: [
        { type: 'engine-dead', message: 'EngineCore encountered a fatal error.', data: { phase: 'running' } },
        { type: 'worker-died', message: 'Worker proc VllmWorker-0 died unexpectedly', data: { worker: 'w' } },
        {
          type: 'cuda-oom',
          message: 'torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.74 GiB.',
        },
      ],
    })
    expect(v).toMatchObject({
      cause: 'cuda-oom',
      message: 'vLLM exited with code 0 after engine death: CUDA out of memory (Tried to allocate 1.74 GiB)',
    })
  })
  it('tells a clean exit, a shutdown, a signal and an unexplained exit code apart', () => {
    expect(judgeExit({ ...facts, evidence: [] })).toMatchObject({
      cause: null,
      message: 'vLLM exited with code 0',
    })
    expect(judgeExit({ ...facts, requested: true, evidence: [] })).toMatchObject({
      cause: null,
      message: 'vLLM exited with code 0 (shutdown)',
    })
    expect(judgeExit({ ...facts, code: null, signal: 'SIGKILL', evidence: [] })).toMatchObject({
      cause: 'signal',
      message: 'vLLM was killed by SIGKILL',
    })
    expect(judgeExit({ ...facts, code: 3, sawServing: false, evidence: [] })).toMatchObject({
      cause: 'exit-code',
      message: 'vLLM exited with code 3 during start-up',
    })
  })
})

describe('VllmSupervisor: crash classification from real vLLM output', () => {
  // Real pastes (test/fixtures/vllm, see its README), printed by a child that then exits 0.
  it.each([
    ['log-oom-27508.txt', 'cuda-oom', /CUDA out of memory \(Tried to allocate 786\.00 MiB\)/],
    ['log-nccl-6042.txt', 'nccl-timeout', /NCCL watchdog timeout \(ALLREDUCE ran for \d+ ms\)/],
    ['log-illegalmem-vllmwindows-72.txt', 'illegal-memory-access', /during start-up: CUDA illegal memory/],
    ['log-illegalmem-11366.txt', 'illegal-memory-access', /CUDA illegal memory access/],
    ['log-workerdied-intel-llmscaler-154.txt', 'worker-died', /worker VllmWorker-3 died unexpectedly/],
    ['log-enginedead-17276.txt', 'engine-dead', /after engine death: EngineCore died/],
  ])('%s exits 0 and is classified %s', async (file, cause, message) => {
    const { exits } = supervise('sh', { args: ['-c', `grep -v '^# ' '${join(CAPTURES, file)}'; exit 0`] })
    const exit = await waitFor('exit', () => exits[0])
    expect(exit).toMatchObject({ code: 0, signal: null, cause, willRestart: false })
    expect(exit.message).toMatch(/^vLLM exited with code 0/)
    expect(exit.message).toMatch(message)
  })

  it('reads output written in pieces, CRLF, tqdm frames and colour', async () => {
    const script = `
      const w = (s) => process.stdout.write(s)
      w('\\u001b[32mINFO\\u001b[0m 10-21 09:11:10 [gpu_model_runner.py:2602] Starting to load model m...\\r\\n')
      process.stderr.write('\\rLoading safetensors checkpoint shards:  50% Completed | 1/2\\rLoading safetensors checkpoint shards: 100% Completed | 2/2\\n')
      w('ERROR 10-21 09:11:12 [core.py:710] EngineCore encountered a ')
      setTimeout(() => {
        w('fatal error.\\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.74 GiB. GPU 0 has a total capacity of 79.19 GiB of which 605.88 MiB is free.')
        process.exit(0)
      }, 30)`
    const { exits, lines, events } = supervise(process.execPath, { args: ['-e', script] })
    const exit = await waitFor('exit', () => exits[0])
    expect(lines).toEqual([
      ['stdout', 'INFO 10-21 09:11:10 [gpu_model_runner.py:2602] Starting to load model m...'],
      ['stderr', 'Loading safetensors checkpoint shards: 100% Completed | 2/2'],
      ['stdout', 'ERROR 10-21 09:11:12 [core.py:710] EngineCore encountered a fatal error.'],
      [
        'stdout',
        'torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.74 GiB. GPU 0 has a total capacity of 79.19 GiB of which 605.88 MiB is free.',
      ],
    ])
    expect(exit.message).toBe(
      'vLLM exited with code 0 during start-up: CUDA out of memory (Tried to allocate 1.74 GiB)',
    )
    // "Starting to load model" and the progress bar's final frame.
    expect(
      events('lifecycle-hint').map((e) => (e as unknown as { data: { state: string } }).data.state),
    ).toEqual(['LOADING_MODEL', 'LOADING_MODEL'])
    expect(events('cuda-oom')).toHaveLength(1)
    expect(events('process-exit')[0]).toMatchObject({
      severity: 'critical',
      data: { code: 0, cause: 'cuda-oom' },
    })
  })
})

describe('VllmSupervisor with the fake vllm', () => {
  it('start-up to SERVING from the logs and the scrape; SIGTERM ends NOT_STARTED with exit 0', async () => {
    const f = await watchFake({ FAKE_VLLM_RATE: '0' })
    await f.until('SERVING')
    expect(f.sup.state).toBe('running')
    expect(f.sup.pid).toBeGreaterThan(0)
    expect(f.path()).toEqual(['INITIALIZING', 'LOADING_MODEL', 'READY', 'SERVING'])
    expect(f.monitor.history('r0')[0]?.reason).toMatch(/^process started \(pid \d+\)/)
    await expect(f.sup.shutdown()).resolves.toEqual({ code: 0, signal: null })
    await f.until('NOT_STARTED')
    expect(f.path().slice(-2)).toEqual(['SHUTTING_DOWN', 'NOT_STARTED'])
    expect(f.sup.lastExit).toMatchObject({
      code: 0,
      cause: null,
      message: 'vLLM exited with code 0 (shutdown)',
    })
    expect(f.lines.map(([, l]) => l).join('\n')).toMatch(/Shutdown initiated/)
    expect(f.sup.state).toBe('exited')
  })

  it('DEGRADED under KV-cache exhaustion', async () => {
    const f = await watchFake({ FAKE_VLLM_FAULT: 'kv-exhaustion', FAKE_VLLM_FAULT_AT_MS: '13000' })
    await f.until('DEGRADED', 25_000)
    expect(f.monitor.getStatus().replicas[0]?.reason).toMatch(/KV cache exhausted/)
  })

  it('an NCCL hang is ERROR (hung) while /health still answers 200', async () => {
    const f = await watchFake({ FAKE_VLLM_FAULT: 'nccl-hang', FAKE_VLLM_RATE: '4' }, {}, 1000)
    await f.until('ERROR', 20_000)
    expect(f.monitor.getStatus().replicas[0]?.reason).toMatch(/engine hung/)
    expect((await fetch(`http://127.0.0.1:${f.port}/health`)).status).toBe(200)
    expect(f.sup.state).toBe('running')
  })

  it('engine death with exit code 0 is a crash, named from the log', async () => {
    const f = await watchFake({ FAKE_VLLM_FAULT: 'engine-death' })
    await waitFor('exit', () => f.sup.lastExit)
    expect(f.sup.lastExit).toMatchObject({
      code: 0,
      signal: null,
      cause: 'worker-died',
      requested: false,
      message: 'vLLM exited with code 0 after engine death: worker VllmWorker-0 died unexpectedly',
    })
    await f.until('ERROR')
    expect(f.path()).toEqual(['INITIALIZING', 'LOADING_MODEL', 'READY', 'SERVING', 'ERROR'])
    // The death line or the exit record names the cause (the 503 scrape may have won the race).
    await waitFor(
      'reason',
      () => /died unexpectedly/.test(f.monitor.getStatus().replicas[0]?.reason ?? '') || undefined,
    )
  })

  it('a runtime CUDA OOM (exit 0) is named with the allocation that failed', async () => {
    const { exits } = supervise(FAKE, {
      args: ['serve', 'm', '--port', String(await freePort())],
      env: {
        FAKE_VLLM_SPEED: '40',
        FAKE_VLLM_FAULT: 'gpu-oom-spike',
        FAKE_VLLM_FAULT_OPTIONS: '{"rampMs":2000}',
      },
    })
    const exit = await waitFor('exit', () => exits[0])
    expect(exit).toMatchObject({ code: 0, cause: 'cuda-oom' })
    expect(exit.message).toMatch(
      /^vLLM exited with code 0 after engine death: CUDA out of memory \(Tried to allocate [\d.]+ [GM]iB\)$/,
    )
  })

  it.each([
    ['load-oom', 'not enough GPU memory to load the model'],
    ['kv-too-small', 'KV cache too small'],
    ['illegal-memory', 'CUDA illegal memory access'],
    ['nccl-init', 'NCCL error: unhandled system error'],
  ])('start-up failure %s: exit 1, ERROR, classified by name', async (mode, name) => {
    const now = clock()
    const sup = new VllmSupervisor({
      replica: 'r0',
      command: FAKE,
      args: ['serve', 'm'],
      env: { FAKE_VLLM_MODE: mode },
      now,
    })
    const monitor = createMonitor({ gpu: 'none', http: false, sources: [sup], now, checkpointIntervalMs: 20 })
    cleanups.push(() => monitor.close())
    await waitFor('exit', () => sup.lastExit)
    expect(sup.lastExit).toMatchObject({ code: 1, requested: false })
    expect(sup.lastExit?.message).toBe(`vLLM exited with code 1 during start-up: ${name}`)
    await waitFor('ERROR', () => monitor.getStatus().replicas[0]?.lifecycleState === 'ERROR')
    const exitEvent = await waitFor('process-exit event', () =>
      monitor.getCheckpoint()?.events.find((e) => e.type === 'process-exit'),
    )
    expect(exitEvent.message).toContain(name)
  })

  it('restarts after a crash with exponential backoff, then gives up after maxRestarts', async () => {
    const spawns: number[] = []
    const exitsAt: number[] = []
    const { sup, exits, events } = supervise(FAKE, {
      args: ['serve', 'm'],
      env: { FAKE_VLLM_MODE: 'kv-too-small' },
      restart: { onCrash: true, initialDelayMs: 150, factor: 2, maxRestarts: 3 },
    })
    sup.on('spawn', () => spawns.push(performance.now()))
    sup.on('exit', () => exitsAt.push(performance.now()))
    spawns.push(performance.now())
    await waitFor('4 exits', () => exits.length === 4 && sup.state === 'exited', 20_000)
    expect(sup.restarts).toBe(3)
    expect(exits.map((e) => e.willRestart)).toEqual([true, true, true, false])
    expect(exits.every((e) => e.cause === 'kv-too-small')).toBe(true)
    const delays = events('process-restart').map(
      (e) => (e as unknown as { data: { delayMs?: number } }).data.delayMs,
    )
    expect(delays).toEqual([150, 300, 600, undefined])
    const gaps = [1, 2, 3].map((i) => (spawns[i] as number) - (exitsAt[i - 1] as number))
    expect(gaps[0]).toBeGreaterThanOrEqual(145)
    expect(gaps[1]).toBeGreaterThanOrEqual(295)
    expect(gaps[2]).toBeGreaterThanOrEqual(595)
    expect((gaps[1] as number) > (gaps[0] as number) && (gaps[2] as number) > (gaps[1] as number)).toBe(true)
    expect(events('process-restart').at(-1)).toMatchObject({ data: { gaveUp: true } })
  })

  it('SIGKILLs the group after the grace period when SIGTERM is ignored', async () => {
    const { sup, lines, events } = supervise(FAKE, {
      args: ['serve', 'm', '--port', String(await freePort())],
      env: { FAKE_VLLM_IGNORE_SIGTERM: '1' },
      gracePeriodMs: 400,
    })
    await waitFor('first line', () => lines.length > 0)
    const t0 = performance.now()
    const res = await sup.shutdown()
    expect(performance.now() - t0).toBeGreaterThanOrEqual(390)
    expect(res).toEqual({ code: null, signal: 'SIGKILL' })
    expect(lines).toContainEqual(['stderr', 'fake-vllm: ignoring SIGTERM'])
    expect(sup.tail()).toContainEqual(
      expect.objectContaining({ stream: 'stderr', text: 'fake-vllm: ignoring SIGTERM' }),
    )
    expect(sup.lastExit).toMatchObject({
      forced: true,
      requested: true,
      cause: null,
      message: 'vLLM was killed by SIGKILL after the 0.4 s grace period (shutdown)',
    })
    expect(events('lifecycle-hint')).toContainEqual(
      expect.objectContaining({
        data: { state: 'SHUTTING_DOWN', source: 'supervisor' },
        message: expect.stringMatching(/SIGTERM/),
      }),
    )
  })

  it('reports a missing vllm as a clear process-exit, never a throw, and does not restart it', async () => {
    const { sup, exits, events } = supervise('vllm-not-installed-here', {
      args: ['serve', 'm'],
      restart: { onCrash: true, initialDelayMs: 10 },
    })
    const exit = await waitFor('exit', () => exits[0])
    expect(exit).toMatchObject({
      cause: 'spawn-failed',
      errno: 'ENOENT',
      pid: null,
      willRestart: false,
      message:
        'cannot start vLLM: command "vllm-not-installed-here" not found (is vLLM installed and on PATH?)',
    })
    expect(events('process-exit')).toHaveLength(1)
    expect(events('process-spawn')).toHaveLength(0)
    expect(sup.state).toBe('exited')
    await new Promise((r) => setTimeout(r, 50))
    expect(exits).toHaveLength(1)
  })

  it('restart(reason) stops vLLM gracefully and starts it again; signal() forwards', async () => {
    const f = await watchFake({ FAKE_VLLM_RATE: '0' })
    await f.until('SERVING')
    expect(f.sup.signal('SIGUSR2')).toBe(true)
    await waitFor('SIGUSR2 seen', () =>
      f.lines.some(([s, l]) => s === 'stderr' && l === 'fake-vllm: received SIGUSR2'),
    )
    const first = f.sup.pid
    await f.sup.restart('test: rolling restart')
    expect(f.sup.restarts).toBe(1)
    expect(f.sup.pid).not.toBe(first)
    expect(f.sup.lastExit).toMatchObject({ code: 0, requested: true, cause: null })
    await waitFor('SERVING again', () => f.path().filter((s) => s === 'SERVING').length === 2)
    expect(f.path()).toEqual([
      'INITIALIZING',
      'LOADING_MODEL',
      'READY',
      'SERVING',
      'SHUTTING_DOWN',
      'NOT_STARTED',
      'INITIALIZING',
      'LOADING_MODEL',
      'READY',
      'SERVING',
    ])
    const restart = f.monitor.getCheckpoint()?.events.find((e) => e.type === 'process-restart')
    expect(restart).toMatchObject({ message: 'restarting vLLM: test: rolling restart' })
  })
})
