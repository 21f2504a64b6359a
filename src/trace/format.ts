/**
 * The trace file format (JSON Lines): a header line, then one `TelemetryRecord` per line.
 * This module owns the format's constants and its validation; `writer.ts` and `reader.ts` only move
 * bytes. The checks are hand-written rather than zod schemas because replay validates every line and
 * the hand-written checks measured several times faster (see docs/trace-format.md).
 */
import { TraceParseError } from '../errors.js'
import type {
  EngineReading,
  EventSeverity,
  FaultLabel,
  FaultType,
  GpuReading,
  MonitorEvent,
  RecordKind,
  TelemetryRecord,
} from '../telemetry/types.js'

export const TRACE_FORMAT = 'vllm-monitor-trace'
/** Bumped on any change an older reader would misread; see the versioning policy in the docs. */
export const TRACE_VERSION = 1

/** A replica the trace has readings for. */
export interface TraceReplica {
  name: string
  url?: string
}

/** A GPU the trace has readings for (`gpu` is the same host-wide index as in `GpuReading`). */
export interface TraceGpu {
  gpu: number
  name?: string | null
  uuid?: string | null
  replica?: string | null
  memoryTotalBytes?: number | null
}

/**
 * Line 1 of every trace. Fields a newer writer adds are kept by the reader (at runtime) but not typed
 * here; producer-specific details belong in `meta`.
 */
export interface TraceHeader {
  format: typeof TRACE_FORMAT
  version: number
  /** ISO 8601 time the trace was started; `t` = 0 in the records is this instant. */
  createdAt: string
  /** Who wrote it: `sim`, `record`, or another producer's name. */
  source: 'sim' | 'record' | (string & {})
  /** The simulator's seed, when the trace is a simulation. */
  seed?: number
  /** The simulator scenario's name, when the trace is a simulation. */
  scenario?: string
  replicas: TraceReplica[]
  gpus?: TraceGpu[]
  /** Free-form producer details (versions, options); JSON-serialisable. */
  meta?: Record<string, unknown>
}

/** What a writer needs to build the header; `format`, `version` and `createdAt` are filled in. */
export type TraceHeaderInit = Omit<TraceHeader, 'format' | 'version' | 'createdAt'> & { createdAt?: string }

/** A `TraceParseError` that says where: the 1-based line and, when one is to blame, the field. */
export type TraceLineError = TraceParseError & { readonly line: number; readonly field?: string }

/** Builds the error every trace check throws: `trace line N: <message>`, with `.line` and `.field`. */
export function traceLineError(
  line: number,
  message: string,
  field?: string,
  cause?: unknown,
): TraceLineError {
  const err = new TraceParseError(
    `trace line ${line}: ${message}`,
    cause === undefined ? undefined : { cause },
  ) as TraceLineError
  // errors.ts gives TraceParseError no fields of its own, so the location rides on the instance.
  Object.defineProperty(err, 'line', { value: line, enumerable: true })
  if (field !== undefined) Object.defineProperty(err, 'field', { value: field, enumerable: true })
  return err
}

// Records keyed by the union, so the compiler flags a kind, severity or fault that types.ts adds.
const kKindSet: Record<RecordKind, true> = { engine: true, gpu: true, event: true, label: true }
const kSeveritySet: Record<EventSeverity, true> = { info: true, warning: true, critical: true }
const kFaultSet: Record<FaultType, true> = {
  'kv-exhaustion': true,
  'gpu-oom-spike': true,
  'gpu-oom-cotenant': true,
  'memory-leak': true,
  'thermal-throttle': true,
  'xid-48': true,
  'xid-79': true,
  'nccl-hang': true,
  'engine-death': true,
  'perf-drift': true,
}
const kPhaseSet: Record<FaultLabel['phase'], true> = { injected: true, failure: true, cleared: true }

export const RECORD_KINDS = Object.keys(kKindSet) as readonly RecordKind[]
export const EVENT_SEVERITIES = Object.keys(kSeveritySet) as readonly EventSeverity[]
export const FAULT_TYPES = Object.keys(kFaultSet) as readonly FaultType[]
export const FAULT_PHASES = Object.keys(kPhaseSet) as readonly FaultLabel['phase'][]

// Field checks as small integer codes so the per-line loop is a switch, not a closure call.
const STR = 0
const STR_OR_NULL = 1
const NUM_OR_NULL = 2
const BOOL = 3
const INDEX = 4
const INDEX_OR_NULL = 5
const NONEMPTY_STR = 6
/** A number or null, and may be missing: a field added to the format after version 1 shipped. */
const OPT_NUM_OR_NULL = 7
type Check = number

const expectation: Record<Check, string> = {
  [STR]: 'a string',
  [STR_OR_NULL]: 'a string or null',
  [NUM_OR_NULL]: 'a number or null',
  [BOOL]: 'a boolean',
  [INDEX]: 'a non-negative integer',
  [INDEX_OR_NULL]: 'a non-negative integer or null',
  [NONEMPTY_STR]: 'a non-empty string',
  [OPT_NUM_OR_NULL]: 'a number or null',
}

function passes(check: Check, v: unknown): boolean {
  switch (check) {
    case STR:
      return typeof v === 'string'
    case STR_OR_NULL:
      return v === null || typeof v === 'string'
    case NUM_OR_NULL:
      return v === null || typeof v === 'number'
    case BOOL:
      return typeof v === 'boolean'
    case INDEX:
      return typeof v === 'number' && Number.isInteger(v) && v >= 0
    case INDEX_OR_NULL:
      return v === null || (typeof v === 'number' && Number.isInteger(v) && v >= 0)
    case OPT_NUM_OR_NULL:
      return v === undefined || v === null || typeof v === 'number'
    default:
      return typeof v === 'string' && v.length > 0
  }
}

/** One check per field of `T`: the compiler fails here when types.ts adds, drops or renames a field. */
type FieldChecks<T> = { readonly [K in keyof T]-?: Check }

// In the order types.ts declares the fields (the docs list them the same way). `data` is optional
// and checked on its own.
const kEngineFields: FieldChecks<EngineReading> = {
  replica: NONEMPTY_STR,
  engine: STR_OR_NULL,
  modelName: STR_OR_NULL,
  reachable: BOOL,
  healthStatus: NUM_OR_NULL,
  error: STR_OR_NULL,
  requestsRunning: NUM_OR_NULL,
  requestsWaiting: NUM_OR_NULL,
  kvCacheUsage: NUM_OR_NULL,
  preemptionsTotal: NUM_OR_NULL,
  promptTokensTotal: NUM_OR_NULL,
  generationTokensTotal: NUM_OR_NULL,
  stepsTotal: NUM_OR_NULL,
  requestsFinishedTotal: NUM_OR_NULL,
  requestsErroredTotal: NUM_OR_NULL,
  numGpuBlocks: NUM_OR_NULL,
  ttftSecondsSum: NUM_OR_NULL,
  ttftCount: NUM_OR_NULL,
  itlSecondsSum: NUM_OR_NULL,
  itlCount: NUM_OR_NULL,
  e2eSecondsSum: NUM_OR_NULL,
  e2eCount: NUM_OR_NULL,
  queueTimeSecondsSum: NUM_OR_NULL,
  queueTimeCount: NUM_OR_NULL,
  // Added within version 1: older traces lack them, and the reader fills in null.
  ttftP50Ms: OPT_NUM_OR_NULL,
  ttftP90Ms: OPT_NUM_OR_NULL,
  ttftP99Ms: OPT_NUM_OR_NULL,
  itlP50Ms: OPT_NUM_OR_NULL,
  itlP99Ms: OPT_NUM_OR_NULL,
  e2eP50Ms: OPT_NUM_OR_NULL,
  e2eP99Ms: OPT_NUM_OR_NULL,
  queueTimeP99Ms: OPT_NUM_OR_NULL,
}

const kGpuFields: FieldChecks<GpuReading> = {
  gpu: INDEX,
  replica: STR_OR_NULL,
  uuid: STR_OR_NULL,
  name: STR_OR_NULL,
  lost: BOOL,
  memoryUsedBytes: NUM_OR_NULL,
  memoryTotalBytes: NUM_OR_NULL,
  gpuUtilizationPercent: NUM_OR_NULL,
  powerWatts: NUM_OR_NULL,
  powerLimitWatts: NUM_OR_NULL,
  temperatureCelsius: NUM_OR_NULL,
  smClockMhz: NUM_OR_NULL,
  clockEventReasons: NUM_OR_NULL,
  eccCorrectedVolatile: NUM_OR_NULL,
  eccUncorrectedVolatile: NUM_OR_NULL,
}

const kEventFields: FieldChecks<Omit<MonitorEvent, 'data'>> = {
  type: NONEMPTY_STR,
  severity: STR,
  replica: STR_OR_NULL,
  gpu: INDEX_OR_NULL,
  message: STR,
}

const kLabelFields: FieldChecks<FaultLabel> = {
  fault: STR,
  phase: STR,
  replica: NONEMPTY_STR,
  gpu: INDEX_OR_NULL,
  detail: STR,
}

const kFieldTable: Record<RecordKind, readonly (readonly [string, Check])[]> = {
  engine: Object.entries(kEngineFields),
  gpu: Object.entries(kGpuFields),
  event: Object.entries(kEventFields),
  label: Object.entries(kLabelFields),
}

// A Map, so that a `kind` such as "toString" cannot find something on Object.prototype.
const kFields = new Map(Object.entries(kFieldTable))

/** The fields each kind has, in declaration order (for docs and tooling); see `optionalRecordFields`. */
export function recordFields(kind: RecordKind): readonly string[] {
  return kFieldTable[kind].map(([name]) => name)
}

/** The fields of a kind that a record may lack (added within the current version); read as null. */
export function optionalRecordFields(kind: RecordKind): readonly string[] {
  return kFieldTable[kind].filter(([, check]) => check === OPT_NUM_OR_NULL).map(([name]) => name)
}

function describe(v: unknown): string {
  if (v === null) return 'null'
  if (Array.isArray(v)) return 'an array'
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v)
  if (typeof v === 'object') return 'an object'
  return String(v)
}

function fieldError(line: number, kind: string, name: string, must: string, v: unknown): TraceLineError {
  return traceLineError(
    line,
    v === undefined
      ? `${kind} record: field "${name}" is missing (must be ${must})`
      : `${kind} record: field "${name}" must be ${must}, found ${describe(v)}`,
    name,
  )
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/**
 * Checks a parsed record line and returns it typed. Unknown extra fields are kept (a newer writer may
 * add optional fields); a wrong or missing field, or an unknown `kind`, throws naming the line and field.
 * An optional field (`optionalRecordFields`) that is missing is set to null on `value`.
 */
export function validateRecord(value: unknown, line: number): TelemetryRecord {
  if (!isPlainObject(value)) throw traceLineError(line, `expected a JSON object, found ${describe(value)}`)
  const kind = value.kind
  if (kind === undefined) throw traceLineError(line, 'record has no "kind" field', 'kind')
  const fields = typeof kind === 'string' ? kFields.get(kind) : undefined
  if (fields === undefined)
    throw traceLineError(
      line,
      `unknown record kind ${describe(kind)} (expected one of ${RECORD_KINDS.join(', ')})`,
      'kind',
    )
  const t = value.t
  if (typeof t !== 'number' || t < 0)
    throw fieldError(line, kind as string, 't', 'a non-negative number (ms since the trace started)', t)
  for (let i = 0; i < fields.length; i++) {
    const [name, check] = fields[i]!
    const v = value[name]
    if (!passes(check, v)) throw fieldError(line, kind as string, name, expectation[check]!, v)
    // Missing optional fields read as null, so a record from an older writer has the current shape.
    if (v === undefined) value[name] = null
  }
  if (kind === 'event') {
    if (!Object.hasOwn(kSeveritySet, value.severity as string))
      throw fieldError(line, kind, 'severity', `one of ${EVENT_SEVERITIES.join(', ')}`, value.severity)
    if (value.data !== undefined && !isPlainObject(value.data))
      throw fieldError(line, kind, 'data', 'an object when present', value.data)
  } else if (kind === 'label') {
    if (!Object.hasOwn(kFaultSet, value.fault as string))
      throw fieldError(line, kind, 'fault', `one of ${FAULT_TYPES.join(', ')}`, value.fault)
    if (!Object.hasOwn(kPhaseSet, value.phase as string))
      throw fieldError(line, kind, 'phase', `one of ${FAULT_PHASES.join(', ')}`, value.phase)
  }
  return value as unknown as TelemetryRecord
}

/**
 * Checks a parsed header line. A record where the header should be, another format, or a newer
 * version than this reader knows all throw naming what was found.
 */
export function validateHeader(value: unknown, line = 1): TraceHeader {
  if (!isPlainObject(value))
    throw traceLineError(line, `missing header: expected a JSON object, found ${describe(value)}`)
  if (value.format === undefined && typeof value.kind === 'string')
    throw traceLineError(
      line,
      `missing header: found a ${describe(value.kind)} record where the "${TRACE_FORMAT}" header should be`,
      'format',
    )
  if (value.format !== TRACE_FORMAT)
    throw traceLineError(
      line,
      `not a vllm-monitor trace: header field "format" is ${value.format === undefined ? 'missing' : describe(value.format)}, expected "${TRACE_FORMAT}"`,
      'format',
    )
  const version = value.version
  if (typeof version !== 'number' || !Number.isInteger(version) || version < 1)
    throw traceLineError(
      line,
      `header field "version" must be a positive integer, found ${version === undefined ? 'nothing' : describe(version)}`,
      'version',
    )
  if (version > TRACE_VERSION)
    throw traceLineError(
      line,
      `unsupported trace version ${version}: this reader reads version ${TRACE_VERSION}; upgrade vllm-monitor`,
      'version',
    )
  const bad = (field: string, must: string, v: unknown): never => {
    throw traceLineError(
      line,
      `header field "${field}" ${v === undefined ? 'is missing' : `is ${describe(v)}`}; it must be ${must}`,
      field.split(/[.[]/)[0],
    )
  }
  if (typeof value.createdAt !== 'string' || Number.isNaN(Date.parse(value.createdAt)))
    bad('createdAt', 'an ISO 8601 date string', value.createdAt)
  if (typeof value.source !== 'string' || value.source.length === 0)
    bad('source', 'a non-empty string', value.source)
  if (value.seed !== undefined && typeof value.seed !== 'number') bad('seed', 'a number', value.seed)
  if (value.scenario !== undefined && typeof value.scenario !== 'string')
    bad('scenario', 'a string', value.scenario)
  if (!Array.isArray(value.replicas)) bad('replicas', 'an array of { name, url? }', value.replicas)
  const replicas = value.replicas as unknown[]
  for (let i = 0; i < replicas.length; i++) {
    const r = replicas[i]
    if (!isPlainObject(r)) bad(`replicas[${i}]`, 'an object { name, url? }', r)
    const { name, url } = r as Record<string, unknown>
    if (typeof name !== 'string' || name.length === 0) bad(`replicas[${i}].name`, 'a non-empty string', name)
    if (url !== undefined && typeof url !== 'string') bad(`replicas[${i}].url`, 'a string', url)
  }
  if (value.gpus !== undefined) {
    if (!Array.isArray(value.gpus)) bad('gpus', 'an array of { gpu, name?, uuid?, ... }', value.gpus)
    const gpus = value.gpus as unknown[]
    for (let i = 0; i < gpus.length; i++) {
      const g = gpus[i]
      if (!isPlainObject(g)) bad(`gpus[${i}]`, 'an object { gpu, name?, uuid?, ... }', g)
      const index = (g as Record<string, unknown>).gpu
      if (!passes(INDEX, index)) bad(`gpus[${i}].gpu`, 'a non-negative integer', index)
    }
  }
  if (value.meta !== undefined && !isPlainObject(value.meta)) bad('meta', 'an object', value.meta)
  return value as unknown as TraceHeader
}

/** Serialises one record as a line (without the newline). NaN and ±Infinity become null. */
export function encodeRecord(record: TelemetryRecord): string {
  // JSON.stringify already writes non-finite numbers as null, nested ones included, which is
  // exactly the "could not be read" meaning null has in the model.
  return JSON.stringify(record)
}

/** Builds and serialises the header line (without the newline). */
export function encodeHeader(init: TraceHeaderInit): string {
  const { createdAt, ...rest } = init
  const header: TraceHeader = {
    format: TRACE_FORMAT,
    version: TRACE_VERSION,
    createdAt: createdAt ?? new Date().toISOString(),
    ...rest,
  }
  // Set again after the spread so that stray keys in `init` cannot change what the file claims to be.
  header.format = TRACE_FORMAT
  header.version = TRACE_VERSION
  // The writer must never produce a file the reader rejects, so the header is checked here.
  validateHeader(JSON.parse(JSON.stringify(header)), 1)
  return JSON.stringify(header)
}
