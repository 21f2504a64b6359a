import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PassThrough, Readable, Writable } from 'node:stream'
import { gzipSync } from 'node:zlib'
import { afterAll, describe, expect, it } from 'vitest'
import { InvalidArgumentError, TraceParseError } from '../../src/errors.js'
import type { TelemetryRecord } from '../../src/telemetry/types.js'
import {
  encodeHeader,
  optionalRecordFields,
  TRACE_FORMAT,
  TRACE_VERSION,
  type TraceHeaderInit,
  type TraceLineError,
} from '../../src/trace/format.js'
import {
  parseTraceHeader,
  parseTraceLine,
  parseTraceText,
  readTrace,
  readTraceHeader,
} from '../../src/trace/reader.js'
import { createTraceWriter } from '../../src/trace/writer.js'

const dir = mkdtempSync(join(tmpdir(), 'vllm-monitor-trace-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

const header = {
  createdAt: '2025-01-02T03:04:05.000Z',
  source: 'sim',
  seed: 42,
  scenario: 'kv-exhaustion',
  replicas: [{ name: 'r0', url: 'http://127.0.0.1:8000' }],
  gpus: [{ gpu: 0, name: 'NVIDIA H100 80GB HBM3', replica: 'r0' }],
  meta: { speed: 1000 },
} satisfies TraceHeaderInit

function engine(t: number, extra: Partial<TelemetryRecord> = {}): TelemetryRecord {
  return {
    t,
    kind: 'engine',
    replica: 'r0',
    engine: '0',
    modelName: 'meta-llama/Llama-3.1-8B-Instruct',
    reachable: true,
    healthStatus: 200,
    error: null,
    requestsRunning: 12,
    requestsWaiting: 0,
    kvCacheUsage: 0.42,
    preemptionsTotal: 0,
    promptTokensTotal: 12_000,
    generationTokensTotal: 3_400,
    stepsTotal: 900,
    requestsFinishedTotal: 30,
    requestsErroredTotal: 0,
    numGpuBlocks: 27_000,
    ttftSecondsSum: 1.5,
    ttftCount: 30,
    itlSecondsSum: 20.1,
    itlCount: 3_370,
    e2eSecondsSum: 40,
    e2eCount: 30,
    queueTimeSecondsSum: 0.1,
    queueTimeCount: 30,
    ttftP50Ms: 41.2,
    ttftP90Ms: 88,
    ttftP99Ms: 140.5,
    itlP50Ms: 5.9,
    itlP99Ms: 24.4,
    e2eP50Ms: 1210,
    e2eP99Ms: 2930,
    queueTimeP99Ms: null,
    ...extra,
  } as TelemetryRecord
}

const gpu: TelemetryRecord = {
  t: 5,
  kind: 'gpu',
  gpu: 0,
  replica: 'r0',
  uuid: 'GPU-1234',
  name: 'NVIDIA H100 80GB HBM3',
  lost: false,
  memoryUsedBytes: 70e9,
  memoryTotalBytes: 80e9,
  gpuUtilizationPercent: 97,
  powerWatts: 650.5,
  powerLimitWatts: 700,
  temperatureCelsius: 71,
  smClockMhz: 1980,
  clockEventReasons: 4,
  eccCorrectedVolatile: 0,
  eccUncorrectedVolatile: null,
}
const event: TelemetryRecord = {
  t: 5,
  kind: 'event',
  type: 'xid',
  severity: 'critical',
  replica: 'r0',
  gpu: 0,
  message: 'Xid 79: GPU has fallen off the bus',
  data: { xid: 79, nested: { ok: true } },
}
const label: TelemetryRecord = {
  t: 10,
  kind: 'label',
  fault: 'xid-79',
  phase: 'failure',
  replica: 'r0',
  gpu: 0,
  detail: 'GPU lost',
}
const records: TelemetryRecord[] = [engine(0), gpu, event, label, engine(20)]

const headerLine = encodeHeader(header)
const text = (...lines: string[]) => [headerLine, ...lines].join('\n')
const line = (r: unknown) => JSON.stringify(r)

async function collect(iter: AsyncIterable<TelemetryRecord>): Promise<TelemetryRecord[]> {
  const out: TelemetryRecord[] = []
  for await (const r of iter) out.push(r)
  return out
}

function parseError(fn: () => unknown): TraceLineError {
  try {
    fn()
  } catch (err) {
    expect(err).toBeInstanceOf(TraceParseError)
    return err as TraceLineError
  }
  throw new Error('expected a TraceParseError')
}

describe('a trace written by TraceWriter', () => {
  it('reads back as exactly the records that were written, header first', async () => {
    const path = join(dir, 'round-trip.jsonl')
    const w = createTraceWriter(path, { header })
    for (const r of records) w.write(r)
    await w.close()

    const lines = readFileSync(path, 'utf8').split('\n')
    expect(JSON.parse(lines[0]!)).toMatchObject({
      format: TRACE_FORMAT,
      version: TRACE_VERSION,
      source: 'sim',
    })
    expect(lines).toHaveLength(records.length + 2) // header, records, final newline
    expect(await readTraceHeader(path)).toEqual({ format: TRACE_FORMAT, version: TRACE_VERSION, ...header })
    const trace = readTrace(path)
    expect(await collect(trace)).toEqual(records)
    expect(trace.header?.scenario).toBe('kv-exhaustion')
    expect(trace.stats).toEqual({ lines: records.length + 1, records: records.length, skipped: 0 })
  })

  it('is gzip-compressed when the path ends in .gz, and read back by its magic bytes', async () => {
    const path = join(dir, 'round-trip.jsonl.gz')
    const w = createTraceWriter(path, { header, batchBytes: 256 })
    for (let i = 0; i < 2_000; i++) w.write(engine(i))
    await w.close()

    const bytes = readFileSync(path)
    expect([bytes[0], bytes[1]]).toEqual([0x1f, 0x8b])
    const got = await collect(readTrace(path))
    expect(got).toHaveLength(2_000)
    expect(got[1_999]).toEqual(engine(1_999))
    // The magic bytes, not the name, decide: the same bytes under a plain name still read.
    const renamed = join(dir, 'renamed.jsonl')
    writeFileSync(renamed, bytes)
    expect(await readTraceHeader(renamed)).toMatchObject({ scenario: 'kv-exhaustion' })
    expect(await collect(readTrace(Readable.from([bytes.subarray(0, 1), bytes.subarray(1)])))).toHaveLength(
      2_000,
    )
    // Leaving early closes the file and the gunzip stream without a stray error.
    for await (const r of readTrace(path)) if (r.t === 10) break
  })

  it('writes NaN and Infinity as null, since JSON has neither', async () => {
    const chunks: string[] = []
    const sink = new Writable({
      write(chunk, _enc, cb) {
        chunks.push(String(chunk))
        cb()
      },
    })
    const w = createTraceWriter(sink, { header })
    w.write(engine(0, { kvCacheUsage: Number.NaN, ttftSecondsSum: Number.POSITIVE_INFINITY }))
    await w.close()
    const parsed = parseTraceText(chunks.join(''))
    expect(parsed.records[0]).toMatchObject({ kvCacheUsage: null, ttftSecondsSum: null })
  })

  it('batches records into few large writes instead of one write per record', async () => {
    let writes = 0
    const sink = new Writable({
      write(_chunk, _enc, cb) {
        writes++
        cb()
      },
    })
    const w = createTraceWriter(sink, { header, batchBytes: 64 * 1024 })
    for (let i = 0; i < 5_000; i++) w.write(engine(i))
    await w.close()
    expect(w.recordsWritten).toBe(5_000)
    // One write per 64 KiB batch (plus the header's and the last partial batch's).
    const bytes = 5_000 * (line(engine(4_999)).length + 1)
    expect(writes).toBeLessThanOrEqual(Math.ceil(bytes / (64 * 1024)) + 2)
  })

  it('flushes a quiet buffer after flushIntervalMs, so a killed recorder loses little', async () => {
    const out = new PassThrough()
    const chunks: Buffer[] = []
    out.on('data', (c: Buffer) => chunks.push(c))
    const w = createTraceWriter(out, { header, flushIntervalMs: 10 })
    w.write(engine(0))
    await new Promise((r) => setTimeout(r, 50))
    expect(Buffer.concat(chunks).toString().split('\n')).toHaveLength(3)
    await w.close()
  })

  it('refuses a record whose t goes backwards, an unknown kind, and writes after close', async () => {
    const w = createTraceWriter(new PassThrough().resume(), { header })
    w.write(engine(10))
    expect(() => w.write(engine(5))).toThrow(/"t" 5 is before the previous record's 10/)
    expect(() => w.write({ ...engine(11), kind: 'bogus' } as unknown as TelemetryRecord)).toThrow(
      InvalidArgumentError,
    )
    await w.close()
    expect(() => w.write(engine(12))).toThrow(/after close/)
  })

  it('refuses an invalid header before creating the file', () => {
    const path = join(dir, 'never.jsonl')
    expect(() => createTraceWriter(path, { header: { source: 'sim', replicas: [{ name: '' }] } })).toThrow(
      /header field "replicas\[0\]\.name"/,
    )
    expect(() => readFileSync(path)).toThrow(/ENOENT/)
  })
})

describe('the reader', () => {
  it('keeps unknown extra fields, so newer writers stay readable', () => {
    const { records: got } = parseTraceText(text(line({ ...engine(1), future: { x: 1 } })))
    expect(got[0]).toMatchObject({ future: { x: 1 } })
  })

  it('reads an engine record written before the quantile fields existed, with them as null', () => {
    const quantiles = optionalRecordFields('engine')
    expect(quantiles).toEqual([
      'ttftP50Ms',
      'ttftP90Ms',
      'ttftP99Ms',
      'itlP50Ms',
      'itlP99Ms',
      'e2eP50Ms',
      'e2eP99Ms',
      'queueTimeP99Ms',
    ])
    const old: Record<string, unknown> = { ...engine(1) }
    for (const f of quantiles) delete old[f]
    const { records: got } = parseTraceText(text(line(old)))
    expect(got[0]).toEqual({ ...engine(1), ...Object.fromEntries(quantiles.map((f) => [f, null])) })
  })

  it('skips blank lines and accepts CRLF line endings', () => {
    const crlf = text(line(engine(1)), '', line(engine(2)), '').replaceAll('\n', '\r\n')
    expect(parseTraceText(crlf).records.map((r) => r.t)).toEqual([1, 2])
  })

  it('reads a plain stream split at arbitrary points, multi-byte characters included', async () => {
    const body = text(line({ ...event, message: 'température élevée ✓' }), line(label))
    const bytes = Buffer.from(body)
    const pieces = [
      bytes.subarray(0, 7),
      bytes.subarray(7, body.length - 30),
      bytes.subarray(body.length - 30),
    ]
    const got = await collect(readTrace(Readable.from(pieces)))
    expect(got.map((r) => r.kind)).toEqual(['event', 'label'])
    expect((got[0] as { message: string }).message).toBe('température élevée ✓')
  })

  it('stops reading the file when the consumer breaks out early', async () => {
    const path = join(dir, 'early.jsonl')
    writeFileSync(path, text(...Array.from({ length: 20_000 }, (_, i) => line(engine(i)))))
    const trace = readTrace(path)
    for await (const r of trace) if (r.t === 2) break
    // Records are parsed a chunk (256 KiB) at a time; the rest of the ~13 MB file is never read.
    expect(trace.stats.records).toBeLessThan(2_000)
  })

  it('parses one line with parseTraceLine, naming the line it was given', () => {
    expect(parseTraceLine(line(label), 7)).toEqual(label)
    expect(parseError(() => parseTraceLine('{', 7)).line).toBe(7)
  })
})

describe('every malformed line names its 1-based line number and what is wrong', () => {
  const cases: [string, string, RegExp][] = [
    ['text that is not JSON', 'not json', /^trace line 3: not valid JSON/],
    ['a JSON array', '[1, 2]', /^trace line 3: expected a JSON object, found an array$/],
    ['a record without a kind', line({ t: 1 }), /^trace line 3: record has no "kind" field$/],
    [
      'an unknown kind',
      line({ ...engine(1), kind: 'weather' }),
      /^trace line 3: unknown record kind "weather" \(expected one of engine, gpu, event, label\)$/,
    ],
    [
      'a kind that names something on Object.prototype',
      line({ ...engine(1), kind: 'toString' }),
      /^trace line 3: unknown record kind "toString"/,
    ],
    [
      'an optional quantile field of the wrong type',
      line(engine(1, { ttftP99Ms: '140' as unknown as number })),
      /^trace line 3: engine record: field "ttftP99Ms" must be a number or null, found "140"$/,
    ],
    [
      'a field of the wrong type',
      line(engine(1, { kvCacheUsage: '0.5' as unknown as number })),
      /^trace line 3: engine record: field "kvCacheUsage" must be a number or null, found "0.5"$/,
    ],
    [
      'a missing field',
      line({ ...gpu, t: 1, lost: undefined }),
      /^trace line 3: gpu record: field "lost" is missing \(must be a boolean\)$/,
    ],
    [
      'a negative t',
      line(engine(-1)),
      /^trace line 3: engine record: field "t" must be a non-negative number/,
    ],
    [
      'a t that goes backwards',
      line(engine(0)),
      /^trace line 3: engine record: field "t" goes backwards \(0 after 1\)/,
    ],
    [
      'an unknown event severity',
      line({ ...event, t: 2, severity: 'meh' }),
      /^trace line 3: event record: field "severity" must be one of info, warning, critical, found "meh"$/,
    ],
    [
      'event data that is not an object',
      line({ ...event, t: 2, data: [1] }),
      /^trace line 3: event record: field "data" must be an object when present, found an array$/,
    ],
    [
      'an unknown fault',
      line({ ...label, t: 2, fault: 'cosmic-ray' }),
      /^trace line 3: label record: field "fault" must be one of kv-exhaustion, .*, found "cosmic-ray"$/,
    ],
    [
      'a fractional GPU index',
      line({ ...gpu, t: 2, gpu: 0.5 }),
      /^trace line 3: gpu record: field "gpu" must be a non-negative integer, found 0.5$/,
    ],
  ]

  it.each(cases)('%s', (_name, bad, message) => {
    const err = parseError(() => parseTraceText(text(line(engine(1)), bad, line(engine(5)))))
    expect(err.message).toMatch(message)
    expect(err.line).toBe(3)
    expect(err.code).toBe('VLLM_MONITOR_TRACE_PARSE')
  })

  it('names the field on the error as well as in the message', () => {
    const err = parseError(() =>
      parseTraceText(text(line(engine(1, { kvCacheUsage: 'x' as unknown as number })))),
    )
    expect(err.field).toBe('kvCacheUsage')
  })
})

describe('strict and lenient reading', () => {
  const body = text(line(engine(1)), 'garbage', line(engine(0)), line(engine(2)), '{"t": 3, "kind"')

  it('is strict by default: the first bad line throws with its line number', async () => {
    expect(parseError(() => parseTraceText(body)).line).toBe(3)
    const path = join(dir, 'bad.jsonl')
    writeFileSync(path, body)
    await expect(collect(readTrace(path))).rejects.toMatchObject({
      line: 3,
      code: 'VLLM_MONITOR_TRACE_PARSE',
    })
  })

  it('in lenient mode skips bad lines, counts them and reports each to onError', async () => {
    const seen: number[] = []
    const parsed = parseTraceText(body, { strict: false, onError: (e) => seen.push(e.line) })
    expect(parsed.records.map((r) => r.t)).toEqual([1, 2])
    expect(seen).toEqual([3, 4, 6])
    expect(parsed.stats).toEqual({ lines: 6, records: 2, skipped: 3 })

    const path = join(dir, 'lenient.jsonl')
    writeFileSync(path, body)
    const trace = readTrace(path, { strict: false })
    expect((await collect(trace)).map((r) => r.t)).toEqual([1, 2])
    expect(trace.stats.skipped).toBe(3)
  })

  it('always throws on a bad header, even in lenient mode', () => {
    expect(() => parseTraceText(line(engine(1)), { strict: false })).toThrow(
      /^trace line 1: missing header: found a "engine" record where the "vllm-monitor-trace" header should be$/,
    )
  })
})

describe('the header', () => {
  it('is required: an empty trace, an empty first line or a record in its place are named as such', async () => {
    expect(() => parseTraceText('')).toThrow(/^trace line 1: missing header: the trace is empty$/)
    expect(() => parseTraceHeader('')).toThrow(/^trace line 1: missing header: the first line is empty$/)
    expect(() => parseTraceHeader('{')).toThrow(/^trace line 1: missing header: not valid JSON/)
    const empty = join(dir, 'empty.jsonl')
    writeFileSync(empty, '')
    await expect(readTraceHeader(empty)).rejects.toThrow(/missing header: the trace is empty/)
    await expect(collect(readTrace(empty))).rejects.toThrow(/missing header: the trace is empty/)
  })

  it('names the format it found when the file is something else', () => {
    expect(() => parseTraceHeader(line({ format: 'otel', version: 1 }))).toThrow(
      /^trace line 1: not a vllm-monitor trace: header field "format" is "otel", expected "vllm-monitor-trace"$/,
    )
    expect(() => parseTraceHeader(line({ hello: 'world' }))).toThrow(/header field "format" is missing/)
  })

  it('names the version it found when it is newer than this reader', () => {
    const v2 = line({ ...JSON.parse(headerLine), version: 2 })
    expect(() => parseTraceHeader(v2)).toThrow(
      /^trace line 1: unsupported trace version 2: this reader reads version 1/,
    )
    expect(() => parseTraceHeader(line({ ...JSON.parse(headerLine), version: '1' }))).toThrow(
      /header field "version" must be a positive integer, found "1"/,
    )
  })

  it('names the header field that is wrong', () => {
    const base = JSON.parse(headerLine)
    expect(() => parseTraceHeader(line({ ...base, replicas: undefined }))).toThrow(
      /header field "replicas" is missing/,
    )
    expect(() => parseTraceHeader(line({ ...base, createdAt: 'yesterday' }))).toThrow(
      /header field "createdAt" is "yesterday"; it must be an ISO 8601 date string/,
    )
    expect(() => parseTraceHeader(line({ ...base, gpus: [{ gpu: -1 }] }))).toThrow(
      /header field "gpus\[0\]\.gpu"/,
    )
  })

  it('tolerates a byte-order mark and is read alone by readTraceHeader, from a gzip stream too', async () => {
    expect(parseTraceHeader(`\ufeff${headerLine}`).source).toBe('sim')
    const gz = gzipSync(Buffer.from(text(line(engine(1)))))
    expect(await readTraceHeader(Readable.from([gz]))).toMatchObject({ seed: 42 })
  })

  it('reports a corrupt gzip stream as an error, not as an empty trace', async () => {
    const gz = gzipSync(Buffer.from(text(line(engine(1)))))
    const corrupt = Buffer.concat([gz.subarray(0, 12), Buffer.alloc(40, 7)])
    await expect(collect(readTrace(Readable.from([corrupt])))).rejects.toThrow()
  })
})

describe('docs/trace-format.md', () => {
  it('shows an example that is a valid trace', () => {
    const doc = readFileSync(join(import.meta.dirname, '../../docs/trace-format.md'), 'utf8')
    const example = /```jsonl\n([\s\S]*?)```/.exec(doc)?.[1]
    expect(example).toBeDefined()
    const parsed = parseTraceText(example!)
    expect(parsed.header.scenario).toBe('kv-exhaustion')
    expect(parsed.records.map((r) => r.kind)).toEqual(['label', 'engine', 'gpu', 'event', 'label'])
  })
})
