/**
 * The JSON export (`GET /api/export`, `vllm-monitor export`): the monitor's state, the newest
 * checkpoint and the history behind them in one self-describing document. A pure function of its
 * inputs (the export time included) so that the same inputs give the same document, and JSON-safe
 * all the way down: non-finite numbers become null rather than vanishing into `JSON.stringify`.
 */
import type { MonitorStatus } from '../monitor/status.js'
import type { Checkpoint, TimedEvent, Transition } from '../telemetry/types.js'

export const EXPORT_FORMAT = 'vllm-monitor-export'
/** Bumped on any change an older reader would misread. */
export const EXPORT_VERSION = 1

export interface ExportInput {
  /** When the export was taken (a Date or ms since the epoch): written as ISO 8601. */
  exportedAt: Date | number
  status: MonitorStatus
  checkpoint: Checkpoint
  /** Each replica's lifecycle transitions, oldest first. */
  transitions: ReadonlyMap<string, readonly Transition[]> | Readonly<Record<string, readonly Transition[]>>
  /** The event history; defaults to the checkpoint's (bounded) window. */
  events?: readonly TimedEvent[]
  /** Time series for charts, as the store provides them; copied JSON-safe, not interpreted. */
  series?: Readonly<Record<string, unknown>>
}

export interface MonitorExport {
  format: typeof EXPORT_FORMAT
  version: typeof EXPORT_VERSION
  exportedAt: string
  status: MonitorStatus
  checkpoint: Checkpoint
  history: {
    transitions: Record<string, Transition[]>
    events: TimedEvent[]
  }
  series?: Record<string, unknown>
}

export function toExportJson(input: ExportInput): MonitorExport {
  const at = input.exportedAt instanceof Date ? input.exportedAt : new Date(input.exportedAt)
  if (Number.isNaN(at.getTime())) throw new TypeError('exportedAt must be a valid Date or epoch ms')
  const out: MonitorExport = {
    format: EXPORT_FORMAT,
    version: EXPORT_VERSION,
    exportedAt: at.toISOString(),
    status: jsonSafe(input.status, 'status') as MonitorStatus,
    checkpoint: jsonSafe(input.checkpoint, 'checkpoint') as Checkpoint,
    history: {
      transitions: jsonSafe(input.transitions, 'history.transitions') as Record<string, Transition[]>,
      events: jsonSafe(input.events ?? input.checkpoint.events, 'history.events') as TimedEvent[],
    },
  }
  if (input.series !== undefined) out.series = jsonSafe(input.series, 'series') as Record<string, unknown>
  return out
}

/**
 * A deep copy holding only what JSON can: NaN and ±Infinity become null, a BigInt becomes a number
 * (or a string beyond 2^53), Dates ISO strings, Maps objects and Sets arrays; undefined, functions
 * and symbols are left out as `JSON.stringify` would. A cycle throws, naming where it closes.
 */
export function jsonSafe(value: unknown, path = '$', ancestors: object[] = []): unknown {
  switch (typeof value) {
    case 'number':
      return Number.isFinite(value) ? value : null
    case 'string':
    case 'boolean':
      return value
    case 'bigint':
      return value <= BigInt(Number.MAX_SAFE_INTEGER) && value >= BigInt(Number.MIN_SAFE_INTEGER)
        ? Number(value)
        : value.toString()
    case 'object':
      break
    default:
      return undefined
  }
  if (value === null) return null
  if (value instanceof Date) return Number.isNaN(value.getTime()) ? null : value.toISOString()
  // Shared references are fine (status and checkpoint may hold the same GPU readings); only a path
  // back to an ancestor is a cycle.
  if (ancestors.includes(value)) throw new TypeError(`cannot export a cycle: ${path} refers back to itself`)
  ancestors.push(value)
  try {
    if (Array.isArray(value) || value instanceof Set) {
      return Array.from(value as Iterable<unknown>, (v, i) => jsonSafe(v, `${path}[${i}]`, ancestors) ?? null)
    }
    const toJSON = (value as { toJSON?: unknown }).toJSON
    if (typeof toJSON === 'function' && !(value instanceof Map)) {
      return jsonSafe(toJSON.call(value), path, ancestors)
    }
    const entries = value instanceof Map ? value.entries() : Object.entries(value)
    const out: Record<string, unknown> = {}
    for (const [k, v] of entries) {
      const safe = jsonSafe(v, `${path}.${String(k)}`, ancestors)
      if (safe !== undefined) out[String(k)] = safe
    }
    return out
  } finally {
    ancestors.pop()
  }
}
