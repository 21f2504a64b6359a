/**
 * One request the gateway admitted, followed to its end: first byte, streamed chunks (gaps,
 * stalls), then exactly one of end / fail / abort, which frees its admission slot and folds its
 * timings into its replica's statistics. Nothing is allocated per chunk.
 */
import type { Gateway } from './gateway.js'
import type { OutcomeKind } from './picker.js'
import type { Permit, ReplicaView } from './types.js'

/** Per-replica request statistics since the gateway started. */
export interface ReplicaRequestStats {
  requests: number
  errors: number
  stalls: number
  rejected: number
  /** Exponentially weighted means, ms; null before the first observation. */
  ttftMs: number | null
  interTokenMs: number | null
  /** Completion tokens reported by the responses (`usage`), summed. */
  completionTokens: number
}

/** A request in flight: report its progress, then exactly one of end / fail / abort. */
export class RequestHandle {
  readonly replica: string
  readonly url: string
  /** When the request was admitted (gateway clock, ms). */
  readonly startedAt: number
  private firstAt = Number.NaN
  private firstChunkAt = Number.NaN
  private lastAt = Number.NaN
  private chunks = 0
  private stalled = false
  private done = false

  constructor(
    private readonly gw: Gateway,
    readonly view: ReplicaView,
    private readonly permit: Permit,
  ) {
    this.replica = view.name
    this.url = view.url
    this.startedAt = gw.now()
  }

  /** The first byte (or token) of the response arrived. */
  firstByte(): void {
    if (!Number.isNaN(this.firstAt)) return
    const t = this.gw.now()
    this.firstAt = t
    this.lastAt = t
    this.gw.firstByteAfter(this.replica, t - this.startedAt)
  }

  /** A streamed chunk arrived (an SSE event, a token). */
  chunk(): void {
    const t = this.gw.now()
    if (this.chunks === 0) this.firstChunkAt = t
    if (Number.isNaN(this.firstAt)) {
      this.firstAt = t
      this.lastAt = t
      this.chunks++
      this.gw.firstByteAfter(this.replica, t - this.startedAt)
      return
    }
    const gap = t - this.lastAt
    if (gap > this.gw.stallAfterMs && !this.stalled) {
      this.stalled = true
      this.gw.stall(this, gap)
    }
    this.lastAt = t
    this.chunks++
  }

  /** @internal Reports a stall once when the stream has gone silent for longer than the bound. */
  checkStall(): void {
    if (this.done || this.stalled || this.chunks === 0) return
    const gap = this.gw.now() - this.lastAt
    if (gap > this.gw.stallAfterMs) {
      this.stalled = true
      this.gw.stall(this, gap)
    }
  }

  /** ms since the last byte (or since admission before the first): for stall watchdogs. */
  silentForMs(): number {
    return this.gw.now() - (Number.isNaN(this.lastAt) ? this.startedAt : this.lastAt)
  }

  /**
   * The response ended. `status` is what the client got; a 5xx from the upstream counts against
   * the replica's breaker, a 4xx (the client's error) does not.
   */
  end(status: number, usage?: { promptTokens?: number | null; completionTokens?: number | null }): void {
    if (this.done) return
    this.done = true
    const upstream5xx = status >= 500
    if (upstream5xx) this.permit.dropped()
    else this.permit.success()
    this.gw.finish(
      this,
      status,
      upstream5xx ? 'server-error' : status >= 400 ? 'client-error' : 'success',
      null,
      usage,
    )
  }

  /** The upstream failed (refused, reset, timed out): a loss for the limiter, a failure for the breaker. */
  fail(kind: Exclude<OutcomeKind, 'success' | 'client-error'>, error: string, status = 502): void {
    if (this.done) return
    this.done = true
    this.permit.dropped()
    this.gw.finish(this, status, kind, error, undefined)
  }

  /** The client went away before the end: says nothing about the replica. */
  abort(): void {
    if (this.done) return
    this.done = true
    this.permit.ignore()
    this.gw.release(this)
  }

  get ended(): boolean {
    return this.done
  }

  /** @internal Folds this request's TTFT and inter-token mean into its replica's statistics. */
  foldInto(s: ReplicaRequestStats): void {
    if (!Number.isNaN(this.firstAt)) {
      const ttft = this.firstAt - this.startedAt
      s.ttftMs = s.ttftMs === null ? ttft : s.ttftMs + EWMA * (ttft - s.ttftMs)
    }
    if (this.chunks > 1) {
      const gap = (this.lastAt - this.firstChunkAt) / (this.chunks - 1)
      s.interTokenMs = s.interTokenMs === null ? gap : s.interTokenMs + EWMA * (gap - s.interTokenMs)
    }
  }
}

const EWMA = 0.1
