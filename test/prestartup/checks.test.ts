import { type ChildProcess, spawn } from 'node:child_process'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import type { GpuDeviceInfo } from '../../src/gpu/types.js'
import {
  checkGpuMemory,
  checkGpus,
  checkMemoryPlan,
  checkModel,
  checkVisibleDevices,
} from '../../src/prestartup/checks.js'
import { createContext } from '../../src/prestartup/context.js'
import { type PrestartupOptions, resolvePrestartupOptions } from '../../src/prestartup/index.js'
import { checkLeftoverProcesses, isRunning } from '../../src/prestartup/processes.js'
import { parseVisibleDevices } from '../../src/prestartup/visible-devices.js'
import { fakeNvmlPath, useScenario } from '../helpers/fake-nvml.js'
import { tempDir } from './helpers.js'

const ctx = (o: PrestartupOptions = {}) =>
  createContext(
    resolvePrestartupOptions({ libraryPath: fakeNvmlPath, env: {}, hfCacheDir: '/nonexistent/hub', ...o }),
  )

const children: ChildProcess[] = []
afterEach(() => {
  for (const c of children.splice(0)) c.kill('SIGKILL')
})

/** A `sleep` this test owns, and a copy of the leftover scenario that lists its pid on GPU 0. */
async function leftover(): Promise<{ child: ChildProcess; pid: number }> {
  const child = spawn('sleep', ['60'], { stdio: 'ignore' })
  children.push(child)
  const pid = child.pid!
  const src = await readFile(useScenario('h100-leftover-process'), 'utf8')
  const path = join(await tempDir(), 'leftover.scenario')
  await writeFile(path, src.replace('process 4000000', `process ${pid}`))
  process.env.FAKE_NVML_SCENARIO = path
  return { child, pid }
}

describe('GPUs and driver', () => {
  it('fails clearly where there is no NVIDIA GPU or driver', async () => {
    const r = await checkGpus(ctx({ libraryPath: '/nonexistent/libnvidia-ml.so.1' }))
    expect(r).toMatchObject({ id: 'gpus', status: 'fail' })
    expect(r.detail).toBe(
      'no NVIDIA GPU or driver found (/nonexistent/libnvidia-ml.so.1 could not be loaded): vLLM needs one',
    )
    expect(r.fix).toContain('install the NVIDIA driver')
  })

  it('fails naming the kernel driver when the library loads but the driver does not', async () => {
    useScenario('driver-not-loaded')
    const r = await checkGpus(ctx())
    expect(r.status).toBe('fail')
    expect(r.detail).toContain('kernel driver is not loaded')
  })

  it('passes with the GPUs, driver and CUDA version through the native sampler', async () => {
    useScenario('two-h100-free')
    const r = await checkGpus(ctx())
    expect(r).toMatchObject({
      status: 'pass',
      detail: '2 × NVIDIA H100 80GB HBM3 (79.6 GiB); driver 580.159.04, CUDA 13.0',
    })
  })

  it('fails a driver too old for the CUDA 12 builds of vLLM', async () => {
    useScenario('old-driver') // R470, CUDA 11.4, a V100
    const r = await checkGpus(ctx())
    expect(r.status).toBe('fail')
    expect(r.detail).toBe(
      "1 × Tesla V100-SXM2-32GB (32.0 GiB); driver 470.256.02, CUDA 11.4; the driver supports CUDA 11.4; vLLM's wheels need CUDA 12",
    )
    expect(r.fix).toContain('upgrade the NVIDIA driver')
  })
})

describe('CUDA_VISIBLE_DEVICES', () => {
  const dev = (index: number, name = 'NVIDIA H100 80GB HBM3', mig = false): GpuDeviceInfo => ({
    index,
    uuid: `GPU-${index}aaa-bbbb`,
    name,
    memoryTotalBytes: 85520809984,
    driverVersion: '580.159.04',
    cudaDriverVersion: '13.0',
    pciBusId: null,
    computeCapability: '9.0',
    migEnabled: mig,
    eccEnabled: true,
    powerLimitMilliwatts: 700000,
  })
  const two = [dev(0), dev(1)]

  it('maps indices and UUID prefixes to GPUs, in CUDA order', () => {
    expect(parseVisibleDevices(undefined, two)).toMatchObject({ set: false, indices: [0, 1], errors: [] })
    expect(parseVisibleDevices('1', two).indices).toEqual([1])
    expect(parseVisibleDevices('GPU-1aaa,0', two).indices).toEqual([1, 0])
  })

  it('reports entries CUDA cannot use, and that it stops there', () => {
    expect(parseVisibleDevices('0,5,1', two)).toMatchObject({
      indices: [0],
      errors: ['GPU 5 does not exist (2 GPUs: 0-1); CUDA ignores it and the 1 entry after it'],
    })
    expect(parseVisibleDevices('', two).errors).toEqual(['it is set but empty: CUDA shows no GPU'])
    expect(parseVisibleDevices('0,0', two).errors).toEqual(['GPU 0 is listed twice'])
    expect(parseVisibleDevices('GPU-ffff', two).errors).toEqual(['no GPU has UUID GPU-ffff'])
    expect(parseVisibleDevices('gpu0', two).errors[0]).toContain('neither an index nor')
    expect(parseVisibleDevices('MIG-abc', two).errors[0]).toContain('no GPU has MIG enabled')
    expect(parseVisibleDevices('MIG-abc', [dev(0, 'A100', true)])).toMatchObject({ mig: 1, errors: [] })
  })

  it('warns that indices follow CUDA order on mixed GPUs unless CUDA_DEVICE_ORDER=PCI_BUS_ID', () => {
    const mixed = [dev(0), dev(1, 'NVIDIA A10G')]
    expect(parseVisibleDevices('1', mixed).warnings[0]).toContain('CUDA_DEVICE_ORDER=PCI_BUS_ID')
    expect(parseVisibleDevices('1', mixed, 'PCI_BUS_ID').warnings).toEqual([])
  })

  it('fails when fewer GPUs are visible than --tensor-parallel-size needs', async () => {
    useScenario('two-h100-free')
    const r = await checkVisibleDevices(ctx({ env: { CUDA_VISIBLE_DEVICES: '1' }, tensorParallelSize: 2 }))
    expect(r.status).toBe('fail')
    expect(r.detail).toBe('"1": vLLM sees 1 GPU (NVML 1); --tensor-parallel-size 2 needs 2')
    expect(r.fix).toContain('CUDA_VISIBLE_DEVICES=0,1')
    useScenario('two-h100-free')
    expect((await checkVisibleDevices(ctx({ tensorParallelSize: 2 }))).status).toBe('pass')
  })

  it('skips without GPU information', async () => {
    const r = await checkVisibleDevices(ctx({ libraryPath: '/nonexistent/libnvidia-ml.so.1' }))
    expect(r).toMatchObject({ status: 'skip', detail: 'no GPU information (unset)' })
  })
})

describe('model and memory', () => {
  it('skips without --model, warns with the fix for an unknown one', async () => {
    expect((await checkModel(ctx())).status).toBe('skip')
    const r = await checkModel(ctx({ model: 'someone/unknown-7b' }))
    expect(r.status).toBe('warn')
    expect(r.fix).toContain('local directory')
    expect(r.fix).toContain('huggingface-cli download someone/unknown-7b config.json')
  })

  it('passes Llama-3.1-8B on an idle H100 and offers to write the settings', async () => {
    useScenario('two-h100-free')
    const c = ctx({ model: 'meta-llama/Llama-3.1-8B-Instruct', envFile: join(await tempDir(), 'v.env') })
    const r = await checkMemoryPlan(c)
    expect(r.status).toBe('pass')
    expect(r.detail).toMatch(/^33\.2 GiB per GPU at TP 1 \(weights 15\.0 GiB/)
    expect(r.autoFix?.safe).toBe(true)
    expect(r.autoFix?.description).toContain('VLLM_GPU_MEMORY_UTILIZATION=0.9, VLLM_TENSOR_PARALLEL_SIZE=1')
    const rows = await checkGpuMemory(c)
    expect(rows.map((x) => [x.id, x.status])).toEqual([['gpu-memory:0', 'pass']])
  })

  it('fails a 70B model at TP 1 and recommends TP 2', async () => {
    useScenario('two-h100-free')
    const r = await checkMemoryPlan(ctx({ model: 'meta-llama/Meta-Llama-3-70B-Instruct' }))
    expect(r.status).toBe('fail')
    expect(r.detail).toContain('smallest TP that fits: 2')
    expect(r.fix).toMatch(/^run with --tensor-parallel-size 2 --gpu-memory-utilization 0\.9 /)
  })

  it('fails a GPU whose free memory is below total × utilization and offers a lower one', async () => {
    await leftover()
    const rows = await checkGpuMemory(ctx({ tensorParallelSize: 2 }))
    expect(rows.map((x) => x.status)).toEqual(['fail', 'pass'])
    expect(rows[0]!.detail).toContain('is less than desired GPU memory utilization')
    expect(rows[0]!.fix).toMatch(
      /^end pid \d+ holding memory on it \(leftover processes\), or lower --gpu-memory-utilization to 0\.75$/,
    )
    expect(rows[0]!.autoFix?.safe).toBe(true)
  })
})

describe('leftover processes', () => {
  it('lists a process holding GPU memory with its command, and ends it only when applied', async () => {
    const { child, pid } = await leftover()
    const r = await checkLeftoverProcesses(ctx())
    expect(r.status).toBe('warn')
    expect(r.detail).toBe(`GPU 0: pid ${pid} holds 18.6 GiB (sleep 60)`)
    expect(r.autoFix).toMatchObject({ safe: false })
    expect(await isRunning(pid)).toBe(true)
    const exited = new Promise((done) => child.once('exit', done))
    await r.autoFix!.apply()
    await exited
    expect(await isRunning(pid)).toBe(false)
  })

  it('cannot end a process it cannot see (another PID namespace)', async () => {
    useScenario('h100-leftover-process') // pid 4000000 does not exist here
    const r = await checkLeftoverProcesses(ctx())
    expect(r.status).toBe('warn')
    expect(r.detail).toContain('not visible here')
    expect(r.fix).toContain('where it runs')
    expect(r.autoFix).toBeUndefined()
  })

  it('passes when no process holds memory, skips when the driver cannot list them', async () => {
    useScenario('two-h100-free')
    expect((await checkLeftoverProcesses(ctx())).status).toBe('pass')
    useScenario('multi-gpu') // the A10G does not list processes, the others hold memory
    const r = await checkLeftoverProcesses(ctx({ env: { CUDA_VISIBLE_DEVICES: '2' } }))
    expect(r.status).toBe('pass')
    expect(r.detail).toContain('none on the GPUs vLLM will use')
  })
})
