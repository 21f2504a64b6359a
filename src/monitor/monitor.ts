/**
 * The monitor facade: `createMonitor(options)` wires sources (vLLM scrape, GPU, logs, whatever the
 * host adds) into the deterministic core, takes a checkpoint every `checkpointIntervalMs`, keeps the
 * HTTP surface and the recorder fed, and never throws into the host after construction: a failing
 * source, plugin or exporter becomes an entry in `errors` and an `'error'` event.
 */
import { EventEmitter } from 'node:events'
import { MonitorClosedError } from '../errors.js'
import { startHttpSurface } from '../export/http.js'
import { toExportJson } from '../export/json.js'
import { MonitorMetrics } from '../export/registry.js'
import { writePrometheusTextfile } from '../export/textfile.js'
import { PredictiveDetector } from '../forecast/predictive.js'
import { DEFAULT_SLO } from '../forecast/spec.js'
import { Gateway, type GatewayOptions } from '../gateway/gateway.js'
import { type WrapOptions, wrap } from '../gateway/wrap.js'
import { GpuReadingSource } from '../gpu/reading-source.js'
import { routingFromPicker } from '../mitigation/actuators.js'
import type { ContinuousLearner } from '../mitigation/learner.js'
import type { MitigationCount } from '../mitigation/orchestrator.js'
import { MitigationRuntime } from '../mitigation/runtime.js'
import { SimGpuSource } from '../sim/gpu-source.js'
import type {
  Checkpoint,
  Prediction,
  TelemetryRecord,
  TelemetrySource,
  TimedEvent,
  Transition,
} from '../telemetry/types.js'
import { TraceWriter } from '../trace/writer.js'
import { LogLineSource } from '../vllm/log-source.js'
import { HealthProbeSource } from '../vllm/probes.js'
import { HttpScrapeSource } from '../vllm/scraper.js'
import { MonitorCore } from './core.js'
import {
  e2eProbeOptionsSchema,
  type MonitorOptions,
  probesOptionsSchema,
  type ResolvedMonitorOptions,
  resolveOptions,
} from './options.js'
import type { MonitorStatus, ReplicaStatus } from './status.js'

export interface MonitorEvents {
  checkpoint: [Checkpoint]
  transition: [string, Transition]
  event: [TimedEvent]
  error: [Error]
}

export class VLLMEngineMonitor extends EventEmitter<MonitorEvents> {
  readonly options: ResolvedMonitorOptions
  readonly core: MonitorCore
  /** Resolves once the HTTP surface listens (or at once without one); never rejects. */
  readonly ready: Promise<void>
  /** The HTTP surface's base URL, once listening. */
  url: string | null = null
  /**
   * The forecaster (null when `predictive` is off or monitoring disabled). Its predictions are
   * attached to the checkpoints that follow each forecast tick.
   */
  readonly predictiveDetector: PredictiveDetector | null = null
  /**
   * The mitigation side (null while monitoring is disabled): the learner always, the orchestrator
   * when `autoMitigate`. See `continuousLearner`.
   */
  readonly mitigation: MitigationRuntime | null = null
  private gatewayInstance: Gateway | null = null
  private forecastInFlight = false
  private alarming = new Set<string>()
  private lastForecastSlot = Number.NEGATIVE_INFINITY
  private readonly now: () => number
  private readonly startWall = performance.now()
  private readonly sources: TelemetrySource[] = []
  private readonly logs: LogLineSource
  private readonly metrics: MonitorMetrics
  private readonly replicaUrls = new Map<string, string>()
  private timer: NodeJS.Timeout | null = null
  private writer: TraceWriter | null = null
  private http: { close(): Promise<void> } | null = null
  private closed = false
  private closing: Promise<void> | null = null
  private recordFailed = false
  private active: boolean

  constructor(options: MonitorOptions = {}) {
    super()
    this.options = resolveOptions(options)
    const o = this.options
    this.now = o.now ?? (() => performance.now() - this.startWall)
    this.active = o.enabled
    // Scrapes run on wall time; with a custom clock the ratio is unknown, so staleness is opt-in.
    const staleAfterMs =
      o.staleAfterMs ??
      (o.now === undefined
        ? Math.max(1000, 5 * o.scrapeIntervalMs, o.scrapeTimeoutMs + 2 * o.scrapeIntervalMs)
        : Number.POSITIVE_INFINITY)
    const probes = resolveProbes(o.probes)
    if (o.record !== undefined && o.enabled) {
      this.writer = new TraceWriter(o.record, {
        header: {
          source: 'record',
          replicas: o.replicas.map((r, i) =>
            typeof r === 'string' ? { name: `r${i}`, url: r } : { name: r.name ?? `r${i}`, url: r.url },
          ),
          meta: {
            checkpointIntervalMs: o.checkpointIntervalMs,
            hangAfterMs: o.hangAfterMs,
            scrapeIntervalMs: o.scrapeIntervalMs,
            recoverAfterMs: o.recoverAfterMs,
            kvPressureThreshold: o.kvPressureThreshold,
            ...(Number.isFinite(staleAfterMs) ? { staleAfterMs } : {}),
            ...(probes?.e2e ? { e2eFailuresBeforeError: probes.e2e.failuresBeforeError } : {}),
          },
        },
      })
    }
    const writer = this.writer
    this.core = new MonitorCore({
      checkpointIntervalMs: o.checkpointIntervalMs,
      hangAfterMs: o.hangAfterMs,
      scrapeIntervalMs: o.scrapeIntervalMs,
      recoverAfterMs: o.recoverAfterMs,
      kvPressureThreshold: o.kvPressureThreshold,
      staleAfterMs,
      ...(probes?.e2e ? { e2eFailuresBeforeError: probes.e2e.failuresBeforeError } : {}),
      detectors: o.detectors,
      plugins: o.plugins,
      onRecord:
        writer === null
          ? undefined
          : (r) => {
              if (this.recordFailed) return
              try {
                writer.write(r)
              } catch (err) {
                // Recording is a side line: say so once and keep monitoring.
                this.recordFailed = true
                this.reportError('VLLM_MONITOR_RECORD_FAILED', `recording stopped: ${(err as Error).message}`)
              }
            },
      onTransition: (replica, tr) => this.safeEmit('transition', replica, tr),
      onEvent: (e) => this.safeEmit('event', e),
    })
    this.metrics = new MonitorMetrics()
    this.logs = new LogLineSource(this.now)
    if (!o.enabled) {
      this.ready = Promise.resolve()
      return
    }
    const scrape = o.replicas.map((r, i) =>
      typeof r === 'string' ? { name: `r${i}`, url: r } : { name: r.name ?? `r${i}`, url: r.url },
    )
    for (const r of scrape) {
      this.replicaUrls.set(r.name, r.url)
      this.core.addReplica(r.name, { scraped: true })
    }
    if (scrape.length > 0) {
      this.sources.push(
        new HttpScrapeSource({
          replicas: scrape,
          intervalMs: o.scrapeIntervalMs,
          timeoutMs: o.scrapeTimeoutMs,
          quantileWindowMs: Math.max(o.quantileWindowMs, o.scrapeIntervalMs),
          now: this.now,
        }),
      )
      if (probes !== null) {
        this.sources.push(
          new HealthProbeSource({
            replicas: scrape,
            now: this.now,
            intervalMs: probes.intervalMs,
            timeoutMs: probes.timeoutMs,
            summaryIntervalMs: probes.summaryIntervalMs,
            e2e:
              probes.e2e === null
                ? false
                : { intervalMs: probes.e2e.intervalMs, timeoutMs: probes.e2e.timeoutMs },
            ...(probes.apiKey === undefined ? {} : { apiKey: probes.apiKey }),
          }),
        )
      }
    }
    const gpu = o.gpu
    if (typeof gpu === 'object') {
      this.sources.push(
        new SimGpuSource({
          controlUrl: gpu.simUrl,
          intervalMs: o.gpuIntervalMs,
          now: this.now,
          onError: (err) =>
            this.reportError('VLLM_MONITOR_GPU_SOURCE_FAILED', `simulated GPU poll failed: ${err.message}`),
        }),
      )
    } else if (gpu !== 'none') {
      try {
        // Which replica runs on which GPU: as configured, else the only replica owns every GPU
        // (so its Xids and throttling count against it); with several, unknown until mapped.
        const only = scrape.length === 1 ? (scrape[0]?.name ?? null) : null
        const map = o.gpuReplicas
        const replicaOfGpu = (g: number) => map?.[String(g)] ?? only
        this.sources.push(
          new GpuReadingSource({
            mode: gpu,
            intervalMs: o.gpuIntervalMs,
            now: this.now,
            replicaOfGpu,
            ...(o.nvmlLibraryPath === undefined ? {} : { libraryPath: o.nvmlLibraryPath }),
          }),
        )
      } catch (err) {
        this.reportError(
          (err as { code?: string }).code ?? 'VLLM_MONITOR_GPU_SOURCE_FAILED',
          `GPU source unavailable: ${(err as Error).message}`,
        )
      }
    }
    if (o.predictive) {
      const f = o.forecast
      this.predictiveDetector = new PredictiveDetector(this.core.store, {
        ...(f.model === undefined ? {} : { model: f.model }),
        threads: f.threads,
        taskTimeoutMs: f.taskTimeoutMs,
        backend: f.backend,
        inlineMaxMacs: f.inlineMaxMacs,
        fallback: f.fallback,
        ...(f.slo === undefined ? {} : { slo: f.slo }),
        learning: o.learning ? { intervalMs: f.retrainIntervalMs, minSamples: f.retrainMinSamples } : false,
        onError: (code, message) => this.reportError(code, message),
      })
    }
    const detector = this.predictiveDetector
    this.mitigation = new MitigationRuntime({
      options: o.mitigation,
      act: o.autoMitigate,
      threshold: o.mitigationThreshold,
      slo: o.forecast.slo ?? DEFAULT_SLO,
      now: this.now,
      replicaUrl: (replica) => this.replicaUrls.get(replica) ?? null,
      emit: (e) => this.push({ t: this.now(), kind: 'event', ...e }),
      reportError: (code, message) => this.reportError(code, message),
      reportOutcome: (r) => detector?.reportOutcome(r),
    })
    this.sources.push(this.logs, ...o.sources)
    const push = (record: TelemetryRecord) => this.push(record)
    for (const s of this.sources) {
      try {
        const started = s.start(push)
        if (started instanceof Promise) {
          started.catch((err: unknown) =>
            this.reportError(
              'VLLM_MONITOR_SOURCE_FAILED',
              `source ${s.name} failed to start: ${(err as Error).message}`,
            ),
          )
        }
      } catch (err) {
        this.reportError(
          'VLLM_MONITOR_SOURCE_FAILED',
          `source ${s.name} failed to start: ${(err as Error).message}`,
        )
      }
    }
    this.watchMemory()
    this.schedule()
    this.ready = this.startHttp()
  }

  /**
   * The continuous learner: which strategy works for which failure in which context, its rules
   * in words and its recommendations. Register custom strategies here. Null while disabled.
   */
  get continuousLearner(): ContinuousLearner | null {
    return this.mitigation?.learner ?? null
  }

  /**
   * The native fast path: the sampler thread watches every GPU's memory and, past
   * `mitigation.nativeMemoryFraction`, the orchestrator caps the replica at once, without waiting
   * for a checkpoint or a forecast.
   */
  private watchMemory(): void {
    const orch = this.mitigation?.orchestrator ?? null
    if (orch === null) return
    const fraction = this.options.mitigation.nativeMemoryFraction
    for (const s of this.sources) {
      if (!(s instanceof GpuReadingSource)) continue
      const sampler = s.gpu.sampler
      if (sampler === null) continue
      const map = this.options.gpuReplicas
      const names = [...this.replicaUrls.keys()]
      for (const d of sampler.devices()) {
        const replica = map?.[String(d.index)] ?? (names.length === 1 ? (names[0] ?? null) : null)
        if (replica === null) continue
        try {
          sampler.watch({ device: d.index, memoryUsedFraction: fraction }, (alert) => {
            orch.nativeAlert(
              replica,
              `GPU ${alert.device} memory ${(alert.usedFraction * 100).toFixed(1)} % (native watch, bound ${(fraction * 100).toFixed(0)} %)`,
            )
          })
        } catch (err) {
          this.reportError(
            'VLLM_MONITOR_MITIGATION_FAILED',
            `native memory watch on GPU ${d.index}: ${(err as Error).message}`,
          )
        }
      }
    }
  }

  /**
   * Takes checkpoints on the grid. On the monitor's own clock each timer fires just after a grid
   * point (an interval timer drifts and would add up to a whole step of delay to every detection);
   * on an injected clock (a simulator's) it fires every step of wall time and catches up.
   */
  private schedule(): void {
    if (this.closed) return
    const step = this.options.checkpointIntervalMs
    const delay = this.options.now === undefined ? step - (this.now() % step) + 0.5 : step
    this.timer = setTimeout(() => {
      this.tick()
      this.schedule()
    }, delay)
    this.timer.unref()
  }

  /**
   * The request-path gateway over this monitor's replicas: admission (adaptive concurrency limit,
   * priority queue, 429 + Retry-After), replica picking from each checkpoint (KV, queue,
   * staleness, lifecycle, forecast risk) and request telemetry fed back as events. Created on the
   * first call, with these options; later calls return the same one.
   */
  gateway(options: Partial<Omit<GatewayOptions, 'push' | 'now'>> = {}): Gateway {
    if (this.gatewayInstance !== null) return this.gatewayInstance
    const replicas = options.replicas ?? [...this.replicaUrls].map(([name, url]) => ({ name, url }))
    const g = new Gateway({ ...options, replicas, push: (r) => this.push(r), now: this.now })
    this.on('checkpoint', (cp) => g.refresh(cp))
    // The gateway's levers become the mitigation side's, unless the user supplied their own.
    const given = (this.options.mitigation.actuators ?? {}) as Record<string, unknown>
    const act = this.mitigation?.actuators
    if (act !== undefined) {
      if (given.admission === undefined) act.admission = g.admission
      if (given.routing === undefined) act.routing = routingFromPicker(g.picker)
      if (given.shedding === undefined) act.shedding = g.admission
    }
    if (this.core.checkpoint !== null) g.refresh(this.core.checkpoint)
    this.gatewayInstance = g
    return g
  }

  /**
   * `client` (an OpenAI client, or any engine-like object) behind this monitor's gateway: every
   * call to its request methods is admitted (or refused with an AdmissionRejectedError), timed
   * and its tokens counted; the object's behaviour and types are otherwise unchanged.
   */
  wrap<T extends object>(client: T, options?: WrapOptions): T {
    return wrap(this.gateway(), client, options)
  }

  /** Adds a record from outside (a custom source, a replay). */
  push(record: TelemetryRecord): void {
    if (this.closed || !this.active) return
    this.core.push(record)
  }

  /** Feeds one log line printed by a replica (supervised process, tailed file, simulator). */
  logLine(replica: string, line: string): void {
    if (this.closed || !this.active) return
    this.logs.line(replica, line)
  }

  /** The newest checkpoint (taken every `checkpointIntervalMs`). */
  getCheckpoint(): Checkpoint | null {
    return this.core.checkpoint
  }

  getStatus(): MonitorStatus {
    return statusOf(this.core, this.core.checkpoint, {
      monitorActive: this.active && !this.closed,
      predictive: this.options.predictive,
      learning: this.options.learning,
      autoMitigate: this.options.autoMitigate,
      uptimeMs: this.now(),
      urls: this.replicaUrls,
      predictionAccuracy: this.predictiveDetector?.accuracy() ?? null,
      mitigations: this.mitigation?.orchestrator?.triggered() ?? [],
      mitigationInProgress: this.mitigation?.orchestrator?.inProgress ?? false,
    })
  }

  /** The same as `getStatus()`; the name vLLM-side integrations expect. */
  getEngineStatus(): MonitorStatus {
    return this.getStatus()
  }

  /** Everything the monitor knows, JSON-safe: status, the newest checkpoint, lifecycle histories. */
  exportData(): ReturnType<typeof toExportJson> {
    // Never tick here: checkpoints stay on the grid the recorder and replay share.
    const cp = this.core.peek(this.now())
    const transitions: Record<string, Transition[]> = {}
    for (const name of this.core.replicaNames()) transitions[name] = this.core.history(name)
    return toExportJson({ exportedAt: new Date(), status: this.getStatus(), checkpoint: cp, transitions })
  }

  /** Writes the metrics to `path` (node_exporter textfile collector: `*.prom`, atomic rename). */
  async exportPrometheus(path: string): Promise<void> {
    if (this.closed) throw new MonitorClosedError('exportPrometheus() called after close()')
    await writePrometheusTextfile(path, await this.metricsText())
  }

  /** The Prometheus exposition of the monitor's own metrics. */
  async metricsText(): Promise<string> {
    const cp = this.core.checkpoint
    if (cp !== null) this.metrics.update(cp, this.getStatus())
    return this.metrics.metrics()
  }

  /** Lifecycle history of one replica. */
  history(replica: string): Transition[] {
    return this.core.history(replica)
  }

  /** Stops everything; resolves once sources, plugins, the HTTP port and the recorder are closed. */
  close(): Promise<void> {
    this.closing ??= this.shutdown()
    return this.closing
  }

  private async shutdown(): Promise<void> {
    if (this.timer !== null) clearTimeout(this.timer)
    this.timer = null
    // Apply (and record) what the sources delivered, up to the grid point at or after now.
    if (this.active) this.tick(true)
    this.closed = true
    for (const s of this.sources) {
      try {
        await s.stop()
      } catch (err) {
        this.reportError(
          'VLLM_MONITOR_SOURCE_FAILED',
          `source ${s.name} failed to stop: ${(err as Error).message}`,
        )
      }
    }
    for (const p of this.options.plugins) {
      try {
        await p.close?.()
      } catch (err) {
        this.reportError(
          'VLLM_MONITOR_PLUGIN_FAILED',
          `plugin ${p.name} failed to close: ${(err as Error).message}`,
        )
      }
    }
    await this.ready
    await this.mitigation?.close()
    await this.predictiveDetector?.close()
    await this.http?.close()
    try {
      await this.writer?.close()
    } catch (err) {
      this.reportError('VLLM_MONITOR_RECORD_FAILED', `trace not finished: ${(err as Error).message}`)
    }
  }

  private tick(final = false): void {
    if (this.closed) return
    try {
      const step = this.options.checkpointIntervalMs
      const now = final ? Math.ceil(this.now() / step) * step : this.now()
      // Take every grid point up to now, so a late timer does not skip one (replays tick each).
      // The grid starts at 0 so a replay of the recorded trace ticks at the same instants.
      let next = this.core.lastTick === Number.NEGATIVE_INFINITY ? 0 : this.core.lastTick + step
      let cp: Checkpoint | null = null
      let guard = 0
      while (next <= now && guard++ < 10_000) {
        cp = this.core.tick(next)
        next += step
      }
      if (cp !== null) {
        this.safeEmit('checkpoint', cp)
        // Not on the final tick of close(): it would start workers only to stop them.
        if (!final) this.forecast(cp)
      }
    } catch (err) {
      this.reportError(
        'VLLM_MONITOR_TICK_FAILED',
        `checkpoint failed: ${(err as Error).stack ?? String(err)}`,
      )
    }
  }

  /**
   * Starts a forecast tick when one is due and none is running: the predictions land on the
   * core when the workers answer, and ride on every checkpoint after that. A tick that is still
   * running when the next is due is not queued behind: that tick is skipped.
   */
  private forecast(cp: Checkpoint): void {
    const d = this.predictiveDetector
    const every = this.options.forecast.intervalMs
    // On the forecast grid (whole seconds by default), as the model's training rows were taken:
    // the first checkpoint at or after each grid point, skipped while the last is still running.
    const slot = Math.floor(cp.t / every)
    if (d === null && slot > this.lastForecastSlot) {
      // Without a forecaster the orchestrator still needs checkpoints: the native reflex's
      // considered response, the outcome judge and rollbacks (which lift the reflex's cap) run on them.
      this.lastForecastSlot = slot
      this.mitigation?.orchestrator?.observe(cp, [], [])
    }
    if (d === null || this.forecastInFlight || slot <= this.lastForecastSlot) return
    this.forecastInFlight = true
    this.lastForecastSlot = slot
    d.analyzeCheckpoint(cp)
      .then((preds) => {
        if (this.closed) return
        this.core.predictions = preds
        const alarms = d.alarms(preds)
        this.announce(alarms)
        this.mitigation?.orchestrator?.observe(cp, preds, alarms)
      })
      .catch((err: unknown) =>
        this.reportError('VLLM_MONITOR_FORECAST_FAILED', `forecast failed: ${(err as Error).message}`),
      )
      .finally(() => {
        this.forecastInFlight = false
      })
  }

  /**
   * A `prediction` event when an alarm starts (per replica and failure type); it can start again
   * once it has been quiet for a whole forecast tick.
   */
  private announce(alarms: Prediction[]): void {
    const now = new Set<string>()
    for (const p of alarms) {
      const key = `${p.target.replica ?? '*'}|${p.failureType}`
      now.add(key)
      if (this.alarming.has(key)) continue
      const ttf = p.timeToFailureS === null ? '' : `, failure in ~${p.timeToFailureS} s`
      this.push({
        t: this.now(),
        kind: 'event',
        type: 'prediction',
        severity: 'warning',
        replica: p.target.replica,
        gpu: p.target.gpu,
        message:
          `${p.failureType} predicted within ${p.horizonS} s (p ${p.probability.toFixed(2)}${ttf}; ${p.model})` +
          (p.evidence.length > 0 ? `: ${p.evidence.join('; ')}` : ''),
        data: {
          failureType: p.failureType,
          probability: p.probability,
          timeToFailureS: p.timeToFailureS,
          horizonS: p.horizonS,
          model: p.model,
        },
      })
    }
    this.alarming = now
  }

  private async startHttp(): Promise<void> {
    const http = this.options.http
    if (http === false) return
    try {
      const surface = await startHttpSurface({
        host: http.host,
        port: http.port,
        metrics: { metrics: () => this.metricsText(), contentType: this.metrics.contentType },
        getStatus: () => this.getStatus(),
        exportData: () => this.exportData(),
        unref: true,
        onError: (err) => this.reportError('VLLM_MONITOR_HTTP_FAILED', err.message),
      })
      if (this.closed) {
        await surface.close()
        return
      }
      this.http = surface
      this.url = surface.url
    } catch (err) {
      this.reportError('VLLM_MONITOR_HTTP_FAILED', `HTTP surface not started: ${(err as Error).message}`)
    }
  }

  private reportError(code: string, message: string): void {
    if (!this.closed && this.active) {
      this.core.push({
        t: this.now(),
        kind: 'event',
        type: 'monitor-error',
        severity: 'warning',
        replica: null,
        gpu: null,
        message,
        data: { code },
      })
    } else this.core.error(this.now(), code, message)
    if (this.listenerCount('error') > 0) {
      const err = Object.assign(new Error(message), { code })
      this.safeEmit('error', err)
    }
  }

  private safeEmit<K extends keyof MonitorEvents>(name: K, ...args: MonitorEvents[K]): void {
    try {
      ;(this.emit as (n: string, ...a: unknown[]) => boolean)(name, ...args)
    } catch (err) {
      process.emitWarning(
        `vllm-monitor: a '${String(name)}' listener threw: ${(err as Error)?.stack ?? String(err)}`,
        {
          code: 'VLLM_MONITOR_CALLBACK_THREW',
        },
      )
    }
  }
}

export interface StatusContext {
  monitorActive: boolean
  predictive: boolean
  learning: boolean
  autoMitigate: boolean
  uptimeMs: number
  urls: Map<string, string>
  /** Alarms that came true / alarms scored (predictive detector), null before the first. */
  predictionAccuracy?: number | null
  mitigations?: readonly MitigationCount[]
  mitigationInProgress?: boolean
}

/** Builds `getStatus()` from a checkpoint (shared with replay). */
export function statusOf(core: MonitorCore, cp: Checkpoint | null, ctx: StatusContext): MonitorStatus {
  const replicas: ReplicaStatus[] = []
  let active: number | null = null
  let tokens: number | null = null
  let stepSum = 0
  let stepN = 0
  for (const e of cp?.engines ?? []) {
    const r = e.reading
    const d = e.derived
    const running = r?.requestsRunning ?? null
    // Steps are back to back while requests run, so 1/steps-per-second is the mean step time.
    const stepMs =
      running !== null && running > 0 && d.stepsPerSec !== null && d.stepsPerSec > 0
        ? 1000 / d.stepsPerSec
        : null
    if (running !== null) active = (active ?? 0) + running
    if (r?.generationTokensTotal != null) tokens = (tokens ?? 0) + r.generationTokensTotal
    if (stepMs !== null) {
      stepSum += stepMs
      stepN++
    }
    replicas.push({
      replica: e.replica,
      url: ctx.urls.get(e.replica) ?? null,
      lifecycleState: e.lifecycleState,
      reason: e.reason,
      activeRequests: running,
      waitingRequests: r?.requestsWaiting ?? null,
      kvCacheUsage: r?.kvCacheUsage ?? null,
      tokensGenerated: r?.generationTokensTotal ?? null,
      preemptionsTotal: r?.preemptionsTotal ?? null,
      generationTokensPerSec: d.generationTokensPerSec,
      avgStepDurationMs: stepMs,
      ttftMeanMs: d.ttftMeanMs,
      itlMeanMs: d.itlMeanMs,
      ttftP99Ms: r?.ttftP99Ms ?? null,
      itlP99Ms: r?.itlP99Ms ?? null,
    })
  }
  return {
    monitorActive: ctx.monitorActive,
    lifecycleState: cp?.lifecycleState ?? 'NOT_STARTED',
    activeRequests: active,
    tokensGenerated: tokens,
    avgStepDurationMs: stepN > 0 ? stepSum / stepN : null,
    mitigationInProgress: ctx.mitigationInProgress ?? false,
    mitigationsTriggered: (ctx.mitigations ?? []).reduce(
      (n, m) => n + (m.outcome === 'SKIPPED' ? 0 : m.count),
      0,
    ),
    mitigations: (ctx.mitigations ?? []).map((m) => ({ ...m })),
    predictionAccuracy: ctx.predictionAccuracy ?? null,
    predictiveEnabled: ctx.predictive,
    learningEnabled: ctx.learning,
    autoMitigate: ctx.autoMitigate,
    uptimeMs: ctx.uptimeMs,
    replicas,
    gpus: cp?.gpus ?? [],
    predictions: cp?.predictions ?? [],
    labels: { ...core.labelCounts },
  }
}

/** `probes: true` / `{...}` with the defaults filled in (end-to-end probe null when off); null when off. */
function resolveProbes(p: ResolvedMonitorOptions['probes']) {
  if (p === false) return null
  const o = p === true ? probesOptionsSchema.parse({}) : p
  const e2e = o.e2e === false ? null : o.e2e === true ? e2eProbeOptionsSchema.parse({}) : o.e2e
  return { ...o, e2e }
}

/** Creates and starts a monitor. Throws only for invalid options (naming them). */
export function createMonitor(options: MonitorOptions = {}): VLLMEngineMonitor {
  return new VLLMEngineMonitor(options)
}
