/**
 * The learner's contexts: the features seen at decision time, binned coarsely per failure type
 * into bucket keys, and those keys said in words for the learned rules.
 */
import type { FailureType } from '../telemetry/types.js'

/** The context at decision time; null = unknown (it gets its own bin). */
export interface LearnerFeatures {
  /** 0-1. */
  kvCacheUsage: number | null
  requestsWaiting: number | null
  requestsRunning: number | null
  /** Worst GPU of the replica, 0-1. */
  memoryUsedFraction: number | null
  memoryGrowthBytesPerSec: number | null
  /** Memory held by other processes on the replica's GPUs. */
  cotenantMemoryBytes: number | null
  tempCelsius: number | null
  /** 0-1: spare serving capacity on the OTHER replicas (1 = idle, 0 = none / no other replica). */
  fleetHeadroom: number | null
  /** The prediction's probability. */
  probability: number | null
  timeToFailureS: number | null
}

/** One binned feature: `token` in the context key is `key + labels[i]`, `phrases[i]` says it in words. */
export interface ContextBin {
  feature: keyof LearnerFeatures
  key: string
  /** Ascending; bin i holds values in [cuts[i-1], cuts[i]). */
  cuts: readonly number[]
  labels: readonly string[]
  phrases: readonly string[]
  /** Said when the feature is null (token `key + '?'`). */
  unknown: string
}

const kMiB = 1_048_576
const kv: ContextBin = {
  feature: 'kvCacheUsage',
  key: 'kv',
  cuts: [0.8, 0.93],
  labels: ['<0.8', '0.8-0.93', '>=0.93'],
  phrases: ['kv_cache_usage < 0.8', '0.8 <= kv_cache_usage < 0.93', 'kv_cache_usage >= 0.93'],
  unknown: 'kv_cache_usage unknown',
}
// Cuts between integers: waiting is a gauge of requests, possibly averaged over a window.
const waiting: ContextBin = {
  feature: 'requestsWaiting',
  key: 'waiting',
  cuts: [0.5, 40.5],
  labels: ['=0', '1-40', '>40'],
  phrases: ['waiting = 0', '1 <= waiting <= 40', 'waiting > 40'],
  unknown: 'waiting unknown',
}
const headroom: ContextBin = {
  feature: 'fleetHeadroom',
  key: 'headroom',
  cuts: [0.3],
  labels: ['<0.3', '>=0.3'],
  phrases: ['fleet_headroom < 0.3', 'fleet_headroom >= 0.3'],
  unknown: 'fleet_headroom unknown',
}
// A leak (steady growth) and a burst call for different remedies than a stable but full GPU.
const growth: ContextBin = {
  feature: 'memoryGrowthBytesPerSec',
  key: 'growth',
  cuts: [kMiB, 100 * kMiB],
  labels: ['<1MiB/s', '1-100MiB/s', '>=100MiB/s'],
  phrases: ['memory_growth < 1 MiB/s', '1 MiB/s <= memory_growth < 100 MiB/s', 'memory_growth >= 100 MiB/s'],
  unknown: 'memory_growth unknown',
}
// A few hundred MiB is a monitoring agent or a CUDA context; more is someone else's workload.
const cotenant: ContextBin = {
  feature: 'cotenantMemoryBytes',
  key: 'cotenant',
  cuts: [256 * kMiB],
  labels: ['<256MiB', '>=256MiB'],
  phrases: ['cotenant_memory < 256 MiB', 'cotenant_memory >= 256 MiB'],
  unknown: 'cotenant_memory unknown',
}
const temp: ContextBin = {
  feature: 'tempCelsius',
  key: 'temp',
  cuts: [85],
  labels: ['<85C', '>=85C'],
  phrases: ['temp < 85 C', 'temp >= 85 C'],
  unknown: 'temp unknown',
}

/**
 * The features each failure type's context is made of. Few and coarse on purpose: every extra bin
 * multiplies the buckets that must each collect `minTrials` before anything is learned there.
 */
export const CONTEXT_BINS: Readonly<Record<FailureType, readonly ContextBin[]>> = Object.freeze({
  'kv-exhaustion': [kv, waiting, headroom],
  oom: [growth, cotenant, headroom],
  'slo-violation': [waiting, kv, headroom],
  'thermal-throttle': [temp, headroom],
  'queue-overflow': [waiting, headroom],
  'hardware-failure': [headroom],
  'network-failure': [headroom],
})

const kPhraseByToken = new Map<string, string>()
for (const bin of [kv, waiting, headroom, growth, cotenant, temp]) {
  for (let i = 0; i < bin.labels.length; i++) kPhraseByToken.set(bin.key + bin.labels[i]!, bin.phrases[i]!)
  kPhraseByToken.set(`${bin.key}?`, bin.unknown)
}

/** The bucket key of a context: the failure type, then one token per binned feature. */
export function contextKey(failureType: FailureType, features: Partial<LearnerFeatures>): string {
  let key: string = failureType
  for (const bin of CONTEXT_BINS[failureType]) {
    const v = features[bin.feature]
    let token = `${bin.key}?`
    if (typeof v === 'number' && Number.isFinite(v)) {
      let i = 0
      while (i < bin.cuts.length && v >= bin.cuts[i]!) i++
      token = bin.key + bin.labels[i]!
    }
    key += `|${token}`
  }
  return key
}

/** A bucket key in words ("kv_cache_usage >= 0.93 and waiting > 40 and fleet_headroom >= 0.3"). */
export function describeContext(context: string): string {
  const tokens = context.split('|').slice(1)
  if (tokens.length === 0) return 'any context'
  return tokens.map((t) => kPhraseByToken.get(t) ?? t).join(' and ')
}
