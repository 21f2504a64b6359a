/**
 * Writes traces: the header line at once, then records batched into large writes so that a recorder
 * or a 1000x simulation never does I/O per record. Paths ending in `.gz` are gzip-compressed.
 */
import { createWriteStream } from 'node:fs'
import type { Writable } from 'node:stream'
import { finished } from 'node:stream/promises'
import { createGzip } from 'node:zlib'
import { InvalidArgumentError, InvalidOptionError } from '../errors.js'
import type { TelemetryRecord } from '../telemetry/types.js'
import { encodeHeader, encodeRecord, RECORD_KINDS, type TraceHeaderInit } from './format.js'

export interface TraceWriterOptions {
  /** The header; `format`, `version` and (unless given) `createdAt` are filled in. */
  header: TraceHeaderInit
  /** Compress with gzip. Default: true when the target is a path ending in `.gz`, else false. */
  gzip?: boolean
  /** Buffered bytes (roughly, counted in UTF-16 units) that trigger a write. Default 64 KiB. */
  batchBytes?: number
  /**
   * Longest time a record waits in the buffer before it is written, so that a live recording killed
   * without `close()` loses at most this much. 0 disables the timer. Default 1000 ms.
   */
  flushIntervalMs?: number
  /** End the target stream on `close()`. Default true (a path's file is always closed). */
  end?: boolean
}

const kKinds = new Set<string>(RECORD_KINDS)

/**
 * A trace being written. `write()` is synchronous and cheap (it appends to a buffer); `close()` writes
 * what is left, ends the stream and resolves once the bytes are handed to the OS.
 */
export class TraceWriter {
  /** Records accepted so far. */
  recordsWritten = 0
  readonly #out: Writable
  /** The stream whose completion `close()` waits for (the file under a gzip stream). */
  readonly #sink: Writable
  readonly #end: boolean
  readonly #batchBytes: number
  readonly #flushIntervalMs: number
  #pending: string[] = []
  #pendingBytes = 0
  #timer: NodeJS.Timeout | null = null
  #lastT = 0
  #error: Error | null = null
  #closing: Promise<void> | null = null

  constructor(target: string | Writable, options: TraceWriterOptions) {
    if (options === null || typeof options !== 'object' || options.header === undefined)
      throw new InvalidOptionError('TraceWriter: option "header" is required')
    const batchBytes = options.batchBytes ?? 64 * 1024
    if (!Number.isInteger(batchBytes) || batchBytes < 1)
      throw new InvalidOptionError(
        `TraceWriter: option "batchBytes" must be a positive integer, got ${batchBytes}`,
      )
    const flushIntervalMs = options.flushIntervalMs ?? 1000
    if (!Number.isFinite(flushIntervalMs) || flushIntervalMs < 0)
      throw new InvalidOptionError(
        `TraceWriter: option "flushIntervalMs" must be a non-negative number, got ${flushIntervalMs}`,
      )
    this.#batchBytes = batchBytes
    this.#flushIntervalMs = flushIntervalMs
    // Encoded before any file is created, so an invalid header leaves nothing behind.
    const headerLine = `${encodeHeader(options.header)}\n`
    const isPath = typeof target === 'string'
    const gzip = options.gzip ?? (isPath && target.endsWith('.gz'))
    this.#sink = isPath ? createWriteStream(target) : target
    this.#end = isPath || options.end !== false
    if (gzip) {
      const z = createGzip()
      z.pipe(this.#sink, { end: this.#end })
      z.on('error', (err) => this.#fail(err))
      this.#out = z
    } else {
      this.#out = this.#sink
    }
    this.#sink.on('error', (err) => this.#fail(err))
    this.#pending.push(headerLine)
    this.#pendingBytes = headerLine.length
    // The header goes out at once: a recording that dies early still names its replicas.
    this.#flush()
  }

  /** Appends one record. Throws if the writer is closed or failed, or if the record is malformed. */
  write(record: TelemetryRecord): void {
    if (this.#error !== null) throw this.#error
    if (this.#closing !== null) throw new InvalidArgumentError('TraceWriter: write() after close()')
    // Only what the reader would reject outright is checked here; full validation is the reader's.
    const t = record?.t
    if (typeof t !== 'number' || !Number.isFinite(t) || t < 0)
      throw new InvalidArgumentError(
        `TraceWriter: record ${this.recordsWritten + 1}: "t" must be a finite non-negative number, got ${t}`,
      )
    if (t < this.#lastT)
      throw new InvalidArgumentError(
        `TraceWriter: record ${this.recordsWritten + 1}: "t" ${t} is before the previous record's ${this.#lastT}; records must be written in time order`,
      )
    if (!kKinds.has(record.kind))
      throw new InvalidArgumentError(
        `TraceWriter: record ${this.recordsWritten + 1}: unknown kind ${JSON.stringify(record.kind)}`,
      )
    const line = `${encodeRecord(record)}\n`
    this.#lastT = t
    this.recordsWritten++
    this.#pending.push(line)
    this.#pendingBytes += line.length
    if (this.#pendingBytes >= this.#batchBytes) this.#flush()
    else if (this.#timer === null && this.#flushIntervalMs > 0) {
      this.#timer = setTimeout(() => this.#flush(), this.#flushIntervalMs)
      // A pending flush must not keep the process alive; close() writes whatever is left.
      this.#timer.unref()
    }
  }

  /** Writes every buffered record now (without waiting for the OS). */
  flush(): void {
    if (this.#error !== null) throw this.#error
    this.#flush()
  }

  /** Writes what is buffered, ends the stream (unless `end: false`) and waits for it. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= this.#close()
    return this.#closing
  }

  async #close(): Promise<void> {
    this.#flush()
    if (this.#error !== null) throw this.#error
    if (this.#out !== this.#sink) {
      // Ending the gzip stream writes its trailer; with `end` the pipe then ends the file too.
      this.#out.end()
      if (this.#end) await finished(this.#sink)
      else await finished(this.#out)
    } else if (this.#end) {
      this.#out.end()
      await finished(this.#out)
    } else if (this.#out.writableNeedDrain) {
      await new Promise<void>((resolve) => this.#out.once('drain', resolve))
    }
    if (this.#error !== null) throw this.#error
  }

  #flush(): void {
    if (this.#timer !== null) {
      clearTimeout(this.#timer)
      this.#timer = null
    }
    if (this.#pendingBytes === 0 || this.#error !== null) return
    const chunk = this.#pending.length === 1 ? this.#pending[0]! : this.#pending.join('')
    this.#pending = []
    this.#pendingBytes = 0
    // No backpressure wait: write() must stay synchronous for the simulator, and the stream queues.
    this.#out.write(chunk)
  }

  #fail(err: Error): void {
    this.#error ??= err
    if (this.#timer !== null) clearTimeout(this.#timer)
    this.#timer = null
  }
}

/** Opens a trace for writing: `createTraceWriter('run.jsonl.gz', { header: { source: 'sim', replicas } })`. */
export function createTraceWriter(target: string | Writable, options: TraceWriterOptions): TraceWriter {
  return new TraceWriter(target, options)
}
