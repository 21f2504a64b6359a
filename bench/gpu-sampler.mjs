#!/usr/bin/env node
// bench/gpu-sampler: what the native NVML sampler achieves, each figure next to a baseline
// measured in the same process:
//   - achieved vs requested rate at 1 kHz, 10 kHz and as fast as possible; the last against
//     the NVML ceiling (the memory read alone in a tight loop)
//   - sampler-thread CPU per second of wall time, beside an idle loop on the same schedule
//   - JS cost per drained sample, beside copying the same rows in plain JS
//   - watch-callback latency from the crossing tick to the JS callback, event loop idle
//
// Dependency-free (only the built addon), so the same file runs on a lent GPU machine:
//   node bench/gpu-sampler.mjs                 fake libnvidia-ml (built from native/fake-nvml)
//   node bench/gpu-sampler.mjs --real          the real driver (libnvidia-ml.so.1); add --alloc to
//                                              time a real 4 GiB PyTorch allocation through a watch
//   options: --seconds N (per rate run, default 3), --device I, --json FILE, --lib PATH
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const arg = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`)
  return i === -1 ? fallback : process.argv[i + 1]
}
const real = process.argv.includes('--real')
const seconds = Number(arg('seconds', '3'))
const device = Number(arg('device', '0'))
const bindingPath = [join(here, 'binding.js'), join(here, '../native/binding.js')].find(existsSync)
if (!bindingPath)
  throw new Error('native/binding.js not found: run `npm install` (or npm run build:native) first')
const b = await import(bindingPath)

function fakeLibrary() {
  const lib = join(here, '../build/fake-nvml/libnvidia-ml.so.1')
  const src = join(here, '../native/fake-nvml/fake_nvml.c')
  if (!existsSync(lib)) {
    mkdirSync(dirname(lib), { recursive: true })
    execFileSync('cc', ['-shared', '-fPIC', '-O2', '-std=gnu11', '-o', lib, src, '-lpthread', '-lm'])
  }
  return lib
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const quantile = (xs, q) => {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]
}
const nowNs = () => process.hrtime.bigint()

/** One sampler run at `intervalUs`, drained every 100 ms like a monitor would. */
async function rateRun(opts, intervalUs) {
  const s = new b.GpuSampler({ ...opts, intervalUs, devices: [device], events: false })
  // Both drains, alternating: drain() allocates fresh typed arrays per call; drainInto() moves
  // rows into columns preallocated once (the hot-path form).
  const cap = 65_536
  const buf = {
    fv: new Float64Array(cap * 4),
    fd: new Uint32Array(cap),
    cv: new Float64Array(cap * 9),
    cd: new Uint32Array(cap),
    n: new Uint32Array(3),
  }
  const acc = { drain: [0n, 0], into: [0n, 0], copy: [0n, 0] }
  s.start()
  const end = Date.now() + seconds * 1000
  for (let k = 0; Date.now() < end; k++) {
    await sleep(100)
    if (k % 2 === 0) {
      const t0 = nowNs()
      s.drainInto(buf.fv, buf.fd, buf.cv, buf.cd, buf.n)
      acc.into[0] += nowNs() - t0
      acc.into[1] += buf.n[0] + buf.n[1]
      continue
    }
    const t0 = nowNs()
    const d = s.drain()
    acc.drain[0] += nowNs() - t0
    const n = d.fast.timestampNs.length + d.cached.timestampNs.length
    acc.drain[1] += n
    // Baseline: copying the same rows once more in plain JS (one slice per field).
    const t2 = nowNs()
    for (const batch of [d.fast, d.cached]) for (const key in batch) batch[key].slice()
    acc.copy[0] += nowNs() - t2
    acc.copy[1] += n
  }
  s.stop()
  s.drain()
  const st = s.stats()
  s.close()
  return {
    requestedHz: intervalUs === 0 ? null : 1e6 / intervalUs,
    achievedHz: st.achievedHz,
    achievedRatio: intervalUs === 0 ? null : st.achievedHz / (1e6 / intervalUs),
    samplesTaken: st.samplesTaken,
    dropped: st.samplesDropped,
    overruns: st.loopOverruns,
    samplerCpuPercent: (100 * st.samplerCpuSeconds) / st.runSeconds,
    nvmlP50Us: (st.nvmlLatencyP50Ns ?? Number.NaN) / 1e3,
    nvmlP99Us: (st.nvmlLatencyP99Ns ?? Number.NaN) / 1e3,
    drainNsPerSample: Number(acc.drain[0]) / acc.drain[1],
    drainIntoNsPerSample: Number(acc.into[0]) / acc.into[1],
    jsCopyNsPerSample: Number(acc.copy[0]) / acc.copy[1],
    readErrors: st.readErrors,
  }
}

/** Least-squares fit of ns = fixed + perRow * rows. */
function linearFit(points) {
  const n = points.length
  const mx = points.reduce((a, p) => a + p[0], 0) / n
  const my = points.reduce((a, p) => a + p[1], 0) / n
  let sxy = 0
  let sxx = 0
  for (const [x, y] of points) {
    sxy += (x - mx) * (y - my)
    sxx += (x - mx) ** 2
  }
  const perRow = sxy / sxx
  return { perRowNs: perRow, fixedNs: my - perRow * mx }
}

/**
 * JS cost of draining, split into a fixed cost per call and a marginal cost per sample by
 * fitting drains of 10 to 1000 rows (10 kHz sampler, drained after 1-100 ms). Two loops: one
 * that waits busy (the event loop of a loaded gateway: warm caches and JIT) and one that waits
 * with a timer (an idle gateway, where each drain starts cold).
 */
async function drainCost(opts) {
  const s = new b.GpuSampler({ ...opts, intervalUs: 100, devices: [device], events: false })
  const cap = 65_536
  const buf = [
    new Float64Array(cap * 4),
    new Uint32Array(cap),
    new Float64Array(cap * 9),
    new Uint32Array(cap),
  ]
  const n = new Uint32Array(3)
  s.start()
  const out = {}
  for (const wait of ['busy', 'timer']) {
    const into = []
    const alloc = []
    const copy = []
    for (let k = 0; k < 160; k++) {
      const ms = [1, 5, 20, 100][k % 4]
      if (wait === 'busy') {
        const until = Date.now() + ms
        while (Date.now() < until);
      } else await sleep(ms)
      if ((k >> 2) % 2 === 0) {
        const t0 = nowNs()
        s.drainInto(...buf, n)
        into.push([n[0] + n[1], Number(nowNs() - t0)])
      } else {
        const t0 = nowNs()
        const d = s.drain()
        const t1 = nowNs()
        const rows = d.fast.timestampNs.length + d.cached.timestampNs.length
        alloc.push([rows, Number(t1 - t0)])
        const t2 = nowNs()
        for (const batch of [d.fast, d.cached]) for (const key in batch) batch[key].slice()
        copy.push([rows, Number(nowNs() - t2)])
      }
    }
    out[wait] = {
      drainInto: linearFit(into.slice(8)),
      drain: linearFit(alloc.slice(8)),
      jsCopy: linearFit(copy.slice(8)),
    }
  }
  s.close()
  return out
}

/** Re-registers a watch that is true at once; each fires on the next tick. */
async function watchLatency(opts, count) {
  const s = new b.GpuSampler({ ...opts, intervalUs: 1000, devices: [device], events: false })
  const epoch = s.epochNs
  s.start()
  await sleep(50)
  const lat = []
  for (let i = 0; i < count; i++) {
    const t = await new Promise((resolve) => {
      const id = s.watch({ device, memoryUsedFraction: 1e-9 }, (a) => {
        resolve(Number(nowNs() - epoch) - a.timestampNs)
        s.unwatch(id)
      })
    })
    lat.push(t)
    await sleep(2)
  }
  s.close()
  return {
    count,
    p50Us: quantile(lat, 0.5) / 1e3,
    p99Us: quantile(lat, 0.99) / 1e3,
    maxUs: Math.max(...lat) / 1e3,
  }
}

/**
 * Real GPUs only (--alloc): a PyTorch child allocates 4 GiB while a fraction watch waits for it.
 * time.monotonic_ns() reads the same CLOCK_MONOTONIC as the sampler, so the crossing tick can be
 * placed against the allocation call itself.
 */
async function allocationCheck(opts) {
  const { spawn } = await import('node:child_process')
  const py = [
    'import sys, time, torch',
    `torch.cuda.set_device(${device}); torch.empty(1, device="cuda"); torch.cuda.synchronize()`,
    'print("ready", flush=True); sys.stdin.readline()',
    't0 = time.monotonic_ns(); x = torch.empty(4 << 30, dtype=torch.uint8, device="cuda"); torch.cuda.synchronize()',
    't1 = time.monotonic_ns(); print(t0, t1, flush=True); time.sleep(0.5)',
  ].join('\n')
  const child = spawn('python3', ['-c', py], { stdio: ['pipe', 'pipe', 'inherit'] })
  const lines = []
  child.stdout.setEncoding('utf8').on('data', (d) => lines.push(...d.trim().split('\n')))
  const waitLine = async (n) => {
    const end = Date.now() + 60_000
    while (lines.length < n && Date.now() < end && child.exitCode === null) await sleep(10)
    if (lines.length < n) throw new Error('the PyTorch child did not answer (is torch installed?)')
    return lines[n - 1]
  }
  const s = new b.GpuSampler({ ...opts, intervalUs: 100, devices: [device], events: false })
  try {
    const epoch = s.epochNs
    s.start()
    await waitLine(1)
    await sleep(50)
    const fast = s.drain().fast
    const last = fast.timestampNs.length - 1
    const total = s.devices()[0].memoryTotalBytes
    const usedNow = total - fast.memoryFreeBytes[last]
    const threshold = (usedNow + 2 * 2 ** 30) / total
    const alert = new Promise((resolve) => {
      s.watch({ device, memoryUsedFraction: threshold }, (a) => resolve({ a, at: nowNs() }))
    })
    child.stdin.write('go\n')
    const [t0, t1] = (await waitLine(2)).split(' ').map(BigInt)
    const { a, at } = await Promise.race([alert, sleep(5000).then(() => ({ a: null }))])
    if (!a) throw new Error('no watch callback within 5 s of the allocation')
    const tick = epoch + BigInt(Math.round(a.timestampNs))
    return {
      allocCallUs: Number(t1 - t0) / 1e3,
      tickAfterAllocStartUs: Number(tick - t0) / 1e3,
      tickAfterAllocReturnUs: Number(tick - t1) / 1e3,
      callbackAfterTickUs: Number(at - tick) / 1e3,
    }
  } finally {
    s.close()
    child.kill()
  }
}

async function suite(label, opts) {
  const probe = b.probeNvml(opts.libraryPath)
  if (!probe.available) throw new Error(`${label}: NVML unavailable: ${probe.code} ${probe.message}`)
  const info = new b.GpuSampler({ ...opts, intervalUs: 1000, devices: [device], events: false })
  const dev = info.devices()[0]
  const ceiling = info.measureMemoryReadRate(device, 1000)
  info.close()
  const out = { label, device: dev.name, driver: dev.driverVersion, ceilingCallsPerSec: ceiling.callsPerSec }
  out.idle1k = b.measureIdleLoop(1000, seconds * 1000)
  out.idle1kCpuPercent = (100 * out.idle1k.cpuNs) / out.idle1k.wallNs
  out.rate1k = await rateRun(opts, 1000)
  out.rate10k = await rateRun(opts, 100)
  out.afap = await rateRun(opts, 0)
  out.afapVsCeiling = out.afap.achievedHz / ceiling.callsPerSec
  out.watch = await watchLatency(opts, 200)
  out.drainCost = await drainCost(opts)
  if (process.argv.includes('--alloc')) {
    try {
      out.allocation = await allocationCheck(opts)
    } catch (err) {
      out.allocation = { error: String(err.message ?? err) }
    }
  }
  return out
}

function print(r) {
  const f = (x, d = 2) => (x === null || x === undefined || Number.isNaN(x) ? '-' : Number(x).toFixed(d))
  console.log(`\n== ${r.label}: ${r.device} (driver ${r.driver}), node ${process.version}`)
  console.log(`NVML ceiling (memory read alone, tight loop): ${f(r.ceilingCallsPerSec, 0)} reads/s`)
  console.log(
    'mode      requested  achieved   ratio    dropped overruns cpu%   nvml p50/p99 us  ns/sample: drainInto  drain  (JS copy baseline)',
  )
  for (const [name, x] of [
    ['1 kHz', r.rate1k],
    ['10 kHz', r.rate10k],
    ['afap', r.afap],
  ]) {
    console.log(
      `${name.padEnd(9)} ${f(x.requestedHz, 0).padStart(9)} ${f(x.achievedHz, 0).padStart(9)} ${f(x.achievedRatio ?? r.afapVsCeiling, 4).padStart(7)}` +
        ` ${String(x.dropped).padStart(9)} ${String(x.overruns).padStart(8)} ${f(x.samplerCpuPercent).padStart(6)}` +
        ` ${`${f(x.nvmlP50Us)}/${f(x.nvmlP99Us)}`.padStart(16)}  ${f(x.drainIntoNsPerSample, 1).padStart(19)} ${f(x.drainNsPerSample, 1).padStart(7)}  (${f(x.jsCopyNsPerSample, 1)})`,
    )
  }
  if (r.allocation) console.log('4 GiB PyTorch allocation seen by a fraction watch:', r.allocation)
  console.log(`as fast as possible vs ceiling: ${f(100 * r.afapVsCeiling, 1)} %`)
  console.log(
    `1 kHz sampler CPU ${f(r.rate1k.samplerCpuPercent)} % of a core; idle 1 kHz loop (no NVML) ${f(r.idle1kCpuPercent)} %`,
  )
  for (const [wait, c] of Object.entries(r.drainCost)) {
    const line = (k) => `${k} ${f(c[k].perRowNs, 1)} ns/sample + ${f(c[k].fixedNs / 1e3, 1)} us/call`
    console.log(
      `drain cost, ${wait}-waiting loop: ${line('drainInto')}; ${line('drain')}; baseline ${line('jsCopy')}`,
    )
  }
  console.log(
    `watch callback latency (tick -> JS), ${r.watch.count} crossings: p50 ${f(r.watch.p50Us)} us, p99 ${f(r.watch.p99Us)} us, max ${f(r.watch.maxUs)} us`,
  )
}

// The sampler's callbacks are weak (they never keep a process alive), so hold the loop open here.
const keepAlive = setInterval(() => {}, 1000)
const results = []
if (real) {
  results.push(await suite('real driver', { libraryPath: arg('lib', undefined) }))
} else {
  const lib = arg('lib', fakeLibrary())
  process.env.FAKE_NVML_SCENARIO = join(here, '../test/fixtures/fake-nvml/h200-latency.scenario')
  results.push(await suite('fake NVML, H200 call costs emulated (6.2 us memory read)', { libraryPath: lib }))
  process.env.FAKE_NVML_SCENARIO = join(here, '../test/fixtures/fake-nvml/h200.scenario')
  results.push(await suite('fake NVML, zero-cost calls (loop overhead alone)', { libraryPath: lib }))
}
clearInterval(keepAlive)
for (const r of results) print(r)
const jsonOut = arg('json', process.env.OUT ? join(process.env.OUT, 'gpu-sampler.json') : undefined)
if (jsonOut) {
  mkdirSync(dirname(jsonOut), { recursive: true })
  writeFileSync(
    jsonOut,
    JSON.stringify({ node: process.version, date: new Date().toISOString(), results }, null, 2),
  )
  console.log(`\nwrote ${jsonOut}`)
}
