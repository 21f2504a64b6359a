/**
 * Reads traces: the header, then records one line at a time, validated and in time order. Gzip is
 * recognised by its magic bytes, not the file name, so a renamed or piped file still reads.
 */
import { createReadStream } from 'node:fs'
import { open } from 'node:fs/promises'
import { pipeline, type Readable } from 'node:stream'
import { StringDecoder } from 'node:string_decoder'
import { createGunzip } from 'node:zlib'
import { InvalidOptionError } from '../errors.js'
import type { TelemetryRecord } from '../telemetry/types.js'
import {
  type TraceHeader,
  type TraceLineError,
  traceLineError,
  validateHeader,
  validateRecord,
} from './format.js'

export interface ReadTraceOptions {
  /**
   * Throw on the first malformed record line (default). With `strict: false` such a line is skipped,
   * counted in `stats.skipped` and passed to `onError`. A bad header always throws: without it
   * nothing after it can be interpreted.
   */
  strict?: boolean
  /** Called with each skipped line's error in lenient mode. */
  onError?: (err: TraceLineError) => void
}

export interface TraceReadStats {
  /** Lines seen so far, the header and blank lines included. */
  lines: number
  /** Records parsed so far (a chunk ahead of the consumer: records are parsed a read at a time). */
  records: number
  /** Malformed lines skipped (lenient mode only). */
  skipped: number
}

export type TraceSource = string | Readable

/** Parses one record line (no header, no ordering check). Throws `TraceParseError` naming the line. */
export function parseTraceLine(line: string, lineNo: number): TelemetryRecord {
  let value: unknown
  try {
    value = JSON.parse(line)
  } catch (err) {
    throw traceLineError(lineNo, `not valid JSON (${(err as Error).message})`, undefined, err)
  }
  return validateRecord(value, lineNo)
}

/** Parses the header line. Throws `TraceParseError` naming what was found instead. */
export function parseTraceHeader(line: string, lineNo = 1): TraceHeader {
  // A BOM added by an editor is not part of the JSON.
  const text = line.charCodeAt(0) === 0xfeff ? line.slice(1) : line
  if (text.trim() === '') throw traceLineError(lineNo, 'missing header: the first line is empty')
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch (err) {
    throw traceLineError(lineNo, `missing header: not valid JSON (${(err as Error).message})`, undefined, err)
  }
  return validateHeader(value, lineNo)
}

/**
 * The line-by-line state machine shared by the sync and async readers: header first, then records
 * whose `t` never goes backwards.
 */
class LineParser {
  header: TraceHeader | null = null
  readonly stats: TraceReadStats = { lines: 0, records: 0, skipped: 0 }
  readonly #strict: boolean
  readonly #onError: ((err: TraceLineError) => void) | undefined
  #lastT = 0

  constructor(options: ReadTraceOptions | undefined) {
    if (options?.onError !== undefined && typeof options.onError !== 'function')
      throw new InvalidOptionError('readTrace: option "onError" must be a function')
    this.#strict = options?.strict ?? true
    this.#onError = options?.onError
  }

  /** The record on this line, or null for the header, a blank line or a skipped line. */
  push(line: string): TelemetryRecord | null {
    const lineNo = ++this.stats.lines
    if (this.header === null) {
      this.header = parseTraceHeader(line, lineNo)
      return null
    }
    // Blank lines (a trailing newline, a hand-edited file) carry nothing and are not errors.
    if (line.length === 0 || (line.charCodeAt(0) <= 32 && line.trim() === '')) return null
    try {
      const record = parseTraceLine(line, lineNo)
      if (record.t < this.#lastT)
        throw traceLineError(
          lineNo,
          `${record.kind} record: field "t" goes backwards (${record.t} after ${this.#lastT}); records must be in time order`,
          't',
        )
      this.#lastT = record.t
      this.stats.records++
      return record
    } catch (err) {
      if (this.#strict) throw err
      this.stats.skipped++
      this.#onError?.(err as TraceLineError)
      return null
    }
  }

  end(): void {
    if (this.header === null) throw traceLineError(1, 'missing header: the trace is empty')
  }
}

export interface ParsedTrace {
  header: TraceHeader
  records: TelemetryRecord[]
  stats: TraceReadStats
}

/** Parses a whole trace held in memory (tests, small fixtures). Same rules as `readTrace`. */
export function parseTraceText(text: string, options?: ReadTraceOptions): ParsedTrace {
  const parser = new LineParser(options)
  const records: TelemetryRecord[] = []
  let start = 0
  while (start < text.length) {
    let end = text.indexOf('\n', start)
    if (end === -1) end = text.length
    const stop = end > start && text.charCodeAt(end - 1) === 13 ? end - 1 : end
    const record = parser.push(text.slice(start, stop))
    if (record !== null) records.push(record)
    start = end + 1
  }
  parser.end()
  return { header: parser.header!, records, stats: parser.stats }
}

const kGzipMagic0 = 0x1f
const kGzipMagic1 = 0x8b

function isGzip(chunk: Buffer | string): boolean {
  return (
    typeof chunk !== 'string' && chunk.length >= 2 && chunk[0] === kGzipMagic0 && chunk[1] === kGzipMagic1
  )
}

/** The stream's bytes, gunzipped when they start with the gzip magic. */
async function* bytesOf(stream: Readable): AsyncGenerator<Buffer | string> {
  const it = stream[Symbol.asyncIterator]()
  try {
    let first: IteratorResult<Buffer | string> = await it.next()
    // A stream may hand over a 1-byte first chunk; gather enough to see the magic.
    while (!first.done && typeof first.value !== 'string' && first.value.length < 2) {
      const more = await it.next()
      if (more.done) break
      first = { done: false, value: Buffer.concat([first.value, more.value as Buffer]) }
    }
    if (first.done) return
    if (!isGzip(first.value)) {
      yield first.value
      for (let r = await it.next(); !r.done; r = await it.next()) yield r.value
      return
    }
    const gunzip = createGunzip()
    async function* rest() {
      yield first.value
      for (let r = await it.next(); !r.done; r = await it.next()) yield r.value
    }
    // pipeline() forwards a read error or a corrupt gzip stream to `gunzip`, whose iteration throws it.
    pipeline(rest, gunzip, () => {})
    yield* gunzip
  } finally {
    await it.return?.()
  }
}

/**
 * The stream's text split into lines (LF or CRLF, endings removed), one array per chunk read, so
 * the async machinery runs once per chunk rather than once per line.
 */
async function* lineBatchesOf(stream: Readable): AsyncGenerator<string[]> {
  const decoder = new StringDecoder('utf8')
  let carry = ''
  for await (const chunk of bytesOf(stream)) {
    const text = carry + (typeof chunk === 'string' ? chunk : decoder.write(chunk))
    const lines: string[] = []
    let start = 0
    for (let end = text.indexOf('\n'); end !== -1; end = text.indexOf('\n', start)) {
      lines.push(
        end > start && text.charCodeAt(end - 1) === 13 ? text.slice(start, end - 1) : text.slice(start, end),
      )
      start = end + 1
    }
    carry = start === 0 ? text : text.slice(start)
    if (lines.length > 0) yield lines
  }
  const tail = carry + decoder.end()
  if (tail.length > 0) yield [tail.charCodeAt(tail.length - 1) === 13 ? tail.slice(0, -1) : tail]
}

/**
 * Records in batches (one per chunk read). In strict mode the records before a bad line are still
 * delivered, then the error is thrown, exactly as a record-by-record reader would.
 */
async function* recordBatchesOf(source: TraceSource, parser: LineParser): AsyncGenerator<TelemetryRecord[]> {
  // Opened on first iteration, so an unread trace holds no file descriptor.
  for await (const lines of lineBatchesOf(openSource(source))) {
    const batch: TelemetryRecord[] = []
    for (let i = 0; i < lines.length; i++) {
      let record: TelemetryRecord | null
      try {
        record = parser.push(lines[i]!)
      } catch (err) {
        if (batch.length > 0) yield batch
        throw err
      }
      if (record !== null) batch.push(record)
    }
    if (batch.length > 0) yield batch
  }
  parser.end()
}

function checkSource(source: TraceSource, fn: string): void {
  if (typeof source === 'string') {
    if (source.length === 0) throw new InvalidOptionError(`${fn}: the trace path is empty`)
    return
  }
  if (source === null || typeof source !== 'object' || typeof source[Symbol.asyncIterator] !== 'function')
    throw new InvalidOptionError(`${fn}: the source must be a file path or a Readable stream`)
}

function openSource(source: TraceSource): Readable {
  return typeof source === 'string' ? createReadStream(source, { highWaterMark: 256 * 1024 }) : source
}

/**
 * The records of a trace, read lazily. Iterate it once with `for await`; `header` is set as soon as
 * the first line has been read (or use `readTraceHeader`), `stats` counts as it goes.
 */
export interface TraceRecords extends AsyncIterable<TelemetryRecord> {
  readonly header: TraceHeader | null
  readonly stats: TraceReadStats
  /** The same records in arrays (one per chunk read): the fastest way through a large trace. */
  batches(): AsyncIterableIterator<TelemetryRecord[]>
}

/**
 * Reads a trace file (plain or gzip) or stream record by record:
 * `for await (const r of readTrace('run.jsonl.gz')) ...`. Throws `TraceParseError` (with `.line`)
 * on a bad header, and in strict mode (the default) on the first bad record line.
 */
export function readTrace(source: TraceSource, options?: ReadTraceOptions): TraceRecords {
  checkSource(source, 'readTrace')
  const parser = new LineParser(options)
  let started = false
  const batches = () => {
    if (started) throw new InvalidOptionError('readTrace: a trace can be iterated only once')
    started = true
    return recordBatchesOf(source, parser)
  }
  return {
    get header() {
      return parser.header
    },
    stats: parser.stats,
    batches,
    [Symbol.asyncIterator]() {
      const inner = batches()
      let batch: TelemetryRecord[] = []
      let i = 0
      // Hand-rolled rather than an async generator, which adds its own queue and awaits to every
      // record; this resolves straight from the current batch.
      const it: AsyncIterableIterator<TelemetryRecord> = {
        async next() {
          while (i >= batch.length) {
            const r = await inner.next()
            if (r.done === true) return { done: true, value: undefined }
            batch = r.value
            i = 0
          }
          return { done: false, value: batch[i++]! }
        },
        async return() {
          await inner.return(undefined)
          return { done: true, value: undefined }
        },
        [Symbol.asyncIterator]() {
          return it
        },
      }
      return it
    },
  }
}

/**
 * Reads only the header line (a file is not read further; a stream is consumed up to it, so pass a
 * fresh stream to `readTrace` afterwards).
 */
export async function readTraceHeader(source: TraceSource): Promise<TraceHeader> {
  checkSource(source, 'readTraceHeader')
  if (typeof source === 'string') {
    // Peek first: most traces are small enough that one read holds the whole header line.
    const fh = await open(source, 'r')
    try {
      const probe = Buffer.alloc(64 * 1024)
      const { bytesRead } = await fh.read(probe, 0, probe.length, 0)
      if (!isGzip(probe.subarray(0, bytesRead))) {
        const text = probe.toString('utf8', 0, bytesRead)
        const nl = text.indexOf('\n')
        if (nl !== -1)
          return parseTraceHeader(text.charCodeAt(nl - 1) === 13 ? text.slice(0, nl - 1) : text.slice(0, nl))
        if (bytesRead < probe.length) {
          if (bytesRead === 0) throw traceLineError(1, 'missing header: the trace is empty')
          return parseTraceHeader(text)
        }
      }
    } finally {
      await fh.close()
    }
  }
  const stream = openSource(source)
  const lines = lineBatchesOf(stream)
  try {
    const first = await lines.next()
    if (first.done === true) throw traceLineError(1, 'missing header: the trace is empty')
    return parseTraceHeader(first.value[0]!)
  } finally {
    await lines.return(undefined)
    if (typeof source === 'string') stream.destroy()
  }
}
