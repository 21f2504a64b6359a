/**
 * The gateway's contracts: admission (per replica: an adaptive concurrency limit, a bounded
 * priority queue, shedding with Retry-After), replica picking, and the request telemetry the
 * gateway feeds back into the monitor. The admission controller is also the actuator the
 * mitigation side acts through (cap, release, drain).
 */

/** Request priority: higher is more important. Below 0 is sheddable first (GIE semantics). */
export type Priority = number

/** Why a request was not admitted. */
export type RejectReason =
  /** The queue was full, or the request was sheddable while the replica is saturated. */
  | 'overloaded'
  /** It waited in the queue past its timeout. */
  | 'queue-timeout'
  /** The replica is draining or capped to 0. */
  | 'draining'
  /** No replica can take requests (all broken or draining). */
  | 'no-replica'

export interface Rejection {
  reason: RejectReason
  /** HTTP status to answer with: 429 for overload and queue timeouts, 503 otherwise. */
  status: 429 | 503
  /** Seconds for the Retry-After header: the predicted time for the queue to drain. */
  retryAfterS: number
  message: string
}

/** A granted slot: call exactly one of these when the request ends. */
export interface Permit {
  readonly replica: string
  /** Ended with a response (any status the upstream chose, including the client's 4xx). */
  success(): void
  /** Ended because the upstream failed or timed out (counts as congestion / loss). */
  dropped(): void
  /** Ended without telling anything about the upstream (client abort before a response). */
  ignore(): void
}

/** What a mitigation acts through. */
export interface AdmissionActuator {
  /** Caps the replica's concurrency at `limit` (below the adaptive limit) until released. */
  cap(replica: string, limit: number, reason: string): void
  /** Lifts a cap. */
  release(replica: string): void
  /**
   * Stops admitting to the replica and resolves once its in-flight requests have ended or
   * `timeoutMs` passed (true when they all ended).
   */
  drain(replica: string, timeoutMs: number): Promise<boolean>
  /** Admits again after a drain. */
  undrain(replica: string): void
}

/** A replica as the picker sees it, refreshed from the monitor's checkpoints. */
export interface ReplicaView {
  name: string
  url: string
  kvCacheUsage: number | null
  requestsWaiting: number | null
  requestsRunning: number | null
  /** The newest reading is too old to trust (stale counts as saturated). */
  stale: boolean
  /** Lifecycle says it can serve (SERVING or DEGRADED). */
  serving: boolean
  /** The forecaster's highest failure probability for it (0-1), 0 without a forecaster. */
  risk: number
}

/** Per-request telemetry the gateway observes, fed into the monitor. */
export interface RequestObservation {
  replica: string
  /** ms from the request's start to the first byte (or token) of the response; null if none. */
  ttftMs: number | null
  /** Gaps between streamed chunks, ms (for a non-streaming response: empty). */
  interTokenGapsMs: readonly number[]
  /** Completion tokens counted (from `usage` or counted chunks), null when unknown. */
  completionTokens: number | null
  promptTokens: number | null
  /** HTTP status returned to the client. */
  status: number
  /** The upstream failed (connection refused/reset, 5xx, timeout), as opposed to the client's error. */
  upstreamError: string | null
  /** The stream went silent for longer than the stall bound. */
  stalled: boolean
  durationMs: number
}
