#!/usr/bin/env node
// Builds the fake libnvidia-ml used by the tests and benches (native/fake-nvml/fake_nvml.c) into
// build/fake-nvml/libnvidia-ml.so.1, skipping the compile when the library is newer than its source.
import { execFileSync } from 'node:child_process'
import { mkdirSync, statSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
export const fakeNvmlSource = join(root, 'native/fake-nvml/fake_nvml.c')
export const fakeNvmlPath = join(root, 'build/fake-nvml/libnvidia-ml.so.1')

export function buildFakeNvml({ force = false } = {}) {
  const mtime = (p) => {
    try {
      return statSync(p).mtimeMs
    } catch {
      return -1
    }
  }
  if (!force && mtime(fakeNvmlPath) >= mtime(fakeNvmlSource)) return fakeNvmlPath
  mkdirSync(dirname(fakeNvmlPath), { recursive: true })
  const cc = process.env.CC ?? 'cc'
  const args = ['-shared', '-fPIC', '-O2', '-Wall', '-Wextra', '-Werror', '-std=gnu11']
  execFileSync(cc, [...args, '-o', fakeNvmlPath, fakeNvmlSource, '-lpthread', '-lm'], { stdio: 'inherit' })
  return fakeNvmlPath
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  console.log(buildFakeNvml({ force: process.argv.includes('--force') }))
}
