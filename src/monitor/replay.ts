/**
 * Replays a trace through a fresh monitor core: the same records applied at the same checkpoint
 * grid give the same checkpoints the live monitor took (`vllm-monitor replay`, tests, training).
 */
import type { Checkpoint, TelemetryRecord } from '../telemetry/types.js'
import type { TraceHeader } from '../trace/format.js'
import { readTrace, type TraceSource } from '../trace/reader.js'
import { MonitorCore, type MonitorCoreOptions } from './core.js'

export interface ReplayOptions extends Partial<MonitorCoreOptions> {
  /** Skip lines that do not parse instead of stopping (reported through `onError`). */
  lenient?: boolean
  onError?: (err: Error) => void
}

/** Core options a recorded trace carries in its header (`meta`), so the replay matches the run. */
export function coreOptionsFromHeader(header: TraceHeader | null): Partial<MonitorCoreOptions> {
  const meta = (header?.meta ?? {}) as Record<string, unknown>
  const out: Partial<MonitorCoreOptions> = {}
  for (const k of [
    'checkpointIntervalMs',
    'hangAfterMs',
    'scrapeIntervalMs',
    'recoverAfterMs',
    'kvPressureThreshold',
    'staleAfterMs',
    'e2eFailuresBeforeError',
  ] as const) {
    const v = meta[k]
    if (typeof v === 'number' && Number.isFinite(v)) out[k] = v
  }
  return out
}

/** Yields each checkpoint of the replayed run, on the grid 0, step, 2·step, ... */
export async function* replayCheckpoints(
  source: TraceSource | Iterable<TelemetryRecord>,
  options: ReplayOptions = {},
): AsyncGenerator<Checkpoint, MonitorCore> {
  let records: AsyncIterable<TelemetryRecord> | Iterable<TelemetryRecord>
  let header: TraceHeader | null = null
  let core: MonitorCore | null = null
  if (typeof source === 'string' || (source as NodeJS.ReadableStream).pipe !== undefined) {
    const trace = readTrace(source as TraceSource, {
      strict: options.lenient !== true,
      ...(options.onError ? { onError: options.onError } : {}),
    })
    records = trace
    // The header is read with the first record; the core is built lazily once it is known.
    const it = trace[Symbol.asyncIterator]()
    const first = await it.next()
    header = trace.header
    records = {
      async *[Symbol.asyncIterator]() {
        if (!first.done) yield first.value
        for (;;) {
          const n = await it.next()
          if (n.done) return
          yield n.value
        }
      },
    }
  } else records = source as Iterable<TelemetryRecord>
  const { lenient: _l, onError: _e, ...coreOptions } = options
  core = new MonitorCore({ ...coreOptionsFromHeader(header), ...coreOptions })
  for (const r of header?.replicas ?? []) core.addReplica(r.name)
  const step = core.options.checkpointIntervalMs
  let next = 0
  let last = 0
  for await (const rec of records as AsyncIterable<TelemetryRecord>) {
    while (next < rec.t) {
      yield core.tick(next)
      next += step
    }
    core.push(rec)
    last = rec.t
  }
  while (next <= last + step) {
    yield core.tick(next)
    next += step
  }
  return core
}
