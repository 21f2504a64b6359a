/**
 * Turns vLLM log lines into telemetry: lines that mark a lifecycle phase become `lifecycle-hint`
 * events, failure signatures become typed events (cuda-oom, engine-dead, nccl-timeout...). Lines
 * come from a supervised process's stdout and stderr, a tailed file, or an in-process simulator.
 */
import type { TelemetryRecord, TelemetrySource } from '../telemetry/types.js'
import { classifyLogLine } from './log-lines.js'

export class LogLineSource implements TelemetrySource {
  readonly name = 'logs'
  private push: ((record: TelemetryRecord) => void) | null = null
  private readonly now: () => number
  linesSeen = 0

  constructor(now: () => number) {
    this.now = now
  }

  start(push: (record: TelemetryRecord) => void): void {
    this.push = push
  }

  stop(): void {
    this.push = null
  }

  /** Feeds one line printed by `replica`. Never throws. */
  line(replica: string, text: string): void {
    const push = this.push
    if (push === null) return
    this.linesSeen++
    const c = classifyLogLine(text)
    if (c === null) return
    const t = this.now()
    if (c.lifecycle !== undefined) {
      push({
        t,
        kind: 'event',
        type: 'lifecycle-hint',
        severity: 'info',
        replica,
        gpu: null,
        message: text.length > 300 ? text.slice(0, 300) : text,
        data: { state: c.lifecycle },
      })
    }
    // The periodic stats line repeats what `/metrics` says; it is not an event.
    if (c.event !== undefined && c.event.type !== 'stats') {
      push({
        t,
        kind: 'event',
        type: c.event.type,
        severity: c.event.severity,
        replica,
        gpu: null,
        message: c.event.message,
        ...(c.event.data === undefined ? {} : { data: c.event.data }),
      })
    }
  }
}
