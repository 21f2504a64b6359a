import { describe, expect, it } from 'vitest'
import { SimScenarioError } from '../../src/errors.js'
import { poissonArrivals } from '../../src/sim/arrivals.js'
import { FAULT_TYPES } from '../../src/sim/faults.js'
import { type FleetOptions, SimFleet } from '../../src/sim/fleet.js'
import { runSimulation, type SimulationOptions } from '../../src/sim/run.js'
import { SCENARIO_NAMES, scenario } from '../../src/sim/scenarios.js'
import type { EngineReading, FaultLabel, FaultType, TelemetryRecord } from '../../src/telemetry/types.js'

const GiB = 1024 ** 3
/** Faults in the named scenarios strike r0 here (after boot and some serving). */
const FAULT_AT = 45_000

type EngineRecord = Extract<TelemetryRecord, { kind: 'engine' }>
type GpuRecord = Extract<TelemetryRecord, { kind: 'gpu' }>
type EventRecord = Extract<TelemetryRecord, { kind: 'event' }>
type LabelRecord = Extract<TelemetryRecord, { kind: 'label' }>
interface LogRecord {
  t: number
  replica: string
  text: string
}

interface Run {
  engine: EngineRecord[]
  gpu: GpuRecord[]
  events: EventRecord[]
  labels: LabelRecord[]
  logs: LogRecord[]
  fleet: SimFleet
}

/** Runs a simulation and keeps r0's engine readings, GPU 0's readings, events, labels and log lines. */
function simulate(options: SimulationOptions): Run {
  const run: Omit<Run, 'fleet'> = { engine: [], gpu: [], events: [], labels: [], logs: [] }
  const { fleet } = runSimulation({
    ...options,
    onRecord: (r) => {
      if (r.kind === 'engine' && r.replica === 'r0') run.engine.push(r)
      else if (r.kind === 'gpu' && r.gpu === 0) run.gpu.push(r)
      else if (r.kind === 'event') run.events.push(r)
      else if (r.kind === 'label') run.labels.push(r)
    },
    onLog: (replica, _stream, text, t) => run.logs.push({ t, replica, text }),
  })
  return { ...run, fleet }
}

const runs = new Map<string, Run>()
/** Each named scenario at its defaults, run once and shared by the tests that read it. */
function named(name: string): Run {
  let run = runs.get(name)
  if (run === undefined) {
    run = simulate({ scenario: name })
    runs.set(name, run)
  }
  return run
}

function label(run: Run, fault: FaultType, phase: FaultLabel['phase']): LabelRecord {
  const l = run.labels.find((x) => x.fault === fault && x.phase === phase)
  if (l === undefined) throw new Error(`no ${phase} label for ${fault}`)
  return l
}

function at<T extends { t: number }>(xs: readonly T[], t: number): T {
  const x = xs.find((r) => r.t === t)
  if (x === undefined) throw new Error(`no record at ${t}`)
  return x
}

function firstLog(run: Pick<Run, 'logs'>, pattern: RegExp, from = 0): LogRecord {
  const l = run.logs.find((x) => x.t >= from && pattern.test(x.text))
  if (l === undefined) throw new Error(`no log line matches ${pattern}`)
  return l
}

/** Mean of a histogram between two engine readings (sum and count deltas). */
function windowMean(
  a: EngineRecord,
  b: EngineRecord,
  sum: 'ttftSecondsSum' | 'itlSecondsSum',
  count: 'ttftCount' | 'itlCount',
): number {
  const n = b[count]! - a[count]!
  expect(n, `${count} between ${a.t} and ${b.t}`).toBeGreaterThan(0)
  return (b[sum]! - a[sum]!) / n
}

/** The engine death sequence (vllm.md §4.1): fatal error, EngineDeadError, /health 503, exit 0 ~5 s later. */
function expectDeathSequence(run: Run, from: number): void {
  const fatal = firstLog(run, /EngineCore encountered a fatal error\./, from)
  const dead = firstLog(run, /vllm\.v1\.engine\.exceptions\.EngineDeadError/, from)
  const shutdown = firstLog(run, /Application shutdown complete\./, from)
  expect(dead.t).toBeGreaterThanOrEqual(fatal.t)
  expect(shutdown.t - dead.t).toBeGreaterThanOrEqual(4_900)
  expect(shutdown.t - dead.t).toBeLessThanOrEqual(5_200)
  // /health answers 503 while the server shuts down, then nothing listens.
  const dying = run.engine.filter((r) => r.t > dead.t && r.t < shutdown.t)
  expect(dying.length).toBeGreaterThan(0)
  for (const r of dying) expect(r.healthStatus).toBe(503)
  const after = run.engine.filter((r) => r.t > shutdown.t)
  expect(after.length).toBeGreaterThan(0)
  for (const r of after)
    expect(r).toMatchObject({ reachable: false, healthStatus: null, error: 'ECONNREFUSED' })
  const r0 = run.fleet.replicas[0]!
  expect(r0.phase).toBe('exited')
  // vLLM exits 0 after an engine death (#48966).
  expect(r0.exitCode).toBe(0)
}

describe('SimFleet', () => {
  describe('determinism', () => {
    function sample(options: FleetOptions): unknown[] {
      const fleet = new SimFleet(options)
      fleet.start()
      const out: unknown[] = []
      for (let t = 10_000; t <= 90_000; t += 10_000) {
        fleet.advanceTo(t)
        out.push(fleet.engineReadings(), fleet.gpuReadings())
      }
      return out
    }
    const options = (seed: number) => scenario('kv-surge', { seed, load: 'poisson', ratePerReplica: 8 }).fleet

    it('gives identical engine and GPU readings at the same instants for the same seed', () => {
      const a = sample(options(7))
      expect(sample(options(7))).toEqual(a)
      // And something actually happened in between.
      expect(JSON.stringify(a)).toMatch(/"preemptionsTotal":[1-9]/)
    })

    it('gives different readings for a different seed', () => {
      expect(sample(options(8))).not.toEqual(sample(options(7)))
    })

    it('replays a whole fault scenario record for record', () => {
      const records = (seed: number) => {
        const out: TelemetryRecord[] = []
        runSimulation({ scenario: 'xid-48', seed, durationMs: 110_000, onRecord: (r) => out.push(r) })
        return out
      }
      const a = records(3)
      expect(records(3)).toEqual(a)
      expect(records(4)).not.toEqual(a)
    })
  })

  describe('start-up', () => {
    function boot() {
      const logs: LogRecord[] = []
      const memory: Array<{ t: number; used: number }> = []
      const fleet = new SimFleet({ seed: 1, arrivals: poissonArrivals({ ratePerSec: 20, seed: 'boot' }) })
      fleet.on({ log: (replica, _s, text, t) => logs.push({ t, replica, text }) })
      fleet.start()
      const health: Array<number | null> = []
      for (let t = 0; t <= 75_000; t += 100) {
        fleet.advanceTo(t)
        memory.push({ t, used: fleet.gpuReadings()[0]!.memoryUsedBytes! })
        health.push(fleet.engineReadings()[0]!.healthStatus)
      }
      return { fleet, logs, memory, health }
    }
    const booted = boot()

    it('logs vLLM\u2019s real start-up lines in order (vllm.md §3.1)', () => {
      const order = [
        /vLLM server version \S+, serving model meta-llama\/Llama-3\.1-8B-Instruct/,
        /Starting to load model meta-llama\/Llama-3\.1-8B-Instruct\.\.\./,
        /Model loading took [\d.]+ GiB memory and [\d.]+ seconds/,
        /Available KV cache memory: [\d.]+ GiB/,
        /GPU KV cache size: [\d,]+ tokens/,
        /init engine \(profile, create kv cache, warmup model\) took [\d.]+ seconds/,
        /Starting vLLM server on http:\/\/0\.0\.0\.0:8000/,
        /Application startup complete\./,
      ]
      const idx = order.map((re) => booted.logs.findIndex((l) => re.test(l.text)))
      expect(
        idx.every((i) => i >= 0),
        String(idx),
      ).toBe(true)
      expect(idx).toEqual([...idx].sort((a, b) => a - b))
      // The KV size it logs is the engine's pool.
      const kv = booted.logs[idx[4]!]!.text.match(/GPU KV cache size: ([\d,]+) tokens/)![1]!
      expect(Number(kv.replaceAll(',', ''))).toBe(booted.fleet.replicas[0]!.sizing.kvCacheTokens)
      // vLLM's log format: "(Proc pid=N) LEVEL MM-DD HH:MM:SS [file.py:N] msg".
      expect(booted.logs[idx[1]!]!.text).toMatch(
        /^\(Worker_TP0 pid=\d+\) INFO \d\d-\d\d \d\d:\d\d:\d\d \[[\w.]+:\d+\] /,
      )
    })

    it('refuses connections until the server is up, then answers /health 200', () => {
      const ready = firstLog(booted, /Application startup complete\./).t
      const readyIdx = Math.ceil(ready / 100)
      expect(booted.health.slice(0, readyIdx).every((h) => h === null)).toBe(true)
      expect(booted.health.slice(readyIdx).every((h) => h === 200)).toBe(true)
      expect(ready).toBeGreaterThan(5_000)
      expect(ready).toBeLessThan(30_000)
    })

    it('climbs in NVML memory while loading weights, then holds the pre-reserved pool', () => {
      const ready = firstLog(booted, /Application startup complete\./).t
      const loading = booted.memory.filter((m) => m.t <= ready)
      for (let i = 1; i < loading.length; i++)
        expect(loading[i]!.used).toBeGreaterThanOrEqual(loading[i - 1]!.used)
      expect(loading[0]!.used / GiB).toBeLessThan(2)
      const sizing = booted.fleet.replicas[0]!.sizing
      const atReady = at(booted.memory, Math.ceil(ready / 100) * 100).used
      // gpu_memory_utilization × total, plus what lives outside it (driver, sampler scratch).
      expect(atReady / sizing.requestedBytes).toBeGreaterThan(0.99)
      expect(atReady / sizing.requestedBytes).toBeLessThan(1.03)
      // Several distinct steps while the weights stream in.
      expect(new Set(loading.map((m) => m.used)).size).toBeGreaterThan(5)
    })

    it('keeps NVML memory flat while serving, however full the KV cache gets (vllm.md §0 #1)', () => {
      const e = booted.fleet.replicas[0]!.engine!
      expect(e.iterationTokens.count).toBeGreaterThan(1000)
      const serving = booted.memory.filter((m) => m.t >= 20_000).map((m) => m.used)
      expect((Math.max(...serving) - Math.min(...serving)) / GiB).toBeLessThan(0.5)
    })
  })

  describe('faults in their named scenarios', () => {
    /** When the failure label may come, ms after injection: [earliest, latest]. */
    const FAILURE_WINDOW: Record<FaultType, [number, number]> = {
      'kv-exhaustion': [1_000, 90_000],
      'gpu-oom-spike': [1_000, 20_000],
      'gpu-oom-cotenant': [10_000, 150_000],
      'memory-leak': [60_000, 350_000],
      'thermal-throttle': [20_000, 200_000],
      'xid-48': [60_000, 60_000],
      'xid-79': [0, 0],
      'nccl-hang': [0, 120_000],
      'engine-death': [0, 0],
      'perf-drift': [899_000, 901_000],
    }

    it('has one named scenario per fault type', () => {
      for (const f of FAULT_TYPES) expect(SCENARIO_NAMES).toContain(f)
    })

    for (const fault of FAULT_TYPES) {
      it(`${fault}: labels the injection and then the failure at a plausible time`, () => {
        const run = named(fault)
        const injected = label(run, fault, 'injected')
        const failure = label(run, fault, 'failure')
        expect(injected).toMatchObject({ t: FAULT_AT, replica: 'r0', gpu: 0 })
        const [lo, hi] = FAILURE_WINDOW[fault]
        expect(failure.t - injected.t).toBeGreaterThanOrEqual(lo)
        expect(failure.t - injected.t).toBeLessThanOrEqual(hi)
        expect(failure.detail.length).toBeGreaterThan(0)
        expect(run.labels.filter((l) => l.phase === 'failure')).toHaveLength(1)
      })
    }

    it('kv-exhaustion: KV fills, preemptions and the queue grow, TTFT rises, and nothing OOMs or dies', () => {
      const run = named('kv-exhaustion')
      const fail = label(run, 'kv-exhaustion', 'failure').t
      const after = run.engine.filter((r) => r.t >= fail)
      expect(Math.max(...after.map((r) => r.kvCacheUsage!))).toBeGreaterThanOrEqual(0.95)
      const p = (t: number) => at(run.engine, t).preemptionsTotal!
      expect(p(fail)).toBeGreaterThan(0)
      expect(p(fail + 30_000)).toBeGreaterThan(p(fail))
      expect(p(fail + 90_000)).toBeGreaterThan(p(fail + 30_000))
      expect(at(run.engine, fail + 60_000).requestsWaiting!).toBeGreaterThan(
        10 * at(run.engine, fail).requestsWaiting!,
      )
      const beforeTtft = at(run.engine, FAULT_AT).ttftSecondsSum! / at(run.engine, FAULT_AT).ttftCount!
      const laterTtft = windowMean(
        at(run.engine, fail + 60_000),
        run.engine.at(-1)!,
        'ttftSecondsSum',
        'ttftCount',
      )
      expect(laterTtft).toBeGreaterThan(10 * beforeTtft)
      // KV exhaustion in V1 is not an OOM (vllm.md §0 #2) and vLLM never refuses: /health stays 200.
      expect(run.logs.some((l) => /CUDA out of memory|EngineCore encountered/.test(l.text))).toBe(false)
      expect(run.engine.filter((r) => r.t >= 20_000).every((r) => r.healthStatus === 200)).toBe(true)
      expect(run.fleet.replicas[0]!.phase).toBe('serving')
      // NVML sees none of it.
      const mem = run.gpu.filter((r) => r.t >= 20_000).map((r) => r.memoryUsedBytes!)
      expect((Math.max(...mem) - Math.min(...mem)) / GiB).toBeLessThan(0.5)
    })

    it('kv-exhaustion: the windowed quantiles carry the TTFT rise, ordered p50 <= p90 <= p99', () => {
      const run = named('kv-exhaustion')
      const fail = label(run, 'kv-exhaustion', 'failure').t
      const before = at(run.engine, FAULT_AT)
      const during = at(run.engine, fail + 60_000)
      expect(before.ttftP99Ms).not.toBeNull()
      // Over the last 60 s only: unlike the cumulative mean, it does not remember the calm start.
      expect(during.ttftP99Ms!).toBeGreaterThan(10 * before.ttftP99Ms!)
      for (const r of run.engine) {
        if (r.ttftP50Ms === null) continue
        expect(r.ttftP50Ms).toBeLessThanOrEqual(r.ttftP90Ms!)
        expect(r.ttftP90Ms!).toBeLessThanOrEqual(r.ttftP99Ms!)
      }
    })

    for (const fault of ['gpu-oom-spike', 'gpu-oom-cotenant', 'memory-leak'] as const) {
      it(`${fault}: GPU memory grows until a CUDA OOM kills the engine, and the server exits 0`, () => {
        const run = named(fault)
        const fail = label(run, fault, 'failure').t
        const used = (t: number) => at(run.gpu, t).memoryUsedBytes!
        expect((used(fail - 100) - used(FAULT_AT)) / GiB).toBeGreaterThan(2)
        // Just before the failure the GPU is practically full.
        expect((run.gpu[0]!.memoryTotalBytes! - used(fail - 100)) / GiB).toBeLessThan(1)
        const oom = firstLog(
          run,
          /torch\.OutOfMemoryError: CUDA out of memory\. Tried to allocate [\d.]+ [GM]iB/,
        )
        expect(oom.t).toBe(fail)
        expect(firstLog(run, /EngineCore encountered a fatal error\./).t).toBe(fail)
        expect(run.events.some((e) => e.type === 'cuda-oom' && e.t === fail)).toBe(true)
        expectDeathSequence(run, fail)
      })
    }

    it('thermal-throttle: the GPU passes 87 °C, thermal slowdown bits appear and throughput drops', () => {
      const run = named('thermal-throttle')
      const fail = label(run, 'thermal-throttle', 'failure').t
      const atFail = at(run.gpu, fail)
      expect(atFail.clockEventReasons! & 0x60).not.toBe(0)
      const hot = run.gpu.filter((r) => r.t >= fail + 10_000)
      expect(Math.max(...hot.map((r) => r.temperatureCelsius!))).toBeGreaterThan(87)
      expect(run.gpu.filter((r) => r.t < fail).every((r) => (r.clockEventReasons! & 0x60) === 0)).toBe(true)
      // Steady prefill-heavy load: lower clocks make every step, hence every token, slower.
      const itl = (a: EngineRecord, b: EngineRecord) =>
        (b.itlSecondsSum! - a.itlSecondsSum!) / (b.itlCount! - a.itlCount!)
      const before = itl(at(run.engine, fail - 60_000), at(run.engine, fail))
      const after = itl(at(run.engine, fail + 30_000), at(run.engine, fail + 90_000))
      expect(after).toBeGreaterThan(1.1 * before)
      expect(run.fleet.replicas[0]!.phase).toBe('serving')
    })

    it('xid-48: corrected ECC errors climb, Xid 92 warns, then Xid 48 and an uncorrectable ECC error kill the engine', () => {
      const run = named('xid-48')
      const fail = label(run, 'xid-48', 'failure').t
      const ecc = run.gpu.filter((r) => r.t >= FAULT_AT && r.t < fail).map((r) => r.eccCorrectedVolatile!)
      for (let i = 1; i < ecc.length; i++) expect(ecc[i]!).toBeGreaterThanOrEqual(ecc[i - 1]!)
      expect(ecc.at(-1)! - ecc[0]!).toBeGreaterThan(100)
      // The rate accelerates: the second half of the precursor has more than the first.
      const mid = at(run.gpu, (FAULT_AT + fail) / 2).eccCorrectedVolatile!
      expect(ecc.at(-1)! - mid).toBeGreaterThan(2 * (mid - ecc[0]!))
      const xid = (n: number) => run.events.filter((e) => e.type === 'xid' && e.data?.xid === n)
      expect(xid(92)).toHaveLength(1)
      expect(xid(92)[0]!.severity).toBe('warning')
      expect(xid(92)[0]!.t).toBeGreaterThan(FAULT_AT)
      expect(xid(92)[0]!.t).toBeLessThan(fail)
      expect(xid(48)).toHaveLength(1)
      expect(xid(48)[0]).toMatchObject({ t: fail, severity: 'critical', gpu: 0 })
      expect(at(run.gpu, fail).eccUncorrectedVolatile).toBe(1)
      const ecLine = firstLog(run, /RuntimeError: CUDA error: uncorrectable ECC error encountered/)
      expect(ecLine.t - fail).toBeGreaterThanOrEqual(0)
      expect(ecLine.t - fail).toBeLessThanOrEqual(1_000)
      expectDeathSequence(run, fail)
    })

    it('xid-79: the GPU reads as lost, the worker dies unexpectedly, and a restart fails on the missing GPU', () => {
      const run = simulate({ scenario: 'xid-79' })
      const fail = label(run, 'xid-79', 'failure').t
      expect(run.gpu.filter((r) => r.t < fail).every((r) => !r.lost)).toBe(true)
      for (const r of run.gpu.filter((r) => r.t >= fail)) {
        expect(r).toMatchObject({
          lost: true,
          memoryUsedBytes: null,
          temperatureCelsius: null,
          powerWatts: null,
        })
      }
      expect(run.events.find((e) => e.type === 'xid' && e.data?.xid === 79)).toMatchObject({
        t: fail,
        severity: 'critical',
      })
      expect(run.events.some((e) => e.type === 'gpu-lost' && e.t === fail)).toBe(true)
      expect(
        firstLog(run, /Worker proc VllmWorker-0 died unexpectedly, shutting down executor\./).t,
      ).toBeGreaterThanOrEqual(fail)
      expectDeathSequence(run, fail)
      // The supervisor restarts it: the new process finds no GPU and exits 1.
      const { fleet } = run
      const r0 = fleet.replicas[0]!
      const restartAt = fleet.now
      const logs: LogRecord[] = []
      fleet.on({ log: (replica, _s, text, t) => logs.push({ t, replica, text }) })
      r0.restart(restartAt)
      fleet.advanceTo(restartAt + 10_000)
      expect(r0.restarts).toBe(1)
      expect(r0.phase).toBe('exited')
      expect(r0.exitCode).toBe(1)
      expect(r0.listening).toBe(false)
      expect(logs.some((l) => /vLLM server version/.test(l.text))).toBe(true)
      expect(logs.some((l) => /EngineCore failed to start\./.test(l.text))).toBe(true)
      expect(logs.some((l) => /no CUDA-capable device is detected/.test(l.text))).toBe(true)
      expect(logs.some((l) => /Application startup complete/.test(l.text))).toBe(false)
    })

    it('nccl-hang: gauges and counters freeze, /health stays 200, shm stalls log every 60 s, the watchdog kills it', () => {
      const run = named('nccl-hang')
      const fail = label(run, 'nccl-hang', 'failure').t
      const watchdog = firstLog(run, /Watchdog caught collective operation timeout: .*Timeout\(ms\)=600000\)/)
      expect(watchdog.t).toBe(fail + 600_000)
      const hung = run.engine.filter((r) => r.t >= fail + 100 && r.t < watchdog.t)
      expect(hung.length).toBeGreaterThan(5_000)
      const frozen = (r: EngineRecord) => [
        r.requestsRunning,
        r.requestsWaiting,
        r.kvCacheUsage,
        r.promptTokensTotal,
        r.generationTokensTotal,
        r.stepsTotal,
        r.preemptionsTotal,
        r.ttftCount,
        r.itlCount,
      ]
      for (const r of hung) {
        expect(frozen(r)).toEqual(frozen(hung[0]!))
        expect(r.healthStatus).toBe(200)
      }
      // It hung in the middle of a batch: the frozen gauges show requests running.
      expect(hung[0]!.requestsRunning).toBeGreaterThan(0)
      const shm = run.logs.filter((l) =>
        /No available shared memory broadcast block found in 60 seconds/.test(l.text),
      )
      expect(shm.length).toBeGreaterThanOrEqual(9)
      expect(shm[0]!.t - fail).toBe(60_000)
      for (let i = 1; i < shm.length; i++) expect(shm[i]!.t - shm[i - 1]!.t).toBe(60_000)
      expect(shm.every((l) => l.t > fail && l.t < watchdog.t + 1)).toBe(true)
      expectDeathSequence(run, watchdog.t)
    })

    it('engine-death: the worker dies, EngineCore dies, /health goes 503, and the server exits 0', () => {
      const run = named('engine-death')
      const fail = label(run, 'engine-death', 'failure').t
      expect(firstLog(run, /Worker proc VllmWorker-0 died unexpectedly/).t).toBe(fail)
      expectDeathSequence(run, fail)
      // The GPU itself is fine, its memory released.
      const g = run.gpu.at(-1)!
      expect(g.lost).toBe(false)
      expect(g.memoryUsedBytes! / GiB).toBeLessThan(1)
    })

    it('perf-drift: inter-token latency grows with uptime', () => {
      const run = named('perf-drift')
      const early = windowMean(at(run.engine, 20_000), at(run.engine, 300_000), 'itlSecondsSum', 'itlCount')
      const late = windowMean(at(run.engine, 1_200_000), run.engine.at(-1)!, 'itlSecondsSum', 'itlCount')
      expect(late / early).toBeGreaterThan(1.3)
      expect(run.fleet.replicas[0]!.engine!.conditions.slowdown).toBeGreaterThan(1.7)
      expect(run.fleet.replicas[0]!.phase).toBe('serving')
    })
  })

  describe('an NCCL hang with a shorter watchdog, under steady load', () => {
    const logs: LogRecord[] = []
    const fleet = new SimFleet({
      seed: 2,
      arrivals: poissonArrivals({ ratePerSec: 5, seed: 'nccl' }),
      faults: [{ fault: 'nccl-hang', atMs: 30_000, timeoutMs: 120_000 }],
    })
    fleet.on({ log: (replica, _s, text, t) => logs.push({ t, replica, text }) })
    fleet.start()
    fleet.advanceTo(40_000)
    const r0 = fleet.replicas[0]!
    const e = r0.engine!
    const frozen = fleet.engineReadings()[0]!
    const waiting = e.numWaiting
    fleet.advanceTo(100_000)
    const later = fleet.engineReadings()[0]!
    const waitingLater = e.numWaiting
    fleet.advanceTo(200_000)

    it('still takes requests into the queue while its gauges stay frozen', () => {
      expect(r0.restarts).toBe(0)
      expect(later).toEqual(frozen)
      expect(waitingLater - waiting).toBeGreaterThan(100)
    })

    it('logs the watchdog timeout it was given', () => {
      const line = logs.find((l) => /Watchdog caught collective operation timeout/.test(l.text))
      expect(line?.text).toMatch(/Timeout\(ms\)=120000\) ran for 1200\d\d milliseconds before timing out\./)
      expect(r0.exitCode).toBe(0)
    })
  })

  describe('restart()', () => {
    it('brings a dead replica back through the whole boot sequence to serving', () => {
      const logs: LogRecord[] = []
      const fleet = new SimFleet({
        seed: 1,
        arrivals: poissonArrivals({ ratePerSec: 5, seed: 'restart' }),
        faults: [{ fault: 'engine-death', atMs: 20_000 }],
      })
      fleet.on({ log: (replica, _s, text, t) => logs.push({ t, replica, text }) })
      fleet.start()
      fleet.advanceTo(30_000)
      const r0 = fleet.replicas[0]!
      expect(r0.phase).toBe('exited')
      expect(fleet.gpuReadings()[0]!.memoryUsedBytes! / GiB).toBeLessThan(1)
      r0.restart(fleet.now)
      expect(r0.restarts).toBe(1)
      // Sampled every 100 ms as the runner does: the new engine's latency window starts afresh.
      let firstUp: EngineReading | null = null
      for (let t = 30_100; t <= 60_000; t += 100) {
        fleet.advanceTo(t)
        const r = r0.reading()
        if (firstUp === null && r.reachable) firstUp = r
      }
      expect(firstUp?.ttftP99Ms).toBeNull()
      expect(r0.phase).toBe('serving')
      expect(r0.exitCode).toBeNull()
      const reading = fleet.engineReadings()[0]!
      expect(reading.healthStatus).toBe(200)
      // A fresh engine: counters start again from zero and it is serving the load.
      expect(reading.stepsTotal).toBeGreaterThan(0)
      expect(reading.requestsErroredTotal).toBe(0)
      const second = logs.filter((l) => l.t >= 30_000)
      const order = [
        /vLLM server version/,
        /Starting to load model/,
        /GPU KV cache size/,
        /Application startup complete/,
      ]
      const idx = order.map((re) => second.findIndex((l) => re.test(l.text)))
      expect(idx.every((i) => i >= 0)).toBe(true)
      expect(idx).toEqual([...idx].sort((a, b) => a - b))
      expect(fleet.gpuReadings()[0]!.memoryUsedBytes! / GiB).toBeGreaterThan(70)
    })
  })

  describe('invalid input', () => {
    it('names the field of an invalid fault spec', () => {
      const bad = () => new SimFleet({ faults: [{ fault: 'nccl-hang', atMs: 1000, timeoutMs: -5 }] })
      expect(bad).toThrow(SimScenarioError)
      expect(bad).toThrow(/faults\[0\]: field "timeoutMs"/)
      expect(() => new SimFleet({ faults: [{ fault: 'engine-death', atMs: -1 }] })).toThrow(/field "atMs"/)
    })

    it('names an unknown fault type and lists the known ones', () => {
      const bad = () => new SimFleet({ faults: [{ fault: 'cosmic-ray', atMs: 0 } as never] })
      expect(bad).toThrow(SimScenarioError)
      expect(bad).toThrow(/unknown fault "cosmic-ray"; expected one of kv-exhaustion, .*perf-drift/)
    })

    it('names an unknown replica, in the schedule and when looked up', () => {
      const bad = () => new SimFleet({ replicas: 2, faults: [{ fault: 'xid-79', atMs: 0, replica: 'r7' }] })
      expect(bad).toThrow(SimScenarioError)
      expect(bad).toThrow(/unknown replica "r7"; the fleet has r0, r1/)
      expect(() => new SimFleet().replica('r9')).toThrow(/unknown replica "r9"/)
    })

    it('names an unknown scenario and lists the known ones', () => {
      expect(() => scenario('meltdown')).toThrow(SimScenarioError)
      expect(() => scenario('meltdown')).toThrow(
        /unknown scenario "meltdown"; expected one of steady, .*demo/,
      )
      expect(() => runSimulation({ scenario: 'meltdown' })).toThrow(SimScenarioError)
    })

    it('names a bad fleet option', () => {
      expect(() => new SimFleet({ replicas: 0 })).toThrow(/replicas must be an integer/)
      expect(() => new SimFleet({ gpu: 'V100' })).toThrow(/unknown gpu "V100"/)
      expect(() => new SimFleet({ model: 'gpt-5' })).toThrow(/unknown model "gpt-5"/)
      expect(() => new SimFleet({ tensorParallelSize: 3 })).toThrow(/tensorParallelSize must be 1, 2, 4 or 8/)
      expect(() => new SimFleet({ gpuMemoryUtilization: 1.5 })).toThrow(
        /gpuMemoryUtilization must be in \(0, 1\]/,
      )
    })
  })
})
