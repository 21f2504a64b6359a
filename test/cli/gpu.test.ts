import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { describe, expect, it } from 'vitest'
import { fakeNvmlPath, useScenario } from '../helpers/fake-nvml.js'

// The built CLI (npm install builds dist/), run as a user would.
const cli = join(import.meta.dirname, '../../dist/cli/index.js')
const run = (args: string[], scenario = 'multi-gpu') =>
  promisify(execFile)(process.execPath, [cli, ...args], {
    env: { ...process.env, FAKE_NVML_SCENARIO: useScenario(scenario) },
    timeout: 15_000,
  })

describe('vllm-monitor gpu', () => {
  it('prints one JSON reading of every GPU through the native sampler with --once --json', async () => {
    const { stdout } = await run(['gpu', '--once', '--json', '--library-path', fakeNvmlPath])
    const out = JSON.parse(stdout)
    expect(out.status).toMatchObject({ mode: 'nvml', slowPath: false })
    expect(out.devices.map((d: { name: string }) => d.name)).toEqual([
      'NVIDIA H200',
      'NVIDIA H100 80GB HBM3',
      'NVIDIA A10G',
    ])
    expect(out.snapshot[0].memoryUsedBytes).toBeGreaterThan(2e9)
    expect(out.snapshot[2].temperatureCelsius).toBeNull()
    expect(out.stats.achievedHz).toBeGreaterThan(0)
  })

  it('prints a table with the source and each GPU', async () => {
    const { stdout } = await run(['gpu', '--once', '--library-path', fakeNvmlPath], 'h200')
    expect(stdout).toContain('source: nvml')
    expect(stdout).toMatch(/GPU 0 {2}NVIDIA H200/)
  })

  it('exits 1 with the error code when NVML is required but missing', async () => {
    const err = await run([
      'gpu',
      '--once',
      '--mode',
      'nvml',
      '--library-path',
      '/nonexistent/libnvidia-ml.so.1',
    ]).catch((e) => e)
    expect(err.code).toBe(1)
    expect(err.stderr).toContain('(VLLM_MONITOR_NVML_NOT_FOUND)')
  })
})
