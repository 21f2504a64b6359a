/**
 * What the learner is told about a situation: the replica's readings, its worst GPU (memory, its
 * growth, temperature), co-tenant memory, and how much the rest of the fleet could absorb.
 */
import type { Checkpoint, FailureType, Prediction } from '../telemetry/types.js'
import type { LearnerFeatures } from './learner.js'

/** Growth is the slope over the newest samples spanning at least this long... */
const MIN_SPAN_MS = 5_000
/**
 * ...and at most this long (older samples are dropped): the rate now, not the mean since before the
 * fault. A burst (activations doubling every few seconds) and a leak (a steady 24 MiB/s) need
 * different remedies, and only a recent slope tells them apart.
 */
const MAX_SPAN_MS = 10_000
/** A GPU not seen for this long belongs to a replica that is gone. */
const STALE_MS = 300_000

interface Samples {
  t: number[]
  used: number[]
}

/**
 * Memory growth per GPU over a sliding window (one sample a second, the last 10 s): the slope from
 * the oldest sample to the newest, once they span 5 s. A fixed 5 s step would be up to 5 s stale
 * when an alarm asks, and a fast leak would land in a different context bucket from run to run.
 */
export class MemoryGrowth {
  private readonly gpus = new Map<string, Samples>()

  observe(cp: Checkpoint): void {
    for (const g of cp.gpus) {
      if (g.replica === null || g.memoryUsedBytes === null) continue
      const key = `${g.replica}|${g.gpu}`
      let s = this.gpus.get(key)
      if (s === undefined) {
        s = { t: [], used: [] }
        this.gpus.set(key, s)
      }
      const last = s.t[s.t.length - 1]
      if (last !== undefined && cp.t - last < 1000) continue
      s.t.push(cp.t)
      s.used.push(g.memoryUsedBytes)
      while (s.t.length > 1 && cp.t - (s.t[0] as number) > MAX_SPAN_MS) {
        s.t.shift()
        s.used.shift()
      }
    }
  }

  /** Bytes/s over the window, null until it spans 5 s. */
  growth(replica: string, gpu: number): number | null {
    const s = this.gpus.get(`${replica}|${gpu}`)
    if (s === undefined || s.t.length < 2) return null
    const dt = (s.t[s.t.length - 1] as number) - (s.t[0] as number)
    if (dt < MIN_SPAN_MS) return null
    return (((s.used[s.used.length - 1] as number) - (s.used[0] as number)) * 1000) / dt
  }

  /** Forgets GPUs not seen for five minutes. */
  sweep(t: number): void {
    for (const [key, s] of this.gpus) if (t - (s.t[s.t.length - 1] ?? t) > STALE_MS) this.gpus.delete(key)
  }
}

/** The learner's context for acting on `replica`; `cotenantBytes` is read by the caller (it is async). */
export function contextFeatures(
  cp: Checkpoint,
  replica: string,
  prediction: Prediction | null,
  memory: MemoryGrowth,
  cotenantBytes: number | null,
): LearnerFeatures {
  const r = cp.engines.find((x) => x.replica === replica)?.reading ?? null
  let memFrac: number | null = null
  let growth: number | null = null
  let temp: number | null = null
  for (const g of cp.gpus) {
    if (g.replica !== replica) continue
    if (g.memoryUsedBytes !== null && g.memoryTotalBytes !== null && g.memoryTotalBytes > 0) {
      const f = g.memoryUsedBytes / g.memoryTotalBytes
      if (memFrac === null || f > memFrac) memFrac = f
    }
    const m = memory.growth(replica, g.gpu)
    if (m !== null && (growth === null || m > growth)) growth = m
    if (g.temperatureCelsius !== null && (temp === null || g.temperatureCelsius > temp))
      temp = g.temperatureCelsius
  }
  return {
    kvCacheUsage: r?.kvCacheUsage ?? null,
    requestsWaiting: r?.requestsWaiting ?? null,
    requestsRunning: r?.requestsRunning ?? null,
    memoryUsedFraction: memFrac,
    memoryGrowthBytesPerSec: growth,
    cotenantMemoryBytes: cotenantBytes,
    tempCelsius: temp,
    fleetHeadroom: fleetHeadroom(cp, replica),
    probability: prediction?.probability ?? null,
    timeToFailureS: prediction?.timeToFailureS ?? null,
  }
}

/**
 * What the other replicas could absorb, 0-1: the mean free KV share of those that serve, counting
 * one with a waiting queue (or no fresh reading) as full; 0 when there is no other.
 */
export function fleetHeadroom(cp: Checkpoint, replica: string): number {
  let room = 0
  let others = 0
  for (const x of cp.engines) {
    if (x.replica === replica) continue
    if (x.lifecycleState !== 'SERVING' && x.lifecycleState !== 'DEGRADED') continue
    others++
    const xr = x.reading
    if (xr === null || x.stale || (xr.requestsWaiting ?? 0) > 0) continue
    room += Math.max(0, 1 - (xr.kvCacheUsage ?? 1))
  }
  return others === 0 ? 0 : room / others
}

/** The failure is already under way when acting on it (a hang is detected after it started). */
export function failingNow(cp: Checkpoint, replica: string, failureType: FailureType): boolean {
  if (failureType === 'network-failure' || failureType === 'hardware-failure') return true
  const e = cp.engines.find((x) => x.replica === replica)
  return failureType === 'oom' && e?.lifecycleState === 'ERROR'
}
