import { execFile } from 'node:child_process'
import { once } from 'node:events'
import { mkdir, mkdtemp, readdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join, relative } from 'node:path'
import { promisify } from 'node:util'
import ts from 'typescript'
import { afterEach, describe, expect, it } from 'vitest'
import { InvalidArgumentError, NvidiaSmiError } from '../../src/errors.js'
import { NvidiaSmiPoller, queryNvidiaSmi } from '../../src/gpu/nvidia-smi.js'
import type { GpuSnapshot } from '../../src/gpu/types.js'

const MiB = 1_048_576
const fixtures = join(import.meta.dirname, '../fixtures/nvidia-smi')
const fake = (name: string) => join(fixtures, `nvidia-smi-${name}`)

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

async function waitFor(cond: () => boolean, timeoutMs = 3_000): Promise<void> {
  const end = Date.now() + timeoutMs
  while (!cond()) {
    if (Date.now() > end) throw new Error(`condition not met within ${timeoutMs} ms`)
    await sleep(10)
  }
}

function thrown(f: () => unknown): Error {
  try {
    f()
  } catch (err) {
    return err as Error
  }
  throw new Error('did not throw')
}

async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p
  } catch (err) {
    return err as Error
  }
  throw new Error('did not reject')
}

// Cleanup registered by each test: pollers to stop, environment to restore, folders to remove.
const cleanups: Array<() => unknown> = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

function track(p: NvidiaSmiPoller): NvidiaSmiPoller {
  cleanups.push(() => p.stop())
  return p
}

function setEnv(name: string, value: string) {
  const old = process.env[name]
  process.env[name] = value
  cleanups.push(() => {
    if (old === undefined) delete process.env[name]
    else process.env[name] = old
  })
}

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'vllm-monitor-smi-'))
  cleanups.push(() => rm(dir, { recursive: true, force: true }))
  return dir
}

/** A fresh path to `target`: the field cache is keyed by path, so each one starts with no memory. */
async function linkTo(target: string): Promise<{ path: string; dir: string }> {
  const dir = await tempDir()
  const path = join(dir, 'nvidia-smi')
  await symlink(target, path)
  return { path, dir }
}

/** Points the `nvidia-smi` link in `dir` at another fixture, atomically. */
async function relink(dir: string, target: string) {
  await symlink(target, join(dir, 'next'))
  await rename(join(dir, 'next'), join(dir, 'nvidia-smi'))
}

async function logLines(file: string): Promise<string[]> {
  return (await readFile(file, 'utf8')).split('\n').filter((l) => l !== '')
}

const src = join(import.meta.dirname, '../../src')
const kProbe = `
import { NvidiaSmiPoller } from './src/gpu/nvidia-smi.js'
const [path, intervalMs, stopAfterMs] = process.argv.slice(2)
const p = new NvidiaSmiPoller({ path, intervalMs: Number(intervalMs) })
p.on('snapshot', () => console.log('snapshot'))
p.on('pollError', (e) => console.log('pollError', e.message))
p.start()
if (stopAfterMs !== undefined) setTimeout(() => { p.stop(); console.log('stopped') }, Number(stopAfterMs))
`

/** Compiles src/ to plain JS in a temporary folder, with a script that runs one poller. */
async function buildProbe(): Promise<string> {
  const out = await tempDir()
  const walk = async (dir: string): Promise<void> => {
    for (const e of await readdir(dir, { withFileTypes: true })) {
      const file = join(dir, e.name)
      if (e.isDirectory()) await walk(file)
      else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) {
        const js = ts.transpileModule(await readFile(file, 'utf8'), {
          compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
        }).outputText
        const target = join(out, 'src', relative(src, file)).replace(/\.ts$/, '.js')
        await mkdir(dirname(target), { recursive: true })
        await writeFile(target, js)
      }
    }
  }
  await walk(src)
  await writeFile(join(out, 'package.json'), '{ "type": "module" }')
  await writeFile(join(out, 'probe.js'), kProbe)
  return join(out, 'probe.js')
}

/** Runs a poller in a fresh Node process; resolves when that process exits on its own. */
async function runProbe(args: string[], timeoutMs: number): Promise<{ stdout: string; elapsedMs: number }> {
  const probe = await buildProbe()
  const started = Date.now()
  const { stdout } = await promisify(execFile)(process.execPath, [probe, ...args], {
    timeout: timeoutMs,
    encoding: 'utf8',
  })
  return { stdout, elapsedMs: Date.now() - started }
}

describe('queryNvidiaSmi', () => {
  it('reads every GPU nvidia-smi lists, converting MiB to bytes, W to mW, P-states and hex masks to numbers', async () => {
    const { devices, snapshots } = await queryNvidiaSmi({ path: fake('h200') })
    expect(devices).toEqual([
      {
        index: 0,
        uuid: 'GPU-5e5d0a3c-9d4b-7f21-8c1e-2b3a4c5d6e7f',
        name: 'NVIDIA H200',
        memoryTotalBytes: 143771 * MiB,
        driverVersion: '570.133.20',
        cudaDriverVersion: null,
        pciBusId: '00000000:18:00.0',
        computeCapability: '9.0',
        migEnabled: false,
        eccEnabled: true,
        powerLimitMilliwatts: 700_000,
      },
      {
        index: 1,
        uuid: 'GPU-0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9',
        name: 'NVIDIA A10G',
        memoryTotalBytes: 23028 * MiB,
        driverVersion: '570.133.20',
        cudaDriverVersion: null,
        pciBusId: '00000000:00:1E.0',
        computeCapability: '8.6',
        migEnabled: null,
        eccEnabled: true,
        powerLimitMilliwatts: 300_000,
      },
    ])
    expect(snapshots).toHaveLength(2)
    expect(snapshots[0]).toMatchObject({
      index: 0,
      source: 'nvidia-smi',
      lost: false,
      memoryTotalBytes: 143771 * MiB,
      memoryUsedBytes: 130345 * MiB,
      memoryFreeBytes: 12852 * MiB,
      memoryReservedBytes: 574 * MiB,
      gpuUtilizationPercent: 97,
      memoryUtilizationPercent: 62,
      temperatureCelsius: 54,
      powerMilliwatts: 612_450,
      smClockMhz: 1980,
      memoryClockMhz: 3201,
      clockEventReasons: 0x4,
      performanceState: 0,
    } satisfies Partial<GpuSnapshot>)
  })

  it('turns [N/A], [Not Supported] and [Unknown Error] into null, and keeps zero as zero', async () => {
    const { snapshots } = await queryNvidiaSmi({ path: fake('h200') })
    expect(snapshots[1]).toMatchObject({
      index: 1,
      memoryUsedBytes: 0,
      memoryFreeBytes: 22563 * MiB,
      memoryReservedBytes: null,
      gpuUtilizationPercent: 0,
      memoryUtilizationPercent: null,
      temperatureCelsius: null,
      powerMilliwatts: null,
      smClockMhz: 210,
      memoryClockMhz: 405,
      clockEventReasons: 0x1,
      performanceState: 8,
    } satisfies Partial<GpuSnapshot>)
  })

  it('tolerates extra whitespace around values', async () => {
    const { devices } = await queryNvidiaSmi({ path: fake('h200') })
    expect(devices[1]?.uuid).toBe('GPU-0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9')
    expect(devices[1]?.memoryTotalBytes).toBe(23028 * MiB)
    expect(devices[1]?.powerLimitMilliwatts).toBe(300_000)
  })

  it('leaves null what nvidia-smi does not report (PCIe, ECC counters, rows, pages, energy, processes)', async () => {
    const { snapshots } = await queryNvidiaSmi({ path: fake('h200') })
    for (const s of snapshots) {
      expect(s).toMatchObject({
        lost: false,
        pcieTxBytesPerSec: null,
        pcieRxBytesPerSec: null,
        eccCorrectedVolatile: null,
        eccUncorrectedVolatile: null,
        remappedRowsCorrectable: null,
        remappedRowsUncorrectable: null,
        remappedRowsPending: null,
        remappedRowsFailure: null,
        retiredPagesSingleBit: null,
        retiredPagesDoubleBit: null,
        energyMillijoules: null,
        processes: null,
      } satisfies Partial<GpuSnapshot>)
    }
  })

  it('stamps snapshots with the process hrtime of the query', async () => {
    const before = Number(process.hrtime.bigint())
    const { snapshots } = await queryNvidiaSmi({ path: fake('h200') })
    const after = Number(process.hrtime.bigint())
    for (const s of snapshots) {
      expect(s.timestampNs).toBeGreaterThanOrEqual(before)
      expect(s.timestampNs).toBeLessThanOrEqual(after)
    }
  })

  it('drops a field an older nvidia-smi rejects and asks again without it', async () => {
    const { path, dir } = await linkTo(fake('old'))
    const log = join(dir, 'queries.log')
    setEnv('FAKE_NVIDIA_SMI_LOG', log)
    const { devices, snapshots } = await queryNvidiaSmi({ path })
    const queries = await logLines(log)
    expect(queries[0]).toContain('memory.reserved')
    expect(queries.at(-1)).not.toContain('memory.reserved')
    expect(devices).toHaveLength(1)
    expect(devices[0]).toMatchObject({ name: 'NVIDIA A100-SXM4-80GB', driverVersion: '525.147.05' })
    expect(snapshots[0]).toMatchObject({
      memoryReservedBytes: null,
      memoryUsedBytes: 40960 * MiB,
      powerMilliwatts: 250_500,
      performanceState: 0,
    })
  })

  it('asks for clocks_throttle_reasons.active where clocks_event_reasons.active is unknown', async () => {
    const { path, dir } = await linkTo(fake('old'))
    const log = join(dir, 'queries.log')
    setEnv('FAKE_NVIDIA_SMI_LOG', log)
    const { snapshots } = await queryNvidiaSmi({ path })
    expect(snapshots[0]?.clockEventReasons).toBe(0x20)
    expect((await logLines(log)).at(-1)).toContain('clocks_throttle_reasons.active')
  })

  it('remembers the reduced field list for later calls with the same path', async () => {
    const { path, dir } = await linkTo(fake('old'))
    const log = join(dir, 'queries.log')
    setEnv('FAKE_NVIDIA_SMI_LOG', log)
    await queryNvidiaSmi({ path })
    const first = await logLines(log)
    expect(first.length).toBeGreaterThan(1)
    const again = await queryNvidiaSmi({ path })
    const all = await logLines(log)
    expect(all).toHaveLength(first.length + 1)
    expect(all.at(-1)).toBe(first.at(-1))
    expect(again.snapshots[0]?.memoryUsedBytes).toBe(40960 * MiB)
  })

  it('says nvidia-smi was not found, naming the path, when the binary is missing', async () => {
    const err = await rejection(queryNvidiaSmi({ path: '/nonexistent/nvidia-smi' }))
    expect(err).toBeInstanceOf(NvidiaSmiError)
    expect(err.message).toMatch(/not found/)
    expect(err.message).toContain('/nonexistent/nvidia-smi')
    expect((err as NvidiaSmiError).code).toBe('VLLM_MONITOR_NVIDIA_SMI_FAILED')
    expect((err.cause as { code?: string }).code).toBe('ENOENT')
  })

  it('reports the exit code and the first line nvidia-smi printed when the driver is not running', async () => {
    const err = await rejection(queryNvidiaSmi({ path: fake('nodriver') }))
    expect(err).toBeInstanceOf(NvidiaSmiError)
    expect(err.message).toContain('exited with code 9')
    expect(err.message).toContain(
      "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver",
    )
    expect(err.cause).toBeInstanceOf(Error)
  })

  it('names the line when a row has the wrong number of columns', async () => {
    const err = await rejection(queryNvidiaSmi({ path: fake('garbage') }))
    expect(err).toBeInstanceOf(NvidiaSmiError)
    expect(err.message).toContain('1, GPU-0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9, NVIDIA A10G, 23028')
    expect(err.message).toMatch(/4 values where 21 were asked for/)
    expect(err.cause).toBeDefined()
  })

  it('kills nvidia-smi and names the timeout when it takes too long', async () => {
    const started = Date.now()
    const err = await rejection(queryNvidiaSmi({ path: fake('slow'), timeoutMs: 200 }))
    expect(Date.now() - started).toBeLessThan(1_000)
    expect(err).toBeInstanceOf(NvidiaSmiError)
    expect(err.message).toContain('did not finish within 200 ms')
    expect(err.cause).toBeInstanceOf(Error)
  })

  it('times out even when a child of nvidia-smi keeps its output open', async () => {
    setEnv('FAKE_NVIDIA_SMI_HOLD_PIPE', '1')
    setEnv('FAKE_NVIDIA_SMI_SLEEP', '3')
    const started = Date.now()
    const err = await rejection(queryNvidiaSmi({ path: fake('slow'), timeoutMs: 200 }))
    expect(Date.now() - started).toBeLessThan(1_000)
    expect(err).toBeInstanceOf(NvidiaSmiError)
    expect(err.message).toContain('did not finish within 200 ms')
  })

  it('rejects bad options with InvalidArgumentError', async () => {
    const badTimeout = await rejection(queryNvidiaSmi({ timeoutMs: 0 }))
    expect(badTimeout).toBeInstanceOf(InvalidArgumentError)
    expect(badTimeout.message).toBe('options.timeoutMs must be an integer >= 1')
    const badPath = await rejection(queryNvidiaSmi({ path: '' }))
    expect(badPath).toBeInstanceOf(InvalidArgumentError)
    expect(badPath.message).toBe('options.path must be a non-empty string')
  })
})

describe('NvidiaSmiPoller', () => {
  it('polls at once on start() and emits snapshot with every GPU', async () => {
    const p = track(new NvidiaSmiPoller({ path: fake('h200'), intervalMs: 100 }))
    expect(p.start()).toBe(p)
    const [snapshots] = (await once(p, 'snapshot')) as [GpuSnapshot[]]
    expect(snapshots.map((s) => s.index)).toEqual([0, 1])
    expect(snapshots[0]?.source).toBe('nvidia-smi')
    expect(p.snapshot()).toEqual(snapshots)
    expect(p.devices().map((d) => d.name)).toEqual(['NVIDIA H200', 'NVIDIA A10G'])
    expect(p.lastError).toBeNull()
  })

  it('keeps polling every intervalMs', async () => {
    const p = track(new NvidiaSmiPoller({ path: fake('h200'), intervalMs: 100 }))
    let count = 0
    p.on('snapshot', () => count++)
    p.start()
    await waitFor(() => count >= 3)
  })

  it('hands out copies that callers cannot change', async () => {
    const p = track(new NvidiaSmiPoller({ path: fake('h200'), intervalMs: 100 }).start())
    await once(p, 'snapshot')
    const s = p.snapshot()
    const d = p.devices()
    s[0]!.memoryUsedBytes = -1
    d[0]!.name = 'changed'
    expect(p.snapshot()[0]?.memoryUsedBytes).toBe(130345 * MiB)
    expect(p.devices()[0]?.name).toBe('NVIDIA H200')
  })

  it('emits pollError with an NvidiaSmiError and sets lastError when a poll fails', async () => {
    const p = track(new NvidiaSmiPoller({ path: fake('nodriver'), intervalMs: 100 }).start())
    const [err] = (await once(p, 'pollError')) as [NvidiaSmiError]
    expect(err).toBeInstanceOf(NvidiaSmiError)
    expect(err.message).toContain('exited with code 9')
    expect(p.lastError).toBe(err)
    expect(p.snapshot()).toEqual([])
  })

  it("never emits 'error', even with no listener at all", async () => {
    const errors: unknown[] = []
    const p = track(new NvidiaSmiPoller({ path: '/nonexistent/nvidia-smi', intervalMs: 100 }).start())
    await waitFor(() => p.lastError !== null)
    p.on('error', (e) => errors.push(e))
    await once(p, 'pollError')
    expect(errors).toEqual([])
    expect(p.lastError).toBeInstanceOf(NvidiaSmiError)
    expect(p.lastError?.message).toMatch(/not found/)
  })

  it('keeps the previous snapshot after a failed poll, and clears lastError after a good one', async () => {
    const { path, dir } = await linkTo(fake('h200'))
    const p = track(new NvidiaSmiPoller({ path, intervalMs: 100 }).start())
    const [good] = (await once(p, 'snapshot')) as [GpuSnapshot[]]
    await relink(dir, fake('nodriver'))
    await once(p, 'pollError')
    expect(p.snapshot()).toEqual(good)
    expect(p.devices()).toHaveLength(2)
    expect(p.lastError).toBeInstanceOf(NvidiaSmiError)
    await relink(dir, fake('h200'))
    await once(p, 'snapshot')
    expect(p.lastError).toBeNull()
  })

  it('never runs two nvidia-smi at once, even when one takes longer than intervalMs', async () => {
    const dir = await tempDir()
    const log = join(dir, 'runs.log')
    setEnv('FAKE_NVIDIA_SMI_LOG', log)
    setEnv('FAKE_NVIDIA_SMI_SLEEP', '0.25')
    const p = track(new NvidiaSmiPoller({ path: fake('slow'), intervalMs: 100 }))
    let count = 0
    p.on('snapshot', () => count++)
    p.start()
    p.start() // a second start() while running changes nothing
    await waitFor(() => count >= 3, 5_000)
    p.stop()
    const runs = await logLines(log)
    for (const [i, line] of runs.entries()) expect(line).toBe(i % 2 === 0 ? 'start' : 'end')
  })

  it('reports a listener that throws as a warning and still calls the other listeners', async () => {
    const warnings: Error[] = []
    const onWarning = (w: Error) => warnings.push(w)
    process.on('warning', onWarning)
    cleanups.push(() => process.off('warning', onWarning))
    const p = track(new NvidiaSmiPoller({ path: fake('h200'), intervalMs: 100 }))
    p.on('snapshot', () => {
      throw new Error('listener bug')
    })
    let calls = 0
    p.on('snapshot', () => calls++)
    p.start()
    await waitFor(() => calls >= 2 && warnings.length >= 1)
    expect(warnings[0]?.message).toContain('listener bug')
    expect((warnings[0] as Error & { code?: string }).code).toBe('VLLM_MONITOR_CALLBACK_THREW')
  })

  it('lets the process exit while it waits between polls (the timer is unref()ed)', async () => {
    const { stdout } = await runProbe([fake('h200'), '60000'], 10_000)
    expect(stdout).toBe('snapshot\n')
  })

  it('stop() kills a run in flight, so the process exits at once', async () => {
    setEnv('FAKE_NVIDIA_SMI_SLEEP', '5')
    const { stdout, elapsedMs } = await runProbe([fake('slow'), '100', '300'], 10_000)
    expect(stdout).toBe('stopped\n')
    expect(elapsedMs).toBeLessThan(3_000)
  })

  it('emits nothing after stop()', async () => {
    setEnv('FAKE_NVIDIA_SMI_SLEEP', '0.2')
    const p = new NvidiaSmiPoller({ path: fake('slow'), intervalMs: 100 })
    let events = 0
    p.on('snapshot', () => events++)
    p.on('pollError', () => events++)
    p.start()
    await sleep(50) // nvidia-smi is now running
    p.stop()
    await sleep(500)
    expect(events).toBe(0)
    expect(p.snapshot()).toEqual([])
    expect(p.lastError).toBeNull()
  })

  it('can be started again after stop()', async () => {
    const p = track(new NvidiaSmiPoller({ path: fake('h200'), intervalMs: 100 }))
    p.start()
    await once(p, 'snapshot')
    p.stop()
    p.start()
    await once(p, 'snapshot')
  })

  describe('validates its options', () => {
    it.each([
      [{ intervalMs: 99 }, 'options.intervalMs must be an integer >= 100'],
      [{ intervalMs: 150.5 }, 'options.intervalMs must be an integer >= 100'],
      [{ intervalMs: '1000' }, 'options.intervalMs must be an integer >= 100'],
      [{ timeoutMs: 0 }, 'options.timeoutMs must be an integer >= 1'],
      [{ timeoutMs: Number.NaN }, 'options.timeoutMs must be an integer >= 1'],
      [{ path: '' }, 'options.path must be a non-empty string'],
      [{ path: 42 }, 'options.path must be a non-empty string'],
      [null, 'options must be an object'],
    ])('rejects %o with "%s"', (options, message) => {
      const err = thrown(() => new NvidiaSmiPoller(options as never))
      expect(err).toBeInstanceOf(InvalidArgumentError)
      expect(err.message).toBe(message)
    })

    it('accepts no options at all', () => {
      expect(new NvidiaSmiPoller().lastError).toBeNull()
    })
  })
})
