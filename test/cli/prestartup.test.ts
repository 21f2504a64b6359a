import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, beforeAll, describe, expect, it } from 'vitest'
import { isRunning } from '../../src/prestartup/processes.js'
import { fakeNvmlPath, useScenario } from '../helpers/fake-nvml.js'
import { fakeBin, freePort, QWEN_05B_CONFIG, tempDir, writeHfModel } from '../prestartup/helpers.js'

// The built CLI (`npx tsc -p tsconfig.build.json` builds dist/), run as a user would.
const cli = join(import.meta.dirname, '../../dist/cli/index.js')
const noNvml = '/nonexistent/libnvidia-ml.so.1'

interface Run {
  code: number
  stdout: string
  stderr: string
}
function run(args: string[], env: NodeJS.ProcessEnv = {}, cwd?: string): Promise<Run> {
  const { CUDA_VISIBLE_DEVICES: _drop, ...base } = process.env
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [cli, 'prestartup-check', ...args],
      { env: { ...base, ...env }, cwd, timeout: 30_000 },
      (err, stdout, stderr) => {
        const code = err ? ((err as { code?: number }).code ?? 1) : 0
        resolve({ code: typeof code === 'number' ? code : 1, stdout, stderr })
      },
    )
  })
}

let home: string
let bin: string
const model = 'Qwen/Qwen2.5-0.5B-Instruct'
beforeAll(async () => {
  home = await tempDir()
  await writeHfModel(home, model, QWEN_05B_CONFIG)
  bin = await fakeBin({ vllm: 'echo 0.11.0' })
})
/** GPUs through the fake NVML, the model in a temp HF cache, vllm faked on PATH. */
const fakeHost = (scenarioPath: string) => ({
  FAKE_NVML_SCENARIO: scenarioPath,
  HF_HOME: home,
  PATH: `${bin}:${process.env.PATH}`,
})

const children: ChildProcess[] = []
afterEach(() => {
  for (const c of children.splice(0)) c.kill('SIGKILL')
})

describe('vllm-monitor prestartup-check', () => {
  it('prints the table, says there is no GPU, and exits 1 on a host without NVML', async () => {
    const r = await run(['--library-path', noNvml, '--port', String(await freePort())])
    expect(r.code).toBe(1)
    expect(r.stdout).toMatch(/^STATUS {2}CHECK +DETAIL +FIX\n/)
    expect(r.stdout).toMatch(/\nFAIL {4}GPUs and driver +no NVIDIA GPU or driver found/)
    expect(r.stdout).toContain('vLLM needs one')
    expect(r.stdout).toMatch(/\nSKIP {4}free GPU memory +no GPU information/)
    expect(r.stdout).toContain('NOT READY: no NVIDIA GPU or driver on this host, so vLLM cannot start here')
    expect(r.stderr).toContain('[1/11] GPUs and driver… fail\n')
    expect(r.stderr).toMatch(/\[11\/11\] vllm installed… (pass|fail)\n/)
  })

  it('gives the same verdict as JSON with --json', async () => {
    const r = await run(['--library-path', noNvml, '--json'])
    expect(r.code).toBe(1)
    const out = JSON.parse(r.stdout)
    expect(out.ok).toBe(false)
    expect(out.gpuError.code).toBe('VLLM_MONITOR_NVML_NOT_FOUND')
    expect(out.checks[0]).toMatchObject({ id: 'gpus', status: 'fail' })
    expect(out.fixes).toBeNull()
  })

  it('passes and exits 0 against GPUs with enough free memory', async () => {
    const port = await freePort()
    const r = await run(
      ['--library-path', fakeNvmlPath, '--model', model, '--port', String(port)],
      fakeHost(useScenario('two-h100-free')),
    )
    expect(r.stderr).not.toContain('fail\n')
    expect(r.code).toBe(0)
    expect(r.stdout).not.toMatch(/^FAIL/m)
    expect(r.stdout).toMatch(/^PASS {4}GPUs and driver +2 × NVIDIA H100 80GB HBM3/m)
    expect(r.stdout).toMatch(/^PASS {4}model fits \(TP, utilization\)/m)
    expect(r.stdout).toMatch(/^PASS {4}GPU 0 free memory/m)
    expect(r.stdout).toMatch(/^PASS {4}leftover GPU processes +no compute process/m)
    expect(r.stdout).toMatch(new RegExp(`^PASS {4}port ${port}`, 'm'))
    expect(r.stdout).toMatch(/^PASS {4}vllm installed +vllm 0\.11\.0/m)
    expect(r.stdout).toContain('READY: nothing stops vLLM from starting')
    expect(r.stdout).toContain('--auto-fix applies 1 safe fix')
  })

  it('writes the computed settings to the env file with --auto-fix and says so', async () => {
    const dir = await tempDir()
    const r = await run(
      ['--library-path', fakeNvmlPath, '--model', model, '--port', String(await freePort()), '--auto-fix'],
      fakeHost(useScenario('two-h100-free')),
      dir,
    )
    expect(r.code).toBe(0)
    const envFile = join(dir, 'vllm-monitor.env')
    expect(r.stdout).toContain(
      `auto-fix: done: write VLLM_GPU_MEMORY_UTILIZATION=0.9, VLLM_TENSOR_PARALLEL_SIZE=1, VLLM_MAX_MODEL_LEN=32768 to ${envFile}`,
    )
    const text = await readFile(envFile, 'utf8')
    expect(text).toMatch(/^VLLM_GPU_MEMORY_UTILIZATION=0\.9$/m)
    expect(text).toMatch(/^VLLM_TENSOR_PARALLEL_SIZE=1$/m)
    expect(text).toContain(`vllm serve ${model} --tensor-parallel-size 1 --gpu-memory-utilization 0.9`)
  })

  it('writes a new file given with --env-out, and an existing one given with --env-file', async () => {
    const dir = await tempDir()
    const args = [
      '--library-path',
      fakeNvmlPath,
      '--model',
      model,
      '--port',
      String(await freePort()),
      '--auto-fix',
    ]
    const out = join(dir, 'new', 'serve.env')
    const r = await run([...args, '--env-out', out], fakeHost(useScenario('two-h100-free')))
    expect(r.code).toBe(0)
    expect(await readFile(out, 'utf8')).toMatch(/^VLLM_TENSOR_PARALLEL_SIZE=1$/m)
    // node exits 9 on `--env-file` naming a missing file before the CLI runs (nodejs/node#54232).
    const existing = join(dir, 'existing.env')
    await writeFile(existing, 'HF_TOKEN=x\n')
    const e = await run([...args, '--env-file', existing], fakeHost(useScenario('two-h100-free')))
    expect(e.code).toBe(0)
    expect(await readFile(existing, 'utf8')).toMatch(
      /^HF_TOKEN=x\n[\s\S]*^VLLM_GPU_MEMORY_UTILIZATION=0\.9$/m,
    )
  })

  it('reports a leftover process and ends it only with --auto-fix --yes', async () => {
    const child = spawn('sleep', ['60'], { stdio: 'ignore' })
    children.push(child)
    const pid = child.pid!
    const scenario = join(await tempDir(), 'leftover.scenario')
    const text = await readFile(useScenario('h100-leftover-process'), 'utf8')
    await writeFile(scenario, text.replace('process 4000000', `process ${pid}`))
    const args = ['--library-path', fakeNvmlPath, '--port', String(await freePort())]
    const dir = await tempDir()

    const plain = await run(args, fakeHost(scenario), dir)
    expect(plain.code).toBe(1)
    expect(plain.stdout).toMatch(
      new RegExp(`^WARN {4}leftover GPU processes +GPU 0: pid ${pid} holds 18\\.6 GiB \\(sleep 60\\)`, 'm'),
    )
    expect(plain.stdout).toMatch(/^FAIL {4}GPU 0 free memory/m)

    const noYes = await run([...args, '--auto-fix'], fakeHost(scenario), dir)
    expect(noYes.stdout).toContain(`auto-fix: NOT done (destructive, add --yes): end pid ${pid} (sleep 60)`)
    expect(await isRunning(pid)).toBe(true)

    const exited = new Promise((done) => child.once('exit', done))
    const yes = await run([...args, '--auto-fix', '--yes'], fakeHost(scenario), dir)
    expect(yes.stdout).toContain(`auto-fix: done: end pid ${pid} (sleep 60)`)
    expect(yes.stdout).toContain('auto-fix: done: write VLLM_GPU_MEMORY_UTILIZATION=0.75')
    await exited
    expect(await isRunning(pid)).toBe(false)
  })

  it.each([
    [['--bogus'], "unknown option '--bogus'"],
    [['--tensor-parallel-size', '0'], '--tensor-parallel-size must be an integer from 1 to 1024'],
    [['--gpu-memory-utilization', 'lots'], '--gpu-memory-utilization must be a number in (0, 1]'],
    [['--port', '99999'], '--port must be an integer from 0 to 65535'],
    [['--yes'], '--yes only applies together with --auto-fix'],
    [['extra'], 'too many arguments'],
    [
      ['--env-out', 'a', '--env-file', '/etc/hostname'],
      "option '--env-out <path>' cannot be used with option '--env-file",
    ],
  ])('exits 2 for a usage error: %j', async (args, message) => {
    const r = await run(['--library-path', noNvml, ...args])
    expect(r.code).toBe(2)
    expect(r.stderr).toContain(message)
    expect(r.stdout).toBe('')
  })

  it('exits 0 for --help', async () => {
    const r = await run(['--help'])
    expect(r.code).toBe(0)
    expect(r.stdout).toContain('--tensor-parallel-size <n>')
  })
})
