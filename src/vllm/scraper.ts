/**
 * Scrapes vLLM replicas over HTTP: `GET /metrics` (and `GET /health`) per replica per tick, turned
 * into `engine` telemetry records.
 *
 * Built on `node:http` with a keep-alive agent rather than `fetch`: at a 100 ms interval the
 * per-request cost matters, and the timeout must be a hard deadline over connect + headers + body,
 * which a plain timer around `req.destroy()` gives exactly. Nothing here throws into the monitor or
 * leaves a rejected promise behind: every failure becomes a reading with `reachable: false` and the
 * reason in `error`.
 */
import http from 'node:http'
import https from 'node:https'
import { debuglog } from 'node:util'
import { InvalidArgumentError, InvalidOptionError, ScrapeError } from '../errors.js'
import type { EngineReading, TelemetryRecord, TelemetrySource } from '../telemetry/types.js'
import { emptyEngineReading, mergeEngineReadings, readEngineMetrics } from './engine-metrics.js'
import { type ParsedExposition, parseExposition } from './exposition.js'
import {
  DEFAULT_QUANTILE_WINDOW_MS,
  type LatencyHistograms,
  LatencyWindows,
  mergeLatencyHistograms,
} from './histogram-window.js'
import { checkTimeoutMs, endpointUrl, httpCall, parseHttpUrl } from './http-call.js'

const debug = debuglog('vllm-monitor')

export interface ScrapeReplica {
  /** The monitor's name for this vLLM server; becomes `replica` in every reading. */
  name: string
  /** Base URL, e.g. `http://10.0.0.5:8000` (a path prefix is kept: `<url>/metrics`). */
  url: string
}

export interface HttpScrapeSourceOptions {
  replicas: ScrapeReplica[]
  /** Scrape period. Default 100 ms, minimum 20 ms. */
  intervalMs?: number
  /** Deadline for each request, connect to last byte. Default 1000 ms. */
  timeoutMs?: number
  /** Also GET `/health` (concurrently with `/metrics`). Default true. */
  probeHealth?: boolean
  /**
   * How far back the latency quantiles of each reading (`ttftP99Ms`...) look, ms. Default 60 000;
   * at least `intervalMs`.
   */
  quantileWindowMs?: number
  /** ms since the monitor started; stamps each record, so tests and replays control time. */
  now: () => number
}

export interface ReplicaScrapeStats {
  /** Scrapes completed (successful or not). */
  scrapes: number
  /** Scrapes whose `/metrics` failed (unreachable, timeout, non-2xx). */
  failures: number
  /** Ticks skipped because this replica's previous scrape was still in flight. */
  skippedTicks: number
  /** Wall time of the last completed scrape (both requests), ms. */
  lastDurationMs: number | null
  lastError: string | null
}

export interface ScrapeStats {
  ticks: number
  /** Times `push` threw; the record was dropped and scraping went on. */
  pushErrors: number
  replicas: Record<string, ReplicaScrapeStats>
}

export const DEFAULT_INTERVAL_MS = 100
export const MIN_INTERVAL_MS = 20
export const DEFAULT_TIMEOUT_MS = 1000
/** A real exposition is ~60 KB; a body this long (UTF-16 units) is not one and is not buffered. */
export const MAX_BODY_CHARS = 32 * 1024 * 1024

/** Error strings of a reading (besides errno codes such as ECONNREFUSED and `HTTP <status>`). */
export const ScrapeErrorReasons = {
  /** The request was still in flight when `stop()` was called. */
  ABORTED: 'ABORTED',
  /** The body exceeded MAX_BODY_CHARS. */
  BODY_TOO_LARGE: 'BODY_TOO_LARGE',
  /** `/metrics` answered 2xx but some lines were not Prometheus text. */
  BAD_EXPOSITION: 'BAD_EXPOSITION',
  /** `/metrics` answered but carries no `vllm:` series (metrics disabled, or not a vLLM server). */
  NO_VLLM_METRICS: 'NO_VLLM_METRICS',
} as const

interface GetResult {
  status: number | null
  body: string | null
  /** null on a 2xx answer; else an errno code, `HTTP <status>`, or a ScrapeErrorReasons value. */
  error: string | null
}

interface GetOptions {
  timeoutMs: number
  agent: http.Agent | undefined
  readBody: boolean
  /** Aborts the request (`stop()`). */
  signal?: AbortSignal
}

/**
 * One GET with a hard deadline through the shared `httpCall` (never rejects; a keep-alive socket
 * the server had just closed is retried once within the deadline). A non-2xx answer is an error
 * (`HTTP <status>`) with no body.
 */
async function get(url: URL, o: GetOptions): Promise<GetResult> {
  const r = await httpCall({
    method: 'GET',
    url,
    timeoutMs: o.timeoutMs,
    agent: o.agent,
    headers: { accept: 'text/plain;version=0.0.4;q=0.9,*/*;q=0.1' },
    retryOnReset: true,
    maxBodyChars: MAX_BODY_CHARS,
    readBody: o.readBody,
    ...(o.signal === undefined ? {} : { signal: o.signal }),
  })
  if (r.error !== null) return failure(r.error)
  const status = r.status as number
  if (status < 200 || status > 299) return { status, body: null, error: `HTTP ${status}` }
  return { status, body: o.readBody ? r.body : null, error: null }
}

function failure(error: string): GetResult {
  return { status: null, body: null, error }
}

function checkBoolean(v: unknown, where: string): boolean {
  if (typeof v !== 'boolean') throw new InvalidOptionError(`${where} must be a boolean`)
  return v
}

interface ScrapeResult {
  readings: EngineReading[]
  /** The latency histograms of the server (its engines merged); null when /metrics failed. */
  histograms: LatencyHistograms | null
}

/** Both requests of one scrape, turned into readings. Never rejects. */
async function scrapeReplica(
  replica: string,
  metricsUrl: URL,
  healthUrl: URL | null,
  o: GetOptions,
  onMetricsDone?: () => void,
): Promise<ScrapeResult> {
  const metricsP = get(metricsUrl, { ...o, readBody: true }).then((r) => {
    onMetricsDone?.()
    return r
  })
  const healthP = healthUrl === null ? null : get(healthUrl, { ...o, readBody: false })
  const [metrics, health] = await Promise.all([metricsP, healthP])
  const healthStatus = health?.status ?? null
  if (metrics.error !== null || metrics.body === null) {
    const r = emptyEngineReading(replica)
    r.reachable = false
    r.healthStatus = healthStatus
    r.error = metrics.error ?? 'ERROR'
    return { readings: [r], histograms: null }
  }
  return toReadings(replica, parseExposition(metrics.body), healthStatus)
}

function toReadings(replica: string, parsed: ParsedExposition, healthStatus: number | null): ScrapeResult {
  const histograms: LatencyHistograms[] = []
  const readings = readEngineMetrics(parsed, replica, histograms)
  const hasVllm = parsed.samples.some((s) => s.name.startsWith('vllm:'))
  const error =
    parsed.errors.length > 0
      ? ScrapeErrorReasons.BAD_EXPOSITION
      : hasVllm
        ? null
        : ScrapeErrorReasons.NO_VLLM_METRICS
  for (const r of readings) {
    r.healthStatus = healthStatus
    r.error = error
  }
  // One reading per server and scrape: the store and the lifecycle key on the replica.
  if (readings.length > 1)
    return { readings: [mergeEngineReadings(readings)], histograms: mergeLatencyHistograms(histograms) }
  return { readings, histograms: histograms[0] ?? null }
}

/**
 * Polls each replica's `/metrics` and `/health` every `intervalMs` and pushes one `engine` record
 * per scrape (a data-parallel server's engines merged, see `mergeEngineReadings`) (`t` = `now()` when `/metrics` completed). A replica whose previous scrape
 * is still in flight skips the tick (counted in `stats`), so a slow server never gets overlapping
 * scrapes. Unreachable servers give one reading with `reachable: false`, every metric null and the
 * reason in `error` (`ECONNREFUSED`, `ETIMEDOUT`, `ECONNRESET`, `HTTP 500`...).
 *
 * Each replica keeps a {@link LatencyWindows}: the TTFT, ITL, end-to-end and queue-time buckets of
 * every successful scrape (a DP server's engines summed bucket by bucket) go into it, and each
 * reading carries the quantiles over the last `quantileWindowMs` (`ttftP99Ms`...; null until two
 * scrapes are in the window). A restarted server's lower counts restart the window.
 */
export class HttpScrapeSource implements TelemetrySource {
  readonly name = 'vllm-http'
  readonly #replicas: Array<{
    name: string
    metricsUrl: URL
    healthUrl: URL | null
    busy: boolean
    stats: ReplicaScrapeStats
    latency: LatencyWindows
  }>
  readonly #intervalMs: number
  readonly #timeoutMs: number
  readonly #now: () => number
  #timer: NodeJS.Timeout | null = null
  #agents: { http: http.Agent; https: https.Agent } | null = null
  #abort = new AbortController()
  /** Bumped by stop(): a scrape started in an earlier run pushes nothing. */
  #run = 0
  #push: ((record: TelemetryRecord) => void) | null = null
  #ticks = 0
  #pushErrors = 0

  constructor(options: HttpScrapeSourceOptions) {
    if (options === null || typeof options !== 'object') {
      throw new InvalidOptionError('options must be an object')
    }
    const { replicas, intervalMs = DEFAULT_INTERVAL_MS, timeoutMs = DEFAULT_TIMEOUT_MS } = options
    const probeHealth = checkBoolean(options.probeHealth ?? true, 'options.probeHealth')
    if (!Array.isArray(replicas) || replicas.length === 0) {
      throw new InvalidOptionError('options.replicas must be a non-empty array of { name, url }')
    }
    if (typeof intervalMs !== 'number' || !Number.isFinite(intervalMs) || intervalMs < MIN_INTERVAL_MS) {
      throw new InvalidOptionError(`options.intervalMs must be a number >= ${MIN_INTERVAL_MS}`)
    }
    this.#intervalMs = intervalMs
    this.#timeoutMs = checkTimeoutMs(timeoutMs, 'options.timeoutMs')
    const { quantileWindowMs = DEFAULT_QUANTILE_WINDOW_MS } = options
    if (
      typeof quantileWindowMs !== 'number' ||
      !Number.isFinite(quantileWindowMs) ||
      quantileWindowMs < intervalMs
    ) {
      throw new InvalidOptionError(
        'options.quantileWindowMs must be a number of milliseconds >= options.intervalMs',
      )
    }
    if (typeof options.now !== 'function') {
      throw new InvalidOptionError('options.now must be a function returning ms since the monitor started')
    }
    this.#now = options.now
    const names = new Set<string>()
    this.#replicas = replicas.map((r, i) => {
      const where = `options.replicas[${i}]`
      if (r === null || typeof r !== 'object') throw new InvalidOptionError(`${where} must be { name, url }`)
      if (typeof r.name !== 'string' || r.name === '') {
        throw new InvalidOptionError(`${where}.name must be a non-empty string`)
      }
      if (names.has(r.name)) throw new InvalidOptionError(`${where}.name "${r.name}" is used twice`)
      names.add(r.name)
      const base = parseHttpUrl(r.url, `${where}.url`)
      return {
        name: r.name,
        metricsUrl: endpointUrl(base, '/metrics'),
        healthUrl: probeHealth ? endpointUrl(base, '/health') : null,
        busy: false,
        stats: { scrapes: 0, failures: 0, skippedTicks: 0, lastDurationMs: null, lastError: null },
        latency: new LatencyWindows({ windowMs: quantileWindowMs }),
      }
    })
  }

  /** Starts polling (the first scrape is immediate). Calling it while running does nothing. */
  start(push: (record: TelemetryRecord) => void): void {
    if (typeof push !== 'function') throw new InvalidArgumentError('start: push must be a function')
    if (this.#timer !== null) return
    this.#push = push
    // Two sockets per replica (metrics + health) stay open between ticks.
    const agentOptions = { keepAlive: true, maxSockets: 4, keepAliveMsecs: 1000 }
    this.#agents = { http: new http.Agent(agentOptions), https: new https.Agent(agentOptions) }
    this.#timer = setInterval(() => this.#tick(), this.#intervalMs)
    this.#timer.unref()
    this.#tick()
  }

  /** Stops polling, aborts in-flight requests and closes idle sockets. Nothing is pushed after it. */
  stop(): void {
    if (this.#timer !== null) clearInterval(this.#timer)
    this.#timer = null
    this.#run++
    this.#push = null
    this.#abort.abort()
    this.#abort = new AbortController()
    this.#agents?.http.destroy()
    this.#agents?.https.destroy()
    this.#agents = null
    for (const r of this.#replicas) r.busy = false
  }

  get stats(): ScrapeStats {
    const replicas: Record<string, ReplicaScrapeStats> = {}
    for (const r of this.#replicas) replicas[r.name] = { ...r.stats }
    return { ticks: this.#ticks, pushErrors: this.#pushErrors, replicas }
  }

  #tick(): void {
    this.#ticks++
    for (const r of this.#replicas) {
      if (r.busy) {
        r.stats.skippedTicks++
        continue
      }
      r.busy = true
      const run = this.#run
      const startedAt = performance.now()
      let t: number | null = null
      const agent = r.metricsUrl.protocol === 'https:' ? this.#agents?.https : this.#agents?.http
      const o: GetOptions = { timeoutMs: this.#timeoutMs, agent, readBody: true, signal: this.#abort.signal }
      scrapeReplica(r.name, r.metricsUrl, r.healthUrl, o, () => {
        t = this.#safeNow()
      })
        .then(({ readings, histograms }) => {
          if (run !== this.#run) return
          r.busy = false
          r.stats.scrapes++
          r.stats.lastDurationMs = performance.now() - startedAt
          const first = readings[0]
          r.stats.lastError = first?.error ?? null
          if (first && !first.reachable) r.stats.failures++
          if (t === null) return
          if (histograms !== null) r.latency.update(t, histograms)
          for (const reading of readings) {
            if (histograms !== null) r.latency.fill(reading)
            this.#emit({ t, kind: 'engine', ...reading })
          }
        })
        .catch((err: unknown) => {
          // Unreachable by design (scrapeReplica never rejects); logged, never rethrown.
          debug('scrape of %s failed unexpectedly: %o', r.name, err)
          if (run === this.#run) r.busy = false
        })
    }
  }

  #safeNow(): number | null {
    try {
      const t = this.#now()
      return typeof t === 'number' && Number.isFinite(t) ? t : null
    } catch (err) {
      debug('now() threw: %o', err)
      return null
    }
  }

  #emit(record: TelemetryRecord): void {
    const push = this.#push
    if (push === null) return
    try {
      push(record)
    } catch (err) {
      this.#pushErrors++
      if (this.#pushErrors === 1) {
        process.emitWarning(`vllm-monitor: a telemetry push threw: ${(err as Error)?.stack ?? String(err)}`, {
          code: 'VLLM_MONITOR_CALLBACK_THREW',
        })
      }
    }
  }
}

export interface ScrapeOnceOptions {
  /** Default 1000 ms. */
  timeoutMs?: number
  /** Default true. */
  probeHealth?: boolean
  /** The `replica` of the readings. Default: the URL's host. */
  replica?: string
}

/**
 * One scrape of one server, for tests and the CLI: the readings a {@link HttpScrapeSource} tick
 * would push, except the latency quantiles, which need a window of scrapes and are null. Invalid options throw InvalidOptionError synchronously; the promise never rejects.
 */
export function scrapeOnce(url: string, opts: ScrapeOnceOptions = {}): Promise<EngineReading[]> {
  const base = parseHttpUrl(url, 'url')
  const timeoutMs = checkTimeoutMs(opts.timeoutMs ?? DEFAULT_TIMEOUT_MS, 'options.timeoutMs')
  const probeHealth = checkBoolean(opts.probeHealth ?? true, 'options.probeHealth')
  const replica = opts.replica ?? base.host
  if (typeof replica !== 'string') throw new InvalidOptionError('options.replica must be a string')
  // No keep-alive: a one-shot leaves no socket behind to hold the process open.
  const agent = base.protocol === 'https:' ? new https.Agent() : new http.Agent()
  const o: GetOptions = { timeoutMs, agent, readBody: true }
  return scrapeReplica(
    replica,
    endpointUrl(base, '/metrics'),
    probeHealth ? endpointUrl(base, '/health') : null,
    o,
  )
    .then((r) => r.readings)
    .catch(() => {
      const r = emptyEngineReading(replica)
      r.reachable = false
      r.error = 'ERROR'
      return [r]
    })
    .finally(() => agent.destroy())
}

/**
 * GETs `<url>/metrics` and parses it, for callers that want the exposition itself (the CLI's raw
 * view). Rejects with a ScrapeError whose message starts with the reason (`ECONNREFUSED`,
 * `ETIMEDOUT`, `HTTP 500`...); invalid options throw InvalidOptionError synchronously.
 */
export function fetchExposition(
  url: string,
  opts: { timeoutMs?: number } = {},
): Promise<ParsedExposition & { status: number }> {
  const base = parseHttpUrl(url, 'url')
  const timeoutMs = checkTimeoutMs(opts.timeoutMs ?? DEFAULT_TIMEOUT_MS, 'options.timeoutMs')
  const target = endpointUrl(base, '/metrics')
  const agent = base.protocol === 'https:' ? new https.Agent() : new http.Agent()
  return get(target, { timeoutMs, agent, readBody: true })
    .then((r) => {
      if (r.error !== null || r.body === null || r.status === null) {
        throw new ScrapeError(`${r.error ?? 'ERROR'}: GET ${target.href} failed`)
      }
      return { ...parseExposition(r.body), status: r.status }
    })
    .finally(() => agent.destroy())
}
