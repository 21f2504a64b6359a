#!/usr/bin/env node
// bench/gpu-readings: what every counter the sampler reads returns on this machine's driver, so
// that a value the real NVML leaves unsupported (null / NaN) is known rather than assumed.
// Dependency-free (only the built addon), for a lent GPU machine as much as for the fake library:
//   node bench/gpu-readings.mjs [--lib PATH] [--seconds N] [--torch] [--json FILE]
// --torch holds 2 GiB in a PyTorch child while sampling, and checks that its pid shows in the
// process list with its memory (what co-tenant attribution depends on).
import { spawn } from 'node:child_process'
import { existsSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const arg = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`)
  return i === -1 ? fallback : process.argv[i + 1]
}
const bindingPath = [join(here, 'binding.js'), join(here, '../native/binding.js')].find(existsSync)
if (!bindingPath) throw new Error('native/binding.js not found: run `npm install` first')
const b = await import(bindingPath)
const libraryPath = arg('lib', undefined)
const seconds = Number(arg('seconds', '3'))
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

const probe = b.probeNvml(libraryPath)
if (!probe.available) throw new Error(`NVML unavailable: ${probe.code} ${probe.message}`)

let child = null
if (process.argv.includes('--torch')) {
  const py = [
    'import sys, torch',
    'x = torch.empty(2 << 30, dtype=torch.uint8, device="cuda"); torch.cuda.synchronize()',
    'print("ready", flush=True); sys.stdin.readline()',
  ].join('\n')
  child = spawn('python3', ['-c', py], { stdio: ['pipe', 'pipe', 'inherit'] })
  await new Promise((resolve, reject) => {
    child.stdout.once('data', resolve)
    child.once('exit', (code) => reject(new Error(`the PyTorch child exited (${code}) before allocating`)))
  })
}

const s = new b.GpuSampler({
  libraryPath,
  intervalUs: 1000,
  cachedIntervalMs: 50,
  slowIntervalMs: 500,
  events: true,
})
const out = { probe, devices: s.devices(), perDevice: [] }
try {
  s.start()
  await sleep(seconds * 1000)
  const d = s.drain()
  out.stats = s.stats()
  out.events = d.events
  for (const dev of out.devices) {
    const i = dev.index
    const fastRows = [...d.fast.device.keys()].filter((k) => d.fast.device[k] === i)
    const cachedRows = [...d.cached.device.keys()].filter((k) => d.cached.device[k] === i)
    const slowRows = d.slow.filter((r) => r.device === i)
    const lastFast = fastRows.at(-1)
    const lastCached = cachedRows.at(-1)
    const col = (batch, row, names) =>
      Object.fromEntries(names.map((n) => [n, row === undefined ? null : batch[n][row]]))
    const nanShare = (batch, rows, names) =>
      Object.fromEntries(
        names.map((n) => [n, rows.filter((r) => Number.isNaN(batch[n][r])).length / (rows.length || 1)]),
      )
    // Every column the binding returns, so that a counter it gains is recorded without an edit here.
    const columns = (batch) => Object.keys(batch).filter((k) => k !== 'timestampNs' && k !== 'device')
    const fastNames = columns(d.fast)
    const cachedNames = columns(d.cached)
    out.perDevice.push({
      index: i,
      fastRows: fastRows.length,
      cachedRows: cachedRows.length,
      slowRows: slowRows.length,
      lastFast: col(d.fast, lastFast, fastNames),
      fastNaNShare: nanShare(d.fast, fastRows, fastNames),
      lastCached: col(d.cached, lastCached, cachedNames),
      cachedNaNShare: nanShare(d.cached, cachedRows, cachedNames),
      lastSlow: slowRows.at(-1) ?? null,
      childSeen: child
        ? ((slowRows.at(-1)?.processes ?? []).find((p) => p.pid === child.pid) ?? false)
        : undefined,
    })
  }
} finally {
  s.close()
  child?.kill()
}
const text = JSON.stringify(out, null, 2)
console.log(text)
const file = arg('json', undefined)
if (file) writeFileSync(file, text)
