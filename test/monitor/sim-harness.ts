/**
 * Starts a simulated fleet over real HTTP (SimServer) with a monitor attached exactly as
 * `vllm-monitor demo` wires it: the HTTP scraper on every replica port, the simulated GPU source on
 * the control port, the servers' log lines fed to `logLine`, and the monitor's clock = the
 * simulator's clock (thresholds and transition times are simulated ms).
 *
 * Every harness is tracked; `closeAllHarnesses()` in `afterEach` stops monitors and servers even
 * when a test failed half-way, so vitest exits without leaked sockets or timers.
 */
import http from 'node:http'
import { createMonitor, type VLLMEngineMonitor } from '../../src/monitor/monitor.js'
import type { MonitorOptions } from '../../src/monitor/options.js'
import { type FleetOptions, SimFleet } from '../../src/sim/fleet.js'
import { SimServer } from '../../src/sim/server.js'
import type { FaultLabel, LifecycleState, Transition } from '../../src/telemetry/types.js'
import { sleep } from '../helpers/fake-nvml.js'

export interface HarnessOptions {
  fleet: FleetOptions
  /** Simulated ms per wall ms. */
  speed: number
  /** Extra monitor options (merged over the demo's). */
  monitor?: Partial<MonitorOptions>
}

export interface HealthWatch {
  /** Distinct consecutive answers, in order. */
  seen: Array<{ t: number; health: number | string }>
  stop(): Promise<void>
}

/** GET on a fresh connection; the status code, or the errno when it failed. Never rejects. */
export function probe(url: string, timeoutMs = 2000): Promise<number | string> {
  return new Promise((resolve) => {
    const req = http.get(url, { agent: false, timeout: timeoutMs })
    req.on('timeout', () => req.destroy(Object.assign(new Error('timeout'), { code: 'ETIMEDOUT' })))
    req.on('error', (err) => resolve((err as { code?: string }).code ?? 'ERROR'))
    req.on('response', (res) => {
      res.resume()
      resolve(res.statusCode ?? 0)
    })
  })
}

export type ReplicaTransition = Transition & { replica: string }
export type TimedLabel = FaultLabel & { t: number }

export interface Harness {
  server: SimServer
  fleet: SimFleet
  monitor: VLLMEngineMonitor
  /** Every transition, in the order the monitor emitted them. */
  transitions: ReplicaTransition[]
  /** The replica's states in order, starting with NOT_STARTED. */
  states(replica: string): LifecycleState[]
  /** The replica's current state as the monitor sees it. */
  state(replica: string): LifecycleState
  url(replica: string): string
  /** Simulated now, ms. */
  now(): number
  /** Ground truth from the control port (`GET /sim/labels`). */
  labels(): Promise<TimedLabel[]>
  control<T>(path: string, body?: unknown): Promise<{ status: number; body: T }>
  /** Waits (wall `timeoutMs`) for a transition of `replica` to `to` after index `from` of `transitions`. */
  waitForTransition(
    replica: string,
    to: LifecycleState,
    opts?: { timeoutMs?: number; after?: number; match?: (tr: ReplicaTransition) => boolean },
  ): Promise<ReplicaTransition>
  /**
   * Probes `replica`'s `/health` back to back on fresh connections (as a load balancer would) and
   * records each change: a status code or an errno such as ECONNREFUSED, with the simulated time.
   */
  watchHealth(replica: string): HealthWatch
  /** Waits for a ground-truth label. */
  waitForLabel(fault: string, phase: FaultLabel['phase'], timeoutMs?: number): Promise<TimedLabel>
  close(): Promise<void>
}

const open = new Set<Harness>()

/** Polls `cond` (async allowed) every `stepMs` until it returns a value other than undefined/false. */
export async function poll<T>(
  what: string,
  cond: () => T | undefined | false | Promise<T | undefined | false>,
  timeoutMs: number,
  stepMs = 10,
): Promise<T> {
  const end = Date.now() + timeoutMs
  for (;;) {
    const v = await cond()
    if (v !== undefined && v !== false) return v
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(stepMs)
  }
}

export async function startHarness(o: HarnessOptions): Promise<Harness> {
  const fleet = new SimFleet(o.fleet)
  let monitor: VLLMEngineMonitor | null = null
  const server = await SimServer.start({
    fleet,
    speed: o.speed,
    onLog: (replica, _stream, text) => monitor?.logLine(replica, text),
  })
  const transitions: ReplicaTransition[] = []
  try {
    monitor = createMonitor({
      replicas: Object.entries(server.urls).map(([name, url]) => ({ name, url })),
      gpu: { simUrl: server.controlUrl },
      http: false,
      scrapeIntervalMs: 20,
      gpuIntervalMs: 20,
      checkpointIntervalMs: 100,
      now: () => server.simNow(),
      ...o.monitor,
    })
  } catch (err) {
    await server.close()
    throw err
  }
  const m = monitor
  m.on('transition', (replica, tr) => transitions.push({ replica, ...tr }))
  // A failing source is reported, not thrown; keep the default EventEmitter from throwing on it.
  m.on('error', () => {})
  const control = async <T>(path: string, body?: unknown) => {
    const res = await fetch(`${server.controlUrl}${path}`, {
      method: body === undefined ? 'GET' : 'POST',
      ...(body === undefined
        ? {}
        : { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } }),
    })
    return { status: res.status, body: (await res.json()) as T }
  }
  const labels = async () => (await control<{ labels: TimedLabel[] }>('/sim/labels')).body.labels
  let closed = false
  const watches: HealthWatch[] = []
  const h: Harness = {
    server,
    fleet,
    monitor: m,
    transitions,
    states: (replica) => [
      'NOT_STARTED',
      ...transitions.filter((t) => t.replica === replica).map((t) => t.to),
    ],
    state: (replica) =>
      m.getStatus().replicas.find((r) => r.replica === replica)?.lifecycleState ?? 'NOT_STARTED',
    url: (replica) => {
      const u = server.urls[replica]
      if (u === undefined) throw new Error(`no replica ${replica}`)
      return u
    },
    now: () => server.simNow(),
    labels,
    control,
    waitForTransition: (replica, to, opts = {}) =>
      poll(
        `${replica} -> ${to}`,
        () =>
          transitions.find(
            (tr, i) =>
              i >= (opts.after ?? 0) && tr.replica === replica && tr.to === to && (opts.match?.(tr) ?? true),
          ),
        opts.timeoutMs ?? 15_000,
      ),
    watchHealth: (replica) => {
      const url = `${h.url(replica)}/health`
      let stopped = false
      const w: HealthWatch = {
        seen: [],
        stop: async () => {
          stopped = true
          await loop
        },
      }
      const loop = (async () => {
        while (!stopped) {
          const t = server.simNow()
          const health = await probe(url)
          if (w.seen.at(-1)?.health !== health) w.seen.push({ t, health })
          await sleep(2)
        }
      })()
      watches.push(w)
      return w
    },
    waitForLabel: (fault, phase, timeoutMs = 15_000) =>
      poll(
        `label ${fault} ${phase}`,
        async () => (await labels()).find((l) => l.fault === fault && l.phase === phase),
        timeoutMs,
        25,
      ),
    close: async () => {
      if (closed) return
      closed = true
      open.delete(h)
      await Promise.all(watches.map((w) => w.stop()))
      try {
        await m.close()
      } finally {
        await server.close()
      }
    },
  }
  open.add(h)
  return h
}

/** Closes every harness still open (call from `afterEach`). */
export async function closeAllHarnesses(): Promise<void> {
  const all = [...open]
  open.clear()
  const results = await Promise.allSettled(all.map((h) => h.close()))
  const failed = results.find((r) => r.status === 'rejected')
  if (failed !== undefined) throw (failed as PromiseRejectedResult).reason
}
