/**
 * Probes what a load balancer would probe, and what it should: `GET /health`, `/v1/models`,
 * `/version` every `intervalMs`, and optionally an end-to-end probe, a one-token completion with a
 * generous deadline. vLLM's `/health` stays 200 while EngineCore hangs or after it silently died
 * (vllm.md §0 #3, #39863), and `/v1/models` and `/version` are answered by the API server alone,
 * so only a generation proves the engine answers.
 *
 * Each result becomes a `probe` event (`data: { endpoint, ok, status, latencyMs, error }`), but only
 * when an endpoint's outcome changes, plus one summary per replica every `summaryIntervalMs`, so a
 * healthy fleet stays quiet. End-to-end failures are each reported, with `consecutiveFailures`: the
 * core turns `e2eFailuresBeforeError` of them in a row, with `/health` 200 and no tokens flowing,
 * into ERROR. A failing end-to-end probe first asks `/is_paused` and `/is_sleeping` (dev mode): a
 * server paused or asleep on purpose is reported `suspended`, not failing.
 *
 * The end-to-end probe runs only while the last `/health` answered 200 (a refused port is start-up
 * or a dead server, which the scraper already reports), one at a time per replica.
 */
import http from 'node:http'
import https from 'node:https'
import { InvalidArgumentError, InvalidOptionError } from '../errors.js'
import type { EventSeverity, TelemetryRecord, TelemetrySource } from '../telemetry/types.js'
import { endpointUrl, type HttpCallResult, httpCall, MAX_TIMER_MS, parseJson } from './http-call.js'

export type ProbeEndpoint = '/health' | '/v1/models' | '/version' | '/v1/completions'

export interface ProbeTarget {
  name: string
  url: string
}

export interface E2eProbeOptions {
  /** Pause between the end of one probe and the start of the next. Default 10 000 ms. */
  intervalMs?: number
  /** Deadline of one probe. Default 30 000 ms: vLLM under spiky load misses 10 s without being dead. */
  timeoutMs?: number
}

export interface HealthProbeSourceOptions {
  replicas: ProbeTarget[]
  /** ms since the monitor started; stamps each record. */
  now: () => number
  /** `/health`, `/v1/models`, `/version` every this often. Default 5000 ms. */
  intervalMs?: number
  /** Deadline of those probes. Default 10 000 ms. */
  timeoutMs?: number
  /** One summary event per replica this often; 0 = none. Default 60 000 ms. */
  summaryIntervalMs?: number
  /** The end-to-end probe: false (default) or true / options. */
  e2e?: boolean | E2eProbeOptions
  /** Sent as `Authorization: Bearer` (vLLM's `--api-key` guards `/v1/*`). */
  apiKey?: string
}

export interface ProbeResultData {
  endpoint: ProbeEndpoint | 'summary'
  ok: boolean
  status: number | null
  latencyMs: number | null
  error: string | null
  [k: string]: unknown
}

const HEALTH_ENDPOINTS = ['/health', '/v1/models', '/version'] as const

interface EndpointState {
  /** `ok|status|error` of the last result; a change is reported. */
  key: string | null
  consecutiveFailures: number
  n: number
  failures: number
  latencySum: number
  latencyMax: number
  lastStatus: number | null
}

interface ReplicaState {
  name: string
  base: URL
  endpoints: Map<ProbeEndpoint, EndpointState>
  /** Some probe got an answer once: a refused port since then is not start-up. */
  everAnswered: boolean
  lastHealth: number | null
  model: string | null
  e2eBusy: boolean
  healthTimer: NodeJS.Timeout | null
  e2eTimer: NodeJS.Timeout | null
  summaryTimer: NodeJS.Timeout | null
}

function positive(v: unknown, where: string, min = 1): number {
  // Node's timers hold 2^31-1 ms at most; a longer one fires after 1 ms.
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > MAX_TIMER_MS) {
    throw new InvalidOptionError(`${where} must be a number from ${min} to ${MAX_TIMER_MS} (ms)`)
  }
  return v
}

export class HealthProbeSource implements TelemetrySource {
  readonly name = 'vllm-probes'
  readonly intervalMs: number
  readonly timeoutMs: number
  readonly summaryIntervalMs: number
  readonly e2e: { intervalMs: number; timeoutMs: number } | null
  readonly #now: () => number
  readonly #headers: Record<string, string>
  readonly #replicas: ReplicaState[]
  #push: ((record: TelemetryRecord) => void) | null = null
  #abort: AbortController | null = null
  #agents: { http: http.Agent; https: https.Agent } | null = null

  constructor(options: HealthProbeSourceOptions) {
    if (options === null || typeof options !== 'object')
      throw new InvalidOptionError('options must be an object')
    if (typeof options.now !== 'function') {
      throw new InvalidOptionError('options.now must be a function returning ms since the monitor started')
    }
    this.#now = options.now
    this.intervalMs = positive(options.intervalMs ?? 5000, 'options.intervalMs', 10)
    this.timeoutMs = positive(options.timeoutMs ?? 10_000, 'options.timeoutMs')
    const summary = options.summaryIntervalMs ?? 60_000
    this.summaryIntervalMs = summary === 0 ? 0 : positive(summary, 'options.summaryIntervalMs', 10)
    const e2e = options.e2e ?? false
    if (e2e === false) this.e2e = null
    else {
      const e = e2e === true ? {} : e2e
      if (e === null || typeof e !== 'object')
        throw new InvalidOptionError('options.e2e must be a boolean or options')
      this.e2e = {
        intervalMs: positive(e.intervalMs ?? 10_000, 'options.e2e.intervalMs', 10),
        timeoutMs: positive(e.timeoutMs ?? 30_000, 'options.e2e.timeoutMs'),
      }
    }
    if (options.apiKey !== undefined && (typeof options.apiKey !== 'string' || options.apiKey === '')) {
      throw new InvalidOptionError('options.apiKey must be a non-empty string')
    }
    this.#headers = options.apiKey === undefined ? {} : { authorization: `Bearer ${options.apiKey}` }
    if (!Array.isArray(options.replicas) || options.replicas.length === 0) {
      throw new InvalidOptionError('options.replicas must be a non-empty array of { name, url }')
    }
    const names = new Set<string>()
    this.#replicas = options.replicas.map((r, i) => {
      const where = `options.replicas[${i}]`
      if (r === null || typeof r !== 'object' || typeof r.name !== 'string' || r.name === '') {
        throw new InvalidOptionError(`${where} must be { name, url } with a non-empty name`)
      }
      if (names.has(r.name)) throw new InvalidOptionError(`${where}.name "${r.name}" is used twice`)
      names.add(r.name)
      let base: URL
      try {
        base = new URL(r.url)
      } catch {
        throw new InvalidOptionError(`${where}.url is not a valid URL: ${JSON.stringify(r.url)}`)
      }
      if (base.protocol !== 'http:' && base.protocol !== 'https:') {
        throw new InvalidOptionError(`${where}.url must be an http: or https: URL, got ${base.protocol}`)
      }
      return {
        name: r.name,
        base,
        endpoints: new Map(),
        everAnswered: false,
        lastHealth: null,
        model: null,
        e2eBusy: false,
        healthTimer: null,
        e2eTimer: null,
        summaryTimer: null,
      }
    })
  }

  /** Starts probing (the first round is immediate). Calling it while running does nothing. */
  start(push: (record: TelemetryRecord) => void): void {
    if (typeof push !== 'function') throw new InvalidArgumentError('start: push must be a function')
    if (this.#abort !== null) return
    this.#push = push
    this.#abort = new AbortController()
    const agentOptions = { keepAlive: true, maxSockets: 6 }
    this.#agents = { http: new http.Agent(agentOptions), https: new https.Agent(agentOptions) }
    const signal = this.#abort.signal
    for (const r of this.#replicas) {
      void this.#healthRound(r, signal)
      if (this.summaryIntervalMs > 0) {
        r.summaryTimer = setInterval(() => this.#summary(r), this.summaryIntervalMs)
        r.summaryTimer.unref()
      }
      if (this.e2e !== null) this.#scheduleE2e(r, signal, this.e2e.intervalMs)
    }
  }

  /** Stops probing and aborts probes in flight; nothing is pushed after it. */
  stop(): void {
    this.#abort?.abort()
    this.#abort = null
    this.#push = null
    for (const r of this.#replicas) {
      for (const timer of [r.healthTimer, r.e2eTimer]) if (timer !== null) clearTimeout(timer)
      if (r.summaryTimer !== null) clearInterval(r.summaryTimer)
      r.healthTimer = r.e2eTimer = r.summaryTimer = null
      r.e2eBusy = false
    }
    this.#agents?.http.destroy()
    this.#agents?.https.destroy()
    this.#agents = null
  }

  #agent(r: ReplicaState): http.Agent | undefined {
    return r.base.protocol === 'https:' ? this.#agents?.https : this.#agents?.http
  }

  async #healthRound(r: ReplicaState, signal: AbortSignal): Promise<void> {
    const results = await Promise.all(
      HEALTH_ENDPOINTS.map((endpoint) =>
        httpCall({
          method: 'GET',
          url: endpointUrl(r.base, endpoint),
          timeoutMs: this.timeoutMs,
          agent: this.#agent(r),
          headers: endpoint.startsWith('/v1/') ? this.#headers : {},
          retryOnReset: true,
          signal,
        }),
      ),
    )
    if (signal.aborted) return
    HEALTH_ENDPOINTS.forEach((endpoint, i) => {
      const res = results[i] as HttpCallResult
      if (endpoint === '/health') r.lastHealth = res.error === null ? res.status : null
      if (endpoint === '/v1/models' && res.status === 200) {
        const id = (parseJson(res.body) as { data?: Array<{ id?: unknown }> } | null)?.data?.[0]?.id
        if (typeof id === 'string') r.model = id
      }
      this.#record(r, endpoint, res, {})
    })
    r.healthTimer = setTimeout(() => void this.#healthRound(r, signal), this.intervalMs)
    r.healthTimer.unref()
  }

  #scheduleE2e(r: ReplicaState, signal: AbortSignal, delayMs: number): void {
    r.e2eTimer = setTimeout(() => void this.#e2eProbe(r, signal), delayMs)
    r.e2eTimer.unref()
  }

  async #e2eProbe(r: ReplicaState, signal: AbortSignal): Promise<void> {
    const e2e = this.e2e
    if (e2e === null || signal.aborted) return
    if (r.lastHealth !== 200 || r.e2eBusy) {
      this.#scheduleE2e(r, signal, e2e.intervalMs)
      return
    }
    r.e2eBusy = true
    const body = JSON.stringify({
      ...(r.model === null ? {} : { model: r.model }),
      prompt: 'ping',
      max_tokens: 1,
      temperature: 0,
      stream: false,
    })
    const res = await httpCall({
      method: 'POST',
      url: endpointUrl(r.base, '/v1/completions'),
      timeoutMs: e2e.timeoutMs,
      agent: this.#agent(r),
      headers: this.#headers,
      body,
      signal,
    })
    let extra: Record<string, unknown> = {}
    const failed = res.error !== null || res.status === null || res.status < 200 || res.status > 299
    if (failed && !signal.aborted) {
      const why = await this.#suspended(r, signal)
      if (why !== null) extra = { suspended: true, suspendedBy: why }
    }
    r.e2eBusy = false
    if (signal.aborted) return
    this.#record(r, '/v1/completions', res, extra)
    this.#scheduleE2e(r, signal, e2e.intervalMs)
  }

  /** Whether the dev endpoints say the server is paused or asleep on purpose (null: no, or unknown). */
  async #suspended(r: ReplicaState, signal: AbortSignal): Promise<string | null> {
    const ask = (path: string) =>
      httpCall({
        method: 'GET',
        url: endpointUrl(r.base, path),
        timeoutMs: Math.min(this.timeoutMs, 2000),
        agent: this.#agent(r),
        retryOnReset: true,
        signal,
      })
    const [paused, sleeping] = await Promise.all([ask('/is_paused'), ask('/is_sleeping')])
    const p = (parseJson(paused.body) as { is_paused?: unknown } | null)?.is_paused === true
    const s = (parseJson(sleeping.body) as { is_sleeping?: unknown } | null)?.is_sleeping === true
    // vLLM's is_sleeping also counts a paused scheduler, and sleeping pauses it: both cannot be told apart.
    return p && s ? 'paused or asleep' : p ? 'paused' : s ? 'asleep' : null
  }

  #state(r: ReplicaState, endpoint: ProbeEndpoint): EndpointState {
    let s = r.endpoints.get(endpoint)
    if (s === undefined) {
      s = {
        key: null,
        consecutiveFailures: 0,
        n: 0,
        failures: 0,
        latencySum: 0,
        latencyMax: 0,
        lastStatus: null,
      }
      r.endpoints.set(endpoint, s)
    }
    return s
  }

  #record(
    r: ReplicaState,
    endpoint: ProbeEndpoint,
    res: HttpCallResult,
    extra: Record<string, unknown>,
  ): void {
    const ok = res.error === null && res.status !== null && res.status >= 200 && res.status <= 299
    const error = ok ? null : (res.error ?? `HTTP ${res.status}`)
    const latencyMs = Math.round(res.latencyMs * 10) / 10
    const s = this.#state(r, endpoint)
    s.n++
    s.latencySum += res.latencyMs
    s.latencyMax = Math.max(s.latencyMax, res.latencyMs)
    s.lastStatus = res.status
    if (ok || extra.suspended === true) s.consecutiveFailures = 0
    else {
      s.failures++
      s.consecutiveFailures++
    }
    const refusedAtStart = error === 'ECONNREFUSED' && !r.everAnswered
    if (res.status !== null) r.everAnswered = true
    const key = `${ok}|${res.status}|${error}|${extra.suspended === true}`
    const e2e = endpoint === '/v1/completions'
    const changed = key !== s.key
    s.key = key
    // End-to-end failures are each reported (the core counts them); the rest only on change.
    if (!changed && !(e2e && !ok)) return
    const severity: EventSeverity =
      ok || refusedAtStart || extra.suspended === true
        ? 'info'
        : endpoint === '/health' && res.status === 503
          ? 'critical'
          : 'warning'
    const what = e2e ? 'end-to-end probe (POST /v1/completions, max_tokens 1)' : `GET ${endpoint}`
    const message = ok
      ? `${r.name}: ${what} answered ${res.status} in ${latencyMs} ms`
      : extra.suspended === true
        ? `${r.name}: ${what} got no answer (${error}): the server is ${String(extra.suspendedBy)} on purpose`
        : error === 'ETIMEDOUT'
          ? `${r.name}: ${what} timed out after ${Math.round(res.latencyMs)} ms${e2e ? ` (${s.consecutiveFailures} in a row)` : ''}`
          : `${r.name}: ${what} failed: ${error}${e2e ? ` (${s.consecutiveFailures} in a row)` : ''}`
    const data: ProbeResultData = { endpoint, ok, status: res.status, latencyMs, error, ...extra }
    if (e2e) data.consecutiveFailures = s.consecutiveFailures
    this.#emit(r.name, severity, message, data)
  }

  #summary(r: ReplicaState): void {
    const endpoints: Record<string, unknown> = {}
    let allOk = true
    for (const [endpoint, s] of r.endpoints) {
      if (s.n === 0) continue
      endpoints[endpoint] = {
        probes: s.n,
        failures: s.failures,
        meanLatencyMs: Math.round((s.latencySum / s.n) * 10) / 10,
        maxLatencyMs: Math.round(s.latencyMax * 10) / 10,
        lastStatus: s.lastStatus,
      }
      if (s.key?.startsWith('false') === true && !s.key.endsWith('|true')) allOk = false
      s.n = s.failures = s.latencySum = s.latencyMax = 0
    }
    if (Object.keys(endpoints).length === 0) return
    const parts = Object.entries(endpoints).map(([e, v]) => {
      const x = v as { probes: number; failures: number; meanLatencyMs: number }
      return `${e} ${x.probes - x.failures}/${x.probes} ok, ${x.meanLatencyMs} ms`
    })
    this.#emit(
      r.name,
      'info',
      `${r.name}: probes over the last ${Math.round(this.summaryIntervalMs / 100) / 10} s: ${parts.join('; ')}`,
      {
        endpoint: 'summary',
        ok: allOk,
        status: null,
        latencyMs: null,
        error: null,
        summary: true,
        endpoints,
      },
    )
  }

  #emit(replica: string, severity: EventSeverity, message: string, data: ProbeResultData): void {
    const push = this.#push
    if (push === null) return
    let t: number
    try {
      t = this.#now()
    } catch {
      return
    }
    if (typeof t !== 'number' || !Number.isFinite(t)) return
    try {
      push({ t, kind: 'event', type: 'probe', severity, replica, gpu: null, message, data })
    } catch (err) {
      process.emitWarning(`vllm-monitor: a telemetry push threw: ${(err as Error)?.stack ?? String(err)}`, {
        code: 'VLLM_MONITOR_CALLBACK_THREW',
      })
    }
  }
}
