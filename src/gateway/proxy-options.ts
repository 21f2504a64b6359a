/**
 * The standalone proxy's options: validated once at `GatewayProxy.start`, with exact messages,
 * into the values the server and its exchanges use (and the gateway it builds when none is given).
 */
import { InvalidOptionError } from '../errors.js'
import type { VLLMEngineMonitor } from '../monitor/monitor.js'
import type { AdmissionOptions } from './admission.js'
import { Gateway } from './gateway.js'
import type { PickerOptions } from './picker.js'
import type { SloOptions } from './slo.js'

export interface GatewayUpstream {
  name: string
  url: string
}

export interface GatewayProxyOptions {
  /**
   * The replicas (`'http://host:8000'` strings are named r0, r1, ... as the monitor names them).
   * Required unless `gateway` is given; with both, they must name the gateway's replicas.
   */
  upstreams?: ReadonlyArray<GatewayUpstream | string>
  /** Address to bind (default 127.0.0.1). */
  host?: string
  /** Port (0 = any free port). */
  port: number
  /** The gateway to route through (default: one built from `upstreams`). */
  gateway?: Gateway
  /**
   * A monitor watching the same replicas (same names): its checkpoints refresh the picker (KV,
   * queue, lifecycle, risk) and, when the proxy builds the gateway, the gateway's events
   * (`gateway-stream-stall`, `gateway-upstream-error`) are pushed into it on its clock.
   */
  monitor?: VLLMEngineMonitor
  /** Bound on the time to the upstream's response headers (TTFT), ms (default 60 000). */
  headersTimeoutMs?: number
  /**
   * Bound on the silence between two body chunks, ms; 0 (default) = none: a stalled stream stays
   * open until the client gives up (it is reported as a stall after `stallAfterMs`).
   */
  bodyTimeoutMs?: number
  /** A stream silent this long is a stall (default 10 000; with `gateway`, set it there). */
  stallAfterMs?: number
  /** How long `drain()` waits for in-flight requests before closing anyway, ms (default 30 000). */
  drainTimeoutMs?: number
  /**
   * Largest request body accepted, bytes (default 32 MiB); a larger one is answered 413. Bodies are
   * held in memory so that a request can fail over to another replica: without a bound, one client
   * could take the gateway's memory.
   */
  maxBodyBytes?: number
  /** Keep-alive connections per upstream (default 128). */
  connections?: number
  /** Admission options of the gateway built from `upstreams` (not with `gateway`). */
  admission?: AdmissionOptions
  /** Picker options of the gateway built from `upstreams` (not with `gateway`). */
  picker?: PickerOptions
  /**
   * TTFT SLO of the gateway built from `upstreams` (not with `gateway`): a queued request that
   * can no longer make it gets 429 + Retry-After instead of a late admission.
   */
  slo?: SloOptions
}

const kDefaults = {
  host: '127.0.0.1',
  headersTimeoutMs: 60_000,
  bodyTimeoutMs: 0,
  drainTimeoutMs: 30_000,
  connections: 128,
  maxBodyBytes: 32 * 1024 * 1024,
} as const

export interface ResolvedProxyOptions {
  host: string
  port: number
  gateway: Gateway
  replicas: GatewayUpstream[]
  headersTimeoutMs: number
  bodyTimeoutMs: number
  drainTimeoutMs: number
  connections: number
  maxBodyBytes: number
  monitor: VLLMEngineMonitor | null
}

function optionError(name: string, rule: string): InvalidOptionError {
  return new InvalidOptionError(`GatewayProxy: option "${name}" must be ${rule}`)
}

function normalizeUpstreams(list: unknown): GatewayUpstream[] {
  if (!Array.isArray(list) || list.length === 0)
    throw optionError('upstreams', 'a non-empty array of URLs or { name, url }')
  const out: GatewayUpstream[] = []
  const names = new Set<string>()
  list.forEach((u: unknown, i) => {
    const r =
      typeof u === 'string' ? { name: `r${i}`, url: u } : (u as Partial<GatewayUpstream> | null | undefined)
    const url = r?.url
    if (typeof url !== 'string' || !URL.canParse(url) || !/^https?:$/.test(new URL(url).protocol))
      throw optionError(`upstreams[${i}]`, `an http(s) URL or { name, url } (got ${JSON.stringify(u)})`)
    const name = r?.name
    if (typeof name !== 'string' || name === '')
      throw optionError(`upstreams[${i}].name`, 'a non-empty string')
    if (names.has(name)) throw optionError(`upstreams[${i}].name`, `unique (${name} appears twice)`)
    names.add(name)
    out.push({ name, url })
  })
  return out
}

function positive(name: string, v: unknown, fallback: number, allowZero = false): number {
  if (v === undefined) return fallback
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || (!allowZero && v === 0))
    throw optionError(name, allowZero ? 'a number of ms >= 0' : 'a positive number of ms')
  return v
}

/** The monitor's clock, so the gateway's events land on the monitor's timeline. */
function monitorClock(monitor: VLLMEngineMonitor): () => number {
  const own = (monitor.options as { now?: () => number }).now
  if (typeof own === 'function') return own
  const offset = performance.now() - monitor.getStatus().uptimeMs
  return () => performance.now() - offset
}

/** The gateway passed in, checked against `upstreams` when both are given. */
function givenGateway(o: GatewayProxyOptions, gateway: unknown): [Gateway, GatewayUpstream[]] {
  if (!(gateway instanceof Gateway)) throw optionError('gateway', 'a Gateway')
  for (const k of ['stallAfterMs', 'admission', 'picker', 'slo'] as const)
    if (o[k] !== undefined) throw optionError(k, 'set on the gateway passed in, not on the proxy')
  const replicas = gateway.replicas().map((v) => ({ name: v.name, url: v.url }))
  if (o.upstreams !== undefined) {
    const given = normalizeUpstreams(o.upstreams)
    const byName = new Map(replicas.map((r) => [r.name, r.url]))
    const same =
      given.length === replicas.length && given.every((u) => byName.get(u.name) === u.url.replace(/\/+$/, ''))
    if (!same)
      throw optionError('upstreams', "the gateway's replicas (same names and URLs) when both are given")
  }
  return [gateway, replicas]
}

export function resolveProxyOptions(o: GatewayProxyOptions): ResolvedProxyOptions {
  if (o === null || typeof o !== 'object')
    throw new InvalidOptionError('GatewayProxy: options must be an object')
  const port = o.port
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw optionError('port', 'an integer in 0-65535')
  const host = o.host ?? kDefaults.host
  if (typeof host !== 'string' || host === '') throw optionError('host', 'a non-empty string')
  const headersTimeoutMs = positive('headersTimeoutMs', o.headersTimeoutMs, kDefaults.headersTimeoutMs)
  const bodyTimeoutMs = positive('bodyTimeoutMs', o.bodyTimeoutMs, kDefaults.bodyTimeoutMs, true)
  const drainTimeoutMs = positive('drainTimeoutMs', o.drainTimeoutMs, kDefaults.drainTimeoutMs, true)
  const maxBodyBytes = o.maxBodyBytes ?? kDefaults.maxBodyBytes
  if (!Number.isSafeInteger(maxBodyBytes) || maxBodyBytes < 1)
    throw optionError('maxBodyBytes', 'a positive integer')
  const connections = o.connections ?? kDefaults.connections
  if (!Number.isInteger(connections) || connections < 1)
    throw optionError('connections', 'a positive integer')
  const monitor = o.monitor ?? null
  if (monitor !== null && (typeof monitor.on !== 'function' || typeof monitor.push !== 'function'))
    throw optionError('monitor', 'a VLLMEngineMonitor')
  let gateway: Gateway
  let replicas: GatewayUpstream[]
  if (o.gateway !== undefined) {
    ;[gateway, replicas] = givenGateway(o, o.gateway)
  } else {
    replicas = normalizeUpstreams(o.upstreams)
    const stallAfterMs = positive('stallAfterMs', o.stallAfterMs, 10_000)
    gateway = new Gateway({
      replicas,
      stallAfterMs,
      ...(o.admission === undefined ? {} : { admission: o.admission }),
      ...(o.picker === undefined ? {} : { picker: o.picker }),
      ...(o.slo === undefined ? {} : { slo: o.slo }),
      ...(monitor === null ? {} : { push: (r) => monitor.push(r), now: monitorClock(monitor) }),
    })
  }
  return {
    host,
    port,
    gateway,
    replicas,
    headersTimeoutMs,
    bodyTimeoutMs,
    drainTimeoutMs,
    connections,
    maxBodyBytes,
    monitor,
  }
}
