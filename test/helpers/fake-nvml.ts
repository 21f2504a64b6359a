import { join } from 'node:path'

const root = join(import.meta.dirname, '../..')
export const fakeNvmlPath = join(root, 'build/fake-nvml/libnvidia-ml.so.1')

/** Selects the fake NVML scenario for the next sampler created in this process. */
export function useScenario(name: string): string {
  const path = join(root, 'test/fixtures/fake-nvml', `${name}.scenario`)
  process.env.FAKE_NVML_SCENARIO = path
  return path
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Polls `cond` (sync or async) until it holds; throws after `timeoutMs`. */
export async function waitFor(
  cond: () => boolean | Promise<boolean>,
  timeoutMs = 3_000,
  stepMs = 10,
): Promise<void> {
  const end = Date.now() + timeoutMs
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`condition not met within ${timeoutMs} ms`)
    await sleep(stepMs)
  }
}
