/**
 * The deterministic heart of the monitor: records in, checkpoints out, no clock and no I/O.
 *
 * Records are buffered and applied in time order when a checkpoint is taken, on a fixed grid
 * (`checkpointIntervalMs`): the checkpoint at T sees exactly the records with t <= T. A record that
 * arrives after its grid point has passed is re-stamped just after it, before it is recorded, so a
 * trace replayed through a fresh core yields the same checkpoints as the live run did.
 *
 * Lifecycle rules (vllm.md §0, §3.2, §4): a port that refuses before the server was ever up means
 * "not started yet", after it was up it means the server is gone; `/health` 503 means engine death;
 * `/health` 200 proves nothing by itself, so requests running with generated tokens and engine steps
 * flat for `hangAfterMs` is a hang (ERROR); KV usage at the top with preemptions, failing requests,
 * timeouts and thermal throttling make a serving replica DEGRADED until they clear for
 * `recoverAfterMs`; fatal log signatures and GPU events (Xid 48/79/94/95..., GPU lost) are ERROR.
 *
 * Probes (`probe` events, vllm.md §0 #3): an end-to-end probe (a `max_tokens: 1` completion) that
 * fails `e2eFailuresBeforeError` times in a row while `/health` says 200 and no tokens flow is an
 * engine that does not answer (ERROR), left again when the probe passes; failing while tokens flow
 * is overload (DEGRADED). Staleness: a replica whose newest reading is older than `staleAfterMs` is
 * `stale` in its snapshot, and no reading-based rule fires on it until a fresh reading comes.
 */

import { reportCallbackError } from '../gpu/util.js'
import { LifecycleMachine } from '../lifecycle/machine.js'
import { rollUpStates } from '../lifecycle/rollup.js'
import { nullDerived, TelemetryStore, THERMAL_REASONS_MASK } from '../telemetry/store.js'
import type {
  Checkpoint,
  Detector,
  EngineDerived,
  EngineReading,
  EngineSnapshot,
  ErrorEntry,
  FaultType,
  GpuReading,
  LifecycleState,
  MonitorEvent,
  MonitorPlugin,
  Prediction,
  TelemetryRecord,
  TimedEvent,
  Transition,
} from '../telemetry/types.js'

export interface MonitorCoreOptions {
  checkpointIntervalMs: number
  hangAfterMs: number
  /** How often readings come: a stall is carried forward between two readings, never past one. */
  scrapeIntervalMs: number
  recoverAfterMs: number
  /** KV usage at or above this, with preemptions, is pressure. */
  kvPressureThreshold: number
  /** A replica whose newest reading is older than this is stale (Infinity: never). */
  staleAfterMs: number
  /** End-to-end probe failures in a row (with `/health` 200) that make a replica ERROR. */
  e2eFailuresBeforeError: number
  eventsCapacity: number
  errorsCapacity: number
  detectors: readonly Detector[]
  plugins: readonly MonitorPlugin[]
  /** Every record as it is applied: re-stamped if late, in time order (the recorder's tee). */
  onRecord?: (record: TelemetryRecord) => void
  onTransition?: (replica: string, transition: Transition) => void
  onEvent?: (event: TimedEvent) => void
}

export const DEFAULT_CORE_OPTIONS: MonitorCoreOptions = {
  checkpointIntervalMs: 100,
  hangAfterMs: 30_000,
  scrapeIntervalMs: 100,
  recoverAfterMs: 5_000,
  kvPressureThreshold: 0.95,
  // Off unless configured: the monitor derives it from its scrape interval; replays of traces
  // recorded without it must not start calling replicas stale.
  staleAfterMs: Number.POSITIVE_INFINITY,
  e2eFailuresBeforeError: 3,
  eventsCapacity: 200,
  errorsCapacity: 100,
  detectors: [],
  plugins: [],
}

/** Log signatures and GPU events after which the engine is dead or about to be. */
const FATAL_EVENTS = new Set([
  'cuda-oom',
  'load-oom',
  'kv-too-small',
  'engine-dead',
  'worker-died',
  'nccl-timeout',
  'nccl-error',
  'illegal-memory-access',
  'uncorrectable-ecc',
  'launch-failure',
  'rpc-timeout',
  'gpu-lost',
  'ecc-double-bit',
])
/** Death notices that name no cause: the lines after them do. */
const GENERIC_FATAL = new Set(['engine-dead', 'worker-died'])
/** The end-to-end probe's endpoint in `probe` events. */
const E2E_ENDPOINT = '/v1/completions'

/** Xids that end the application on that GPU (sim-calibration §5). */
/** Xids after which the GPU (or its link) is gone or needs a reset: the replica is in ERROR. */
export const FATAL_XIDS: ReadonlySet<number> = new Set([48, 74, 79, 94, 95, 119, 120])
const START_CHAIN: LifecycleState[] = ['NOT_STARTED', 'INITIALIZING', 'LOADING_MODEL', 'READY', 'SERVING']

interface ReplicaState {
  name: string
  machine: LifecycleMachine
  reading: EngineReading | null
  readingAt: number | null
  everUp: boolean
  /** It answered /metrics since it last refused: its port is really open (not just logged ready). */
  answered: boolean
  /** Its port is polled (declared so, or a reading has come in). */
  scraped: boolean
  /** In ERROR: the root cause named after a generic death notice (the traceback's last line). */
  cause: string | null
  /** Down (refused) since the last ERROR: the next answer is a restarted server. */
  downSinceError: boolean
  lastGenerationTokens: number | null
  degradedClearSince: number | null
  /** Last time a transient trouble was seen (scrape timeout, shm stall). */
  troubleAt: number
  troubleReason: string
  derived: EngineDerived | null
  /** The newest reading is older than `staleAfterMs`. */
  stale: boolean
  /** `/health` status from the newest `/health` probe event (null: failed or none). */
  probeHealth: number | null
  /** End-to-end probe failures in a row. */
  e2eFailures: number
  /** In ERROR because the end-to-end probe failed: a passing probe ends it. */
  e2eDown: boolean
}

export class MonitorCore {
  readonly options: MonitorCoreOptions
  readonly store = new TelemetryStore()
  private readonly replicas = new Map<string, ReplicaState>()
  private readonly gpus = new Map<number, GpuReading>()
  private pending: TelemetryRecord[] = []
  private lastTickT = Number.NEGATIVE_INFINITY
  private readonly events: TimedEvent[] = []
  private readonly errors: ErrorEntry[] = []
  readonly labelCounts: Partial<Record<FaultType, number>> = {}
  predictions: Prediction[] = []
  private latest: Checkpoint | null = null
  private ticking = false

  constructor(options: Partial<MonitorCoreOptions> = {}) {
    this.options = { ...DEFAULT_CORE_OPTIONS, ...options }
  }

  /**
   * Declares a replica up front so it shows (NOT_STARTED) before its first reading. `scraped`: its
   * port is polled, so a start-up log line alone does not make it SERVING (the port must answer).
   */
  addReplica(name: string, options: { scraped?: boolean } = {}): void {
    const r = this.replica(name)
    if (options.scraped === true) r.scraped = true
  }

  /** The newest checkpoint, or null before the first tick. */
  get checkpoint(): Checkpoint | null {
    return this.latest
  }

  get lastTick(): number {
    return this.lastTickT
  }

  /** Buffers a record; it is applied at the first checkpoint at or after its time. */
  push(record: TelemetryRecord): void {
    const why = invalidRecord(record)
    if (why !== null) {
      // A custom source's mistake must not stop the monitor: drop the record and say why.
      this.error(Math.max(0, this.lastTickT), 'VLLM_MONITOR_BAD_RECORD', `record dropped: ${why}`)
      return
    }
    if (!(record.t > this.lastTickT)) {
      // Late (a slow scrape that finished after its grid point): stamp it just after the point.
      record = { ...record, t: this.lastTickT + 0.001 }
    }
    this.pending.push(record)
    for (const p of this.options.plugins) {
      if (p.onRecord === undefined) continue
      try {
        p.onRecord(record)
      } catch (err) {
        this.error(
          record.t,
          'VLLM_MONITOR_PLUGIN_FAILED',
          `plugin ${p.name} threw in onRecord: ${(err as Error).message}`,
        )
      }
    }
  }

  /** Applies the records up to `t` and takes the checkpoint at `t`. */
  tick(t: number): Checkpoint {
    if (this.ticking) {
      // Called from a listener inside a tick (e.g. close() on a transition): the running tick
      // finishes the job; applying the same batch twice would corrupt state and the trace.
      return this.latest ?? this.build(t)
    }
    this.ticking = true
    try {
      if (this.pending.length > 0) {
        // Stable: records with equal t keep their arrival order. The batch leaves `pending` before
        // it is applied, so nothing can apply it twice.
        this.pending.sort((a, b) => a.t - b.t)
        let n = 0
        while (n < this.pending.length && (this.pending[n] as TelemetryRecord).t <= t) n++
        const batch = this.pending.splice(0, n)
        for (const rec of batch) {
          try {
            this.apply(rec)
          } catch (err) {
            this.error(
              rec.t,
              'VLLM_MONITOR_BAD_RECORD',
              `${rec.kind} record at t=${rec.t} failed: ${(err as Error).message}`,
            )
          }
        }
      }
      return this.finishTick(t)
    } finally {
      this.ticking = false
    }
  }

  /** The checkpoint at `t` from the current state, without applying anything (read-only). */
  peek(t: number): Checkpoint {
    return this.latest ?? this.build(t)
  }

  private finishTick(t: number): Checkpoint {
    this.lastTickT = t
    for (const r of this.replicas.values()) this.evaluate(r, t)
    const cp = this.build(t)
    for (const d of this.options.detectors) {
      try {
        d.detect(cp, (e) => this.event(t, e))
      } catch (err) {
        this.error(t, 'VLLM_MONITOR_DETECTOR_FAILED', `detector ${d.name} threw: ${(err as Error).message}`)
      }
    }
    for (const p of this.options.plugins) {
      if (p.onCheckpoint === undefined) continue
      try {
        p.onCheckpoint(cp)
      } catch (err) {
        this.error(
          t,
          'VLLM_MONITOR_PLUGIN_FAILED',
          `plugin ${p.name} threw in onCheckpoint: ${(err as Error).message}`,
        )
      }
    }
    this.latest = cp
    return cp
  }

  /** Lifecycle history of one replica. */
  history(replica: string): Transition[] {
    return this.replicas.get(replica)?.machine.history() ?? []
  }

  replicaNames(): string[] {
    return [...this.replicas.keys()]
  }

  /** Records an error the host should know about (a failing source, a plugin that threw). */
  error(t: number, code: string, message: string): void {
    this.errors.push({ t, code, message })
    if (this.errors.length > this.options.errorsCapacity) this.errors.shift()
  }

  // --- applying records -----------------------------------------------------------------------

  private apply(rec: TelemetryRecord): void {
    // Teed in application order (sorted by t), so the trace is ordered and replays identically.
    const tee = this.options.onRecord
    if (tee !== undefined) {
      try {
        tee(rec)
      } catch (err) {
        this.error(
          rec.t,
          'VLLM_MONITOR_RECORD_FAILED',
          `recording a record failed: ${(err as Error).message}`,
        )
      }
    }
    switch (rec.kind) {
      case 'engine':
        this.applyEngine(rec.t, rec)
        break
      case 'gpu':
        this.applyGpu(rec.t, rec)
        break
      case 'event':
        this.applyEvent(rec.t, rec)
        break
      case 'label': {
        if (rec.phase === 'failure') this.labelCounts[rec.fault] = (this.labelCounts[rec.fault] ?? 0) + 1
        break
      }
    }
  }

  private applyEngine(t: number, rec: EngineReading): void {
    const { t: _t, kind: _k, ...reading } = rec as EngineReading & { t: number; kind: string }
    const r = this.replica(reading.replica)
    this.store.ingestEngine(t, reading)
    r.derived = this.store.derived(reading.replica)
    r.reading = reading
    r.readingAt = t
    r.scraped = true
    const m = r.machine
    const state = m.state
    if (!reading.reachable) {
      const err = reading.error ?? 'unreachable'
      // Only a refused connection says nothing listens (vllm.md §0 #8). A reset, an unreachable
      // host, a timeout or a 5xx from a server that is up is trouble, not death: under spiky load
      // vLLM can miss a probe without being dead (ray#54070), and uvicorn resets connections
      // while it shuts down.
      const refused = err === 'ECONNREFUSED'
      if (refused) r.answered = false
      if (!refused) {
        r.troubleAt = t
        r.troubleReason = `scrape failed: ${err}`
        return
      }
      // vLLM opens its port only after the engine is ready (READY included), so refused before
      // the first answer is start-up, not failure.
      if (state === 'NOT_STARTED' && !r.everUp) {
        this.move(r, 'INITIALIZING', t, 'port not listening yet (vLLM opens it when ready)')
      } else if (state === 'SERVING' || state === 'DEGRADED') {
        this.move(r, 'ERROR', t, `connection refused: the server is gone (${err})`)
        r.downSinceError = true
      } else if (state === 'ERROR') r.downSinceError = true
      else if (state === 'SHUTTING_DOWN') this.move(r, 'NOT_STARTED', t, 'process gone')
      return
    }
    if (reading.healthStatus === 503) {
      if (state !== 'ERROR') this.move(r, 'ERROR', t, '/health 503: the engine is dead')
      return
    }
    r.answered = true
    const gen = reading.generationTokensTotal
    const reset = gen !== null && r.lastGenerationTokens !== null && gen < r.lastGenerationTokens
    if (gen !== null) r.lastGenerationTokens = gen
    if (state === 'ERROR') {
      if (!r.downSinceError && !reset) return
      r.downSinceError = false
      this.walk(r, 'SERVING', t, 'a restarted server answers /health and /metrics')
      return
    }
    if (state === 'SHUTTING_DOWN') return
    if (state !== 'SERVING' && state !== 'DEGRADED') {
      r.everUp = true
      this.walk(r, 'SERVING', t, 'server answers /health 200 and /metrics')
    }
  }

  private applyGpu(t: number, rec: GpuReading): void {
    const { t: _t, kind: _k, ...reading } = rec as GpuReading & { t: number; kind: string }
    this.store.ingestGpu(t, reading)
    const prev = this.gpus.get(reading.gpu)
    this.gpus.set(reading.gpu, reading)
    if (reading.lost && prev !== undefined && !prev.lost) {
      this.event(t, {
        type: 'gpu-lost',
        severity: 'critical',
        replica: reading.replica,
        gpu: reading.gpu,
        message: `GPU ${reading.gpu} is lost (fell off the bus or stopped answering NVML)`,
      })
      if (reading.replica !== null) this.fatal(reading.replica, t, `GPU ${reading.gpu} lost`)
    }
  }

  private applyEvent(t: number, rec: MonitorEvent): void {
    const { t: _t, kind: _k, ...event } = rec as MonitorEvent & { t: number; kind: string }
    if (event.type === 'monitor-error') {
      // The monitor's own trouble (a failing source), carried as a record so replays show it too.
      this.error(
        t,
        typeof event.data?.code === 'string' ? event.data.code : 'VLLM_MONITOR_ERR',
        event.message,
      )
      return
    }
    if (event.type === 'lifecycle-hint') {
      // A log line that marks a start-up or shutdown phase; not an event worth showing by itself.
      const to = event.data?.state as LifecycleState | undefined
      if (event.replica !== null && to !== undefined)
        this.hint(
          this.replica(event.replica),
          to,
          t,
          event.message,
          typeof event.data?.source === 'string' ? event.data.source : 'log',
        )
      return
    }
    this.event(t, event)
    if (event.type === 'probe' && event.replica !== null) {
      this.applyProbe(this.replica(event.replica), t, event)
      return
    }
    if (event.type === 'process-spawn' && event.replica !== null) {
      // A supervisor started (or restarted) the server process: a new start-up begins.
      const r = this.replica(event.replica)
      r.downSinceError = false
      r.answered = false
      const s = r.machine.state
      if (s === 'NOT_STARTED' || s === 'ERROR' || s === 'SHUTTING_DOWN') {
        this.move(r, 'INITIALIZING', t, `process started (pid ${String(event.data?.pid ?? '?')})`)
      }
      return
    }
    if (event.type === 'process-exit' && event.replica !== null) {
      // vLLM can exit 0 after engine death (#48966): the supervisor classifies the exit from the
      // log tail and says so in the message; a shutdown we asked for ends in NOT_STARTED.
      const r = this.replica(event.replica)
      r.answered = false
      r.downSinceError = true
      const s = r.machine.state
      if (s === 'SHUTTING_DOWN') this.move(r, 'NOT_STARTED', t, event.message)
      else if (s !== 'ERROR' && s !== 'NOT_STARTED') this.move(r, 'ERROR', t, event.message)
      else if (s === 'ERROR' && r.cause === null && event.data?.cause != null) {
        // Already in ERROR from a generic death line: the exit's classification names the cause.
        r.cause = event.message
      }
      return
    }
    const replica = event.replica ?? this.replicaOfGpu(event.gpu)
    if (replica === null) return
    const xid = typeof event.data?.xid === 'number' ? event.data.xid : null
    if (FATAL_EVENTS.has(event.type) || (event.type === 'xid' && xid !== null && FATAL_XIDS.has(xid))) {
      this.fatal(replica, t, event.message, GENERIC_FATAL.has(event.type))
    } else if (event.type === 'shm-broadcast-stall') {
      const r = this.replica(replica)
      const s = r.machine.state
      if (s === 'SERVING' || s === 'DEGRADED') {
        r.troubleAt = t
        r.troubleReason = 'workers not answering (shared-memory broadcast stall)'
      }
    }
  }

  /** A `probe` event from a HealthProbeSource: `/health` status, and the end-to-end rule. */
  private applyProbe(r: ReplicaState, t: number, event: MonitorEvent): void {
    const d = event.data ?? {}
    const status = typeof d.status === 'number' ? d.status : null
    if (d.endpoint === '/health') {
      r.probeHealth = d.ok === true ? status : null
      return
    }
    if (d.endpoint !== E2E_ENDPOINT) return
    if (d.ok === true) {
      r.e2eFailures = 0
      if (r.e2eDown && r.machine.state === 'ERROR') {
        r.e2eDown = false
        this.walk(r, 'SERVING', t, 'the end-to-end probe answers again: the engine recovered')
      }
      return
    }
    // Paused or asleep on purpose (the dev endpoints say so), or the probe's own mistake (4xx: a
    // wrong model name, a missing API key): no evidence against the engine.
    if (d.suspended === true || (status !== null && status >= 400 && status < 500)) return
    r.e2eFailures = typeof d.consecutiveFailures === 'number' ? d.consecutiveFailures : r.e2eFailures + 1
    const s = r.machine.state
    if (r.e2eFailures < this.options.e2eFailuresBeforeError || (s !== 'SERVING' && s !== 'DEGRADED')) return
    const reading = r.reading
    const healthy = (reading?.reachable === true && reading.healthStatus === 200) || r.probeHealth === 200
    if (!healthy) return
    const err = typeof d.error === 'string' ? d.error : `HTTP ${status ?? '?'}`
    const how = err === 'ETIMEDOUT' ? 'timed out' : `failed (${err})`
    const tokensPerSec = r.stale ? null : (r.derived?.generationTokensPerSec ?? null)
    if (tokensPerSec !== null && tokensPerSec > 0) {
      // Tokens still flow: the engine works but is too loaded to answer in time.
      r.troubleAt = t
      r.troubleReason = `end-to-end probe ${how} ${r.e2eFailures} times in a row while tokens flow (overloaded)`
      return
    }
    this.move(
      r,
      'ERROR',
      t,
      `engine not answering: end-to-end probe ${how} ${r.e2eFailures} times in a row while /health says 200`,
    )
    r.e2eDown = true
    this.event(t, {
      type: 'engine-unresponsive',
      severity: 'critical',
      replica: r.name,
      gpu: null,
      message: `${r.name}: end-to-end probe ${how} ${r.e2eFailures} times in a row; /health still 200`,
      data: { failures: r.e2eFailures, error: err },
    })
  }

  // --- rules ------------------------------------------------------------------------------------

  private evaluate(r: ReplicaState, t: number): void {
    const stale = r.readingAt !== null && t - r.readingAt > this.options.staleAfterMs
    if (stale !== r.stale) {
      r.stale = stale
      const age = r.readingAt === null ? 0 : Math.round((t - r.readingAt) / 100) / 10
      this.event(t, {
        type: stale ? 'stale' : 'fresh',
        severity: stale ? 'warning' : 'info',
        replica: r.name,
        gpu: null,
        message: stale
          ? `${r.name}: no reading for ${age} s (over ${this.options.staleAfterMs} ms): its metrics are stale, rules paused`
          : `${r.name}: readings again`,
      })
    }
    const state = r.machine.state
    if (state !== 'SERVING' && state !== 'DEGRADED') return
    // Stale numbers prove nothing either way: no hang, no pressure, no recovery until fresh ones
    // (and a recovery counts its clear time from fresh readings only).
    if (stale) {
      r.degradedClearSince = null
      return
    }
    const d = r.derived
    // The stall as of now, not as of the last scrape: a hang is called on the first checkpoint
    // past the bound instead of waiting for the next reading (the data are fresh: not stale).
    const since = t - (r.readingAt ?? t)
    const stalledMs =
      d?.stalledForMs == null ? null : d.stalledForMs + (since < this.options.scrapeIntervalMs ? since : 0)
    if (d !== null && stalledMs !== null && stalledMs >= this.options.hangAfterMs) {
      const running = r.reading?.requestsRunning ?? 0
      this.move(
        r,
        'ERROR',
        t,
        `engine hung: ${running} requests running, no tokens or steps for ${Math.round(stalledMs / 1000)} s (/health still 200)`,
      )
      this.event(t, {
        type: 'hang',
        severity: 'critical',
        replica: r.name,
        gpu: null,
        message: `engine on ${r.name} hung: no progress for ${Math.round(stalledMs / 1000)} s while ${running} requests run`,
      })
      return
    }
    const why = this.degradation(r, t)
    if (why !== null) {
      r.degradedClearSince = null
      if (state === 'SERVING') this.move(r, 'DEGRADED', t, why)
      return
    }
    if (state === 'DEGRADED') {
      if (r.degradedClearSince === null) r.degradedClearSince = t
      else if (t - r.degradedClearSince >= this.options.recoverAfterMs) {
        this.move(
          r,
          'SERVING',
          t,
          `recovered: no pressure for ${Math.round(this.options.recoverAfterMs / 1000)} s`,
        )
        r.degradedClearSince = null
      }
    }
  }

  private degradation(r: ReplicaState, t: number): string | null {
    const reading = r.reading
    const d = r.derived
    if (t - r.troubleAt < this.options.recoverAfterMs) return r.troubleReason
    if (reading?.reachable) {
      const kv = reading.kvCacheUsage
      if (kv !== null && kv >= this.options.kvPressureThreshold && (d?.preemptionsPerSec ?? 0) > 0) {
        return `KV cache exhausted: ${(kv * 100).toFixed(1)}% used, ${(d?.preemptionsPerSec ?? 0).toFixed(1)} preemptions/s`
      }
    }
    // A throttled GPU is a cause (slower steps); failing requests and a long queue are its symptoms.
    for (const g of this.gpus.values()) {
      if (g.replica !== r.name || g.clockEventReasons === null) continue
      if (g.clockEventReasons & THERMAL_REASONS_MASK) {
        return `GPU ${g.gpu} thermal slowdown at ${g.temperatureCelsius ?? '?'} °C (clock ${g.smClockMhz ?? '?'} MHz)`
      }
    }
    if (reading?.reachable) {
      if ((d?.errorsPerSec ?? 0) > 0)
        return `requests failing: ${(d?.errorsPerSec ?? 0).toFixed(1)}/s finished with error`
      const q = d?.queueTimeMeanMs ?? null
      if (q !== null && q >= 10_000) return `requests wait ${(q / 1000).toFixed(1)} s in the queue`
    }
    return null
  }

  private fatal(replica: string, t: number, reason: string, generic = false): void {
    const r = this.replica(replica)
    const s = r.machine.state
    if (s === 'ERROR') {
      // vLLM prints the death first ("EngineCore encountered a fatal error.", a dead worker) and
      // the root cause after it, as the traceback's last line (vllm.md §4.1, §4.4): name it.
      if (!generic && r.cause === null && reason !== r.machine.reason) r.cause = reason
      return
    }
    if (s === 'NOT_STARTED' || s === 'SHUTTING_DOWN') return
    this.move(r, 'ERROR', t, reason)
  }

  /** A log line naming a phase: start-up phases walk forward, a new start-up leaves ERROR. */
  private hint(r: ReplicaState, to: LifecycleState, t: number, line: string, source = 'log'): void {
    const s = r.machine.state
    // Hints come from log lines, or from a supervisor saying what it did (data.source).
    const text = line.length > 160 ? `${line.slice(0, 157)}...` : line
    const reason = source === 'log' ? `log: ${text}` : text
    if (to === 'SHUTTING_DOWN') {
      // After engine death uvicorn also says "Shutting down": the death already explains the exit.
      if (s !== 'NOT_STARTED' && s !== 'SHUTTING_DOWN' && s !== 'ERROR')
        this.move(r, 'SHUTTING_DOWN', t, reason)
      return
    }
    if (to === 'INITIALIZING' && (s === 'ERROR' || s === 'SHUTTING_DOWN' || s === 'NOT_STARTED')) {
      r.downSinceError = false
      r.answered = false
      this.move(r, 'INITIALIZING', t, reason)
      return
    }
    // "Application startup complete" is logged before uvicorn listens (and a tailed log can run
    // ahead of the port): where the port is scraped, SERVING needs it to answer too (vllm.md §3.2),
    // else a refused scrape racing the line would read as "the server is gone".
    const target = to === 'SERVING' && !r.answered && r.scraped ? 'READY' : to
    if (START_CHAIN.indexOf(s) >= 0 && START_CHAIN.indexOf(s) < START_CHAIN.indexOf(target)) {
      this.walk(r, target, t, reason)
    }
  }

  /** Moves along the start-up chain to `to`, recording each phase it passes. */
  private walk(r: ReplicaState, to: LifecycleState, t: number, reason: string): void {
    const m = r.machine
    if (m.state === 'ERROR' || m.state === 'SHUTTING_DOWN') this.move(r, 'INITIALIZING', t, reason)
    let i = START_CHAIN.indexOf(m.state)
    const target = START_CHAIN.indexOf(to)
    if (i < 0 || target < 0) return
    while (i < target) {
      i++
      this.move(r, START_CHAIN[i] as LifecycleState, t, reason)
    }
  }

  private move(r: ReplicaState, to: LifecycleState, t: number, reason: string): void {
    if (r.machine.state === to) return
    r.e2eDown = false
    if (to === 'SERVING' || to === 'READY') r.everUp = true
    if (to === 'ERROR') {
      r.cause = null
      this.error(t, 'VLLM_MONITOR_REPLICA_ERROR', `${r.name}: ${reason}`)
    }
    try {
      r.machine.tryTransition(to, Math.max(t, r.machine.since), reason)
    } catch (err) {
      // A rule asking for an impossible move is a bug here, not a reason to stop watching.
      this.error(t, 'VLLM_MONITOR_RULE_FAILED', `${r.name}: ${(err as Error).message}`)
    }
  }

  private event(t: number, e: MonitorEvent): void {
    const te: TimedEvent = { t, ...e }
    this.events.push(te)
    if (this.events.length > this.options.eventsCapacity) this.events.shift()
    const cb = this.options.onEvent
    if (cb !== undefined) {
      try {
        cb(te)
      } catch (err) {
        reportCallbackError('event listener', err)
      }
    }
  }

  private replica(name: string): ReplicaState {
    let r = this.replicas.get(name)
    if (r === undefined) {
      const machine = new LifecycleMachine({ name })
      r = {
        name,
        machine,
        reading: null,
        readingAt: null,
        everUp: false,
        answered: false,
        scraped: false,
        cause: null,
        downSinceError: false,
        lastGenerationTokens: null,
        degradedClearSince: null,
        troubleAt: Number.NEGATIVE_INFINITY,
        troubleReason: '',
        derived: null,
        stale: false,
        probeHealth: null,
        e2eFailures: 0,
        e2eDown: false,
      }
      const state = r
      machine.on('transition', (tr) => {
        this.event(tr.t, {
          type: 'lifecycle',
          severity: tr.to === 'ERROR' ? 'critical' : tr.to === 'DEGRADED' ? 'warning' : 'info',
          replica: name,
          gpu: null,
          message: `${name}: ${tr.from} -> ${tr.to} (${tr.reason})`,
          data: { from: tr.from, to: tr.to },
        })
        this.options.onTransition?.(state.name, tr)
      })
      this.replicas.set(name, r)
    }
    return r
  }

  private replicaOfGpu(gpu: number | null): string | null {
    if (gpu === null) return null
    return this.gpus.get(gpu)?.replica ?? null
  }

  private build(t: number): Checkpoint {
    const engines: EngineSnapshot[] = []
    const states: LifecycleState[] = []
    for (const r of this.replicas.values()) {
      const m = r.machine
      states.push(m.state)
      engines.push({
        replica: r.name,
        lifecycleState: m.state,
        since: m.since,
        reason: m.state === 'ERROR' && r.cause !== null ? `${m.reason}; root cause: ${r.cause}` : m.reason,
        reading: r.reading,
        readingAt: r.readingAt,
        stale: r.stale,
        derived: r.derived === null ? nullDerived() : { ...r.derived },
      })
    }
    const gpus = [...this.gpus.values()].sort((a, b) => a.gpu - b.gpu)
    return {
      t,
      lifecycleState: rollUpStates(states),
      engines,
      gpus,
      events: this.events.slice(-50),
      errors: this.errors.slice(-20),
      predictions: this.predictions.slice(),
    }
  }
}

const KINDS = new Set(['engine', 'gpu', 'event', 'label'])

/** Why a record cannot be applied, or null. Cheap: runs on every push. */
function invalidRecord(r: TelemetryRecord): string | null {
  if (r === null || typeof r !== 'object') return 'not an object'
  if (typeof r.t !== 'number' || !Number.isFinite(r.t))
    return `t must be a finite number (got ${String(r.t)})`
  if (!KINDS.has(r.kind)) return `unknown kind ${JSON.stringify(r.kind)}`
  switch (r.kind) {
    case 'engine':
      return typeof r.replica === 'string' ? null : 'engine record without a replica name'
    case 'gpu':
      return typeof r.gpu === 'number' ? null : 'gpu record without a gpu index'
    case 'event':
      return typeof r.type === 'string' && typeof r.message === 'string'
        ? null
        : 'event record needs type and message'
    case 'label':
      return typeof r.fault === 'string' && typeof r.replica === 'string'
        ? null
        : 'label record needs fault and replica'
  }
  return null
}
