import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/errors.js'
import {
  applyFixes,
  type PrestartupOptions,
  type ProgressEvent,
  prestartupCheck,
} from '../../src/prestartup/index.js'
import { fakeNvmlPath, useScenario } from '../helpers/fake-nvml.js'
import { fakeBin, freePort, QWEN_05B_CONFIG, tempDir, writeHfModel } from './helpers.js'

describe('prestartupCheck options', () => {
  it.each<[PrestartupOptions, string]>([
    [{ tensorParallelSize: 0 }, 'options.tensorParallelSize must be an integer between 1 and 1024 (got 0)'],
    [{ gpuMemoryUtilization: 1.5 }, 'options.gpuMemoryUtilization must be a number in (0, 1] (got 1.5)'],
    [{ port: 70000 }, 'options.port must be an integer between 0 and 65535 (got 70000)'],
    [{ model: '' }, 'options.model must be a non-empty string'],
    [
      { only: ['gpus', 'nope' as 'gpus'] },
      'options.only must be an array of check ids: gpus, cuda-visible-devices',
    ],
    [{ onProgress: 'x' as never }, 'options.onProgress must be a function'],
    [{ tp: 2 } as PrestartupOptions, 'unknown option options.tp; known: model, tensorParallelSize'],
  ])('rejects %o', async (options, message) => {
    const err = await prestartupCheck(options).catch((e) => e)
    expect(err).toBeInstanceOf(InvalidOptionError)
    expect(err.message.startsWith(message)).toBe(true)
  })
})

describe('prestartupCheck', () => {
  it('runs only the checks asked for, reporting progress for each', async () => {
    const events: ProgressEvent[] = []
    const port = await freePort()
    const r = await prestartupCheck({
      only: ['port', 'ulimit'],
      port,
      host: '127.0.0.1',
      onProgress: (e) => events.push(e),
    })
    expect(events.map((e) => `${e.type} ${e.step}/${e.steps} ${e.title}`)).toEqual([
      `start 1/2 port ${port}`,
      `done 1/2 port ${port}`,
      'start 2/2 open files (ulimit -n)',
      'done 2/2 open files (ulimit -n)',
    ])
    expect(r.checks.map((c) => c.id)).toEqual(['port', 'ulimit'])
    expect(r.gpus).toEqual([])
    expect(r.gpuError).toBeNull()
  })

  it('fails on a host without NVML, skipping what needs a GPU', async () => {
    const r = await prestartupCheck({
      libraryPath: '/nonexistent/libnvidia-ml.so.1',
      only: ['gpus', 'cuda-visible-devices', 'memory-plan', 'gpu-memory', 'leftover-processes'],
      model: 'meta-llama/Llama-3.1-8B-Instruct',
      env: {},
    })
    expect(r.ok).toBe(false)
    expect(r.gpuError?.code).toBe('VLLM_MONITOR_NVML_NOT_FOUND')
    expect(r.checks.map((c) => c.status)).toEqual(['fail', 'skip', 'skip', 'skip', 'skip'])
    expect(r.counts).toEqual({ pass: 0, warn: 0, fail: 1, skip: 4 })
  })

  it('passes against GPUs with enough memory, then writes the settings as its safe fix', async () => {
    useScenario('two-h100-free')
    const home = await tempDir()
    await writeHfModel(home, 'Qwen/Qwen2.5-0.5B-Instruct', QWEN_05B_CONFIG)
    const bin = await fakeBin({ vllm: 'echo 0.11.0' })
    const envFile = join(home, 'vllm.env')
    await writeFile(envFile, 'HF_TOKEN=keep-me\nVLLM_TENSOR_PARALLEL_SIZE=8\n')
    const r = await prestartupCheck({
      model: 'Qwen/Qwen2.5-0.5B-Instruct',
      libraryPath: fakeNvmlPath,
      port: await freePort(),
      envFile,
      env: { HF_HOME: home, PATH: bin },
    })
    expect(r.checks.filter((c) => c.status === 'fail')).toEqual([])
    expect(r.ok).toBe(true)
    expect(r.model?.source).toBe('hf-cache')
    expect(r.plan?.recommended).toMatchObject({ tensorParallelSize: 1, gpuMemoryUtilization: 0.9 })
    expect(r.gpus).toHaveLength(2)

    const fixes = await applyFixes(r)
    expect(fixes).toEqual([expect.objectContaining({ id: 'memory-plan', safe: true, status: 'applied' })])
    const text = await readFile(envFile, 'utf8')
    expect(text).toContain('HF_TOKEN=keep-me\n')
    expect(text).toContain(
      'VLLM_GPU_MEMORY_UTILIZATION=0.9\nVLLM_TENSOR_PARALLEL_SIZE=1\nVLLM_MAX_MODEL_LEN=32768\n',
    )
    expect(text).not.toContain('VLLM_TENSOR_PARALLEL_SIZE=8')
    expect(text).toContain(
      '# vllm-monitor: vllm serve Qwen/Qwen2.5-0.5B-Instruct --tensor-parallel-size 1 --gpu-memory-utilization 0.9 --max-model-len 32768',
    )
  })

  it('applies a destructive fix only with yes, and reports a fix that fails', async () => {
    const calls: string[] = []
    const report = {
      ok: false,
      counts: { pass: 0, warn: 2, fail: 0, skip: 0 },
      gpus: [],
      gpuError: null,
      model: null,
      plan: null,
      checks: [
        {
          id: 'a',
          title: 'a',
          status: 'warn' as const,
          detail: '',
          autoFix: { safe: false, description: 'end it', apply: async () => void calls.push('a') },
        },
        {
          id: 'b',
          title: 'b',
          status: 'warn' as const,
          detail: '',
          autoFix: {
            safe: true,
            description: 'write',
            apply: async () => {
              throw new Error('read-only file system')
            },
          },
        },
      ],
    }
    expect((await applyFixes(report)).map((f) => f.status)).toEqual(['needs-yes', 'failed'])
    expect(calls).toEqual([])
    const withYes = await applyFixes(report, { yes: true })
    expect(withYes.map((f) => f.status)).toEqual(['applied', 'failed'])
    expect(withYes[1]!.error).toBe('read-only file system')
    expect(calls).toEqual(['a'])
  })
})
