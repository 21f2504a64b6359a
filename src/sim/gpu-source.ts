/**
 * Reads a simulated fleet's GPUs over its control port (`/sim/gpus`, `/sim/events`), the way the
 * NVML source reads real ones: `gpu` records every `intervalMs`, `event` records for Xid, ECC and
 * lost GPUs. Used by `vllm-monitor demo` and tests when no real GPU is present.
 */
import type { GpuReading, MonitorEvent, TelemetryRecord, TelemetrySource } from '../telemetry/types.js'

export interface SimGpuSourceOptions {
  controlUrl: string
  intervalMs?: number
  timeoutMs?: number
  now: () => number
  /** Reports a failed poll; the source keeps polling. */
  onError?: (err: Error) => void
}

export class SimGpuSource implements TelemetrySource {
  readonly name = 'sim-gpu'
  private readonly options: SimGpuSourceOptions
  private timer: NodeJS.Timeout | null = null
  private inFlight = false
  private lastSeq = 0
  private stopped = false
  private readonly abort = new AbortController()

  constructor(options: SimGpuSourceOptions) {
    this.options = options
  }

  start(push: (record: TelemetryRecord) => void): void {
    const { controlUrl, now } = this.options
    const timeoutMs = this.options.timeoutMs ?? 1000
    const poll = async () => {
      if (this.inFlight || this.stopped) return
      this.inFlight = true
      try {
        const signal = AbortSignal.any([this.abort.signal, AbortSignal.timeout(timeoutMs)])
        const [g, e] = await Promise.all([
          fetch(`${controlUrl}/sim/gpus`, { signal }).then(
            (r) => r.json() as Promise<{ gpus: GpuReading[] }>,
          ),
          fetch(`${controlUrl}/sim/events?after=${this.lastSeq}`, { signal }).then(
            (r) => r.json() as Promise<{ seq: number; events: Array<MonitorEvent & { seq: number }> }>,
          ),
        ])
        const t = now()
        for (const ev of e.events) {
          const { seq: _s, t: _t, ...event } = ev as MonitorEvent & { seq: number; t: number }
          push({ t, kind: 'event', ...event })
        }
        this.lastSeq = e.seq
        for (const reading of g.gpus) push({ t, kind: 'gpu', ...reading })
      } catch (err) {
        if (!this.stopped) this.options.onError?.(err as Error)
      } finally {
        this.inFlight = false
      }
    }
    this.timer = setInterval(() => void poll(), this.options.intervalMs ?? 100)
    this.timer.unref()
    void poll()
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
    this.stopped = true
    this.abort.abort()
  }
}
