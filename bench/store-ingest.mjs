#!/usr/bin/env node
// bench/store-ingest: what one checkpoint's ingest costs the TelemetryStore (2 replicas'
// EngineReadings + 2 GpuReadings, 36 series), each figure next to a baseline measured in the
// same process:
//   - ns per checkpoint, as a ratio to reading the same 42 fields from the same reading objects
//     and writing them into a plain preallocated Float64Array
//   - heap bytes allocated per checkpoint in steady state (GC-aware: bytes the collector freed
//     during the run plus the growth of the heap), beside the same figure for the baseline
//   - the same, when `store.derived(replica)` is also read once per replica per checkpoint
//
// Needs the compiled store: npx tsc -p tsconfig.build.json (or npm run build:ts), then
//   node bench/store-ingest.mjs [--seconds N] [--json [FILE]]
// --json alone prints one JSON object on stdout; with FILE it writes there (and $OUT/store-ingest.json
// is written when $OUT is set).
import { existsSync, mkdirSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import v8 from 'node:v8'
import { runInNewContext } from 'node:vm'

const here = dirname(fileURLToPath(import.meta.url))
const storePath = join(here, '../dist/telemetry/store.js')
if (!existsSync(storePath))
  throw new Error('dist/telemetry/store.js not found: run `npx tsc -p tsconfig.build.json` first')
const { TelemetryStore } = await import(storePath)

const argi = process.argv.indexOf('--json')
const json = argi !== -1
const jsonFile =
  json && process.argv[argi + 1] && !process.argv[argi + 1].startsWith('--') ? process.argv[argi + 1] : null
const si = process.argv.indexOf('--seconds')
const seconds = si === -1 ? 6 : Number(process.argv[si + 1])
const log = json && jsonFile === null ? () => {} : (...a) => console.log(...a)

v8.setFlagsFromString('--expose-gc')
const gc = globalThis.gc ?? runInNewContext('gc')

// A pool of readings, built once, so the timed loops read prepared objects. Counters climb
// through the pool; wrapping round is a counter reset once per pool, as a restart would be.
const POOL = 4096
const DT_MS = 100
function engineReading(replica, k) {
  const running = k % 97 === 0 ? 0 : 8 + (k % 5)
  return {
    replica,
    engine: '0',
    modelName: 'm',
    reachable: k % 500 !== 499,
    healthStatus: 200,
    error: null,
    requestsRunning: running,
    requestsWaiting: k % 7,
    kvCacheUsage: 0.3 + 0.5 * Math.abs(Math.sin(k / 50)),
    preemptionsTotal: Math.floor(k / 40),
    promptTokensTotal: 1000 * k + 0.5,
    generationTokensTotal: k % 300 < 290 ? 350 * k : 350 * (k - (k % 300) + 290),
    stepsTotal: 10 * k,
    requestsFinishedTotal: 2 * k,
    requestsErroredTotal: Math.floor(k / 200),
    numGpuBlocks: 12_000,
    ttftSecondsSum: 0.13 * k,
    ttftCount: 2 * k,
    itlSecondsSum: 0.021 * 350 * k,
    itlCount: 350 * k,
    e2eSecondsSum: 3.1 * k,
    e2eCount: 2 * k,
    queueTimeSecondsSum: 0.01 * k,
    queueTimeCount: 2 * k,
  }
}
function gpuReading(gpu, k) {
  return {
    gpu,
    replica: `r${gpu}`,
    uuid: `GPU-${gpu}`,
    name: 'NVIDIA H100 80GB HBM3',
    lost: false,
    memoryUsedBytes: 70e9 + 1e6 * (k % 1000) + 0.5,
    memoryTotalBytes: 80e9,
    gpuUtilizationPercent: 90 + (k % 10),
    powerWatts: 500 + (k % 200) / 3,
    powerLimitWatts: 700,
    temperatureCelsius: 60 + (k % 20) / 7,
    smClockMhz: 1980 - (k % 3) * 15,
    clockEventReasons: 0,
    eccCorrectedVolatile: 0,
    eccUncorrectedVolatile: 0,
  }
}
const checkpoints = Array.from({ length: POOL }, (_, k) => ({
  engines: [engineReading('r0', k), engineReading('r1', k + 17)],
  gpus: [gpuReading(0, k), gpuReading(1, k + 5)],
}))

const store = new TelemetryStore()
let tStore = 0
function ingestStore(n) {
  for (let i = 0; i < n; i++) {
    const c = checkpoints[i % POOL]
    tStore += DT_MS
    store.ingestEngine(tStore, c.engines[0])
    store.ingestEngine(tStore, c.engines[1])
    store.ingestGpu(tStore, c.gpus[0])
    store.ingestGpu(tStore, c.gpus[1])
  }
  return 0
}
function ingestStoreDerived(n) {
  let acc = 0
  for (let i = 0; i < n; i++) {
    const c = checkpoints[i % POOL]
    tStore += DT_MS
    store.ingestEngine(tStore, c.engines[0])
    store.ingestEngine(tStore, c.engines[1])
    store.ingestGpu(tStore, c.gpus[0])
    store.ingestGpu(tStore, c.gpus[1])
    if (store.derived('r0').stalledForMs !== null) acc++
    if (store.derived('r1').stalledForMs !== null) acc++
  }
  return acc
}

// Baseline: the unavoidable part. Reads the same 42 fields the store reads (16 per engine
// reading, 5 per GPU reading) and writes them, with the time, as one row of a preallocated
// Float64Array ring.
const SLOTS = 42
const BASE_CAP = 4096
const base = new Float64Array(SLOTS * BASE_CAP)
const baseT = new Float64Array(BASE_CAP)
let baseRow = 0
let tBase = 0
function writeEngine(o, r) {
  if (!r.reachable) {
    base.fill(Number.NaN, o, o + 16)
    return
  }
  base[o] = r.kvCacheUsage ?? Number.NaN
  base[o + 1] = r.requestsRunning ?? Number.NaN
  base[o + 2] = r.requestsWaiting ?? Number.NaN
  base[o + 3] = r.preemptionsTotal ?? Number.NaN
  base[o + 4] = r.promptTokensTotal ?? Number.NaN
  base[o + 5] = r.generationTokensTotal ?? Number.NaN
  base[o + 6] = r.stepsTotal ?? Number.NaN
  base[o + 7] = r.requestsErroredTotal ?? Number.NaN
  base[o + 8] = r.ttftSecondsSum ?? Number.NaN
  base[o + 9] = r.ttftCount ?? Number.NaN
  base[o + 10] = r.itlSecondsSum ?? Number.NaN
  base[o + 11] = r.itlCount ?? Number.NaN
  base[o + 12] = r.e2eSecondsSum ?? Number.NaN
  base[o + 13] = r.e2eCount ?? Number.NaN
  base[o + 14] = r.queueTimeSecondsSum ?? Number.NaN
  base[o + 15] = r.queueTimeCount ?? Number.NaN
}
function writeGpu(o, g) {
  base[o] = g.memoryUsedBytes ?? Number.NaN
  base[o + 1] = g.gpuUtilizationPercent ?? Number.NaN
  base[o + 2] = g.powerWatts ?? Number.NaN
  base[o + 3] = g.temperatureCelsius ?? Number.NaN
  base[o + 4] = g.smClockMhz ?? Number.NaN
}
function ingestBaseline(n) {
  for (let i = 0; i < n; i++) {
    const c = checkpoints[i % POOL]
    tBase += DT_MS
    const row = baseRow
    baseRow = row + 1 === BASE_CAP ? 0 : row + 1
    baseT[row] = tBase
    const o = row * SLOTS
    writeEngine(o, c.engines[0])
    writeEngine(o + 16, c.engines[1])
    writeGpu(o + 32, c.gpus[0])
    writeGpu(o + 37, c.gpus[1])
  }
  return 0
}

const now = () => process.hrtime.bigint()
function timeNs(fn, n) {
  const t0 = now()
  fn(n)
  return Number(now() - t0) / n
}

/** Heap bytes allocated over n checkpoints: heap growth plus what each GC in between freed. */
function allocatedPerCheckpoint(fn, n) {
  gc()
  const prof = new v8.GCProfiler()
  prof.start()
  const h0 = process.memoryUsage().heapUsed
  fn(n)
  const h1 = process.memoryUsage().heapUsed
  const r = prof.stop()
  let freed = 0
  for (const s of r.statistics)
    freed += s.beforeGC.heapStatistics.usedHeapSize - s.afterGC.heapStatistics.usedHeapSize
  return { bytes: Math.max(0, h1 - h0 + freed) / n, gcs: r.statistics.length }
}

const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1]
const f = (x, d = 1) => x.toFixed(d)

// Warm up: past the series' first allocation and into optimised code.
const WARM = 50_000
ingestStore(WARM)
ingestStoreDerived(WARM)
ingestBaseline(WARM)

// Timing: alternate rounds so drift and frequency changes hit both sides alike.
const ROUND = 20_000
const storeNs = []
const baseNs = []
const derivedNs = []
const deadline = Date.now() + seconds * 0.6 * 1000
while (Date.now() < deadline || storeNs.length < 5) {
  baseNs.push(timeNs(ingestBaseline, ROUND))
  storeNs.push(timeNs(ingestStore, ROUND))
  derivedNs.push(timeNs(ingestStoreDerived, ROUND))
}

// Allocation: long enough that a few bytes a checkpoint would add up to several scavenges.
const ALLOC_N = 200_000
const allocBase = allocatedPerCheckpoint(ingestBaseline, ALLOC_N)
const allocStore = allocatedPerCheckpoint(ingestStore, ALLOC_N)
const allocDerived = allocatedPerCheckpoint(ingestStoreDerived, ALLOC_N)

const st = store.stats()
const result = {
  node: process.version,
  checkpoint: '2 EngineReadings + 2 GpuReadings (36 series)',
  dtMs: DT_MS,
  rounds: storeNs.length,
  checkpointsPerRound: ROUND,
  baselineNsPerCheckpoint: median(baseNs),
  storeNsPerCheckpoint: median(storeNs),
  storeVsBaseline: median(storeNs) / median(baseNs),
  storeWithDerivedNsPerCheckpoint: median(derivedNs),
  storeWithDerivedVsBaseline: median(derivedNs) / median(baseNs),
  heapBytesPerCheckpoint: {
    baseline: allocBase.bytes,
    store: allocStore.bytes,
    storeWithDerived: allocDerived.bytes,
    gcsDuringStoreRun: allocStore.gcs,
    checkpoints: ALLOC_N,
  },
  storeStats: st,
  storeMemoryBytes:
    st.series * 8 * (2 * store.rawCapacity + 5 * store.rollup100msCapacity + 5 * store.rollup1sCapacity),
}

log(`== store-ingest: node ${process.version}, one checkpoint = ${result.checkpoint}, every ${DT_MS} ms`)
log(
  `baseline (same numbers into a preallocated Float64Array): ${f(result.baselineNsPerCheckpoint)} ns/checkpoint`,
)
log(
  `TelemetryStore ingest: ${f(result.storeNsPerCheckpoint)} ns/checkpoint = ${f(result.storeVsBaseline, 2)}x baseline (median of ${result.rounds} rounds of ${ROUND})`,
)
log(
  `  + derived() read per replica: ${f(result.storeWithDerivedNsPerCheckpoint)} ns/checkpoint = ${f(result.storeWithDerivedVsBaseline, 2)}x baseline`,
)
log(
  `heap allocated per checkpoint over ${ALLOC_N}: baseline ${f(allocBase.bytes, 2)} B, store ${f(allocStore.bytes, 2)} B (${allocStore.gcs} GCs), store + derived() ${f(allocDerived.bytes, 2)} B (${allocDerived.gcs} GCs)`,
)
log(
  `store: ${st.series} series, ${st.samples} samples, ${st.dropped} dropped, ${f(result.storeMemoryBytes / 2 ** 20)} MiB of rings`,
)

if (json) {
  const text = JSON.stringify(result, null, 2)
  const file = jsonFile ?? (process.env.OUT ? join(process.env.OUT, 'store-ingest.json') : null)
  if (file) {
    mkdirSync(dirname(file), { recursive: true })
    writeFileSync(file, `${text}\n`)
    log(`wrote ${file}`)
  } else console.log(text)
}
