import { describe, expect, it } from 'vitest'
import type { LifecycleState } from '../../src/telemetry/types.js'
import { classifyLogLine, parseLogLine } from '../../src/vllm/log-lines.js'
import { fixtureNames, logLines } from './helpers.js'

/** The distinct event types of a capture, in order of first appearance. */
function eventTypes(name: string): string[] {
  const seen: string[] = []
  for (const line of logLines(name)) {
    const type = classifyLogLine(line)?.event?.type
    if (type !== undefined && !seen.includes(type)) seen.push(type)
  }
  return seen
}

/** The lifecycle states a sequence of lines walks through, repeats collapsed. */
function lifecycleOf(lines: string[]): LifecycleState[] {
  const states: LifecycleState[] = []
  for (const line of lines) {
    const s = classifyLogLine(line)?.lifecycle
    if (s !== undefined && states.at(-1) !== s) states.push(s)
  }
  return states
}

function eventIn(name: string, type: string) {
  for (const line of logLines(name)) {
    const e = classifyLogLine(line)?.event
    if (e?.type === type) return e
  }
  throw new Error(`no ${type} event in ${name}`)
}

describe('parseLogLine', () => {
  it('splits a V1 line with its process prefix', () => {
    expect(
      parseLogLine(
        '(EngineCore_DP0 pid=188893) INFO 10-21 09:11:57 [gpu_worker.py:298] Available KV cache memory: 16.23 GiB',
      ),
    ).toEqual({
      proc: 'EngineCore_DP0',
      pid: 188893,
      level: 'INFO',
      ts: '10-21 09:11:57',
      file: 'gpu_worker.py',
      lineNo: 298,
      msg: 'Available KV cache memory: 16.23 GiB',
    })
  })

  it('reads the V0 form without an opening bracket behind a "  | " prefix', () => {
    const [line] = logLines('log-nccl-6042.txt')
    expect(parseLogLine(line!)).toEqual({
      proc: null,
      pid: null,
      level: 'ERROR',
      ts: '07-01 13:54:43',
      file: 'multiproc_worker_utils.py',
      lineNo: 120,
      msg: 'Worker VllmWorkerProcess pid 1159 died, exit code: -6',
    })
  })

  it('reads the odd "[file.py:485[]" bracket of the 27194 paste', () => {
    const line = logLines('log-enginedead-27194.txt').find((l) => l.includes('EngineDeadError'))!
    expect(parseLogLine(line)).toMatchObject({ proc: 'APIServer', pid: 1, file: 'async_llm.py', lineNo: 485 })
  })

  it('strips a literal ^M and reads the dated custom format of 11366', () => {
    const line = logLines('log-illegalmem-11366.txt').at(-2)!
    expect(line.endsWith('^M')).toBe(true)
    expect(parseLogLine(line)).toEqual({
      proc: null,
      pid: 56542,
      level: 'ERROR',
      ts: '2024-12-19 21:40:35',
      file: 'async_llm_engine.py',
      lineNo: 64,
      msg: 'RuntimeError: Error in model execution: CUDA error: an illegal memory access was encountered',
    })
  })

  it('strips a docker-compose service prefix', () => {
    const [health, died] = logLines('log-workerdied-intel-llmscaler-154.txt')
    expect(parseLogLine(health!)).toMatchObject({
      level: 'INFO',
      msg: '127.0.0.1:48802 - "GET /health HTTP/1.1" 200 OK',
    })
    expect(parseLogLine(died!)).toMatchObject({ level: 'ERROR', file: 'multiproc_executor.py', lineNo: 135 })
  })

  it('strips ANSI colour, CR line ends and nested process prefixes (reporting the innermost)', () => {
    expect(
      parseLogLine(
        '\u001b[36mllm-1  |\u001b[0m (EngineCore_DP0 pid=9) (Worker_TP1 pid=10) \u001b[32mINFO\u001b[0m 05-19 10:13:11 [w.py:1] hello\r\n',
      ),
    ).toEqual({
      proc: 'Worker_TP1',
      pid: 10,
      level: 'INFO',
      ts: '05-19 10:13:11',
      file: 'w.py',
      lineNo: 1,
      msg: 'hello',
    })
  })

  it('keeps the last frame of a tqdm bar that rewrote itself with CR', () => {
    expect(parseLogLine('Loading: 10%\rLoading: 20%\rLoading: 30%').msg).toBe('Loading: 30%')
  })

  it('reads uvicorn lines as their level and message', () => {
    expect(parseLogLine('(APIServer pid=1) INFO:     Shutting down')).toMatchObject({
      proc: 'APIServer',
      level: 'INFO',
      ts: null,
      file: null,
      msg: 'Shutting down',
    })
  })

  it('leaves lines in no known format whole, with a null level', () => {
    const kernel = logLines('log-xid-40652.txt')[0]!
    expect(parseLogLine(kernel)).toEqual({
      proc: null,
      pid: null,
      level: null,
      ts: null,
      file: null,
      lineNo: null,
      msg: kernel,
    })
    const tqdm = 'Loading safetensors checkpoint shards:  56% Completed | 5/9 [00:13<00:11,  2.87s/it]'
    expect(parseLogLine(tqdm)).toMatchObject({ level: null, msg: tqdm })
    expect(parseLogLine('(Worker_TP0 pid=34322)')).toMatchObject({
      proc: 'Worker_TP0',
      pid: 34322,
      level: null,
      msg: '',
    })
    expect(parseLogLine('(not a prefix) text').msg).toBe('(not a prefix) text')
  })

  it('never throws, whatever it is fed', () => {
    for (const junk of [
      undefined,
      null,
      42,
      '',
      '(',
      '(x pid=)',
      '\u001b',
      '\u001b[',
      'INFO ',
      '^M^M',
      '\r\r',
    ]) {
      expect(() => parseLogLine(junk as string)).not.toThrow()
      expect(() => classifyLogLine(junk as string)).not.toThrow()
    }
  })
})

describe('classifyLogLine on every log capture', () => {
  const expected: Record<string, string[]> = {
    'log-enginedead-17276.txt': ['engine-dead'],
    'log-enginedead-27194.txt': ['engine-dead'],
    'log-enginedead-42362.txt': ['engine-dead'],
    'log-illegalmem-11366.txt': ['illegal-memory-access'],
    'log-illegalmem-8177.txt': ['illegal-memory-access'],
    'log-illegalmem-vllmwindows-72.txt': ['illegal-memory-access', 'engine-dead'],
    'log-nccl-5458.txt': ['nccl-timeout'],
    'log-nccl-6042.txt': ['worker-died', 'nccl-timeout'],
    'log-oom-15039.txt': ['cuda-oom'],
    'log-oom-27508.txt': ['cuda-oom'],
    'log-startup-38820.txt': [],
    'log-startup-glmv-204.txt': [],
    'log-stats-v0-11871.txt': ['stats'],
    'log-stats-v1-43295.txt': ['stats'],
    'log-workerdied-intel-llmscaler-154.txt': ['worker-died', 'engine-dead'],
    'log-workerdied-openpipe-art-201.txt': ['shm-broadcast-stall', 'worker-died'],
    'log-xid-40652.txt': ['xid'],
  }

  it('has an expectation for each capture in the fixtures folder', () => {
    expect(fixtureNames('log-')).toEqual(Object.keys(expected).sort())
  })

  for (const [name, types] of Object.entries(expected)) {
    it(`finds ${types.length > 0 ? types.join(', ') : 'no failure'} in ${name}`, () => {
      expect(eventTypes(name)).toEqual(types)
    })
  }

  it('reports engine death as critical, with the process that said so', () => {
    expect(eventIn('log-enginedead-17276.txt', 'engine-dead')).toEqual({
      type: 'engine-dead',
      severity: 'critical',
      message: 'EngineCore encountered a fatal error.',
      data: { phase: 'running', level: 'ERROR' },
    })
    expect(eventIn('log-enginedead-27194.txt', 'engine-dead').data).toMatchObject({
      proc: 'APIServer',
      pid: 1,
    })
  })

  it('marks "EngineCore failed to start" as a start-up death', () => {
    expect(eventIn('log-illegalmem-vllmwindows-72.txt', 'engine-dead').data).toMatchObject({
      phase: 'startup',
      proc: 'EngineCore',
      pid: 12244,
    })
  })

  it('captures the bytes a CUDA OOM tried to allocate, and the device it ran out on', () => {
    const e = eventIn('log-oom-27508.txt', 'cuda-oom')
    expect(e.severity).toBe('critical')
    expect(e.data).toMatchObject({
      requestedBytes: 786 * 2 ** 20,
      cudaDevice: 0,
      totalBytes: Math.round(79.11 * 2 ** 30),
      freeBytes: Math.round(140.75 * 2 ** 20),
      proc: 'EngineCore_DP0',
      pid: 8884,
    })
  })

  it('sees the engine death inside the V0 MQEngineDeadError that quotes an OOM', () => {
    expect(eventIn('log-oom-15039.txt', 'cuda-oom').data).toMatchObject({
      requestedBytes: 128 * 2 ** 20,
      engineDead: true,
    })
  })

  it('reads the NCCL watchdog work item', () => {
    expect(eventIn('log-nccl-5458.txt', 'nccl-timeout')).toMatchObject({
      severity: 'critical',
      data: { rank: 0, seqNum: 1, opType: 'ALLREDUCE', timeoutMs: 600000, ranForMs: 600086 },
    })
  })

  it('reads the NCCL and Xid details however far into a long line they are', () => {
    const pad = 'x'.repeat(50_000)
    const nccl = logLines('log-nccl-5458.txt').find((l) => l.includes('Watchdog caught'))!
    expect(classifyLogLine(`${pad} ${nccl}`)?.event).toMatchObject({
      type: 'nccl-timeout',
      data: { rank: 0, seqNum: 1, opType: 'ALLREDUCE', timeoutMs: 600000, ranForMs: 600086 },
    })
    const xid = logLines('log-xid-40652.txt').find((l) => l.includes('NVRM: Xid'))!
    expect(classifyLogLine(`${pad} ${xid}`)?.event).toMatchObject({
      type: 'xid',
      data: { xid: 119, pci: '0000:0b:00', pid: 11431, processName: 'gpu-feature-dis' },
    })
  })

  it('names the dead worker in V1 and V0 forms', () => {
    expect(eventIn('log-workerdied-intel-llmscaler-154.txt', 'worker-died').data).toMatchObject({
      worker: 'VllmWorker-3',
    })
    expect(eventIn('log-nccl-6042.txt', 'worker-died').data).toMatchObject({
      worker: 'VllmWorkerProcess',
      workerPid: 1159,
      exitCode: -6,
    })
  })

  it('reports the shm broadcast stall as a warning with its period', () => {
    expect(eventIn('log-workerdied-openpipe-art-201.txt', 'shm-broadcast-stall')).toMatchObject({
      severity: 'warning',
      data: { seconds: 60, level: 'DEBUG' },
    })
  })

  it('reads an Xid 119 from the kernel log as critical', () => {
    expect(eventIn('log-xid-40652.txt', 'xid')).toMatchObject({
      severity: 'critical',
      data: { xid: 119, pci: '0000:0b:00', pid: 11431, processName: 'gpu-feature-dis' },
    })
  })

  it('parses the numbers of the V1 stats line', () => {
    expect(eventIn('log-stats-v1-43295.txt', 'stats')).toMatchObject({
      severity: 'info',
      data: {
        format: 'v1',
        engine: '0',
        promptThroughput: 0,
        generationThroughput: 1055.3,
        running: 18,
        waiting: 43,
        kvCacheUsagePercent: 95.9,
        prefixCacheHitRatePercent: 0,
        preemptions: null,
      },
    })
  })

  it('parses the numbers of the V0 stats line, Pending as waiting', () => {
    expect(eventIn('log-stats-v0-11871.txt', 'stats').data).toMatchObject({
      format: 'v0',
      engine: null,
      promptThroughput: 0,
      generationThroughput: 18.5,
      running: 1,
      waiting: 0,
      swapped: 0,
      kvCacheUsagePercent: 20,
      cpuKvCacheUsagePercent: 0,
      preemptions: null,
    })
  })

  it('walks the GLM-V start-up from INITIALIZING to READY', () => {
    expect(lifecycleOf(logLines('log-startup-glmv-204.txt'))).toEqual(['INITIALIZING', 'READY'])
  })

  it('walks the 38820 start-up from LOADING_MODEL to READY', () => {
    expect(lifecycleOf(logLines('log-startup-38820.txt'))).toEqual(['LOADING_MODEL', 'READY'])
  })

  it('sees the uvicorn shutdown after an engine death', () => {
    expect(lifecycleOf(logLines('log-enginedead-42362.txt'))).toEqual(['SHUTTING_DOWN'])
  })
})

describe('classifyLogLine on the formats of vllm.md', () => {
  const at = (proc: string, file: string, msg: string) =>
    `(${proc} pid=7) INFO 05-19 10:00:00 [${file}:1] ${msg}`

  it('walks a whole life: start-up, serving, shutdown', () => {
    const lines = [
      at('APIServer', 'api_server.py', 'vLLM server version 0.22.0, serving model m'),
      at('APIServer', 'utils.py', "non-default args: {'model': 'm'}"),
      at('EngineCore_DP0', 'core.py', 'Initializing a V1 LLM engine (v0.22.0) with config: model=m'),
      at('EngineCore_DP0', 'gpu_model_runner.py', 'Starting to load model m...'),
      at('EngineCore_DP0', 'gpu_model_runner.py', 'Model loading took 15.0 GiB memory and 10.000000 seconds'),
      at('EngineCore_DP0', 'core.py', 'init engine (profile, create kv cache, warmup model) took 25.99 s'),
      at('APIServer', 'api_server.py', 'Starting vLLM server on http://0.0.0.0:8000'),
      '(APIServer pid=7) INFO:     Started server process [7]',
      '(APIServer pid=7) INFO:     Application startup complete.',
      at('EngineCore_DP0', 'core.py', 'Shutdown initiated (timeout=30)'),
      at('APIServer', 'launcher.py', 'Shutting down FastAPI HTTP server.'),
    ]
    expect(lifecycleOf(lines)).toEqual(['INITIALIZING', 'LOADING_MODEL', 'READY', 'SERVING', 'SHUTTING_DOWN'])
  })

  it('does not take a quoted lifecycle phrase in another message for a step', () => {
    expect(
      classifyLogLine(at('APIServer', 'x.py', 'user prompt: "Starting to load model" please')),
    ).toBeNull()
    expect(classifyLogLine(at('APIServer', 'x.py', 'Shutting down executor'))).toBeNull()
  })

  it('classifies each failure signature of §4', () => {
    const cases: Array<[string, string, string]> = [
      [
        'Failed to load model - not enough GPU memory. Try lowering --gpu-memory-utilization',
        'load-oom',
        'critical',
      ],
      [
        'ValueError: No available memory for the cache blocks. Try increasing gpu_memory_utilization',
        'kv-too-small',
        'critical',
      ],
      [
        "ValueError: The model's max seq len (131072) is larger than the maximum number of tokens that can be stored in KV cache (5000).",
        'kv-too-small',
        'critical',
      ],
      ['RuntimeError: CUDA error: uncorrectable ECC error encountered', 'uncorrectable-ecc', 'critical'],
      ['RuntimeError: CUDA error: unspecified launch failure', 'launch-failure', 'critical'],
      ['TimeoutError: RPC call to execute_model timed out.', 'rpc-timeout', 'critical'],
      ['AsyncLLMEngine has failed, terminating server process', 'engine-dead', 'critical'],
      ['MQLLMEngine is already dead, terminating server process', 'engine-dead', 'critical'],
      ['RuntimeError: Engine core initialization failed. See root cause above.', 'engine-dead', 'critical'],
      ['No available shared memory broadcast block found in 60 seconds.', 'shm-broadcast-stall', 'warning'],
    ]
    for (const [msg, type, severity] of cases) {
      const e = classifyLogLine(at('EngineCore_DP0', 'core.py', msg))?.event
      expect(e, msg).toMatchObject({ type, severity })
    }
    expect(
      classifyLogLine(at('EngineCore_DP0', 'core.py', 'TimeoutError: RPC call to execute_model timed out.'))
        ?.event?.data,
    ).toMatchObject({
      method: 'execute_model',
    })
  })

  it('converts GiB requests to bytes', () => {
    const e = classifyLogLine(
      'torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.74 GiB. GPU 1 has a total capacity of 23.57 GiB of which 605.88 MiB is free.',
    )?.event
    expect(e?.data).toMatchObject({ requestedBytes: Math.round(1.74 * 2 ** 30), cudaDevice: 1 })
  })

  it('reads the optional stats fields and the DP aggregate form', () => {
    const line = at(
      'APIServer',
      'loggers.py',
      'Engine 001: Avg prompt throughput: 10.5 tokens/s, Avg generation throughput: 239.2 tokens/s, Running: 8 reqs, Waiting: 2 reqs, Deferred: 1 reqs, Preemptions: 3, GPU KV cache usage: 91.2%, Prefix cache hit rate: 12.5%',
    )
    expect(classifyLogLine(line)?.event?.data).toMatchObject({
      engine: '1',
      running: 8,
      waiting: 2,
      deferred: 1,
      preemptions: 3,
      kvCacheUsagePercent: 91.2,
      prefixCacheHitRatePercent: 12.5,
    })
    const agg = at(
      'APIServer',
      'loggers.py',
      '2 Engines Aggregated: Avg prompt throughput: 1.0 tokens/s, Avg generation throughput: 2.0 tokens/s, Running: 3 reqs, Waiting: 0 reqs, GPU KV cache usage: 5.0%, Prefix cache hit rate: 0.0%',
    )
    expect(classifyLogLine(agg)?.event?.data).toMatchObject({
      format: 'v1',
      engine: null,
      engines: 2,
      running: 3,
    })
  })

  it('classifies most lines as nothing, quickly', () => {
    const lines = fixtureNames('log-').flatMap(logLines)
    const noise = [
      at('APIServer', 'async_llm.py', 'Added request chatcmpl-c78d39a6d1d8469f90f3bda9bd41ca6a.'),
      '(APIServer pid=1) INFO:     10.0.0.1:4242 - "POST /v1/chat/completions HTTP/1.1" 200 OK',
    ]
    for (const n of noise) expect(classifyLogLine(n)).toBeNull()
    const all = [...lines, ...Array.from({ length: 20 }, () => noise).flat()]
    for (let i = 0; i < 20; i++) for (const l of all) classifyLogLine(l)
    const rounds = 50
    const t0 = performance.now()
    for (let i = 0; i < rounds; i++) for (const l of all) classifyLogLine(l)
    const us = ((performance.now() - t0) * 1000) / (rounds * all.length)
    console.info(`classifyLogLine: ${us.toFixed(2)} µs per line over ${all.length} lines`)
    expect(us).toBeLessThan(50)
  })
})

describe('parseLogLine on unformatted lines', () => {
  it('keeps the indentation of a traceback line after its process prefix', () => {
    const line = logLines('log-oom-27508.txt').find((l) => l.includes('return self._call_impl'))!
    expect(parseLogLine(line)).toMatchObject({
      proc: 'EngineCore_DP0',
      pid: 8884,
      level: null,
      msg: '    return self._call_impl(*args, **kwargs)',
    })
    expect(parseLogLine('  File "x.py", line 1, in f').msg).toBe('  File "x.py", line 1, in f')
  })
})
