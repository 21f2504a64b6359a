/**
 * The monitor's Prometheus metrics, in a prom-client `Registry` of its own: the host (a gateway, an
 * app) may export its own metrics from the global registry, and two owners of one registry clash on
 * names and on `collectDefaultMetrics`. Merge with `Registry.merge([host, metrics.registry])` to
 * serve both from one endpoint.
 *
 * `update()` runs on every checkpoint (10 Hz is normal), so each sample remembers the label object
 * and the value it last exported (`families.ts`): an unchanged value costs a map lookup and nothing
 * in prom-client. Samples whose reading is `null` are removed rather than exported as 0, and the samples of replicas,
 * GPUs and predictions that are gone are swept after each update.
 */
import { Counter, collectDefaultMetrics, Registry } from 'prom-client'
import { InvalidOptionError } from '../errors.js'
import type { MonitorStatus } from '../monitor/status.js'
import type { Checkpoint, LifecycleState } from '../telemetry/types.js'
import { GaugeFamily, kSep, type Labels, MirroredCounter } from './families.js'

export interface MonitorMetricsOptions {
  /**
   * Also export Node.js process metrics (prom-client's default collectors) as `vllm_monitor_*`.
   * Default false: the host usually exports its own, and the same process twice doubles the series.
   */
  defaultMetrics?: boolean
}

// A Record rather than an array so that a state added to LifecycleState fails to compile here.
const kStateSet: Record<LifecycleState, true> = {
  NOT_STARTED: true,
  INITIALIZING: true,
  LOADING_MODEL: true,
  READY: true,
  SERVING: true,
  DEGRADED: true,
  ERROR: true,
  SHUTTING_DOWN: true,
}
const kStates = Object.keys(kStateSet) as LifecycleState[]

/** Metric names, exported so that dashboards, tests and docs spell them the same way. */
export const MetricNames = {
  up: 'vllm:monitor_up',
  activeRequests: 'vllm:monitor_active_requests',
  tokensGenerated: 'vllm:monitor_tokens_generated_total',
  mitigationTriggered: 'vllm:monitor_mitigation_triggered_total',
  predictionAccuracy: 'vllm:monitor_prediction_accuracy',
  lifecycleState: 'vllm:monitor_lifecycle_state',
  fleetLifecycleState: 'vllm:monitor_fleet_lifecycle_state',
  kvCacheUsage: 'vllm:monitor_kv_cache_usage_ratio',
  requestsWaiting: 'vllm:monitor_requests_waiting',
  preemptions: 'vllm:monitor_preemptions_per_second',
  engineStalled: 'vllm:monitor_engine_stalled_seconds',
  ttftP99: 'vllm:monitor_ttft_p99_seconds',
  itlP99: 'vllm:monitor_itl_p99_seconds',
  gpuInfo: 'vllm:monitor_gpu_info',
  gpuMemoryUsed: 'vllm:monitor_gpu_memory_used_bytes',
  gpuMemoryTotal: 'vllm:monitor_gpu_memory_total_bytes',
  gpuUtilization: 'vllm:monitor_gpu_utilization_ratio',
  gpuPower: 'vllm:monitor_gpu_power_watts',
  gpuPowerLimit: 'vllm:monitor_gpu_power_limit_watts',
  gpuTemperature: 'vllm:monitor_gpu_temperature_celsius',
  gpuSmClock: 'vllm:monitor_gpu_sm_clock_hertz',
  gpuClockEventReasons: 'vllm:monitor_gpu_clock_event_reasons',
  gpuLost: 'vllm:monitor_gpu_lost',
  failureProbability: 'vllm:monitor_failure_probability',
  events: 'vllm:monitor_events_total',
} as const

export class MonitorMetrics {
  /** The registry holding only the monitor's metrics (and, if asked for, the process metrics). */
  readonly registry: Registry
  #epoch = 0
  // Events are counted once: the checkpoint keeps a bounded, time-ordered window of them, so the
  // newest `t` already counted (and how many events carried it) marks where new ones start.
  #eventsT = Number.NEGATIVE_INFINITY
  #eventsAtT = 0
  readonly #eventLabels = new Map<string, Labels<'type' | 'severity'>>()
  readonly #sum = new Map<string, number>()
  readonly #max = new Map<string, number>()
  readonly #stateKeyCache = new Map<string, string[]>()

  readonly #up: GaugeFamily<never>
  readonly #accuracy: GaugeFamily<never>
  readonly #fleetState: GaugeFamily<'state'>
  readonly #active: GaugeFamily<'replica'>
  readonly #waiting: GaugeFamily<'replica'>
  readonly #kv: GaugeFamily<'replica'>
  readonly #state: GaugeFamily<'replica' | 'state'>
  readonly #preemptions: GaugeFamily<'replica'>
  readonly #stalled: GaugeFamily<'replica'>
  readonly #ttftP99: GaugeFamily<'replica'>
  readonly #itlP99: GaugeFamily<'replica'>
  readonly #gpuInfo: GaugeFamily<'gpu' | 'uuid' | 'name' | 'replica'>
  readonly #gpu: Record<
    | 'memoryUsed'
    | 'memoryTotal'
    | 'utilization'
    | 'power'
    | 'powerLimit'
    | 'temperature'
    | 'smClock'
    | 'clockEvents'
    | 'lost',
    GaugeFamily<'gpu'>
  >
  readonly #failure: GaugeFamily<'replica' | 'fault'>
  readonly #tokens: MirroredCounter<'replica'>
  readonly #mitigations: MirroredCounter<'strategy' | 'outcome'>
  readonly #events: Counter<'type' | 'severity'>
  readonly #sweepable: ReadonlyArray<{ sweep(epoch: number): void }>

  constructor(options: MonitorMetricsOptions = {}) {
    if (options === null || typeof options !== 'object') {
      throw new InvalidOptionError('MonitorMetrics options must be an object')
    }
    const { defaultMetrics = false } = options
    if (typeof defaultMetrics !== 'boolean') {
      throw new InvalidOptionError(`options.defaultMetrics must be a boolean, found ${typeof defaultMetrics}`)
    }
    const r = new Registry()
    this.registry = r
    const n = MetricNames
    const g = <L extends string>(name: string, help: string, labels: readonly L[]) =>
      new GaugeFamily<L>(r, name, help, labels)

    this.#up = g(n.up, '1 while the monitor is active; 0 before its first checkpoint and after close.', [])
    this.#active = g(
      n.activeRequests,
      'Requests running on the replica (vllm:num_requests_running). Fleet total: sum(vllm:monitor_active_requests).',
      ['replica'],
    )
    this.#tokens = new MirroredCounter(
      r,
      n.tokensGenerated,
      "Tokens generated by the replica: follows vLLM's vllm:generation_tokens_total and keeps counting across engine restarts.",
      ['replica'],
    )
    this.#mitigations = new MirroredCounter(
      r,
      n.mitigationTriggered,
      'Mitigation actions by strategy and outcome (SUCCESS, PARTIAL, FAILURE, SKIPPED: refused by the safety gate, a dry run, or nothing to act on).',
      ['strategy', 'outcome'],
    )
    this.#accuracy = g(
      n.predictionAccuracy,
      'Fraction (0-1) of scored failure predictions that were right; absent until one has been scored.',
      [],
    )
    this.#state = g(n.lifecycleState, "1 for the replica's current lifecycle state, 0 for the others.", [
      'replica',
      'state',
    ])
    this.#fleetState = g(
      n.fleetLifecycleState,
      "1 for the fleet's rolled-up lifecycle state, 0 for the others.",
      ['state'],
    )
    this.#kv = g(n.kvCacheUsage, 'KV-cache blocks in use on the replica, 0-1 (vllm:kv_cache_usage_perc).', [
      'replica',
    ])
    this.#waiting = g(n.requestsWaiting, 'Requests queued on the replica (vllm:num_requests_waiting).', [
      'replica',
    ])
    this.#preemptions = g(
      n.preemptions,
      'Requests preempted per second on the replica, over the last scrape.',
      ['replica'],
    )
    this.#stalled = g(
      n.engineStalled,
      'Seconds since the replica last generated a token while requests were running; absent when idle.',
      ['replica'],
    )
    this.#ttftP99 = g(
      n.ttftP99,
      "p99 time to first token on the replica over the scraper's quantile window (60 s by default), from vllm:time_to_first_token_seconds buckets; absent without requests in the window.",
      ['replica'],
    )
    this.#itlP99 = g(
      n.itlP99,
      "p99 inter-token latency on the replica over the scraper's quantile window, from vllm:inter_token_latency_seconds buckets; absent without tokens in the window.",
      ['replica'],
    )
    this.#gpuInfo = g(n.gpuInfo, 'Always 1; labels name the GPU and the replica using it.', [
      'gpu',
      'uuid',
      'name',
      'replica',
    ])
    const gpu = (name: string, help: string) => g(name, help, ['gpu'])
    this.#gpu = {
      memoryUsed: gpu(n.gpuMemoryUsed, 'Framebuffer memory in use, bytes.'),
      memoryTotal: gpu(n.gpuMemoryTotal, 'Framebuffer memory, bytes.'),
      utilization: gpu(n.gpuUtilization, 'Fraction of the last sample period a kernel was running, 0-1.'),
      power: gpu(n.gpuPower, 'Board power draw, watts.'),
      powerLimit: gpu(n.gpuPowerLimit, 'Enforced board power limit, watts.'),
      temperature: gpu(n.gpuTemperature, 'GPU core temperature, degrees Celsius.'),
      smClock: gpu(n.gpuSmClock, 'SM clock, hertz.'),
      clockEvents: gpu(
        n.gpuClockEventReasons,
        'nvmlClocksEventReasons bitmask: 0x4 power cap, 0x20 software thermal, 0x40 hardware thermal, 0x80 power brake.',
      ),
      lost: gpu(n.gpuLost, '1 when the GPU has fallen off the bus (NVML GPU_IS_LOST).'),
    }
    this.#failure = g(
      n.failureProbability,
      'Predicted probability (0-1) that the fault happens; the highest over models and GPUs.',
      ['replica', 'fault'],
    )
    this.#events = new Counter({
      name: n.events,
      help: 'Events the monitor has reported (Xid, OOM, hang, lifecycle...), by type and severity.',
      labelNames: ['type', 'severity'],
      registers: [r],
    })
    this.#sweepable = [
      this.#up,
      this.#accuracy,
      this.#fleetState,
      this.#active,
      this.#waiting,
      this.#kv,
      this.#state,
      this.#preemptions,
      this.#stalled,
      this.#ttftP99,
      this.#itlP99,
      this.#gpuInfo,
      this.#failure,
      ...Object.values(this.#gpu),
      this.#tokens,
      this.#mitigations,
    ]
    if (defaultMetrics) collectDefaultMetrics({ register: r, prefix: 'vllm_monitor_' })
  }

  /** The Content-Type header value for `metrics()`. */
  get contentType(): string {
    return this.registry.contentType
  }

  /** The exposition in Prometheus text format 0.0.4. */
  metrics(): Promise<string> {
    return this.registry.metrics()
  }

  /** Sets every metric from the newest checkpoint and status. */
  update(checkpoint: Checkpoint, status: MonitorStatus): void {
    const e = ++this.#epoch
    this.#up.put('', status.monitorActive ? 1 : 0, e)
    this.#accuracy.put('', status.predictionAccuracy, e)
    for (const m of status.mitigations ?? []) {
      this.#mitigations.observe(`${m.strategy}|${m.outcome}`, m.count, e, {
        strategy: m.strategy,
        outcome: m.outcome,
      })
    }
    for (const s of kStates) this.#fleetState.put(s, s === checkpoint.lifecycleState ? 1 : 0, e)

    for (const rep of status.replicas) {
      const name = rep.replica
      this.#active.put(name, rep.activeRequests, e)
      this.#waiting.put(name, rep.waitingRequests, e)
      this.#kv.put(name, rep.kvCacheUsage, e)
      this.#tokens.observe(name, rep.tokensGenerated, e)
      this.#ttftP99.put(name, rep.ttftP99Ms === null ? null : rep.ttftP99Ms / 1000, e)
      this.#itlP99.put(name, rep.itlP99Ms === null ? null : rep.itlP99Ms / 1000, e)
      const keys = this.#stateKeys(name)
      for (let i = 0; i < kStates.length; i++)
        this.#state.put(keys[i]!, kStates[i] === rep.lifecycleState ? 1 : 0, e)
    }

    this.#updateEngines(checkpoint, e)
    this.#updateGpus(checkpoint, e)
    this.#updatePredictions(checkpoint, e)
    this.#countEvents(checkpoint)

    for (const f of this.#sweepable) f.sweep(e)
  }

  // With data parallelism a replica has one engine snapshot per engine: preemptions add up, and
  // the replica is as stalled as its most stalled engine.
  #updateEngines(checkpoint: Checkpoint, e: number): void {
    const sum = this.#sum
    const max = this.#max
    sum.clear()
    max.clear()
    for (const eng of checkpoint.engines) {
      const p = eng.derived.preemptionsPerSec
      if (p !== null) sum.set(eng.replica, (sum.get(eng.replica) ?? 0) + p)
      const st = eng.derived.stalledForMs
      if (st !== null) max.set(eng.replica, Math.max(max.get(eng.replica) ?? 0, st / 1000))
    }
    for (const [replica, v] of sum) this.#preemptions.put(replica, v, e)
    for (const [replica, v] of max) this.#stalled.put(replica, v, e)
  }

  #updateGpus(checkpoint: Checkpoint, e: number): void {
    const f = this.#gpu
    for (const r of checkpoint.gpus) {
      const k = String(r.gpu)
      this.#gpuInfo.put(k + kSep + (r.uuid ?? '') + kSep + (r.name ?? '') + kSep + (r.replica ?? ''), 1, e)
      f.lost.put(k, r.lost ? 1 : 0, e)
      f.memoryUsed.put(k, r.memoryUsedBytes, e)
      f.memoryTotal.put(k, r.memoryTotalBytes, e)
      f.utilization.put(k, r.gpuUtilizationPercent === null ? null : r.gpuUtilizationPercent / 100, e)
      f.power.put(k, r.powerWatts, e)
      f.powerLimit.put(k, r.powerLimitWatts, e)
      f.temperature.put(k, r.temperatureCelsius, e)
      f.smClock.put(k, r.smClockMhz === null ? null : r.smClockMhz * 1e6, e)
      f.clockEvents.put(k, r.clockEventReasons, e)
    }
  }

  // Several models (or one model per GPU) may forecast the same fault for a replica; alerting wants
  // the worst of them, and one sample per (replica, fault) keeps the series count bounded.
  #updatePredictions(checkpoint: Checkpoint, e: number): void {
    const max = this.#max
    max.clear()
    for (const p of checkpoint.predictions) {
      const key = (p.target.replica ?? '') + kSep + p.failureType
      const prev = max.get(key)
      if (prev === undefined || p.probability > prev) max.set(key, p.probability)
    }
    for (const [key, v] of max) this.#failure.put(key, v, e)
  }

  // The eight lifecycle-state keys of a replica, built once: update() would otherwise concatenate
  // and hash eight fresh strings per replica per checkpoint (that halved the cost of an update whose
  // values had not changed). The cap only bounds a fleet whose replica names keep changing.
  #stateKeys(replica: string): string[] {
    let keys = this.#stateKeyCache.get(replica)
    if (keys === undefined) {
      if (this.#stateKeyCache.size > 4096) this.#stateKeyCache.clear()
      keys = kStates.map((s) => replica + kSep + s)
      this.#stateKeyCache.set(replica, keys)
    }
    return keys
  }

  #countEvents(checkpoint: Checkpoint): void {
    const events = checkpoint.events
    const lastT = this.#eventsT
    let newestT = lastT
    let atNewest = this.#eventsAtT
    let seenAtLast = 0
    for (const ev of events) {
      if (ev.t < lastT) continue
      if (ev.t === lastT) {
        // The first #eventsAtT events at the last counted instant were counted by an earlier update.
        if (++seenAtLast <= this.#eventsAtT) continue
      }
      this.#countEvent(ev.type, ev.severity)
      if (ev.t > newestT) {
        newestT = ev.t
        atNewest = 0
      }
      if (ev.t === newestT) atNewest++
    }
    if (newestT === lastT) atNewest = Math.max(this.#eventsAtT, seenAtLast)
    this.#eventsT = newestT
    this.#eventsAtT = atNewest
  }

  #countEvent(type: string, severity: string): void {
    const key = type + kSep + severity
    let labels = this.#eventLabels.get(key)
    if (labels === undefined) {
      labels = { type, severity }
      this.#eventLabels.set(key, labels)
    }
    this.#events.inc(labels, 1)
  }
}
