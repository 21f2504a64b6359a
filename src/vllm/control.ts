/**
 * A client for vLLM's control endpoints, the levers mitigations pull: `/pause`, `/resume`,
 * `/is_paused`, `/sleep`, `/wake_up`, `/is_sleeping`, `/reset_prefix_cache`, `/server_info`.
 *
 * They exist only with `VLLM_SERVER_DEV_MODE=1` (404 otherwise), `/sleep` also needs
 * `--enable-sleep-mode`, and `--api-key` does not guard them (vllm.md §2). `capabilities()` says
 * which ones a server has, and why not.
 *
 * Every call returns a result and never throws for an HTTP or network failure: `{ ok: true, ... }`,
 * or `{ ok: false, error, status?, unavailable? }` (`unavailable` when the endpoint is absent: dev
 * mode off, or a vLLM without it). Invalid arguments throw InvalidOptionError at once. POSTs are
 * never retried (a pause or a sleep that reached the server before the connection broke must not be
 * sent twice); GETs are retried once when a reused connection is reset before any answer. Each call
 * has a deadline (`timeoutMs`, per call overridable): a POST that timed out may still take effect.
 */
import http from 'node:http'
import https from 'node:https'
import { InvalidOptionError } from '../errors.js'
import {
  checkTimeoutMs,
  endpointUrl,
  type HttpCallResult,
  httpCall,
  parseHttpUrl,
  parseJson,
} from './http-call.js'

export interface VllmControlClientOptions {
  /** The server's base URL, e.g. `http://10.0.0.5:8000`. */
  url: string
  /** Deadline of each call, connect to last byte. Default 10 000 ms (vLLM can be slow under load). */
  timeoutMs?: number
  /** Sent as `Authorization: Bearer` (vLLM guards only `/v1`; harmless elsewhere). */
  apiKey?: string
}

export interface CallOptions {
  /** This call's deadline instead of the client's. */
  timeoutMs?: number
}

export type PauseMode = 'abort' | 'wait' | 'keep'

export interface ControlFailure {
  ok: false
  /** The endpoint does not exist on this server (dev mode off, or a vLLM without it). */
  unavailable?: true
  /** The HTTP status, when the server answered. */
  status?: number
  /** What went wrong: `dev mode off (...)`, `HTTP 500: ...`, `ECONNREFUSED`, `ETIMEDOUT`... */
  error: string
}

export type ControlResult<T extends object = object> = ({ ok: true; status: number } & T) | ControlFailure

export interface Capability {
  available: boolean
  /** Why (not): `dev mode on`, `dev mode off (VLLM_SERVER_DEV_MODE=1 not set)`, `sleep mode off...`. */
  reason: string
}

export interface ControlCapabilities {
  /** `/pause`, `/resume`, `/is_paused`. */
  pause: Capability
  /** `/sleep`, `/wake_up`, `/is_sleeping` (dev mode and `--enable-sleep-mode`). */
  sleep: Capability
  /** `/reset_prefix_cache` (dev mode; not probed: the only way to probe it is to call it). */
  resetPrefixCache: Capability
  /** `/server_info`. */
  serverInfo: Capability
}

export const DEV_MODE_OFF = 'dev mode off (VLLM_SERVER_DEV_MODE=1 not set)'
export const SLEEP_MODE_OFF = 'sleep mode off (vllm serve --enable-sleep-mode not set)'
export const DEFAULT_CONTROL_TIMEOUT_MS = 10_000

const PAUSE_MODES: readonly PauseMode[] = ['abort', 'wait', 'keep']
const WAKE_TAGS = ['weights', 'kv_cache', 'scheduling']

export class VllmControlClient {
  readonly url: string
  readonly timeoutMs: number
  readonly #base: URL
  readonly #headers: Record<string, string>
  readonly #agent: http.Agent

  constructor(options: VllmControlClientOptions) {
    if (options === null || typeof options !== 'object') {
      throw new InvalidOptionError('options must be an object { url, timeoutMs?, apiKey? }')
    }
    this.#base = parseHttpUrl(options.url, 'options.url')
    this.url = this.#base.href.replace(/\/+$/, '')
    this.timeoutMs = checkTimeoutMs(options.timeoutMs ?? DEFAULT_CONTROL_TIMEOUT_MS, 'options.timeoutMs')
    if (options.apiKey !== undefined && (typeof options.apiKey !== 'string' || options.apiKey === '')) {
      throw new InvalidOptionError('options.apiKey must be a non-empty string')
    }
    this.#headers = options.apiKey === undefined ? {} : { authorization: `Bearer ${options.apiKey}` }
    // Idle keep-alive sockets are unref'd by Node's agent, so the client never holds a process open.
    const agentOptions = { keepAlive: true, maxSockets: 4 }
    this.#agent =
      this.#base.protocol === 'https:' ? new https.Agent(agentOptions) : new http.Agent(agentOptions)
  }

  /**
   * Which control endpoints this server has: GETs `/is_paused`, `/is_sleeping` and, when they
   * answer, `/server_info` (for `enable_sleep_mode`). Side-effect free; never rejects.
   */
  capabilities(o: CallOptions = {}): Promise<ControlCapabilities> {
    return this.#capabilities(this.#timeout(o))
  }

  async #capabilities(timeoutMs: number): Promise<ControlCapabilities> {
    const [paused, sleeping] = await Promise.all([
      this.#get('/is_paused', [], timeoutMs),
      this.#get('/is_sleeping', [], timeoutMs),
    ])
    const pauseUp = paused.status === 200
    const sleepUp = sleeping.status === 200
    const devMode = pauseUp || sleepUp
    const info = devMode ? await this.#get('/server_info', [['config_format', 'json']], timeoutMs) : null
    const down = (r: HttpCallResult, path: string): string =>
      r.error !== null
        ? `server not reachable: GET ${path} failed (${r.error})`
        : r.status === 404
          ? devMode
            ? `not in this vLLM version (GET ${path} answered 404 while other dev endpoints answer)`
            : DEV_MODE_OFF
          : `GET ${path} answered HTTP ${r.status}`
    const pause: Capability = pauseUp
      ? { available: true, reason: 'dev mode on (GET /is_paused answers)' }
      : { available: false, reason: down(paused, '/is_paused') }
    let sleep: Capability
    if (!sleepUp) sleep = { available: false, reason: down(sleeping, '/is_sleeping') }
    else {
      const enabled = sleepModeOf(info)
      sleep =
        enabled === true
          ? { available: true, reason: 'dev mode on, --enable-sleep-mode set (per /server_info)' }
          : enabled === false
            ? { available: false, reason: SLEEP_MODE_OFF }
            : {
                available: false,
                reason: `dev mode on, but /server_info did not say whether --enable-sleep-mode is set (${
                  info?.error ?? `HTTP ${info?.status ?? '?'}`
                }); /sleep answers 500 without it`,
              }
    }
    const resetPrefixCache: Capability = devMode
      ? {
          available: true,
          reason: `dev mode on (inferred from GET ${pauseUp ? '/is_paused' : '/is_sleeping'}; not probed: it has effects)`,
        }
      : { available: false, reason: down(paused, '/is_paused') }
    const serverInfo: Capability =
      info?.status === 200
        ? { available: true, reason: 'dev mode on (GET /server_info answers)' }
        : {
            available: false,
            reason: info === null ? down(paused, '/is_paused') : down(info, '/server_info'),
          }
    return { pause, sleep, resetPrefixCache, serverInfo }
  }

  /**
   * `POST /pause?mode=`: `abort` (vLLM's default) fails the requests in flight, `wait` answers once
   * they finished (give it a long `timeoutMs`), `keep` freezes them. New requests queue until
   * `resume()`. While paused, `/health` stays 200 and an end-to-end probe times out.
   */
  pause(options: { mode?: PauseMode } & CallOptions = {}): Promise<ControlResult<{ paused: true }>> {
    const mode = options.mode ?? 'abort'
    if (!PAUSE_MODES.includes(mode)) {
      throw new InvalidOptionError(
        `pause: mode must be one of ${PAUSE_MODES.join(', ')} (got ${String(mode)})`,
      )
    }
    return this.#post('/pause', [['mode', mode]], options).then((r) => (r.ok ? { ...r, paused: true } : r))
  }

  /** `POST /resume`. */
  resume(o: CallOptions = {}): Promise<ControlResult> {
    return this.#post('/resume', [], o)
  }

  /** `GET /is_paused` → `{ paused }`. */
  isPaused(o: CallOptions = {}): Promise<ControlResult<{ paused: boolean }>> {
    return this.#getResult('/is_paused', this.#timeout(o)).then((r) => {
      if (!r.ok) return r
      const v = (r.json as { is_paused?: unknown } | null)?.is_paused
      if (typeof v !== 'boolean')
        return { ok: false, status: r.status, error: 'GET /is_paused: no is_paused in the answer' }
      return { ok: true, status: r.status, paused: v }
    })
  }

  /**
   * `POST /sleep?level=` (1: offload weights and drop the KV cache, 2: discard both; 0: pause
   * scheduling only, newer vLLM). vLLM pauses first with `mode` (default `abort`: in-flight requests
   * fail). Fails with HTTP 500 when the server runs without `--enable-sleep-mode`.
   */
  sleep(options: { level?: 0 | 1 | 2; mode?: PauseMode } & CallOptions = {}): Promise<ControlResult> {
    const level = options.level ?? 1
    if (level !== 0 && level !== 1 && level !== 2) {
      throw new InvalidOptionError(`sleep: level must be 0, 1 or 2 (got ${String(level)})`)
    }
    const query: Array<[string, string]> = [['level', String(level)]]
    if (options.mode !== undefined) {
      if (!PAUSE_MODES.includes(options.mode)) {
        throw new InvalidOptionError(
          `sleep: mode must be one of ${PAUSE_MODES.join(', ')} (got ${String(options.mode)})`,
        )
      }
      query.push(['mode', options.mode])
    }
    return this.#post('/sleep', query, options)
  }

  /** `POST /wake_up[?tags=weights&tags=kv_cache]`; no tags wakes everything. */
  wakeUp(options: { tags?: readonly string[] } & CallOptions = {}): Promise<ControlResult> {
    const tags = options.tags ?? []
    if (!Array.isArray(tags) || tags.some((t) => !WAKE_TAGS.includes(t))) {
      throw new InvalidOptionError(`wakeUp: tags must be a list of ${WAKE_TAGS.join(', ')}`)
    }
    return this.#post(
      '/wake_up',
      tags.map((t) => ['tags', t] as [string, string]),
      options,
    )
  }

  /** `GET /is_sleeping` → `{ sleeping }` (vLLM counts a paused scheduler as sleeping too). */
  isSleeping(o: CallOptions = {}): Promise<ControlResult<{ sleeping: boolean }>> {
    return this.#getResult('/is_sleeping', this.#timeout(o)).then((r) => {
      if (!r.ok) return r
      const v = (r.json as { is_sleeping?: unknown } | null)?.is_sleeping
      if (typeof v !== 'boolean')
        return { ok: false, status: r.status, error: 'GET /is_sleeping: no is_sleeping in the answer' }
      return { ok: true, status: r.status, sleeping: v }
    })
  }

  /**
   * `POST /reset_prefix_cache`. `ok` only means vLLM accepted the call: it answers 200 even when
   * the reset failed because blocks are still in use (it logs "Failed to reset prefix cache because
   * some blocks (N) are not freed yet"), unless `resetRunningRequests` preempts every running
   * request first. It frees no KV that running requests hold (vllm.md §0 #7).
   */
  resetPrefixCache(options: { resetRunningRequests?: boolean } & CallOptions = {}): Promise<ControlResult> {
    const reset = options.resetRunningRequests ?? false
    if (typeof reset !== 'boolean') {
      throw new InvalidOptionError('resetPrefixCache: resetRunningRequests must be a boolean')
    }
    return this.#post('/reset_prefix_cache', reset ? [['reset_running_requests', 'true']] : [], options)
  }

  /** `GET /server_info?config_format=json` → `{ info }` (vllm_config, vllm_env, system_env). */
  serverInfo(o: CallOptions = {}): Promise<ControlResult<{ info: Record<string, unknown> }>> {
    return this.#getResult('/server_info', this.#timeout(o), [['config_format', 'json']]).then((r) => {
      if (!r.ok) return r
      if (r.json === null || typeof r.json !== 'object')
        return { ok: false, status: r.status, error: 'GET /server_info: the answer is not a JSON object' }
      return { ok: true, status: r.status, info: r.json as Record<string, unknown> }
    })
  }

  /** Closes idle connections. The client stays usable (a later call opens a new one). */
  close(): void {
    this.#agent.destroy()
  }

  #timeout(o: CallOptions): number {
    return o.timeoutMs === undefined ? this.timeoutMs : checkTimeoutMs(o.timeoutMs, 'timeoutMs')
  }

  #get(path: string, query: Array<[string, string]>, timeoutMs: number): Promise<HttpCallResult> {
    return httpCall({
      method: 'GET',
      url: endpointUrl(this.#base, path, query),
      timeoutMs,
      agent: this.#agent,
      headers: this.#headers,
      retryOnReset: true,
    })
  }

  async #getResult(
    path: string,
    timeoutMs: number,
    query: Array<[string, string]> = [],
  ): Promise<{ ok: true; status: number; json: unknown } | ControlFailure> {
    const r = await this.#get(path, query, timeoutMs)
    const failure = toFailure('GET', path, r)
    if (failure !== null) return failure
    return { ok: true, status: r.status as number, json: parseJson(r.body) }
  }

  #post(path: string, query: Array<[string, string]>, o: CallOptions): Promise<ControlResult> {
    return this.#postWithin(path, query, this.#timeout(o))
  }

  async #postWithin(path: string, query: Array<[string, string]>, timeoutMs: number): Promise<ControlResult> {
    const r = await httpCall({
      method: 'POST',
      url: endpointUrl(this.#base, path, query),
      timeoutMs,
      agent: this.#agent,
      headers: this.#headers,
      // Never retried: the first attempt may have reached the engine.
      retryOnReset: false,
    })
    const failure = toFailure('POST', path, r)
    if (failure !== null) return failure
    return { ok: true, status: r.status as number }
  }
}

function toFailure(method: string, path: string, r: HttpCallResult): ControlFailure | null {
  if (r.error !== null) {
    const note =
      r.error === 'ETIMEDOUT' && method === 'POST'
        ? ' (no answer in time; the call may still take effect)'
        : ''
    return {
      ok: false,
      ...(r.status === null ? {} : { status: r.status }),
      error: `${method} ${path}: ${r.error}${note}`,
    }
  }
  const status = r.status as number
  if (status >= 200 && status <= 299) return null
  if (status === 404)
    return { ok: false, unavailable: true, status, error: `${DEV_MODE_OFF}: ${method} ${path} answered 404` }
  return { ok: false, status, error: `${method} ${path} answered HTTP ${status}${detailOf(r.body)}` }
}

/** `: <message>` from vLLM's error bodies (`{"error": ...}`, `{"detail": ...}`, plain text). */
function detailOf(body: string | null): string {
  if (body === null || body.trim() === '') return ''
  const j = parseJson(body) as { error?: unknown; detail?: unknown; message?: unknown } | null
  const msg = j?.error ?? j?.message ?? j?.detail ?? (j === null ? body : null)
  if (msg === null || msg === undefined) return ''
  const text = typeof msg === 'string' ? msg : JSON.stringify(msg)
  return `: ${text.length > 300 ? `${text.slice(0, 297)}...` : text}`
}

function sleepModeOf(info: HttpCallResult | null): boolean | null {
  if (info === null || info.status !== 200) return null
  const j = parseJson(info.body) as { vllm_config?: unknown } | null
  const cfg = j?.vllm_config
  if (cfg !== null && typeof cfg === 'object') {
    const v = (cfg as { model_config?: { enable_sleep_mode?: unknown } }).model_config?.enable_sleep_mode
    return typeof v === 'boolean' ? v : null
  }
  if (typeof cfg === 'string') {
    const m = /enable_sleep_mode=(True|False)/.exec(cfg)
    return m === null ? null : m[1] === 'True'
  }
  return null
}
