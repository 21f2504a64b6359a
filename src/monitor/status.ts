import type { FaultType, GpuReading, LifecycleState, Prediction } from '../telemetry/types.js'

/** Per-replica part of `getStatus()`. */
export interface ReplicaStatus {
  replica: string
  url: string | null
  lifecycleState: LifecycleState
  reason: string
  activeRequests: number | null
  waitingRequests: number | null
  kvCacheUsage: number | null
  tokensGenerated: number | null
  preemptionsTotal: number | null
  generationTokensPerSec: number | null
  avgStepDurationMs: number | null
  ttftMeanMs: number | null
  itlMeanMs: number | null
  /** p99 of time to first token over the scraper's quantile window (default 60 s), ms. */
  ttftP99Ms: number | null
  /** p99 of inter-token latency over the same window, ms. */
  itlP99Ms: number | null
}

/** What `getStatus()` / `getEngineStatus()` return: the monitor's state in one JSON-safe object. */
export interface MonitorStatus {
  monitorActive: boolean
  /** The fleet roll-up. */
  lifecycleState: LifecycleState
  /** Running requests summed over replicas (null when no replica reported). */
  activeRequests: number | null
  /** Generated tokens summed over replicas. */
  tokensGenerated: number | null
  avgStepDurationMs: number | null
  mitigationInProgress: boolean
  /** Mitigations that acted so far (SKIPPED ones not counted). */
  mitigationsTriggered: number
  /** Every action so far by strategy and outcome (`vllm:monitor_mitigation_triggered`). */
  mitigations: Array<{
    strategy: string
    outcome: 'SUCCESS' | 'PARTIAL' | 'FAILURE' | 'SKIPPED'
    count: number
  }>
  /** Fraction of scored predictions that were right, null until one was scored. */
  predictionAccuracy: number | null
  predictiveEnabled: boolean
  learningEnabled: boolean
  autoMitigate: boolean
  /** ms since the monitor started. */
  uptimeMs: number
  replicas: ReplicaStatus[]
  gpus: GpuReading[]
  predictions: Prediction[]
  /** Ground-truth labels seen (simulated or replayed runs only), by fault type. */
  labels: Partial<Record<FaultType, number>>
}
