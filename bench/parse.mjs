#!/usr/bin/env node
// bench/parse: what reading one vLLM /metrics scrape costs the scraper, and what reading one log
// line costs the supervisor. Target (the scraper issue): < 1 ms to parse a ~600-line exposition.
//
//   - parseExposition of the synthetic full V1 exposition (test/fixtures/vllm/vllm-metrics-sample.txt:
//     one engine, every always-on family, 614 lines, 58.8 KB) and of a 2-engine version of it (the
//     vllm: series repeated with engine="1", as prometheus_client lays out a DP server)
//   - baseline, same process: JSON.parse of a JSON document of the same byte size: the same samples
//     as an array of {"name","labels","value"} objects, cut at the exposition's size
//   - readEngineMetrics on the parsed result, with the latency histograms (what the scraper asks for)
//   - the latency window update per scrape: LatencyWindows.update (4 histograms) + fill (8 quantiles),
//     and one HistogramWindow.push + 3 quantiles
//   - the whole per-scrape work of HttpScrapeSource after the body arrived (parse, read, window)
//   - classifyLogLine and parseLogLine per line over a realistic log mix: uvicorn access lines,
//     request logs, periodic stats lines, and every line of the real captures in test/fixtures/vllm
//
// Each figure is the median (with p10/p90) of many timed samples taken after a warm-up; a sample
// times one call, or a batch of calls for the sub-microsecond ones.
//
// Needs the compiled sources: npx tsc -p tsconfig.build.json (or npm run build:ts), then
//   node bench/parse.mjs [--seconds N] [--json [FILE]]
// --seconds is the time budget per figure (default 1.5). --json alone prints one JSON object on
// stdout; with FILE it writes there (and $OUT/parse.json is written when $OUT is set).
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { cpus } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const dist = join(here, '../dist')
if (!existsSync(join(dist, 'vllm/histogram-window.js')))
  throw new Error('dist/vllm/histogram-window.js not found: run `npx tsc -p tsconfig.build.json` first')
const { parseExposition } = await import(join(dist, 'vllm/exposition.js'))
const { readEngineMetrics, mergeEngineReadings } = await import(join(dist, 'vllm/engine-metrics.js'))
const { HistogramWindow, LatencyWindows, mergeLatencyHistograms } = await import(
  join(dist, 'vllm/histogram-window.js')
)
const { classifyLogLine, parseLogLine } = await import(join(dist, 'vllm/log-lines.js'))
const { createRng } = await import(join(dist, 'sim/random.js'))

const argi = process.argv.indexOf('--json')
const json = argi !== -1
const jsonFile =
  json && process.argv[argi + 1] && !process.argv[argi + 1].startsWith('--') ? process.argv[argi + 1] : null
const si = process.argv.indexOf('--seconds')
const seconds = si === -1 ? 1.5 : Number(process.argv[si + 1])
if (!(seconds > 0)) throw new Error('--seconds must be positive')
const log = json && jsonFile === null ? () => {} : (...a) => console.log(...a)

const TARGET_MS = 1
const fixtures = join(here, '../test/fixtures/vllm')

/** Keeps results alive so the JIT cannot drop the work. */
export const sink = { last: null }

/**
 * Median, p10 and p90 of the time one call of `fn` takes, µs. After `warmupMs` of calls, samples
 * are taken for `seconds`: each times one call, or `batch` calls when one is under 20 µs.
 */
function measure(fn) {
  const warmEnd = performance.now() + Math.min(500, seconds * 300)
  let n = 0
  const w0 = performance.now()
  while (performance.now() < warmEnd) {
    sink.last = fn()
    n++
  }
  const perCall = (performance.now() - w0) / n
  const batch = Math.max(1, Math.ceil(0.02 / perCall))
  const xs = []
  const end = performance.now() + seconds * 1000
  while (performance.now() < end && xs.length < 20_000) {
    const t0 = performance.now()
    for (let i = 0; i < batch; i++) sink.last = fn()
    xs.push(((performance.now() - t0) / batch) * 1000)
  }
  xs.sort((a, b) => a - b)
  const at = (p) => xs[Math.min(xs.length - 1, Math.floor(p * xs.length))]
  return { medianUs: at(0.5), p10Us: at(0.1), p90Us: at(0.9), samples: xs.length, batch }
}

// --- the expositions ---------------------------------------------------------------------------

const sample = readFileSync(join(fixtures, 'vllm-metrics-sample.txt'), 'utf8')

/** The sample as a 2-engine DP server: each family's engine="0" series, then the same for "1". */
function twoEngines(text) {
  const out = []
  let block = []
  const flush = () => {
    out.push(...block)
    for (const l of block) if (l.includes('engine="0"')) out.push(l.replace('engine="0"', 'engine="1"'))
    block = []
  }
  for (const line of text.split('\n')) {
    if (line.startsWith('# HELP')) flush()
    block.push(line)
  }
  flush()
  return out.join('\n')
}

/** A JSON document of `bytes` bytes: the exposition's samples as objects, as many as fit. */
function jsonOfSize(parsed, bytes) {
  const parts = []
  let size = 2
  for (let i = 0; ; i++) {
    const s = parsed.samples[i % parsed.samples.length]
    const part = JSON.stringify({ name: s.name, labels: s.labels, value: s.value })
    if (size + part.length + 1 > bytes) break
    parts.push(part)
    size += part.length + 1
  }
  return { text: `[${parts.join(',')}]`, objects: parts.length }
}

const bytes = (s) => Buffer.byteLength(s)
const lines = (s) => s.split('\n').filter((l) => l !== '').length

const expositions = [
  { key: 'sample-1-engine', text: sample },
  { key: 'dp-2-engines', text: twoEngines(sample) },
]

const results = {}
const rows = []
function row(key, label, m, extra = {}) {
  results[key] = { ...m, ...extra }
  rows.push([label, m])
  log(
    `${label.padEnd(66)} ${m.medianUs.toFixed(2).padStart(9)} µs  (p10 ${m.p10Us.toFixed(2)}, p90 ${m.p90Us.toFixed(2)})`,
  )
}

log(`node ${process.version}, ${cpus()[0]?.model ?? 'unknown CPU'}, ${cpus().length} CPUs`)
log(`median per call over ${seconds} s of samples after warm-up\n`)

const expositionInfo = {}
for (const { key, text } of expositions) {
  const parsed = parseExposition(text)
  if (parsed.errors.length > 0) throw new Error(`${key}: ${parsed.errors[0].message}`)
  const doc = jsonOfSize(parsed, bytes(text))
  expositionInfo[key] = {
    lines: lines(text),
    bytes: bytes(text),
    samples: parsed.samples.length,
    baselineJson: { bytes: bytes(doc.text), objects: doc.objects },
  }
  log(
    `${key}: ${lines(text)} lines, ${(bytes(text) / 1024).toFixed(1)} KiB, ${parsed.samples.length} samples; ` +
      `baseline JSON: ${doc.objects} sample objects, ${(bytes(doc.text) / 1024).toFixed(1)} KiB`,
  )
  const parse = measure(() => parseExposition(text))
  row(`${key}/parseExposition`, `  parseExposition`, parse, { ms: parse.medianUs / 1000 })
  const base = measure(() => JSON.parse(doc.text))
  row(`${key}/JSON.parse`, `  baseline: JSON.parse, same byte size`, base)
  log(`  -> parseExposition / JSON.parse = ${(parse.medianUs / base.medianUs).toFixed(2)}`)
  row(
    `${key}/readEngineMetrics`,
    `  readEngineMetrics (+ latency histograms)`,
    measure(() => readEngineMetrics(parsed, 'r0', [])),
  )
  row(
    `${key}/readEngineMetrics-plain`,
    `  readEngineMetrics (readings only)`,
    measure(() => readEngineMetrics(parsed, 'r0')),
  )

  // The window: a fresh set of histograms each scrape (counts growing, as a server's do).
  const hs = []
  readEngineMetrics(parsed, 'r0', hs)
  const baseH = hs.length > 1 ? mergeLatencyHistograms(hs) : hs[0]
  const VARIANTS = 512
  const variants = Array.from({ length: VARIANTS }, (_, k) => {
    const out = {}
    for (const [f, h] of Object.entries(baseH))
      out[f] = h === null ? null : { bounds: h.bounds, counts: h.counts.map((c) => c * (1 + k / 8)) }
    return out
  })
  const windows = new LatencyWindows()
  const reading = readEngineMetrics(parsed, 'r0')[0]
  let t = 0
  let k = 0
  row(
    `${key}/latencyWindow`,
    `  LatencyWindows.update (4 histograms) + fill (8 quantiles)`,
    measure(() => {
      t += 100
      windows.update(t, variants[k++ % VARIANTS])
      return windows.fill(reading)
    }),
  )
  const ttft = baseH.ttft
  const one = new HistogramWindow(ttft.bounds)
  const ttftVariants = variants.map((v) => v.ttft.counts)
  let t1 = 0
  let k1 = 0
  row(
    `${key}/histogramWindow`,
    `  HistogramWindow.push (TTFT, ${ttft.bounds.length} buckets) + 3 quantiles`,
    measure(() => {
      t1 += 100
      one.push(t1, ttftVariants[k1++ % VARIANTS])
      return one.quantile(0.5) + one.quantile(0.9) + one.quantile(0.99)
    }),
  )

  // What HttpScrapeSource does with a body: parse, read, merge a DP server, window, fill.
  const perScrape = new LatencyWindows()
  let t2 = 0
  const scrape = measure(() => {
    const p = parseExposition(text)
    const h = []
    const rs = readEngineMetrics(p, 'r0', h)
    const r = rs.length > 1 ? mergeEngineReadings(rs) : rs[0]
    t2 += 100
    perScrape.update(t2, rs.length > 1 ? mergeLatencyHistograms(h) : h[0])
    return perScrape.fill(r)
  })
  row(`${key}/scrape`, `  whole scrape after the body: parse + read + merge + window`, scrape, {
    ms: scrape.medianUs / 1000,
  })
  log('')
}

// --- the log mix --------------------------------------------------------------------------------

const rng = createRng('bench/parse')
const captured = readdirSync(fixtures)
  .filter((f) => f.startsWith('log-') && f.endsWith('.txt'))
  .flatMap((f) =>
    readFileSync(join(fixtures, f), 'utf8')
      .split('\n')
      .filter((l) => l !== '' && !l.startsWith('# ')),
  )
const ip = () => `10.0.${rng.int(256)}.${rng.int(256)}:${1024 + rng.int(60000)}`
const ts = () => `10-21 09:${String(rng.int(60)).padStart(2, '0')}:${String(rng.int(60)).padStart(2, '0')}`
const MIX = [
  // uvicorn's access log, the bulk of a busy server's output
  [0.55, () => `(APIServer pid=1) INFO:     ${ip()} - "POST /v1/chat/completions HTTP/1.1" 200 OK`],
  [0.05, () => `INFO:     ${ip()} - "GET /metrics HTTP/1.1" 200 OK`],
  // --enable-log-requests lines: long, and full of user text
  [
    0.2,
    () =>
      `(APIServer pid=1) INFO ${ts()} [logger.py:43] Received request chatcmpl-${rng.int(1e9).toString(16)}: prompt: '${'Summarise the following text. '.repeat(1 + rng.int(20))}', params: SamplingParams(n=1, temperature=0.7, top_p=1.0, max_tokens=${rng.int(4096)}), prompt_token_ids: None, lora_request: None.`,
  ],
  [
    0.05,
    () =>
      `(APIServer pid=1) INFO ${ts()} [loggers.py:123] Engine 000: Avg prompt throughput: ${(rng.next() * 5000).toFixed(1)} tokens/s, Avg generation throughput: ${(rng.next() * 2000).toFixed(1)} tokens/s, Running: ${rng.int(256)} reqs, Waiting: ${rng.int(40)} reqs, GPU KV cache usage: ${(rng.next() * 100).toFixed(1)}%, Prefix cache hit rate: ${(rng.next() * 100).toFixed(1)}%`,
  ],
  // everything the real captures hold: start-up, tracebacks, OOMs, NCCL, Xids, engine deaths
  [0.15, () => captured[rng.int(captured.length)]],
]
const logMix = Array.from({ length: 20_000 }, () => {
  let u = rng.next()
  for (const [p, make] of MIX) {
    if (u < p) return make()
    u -= p
  }
  return MIX[0][1]()
})
const classified = logMix.filter((l) => classifyLogLine(l) !== null).length
const meanChars = logMix.reduce((a, l) => a + l.length, 0) / logMix.length
log(
  `log mix: ${logMix.length} lines, mean ${meanChars.toFixed(0)} chars; ${classified} (${((100 * classified) / logMix.length).toFixed(1)} %) mean something to classifyLogLine`,
)
const perLine = (fn) => {
  const m = measure(() => {
    let n = 0
    for (const l of logMix) if (fn(l) !== null) n++
    return n
  })
  const per = (v) => v / logMix.length
  return {
    medianUs: per(m.medianUs),
    p10Us: per(m.p10Us),
    p90Us: per(m.p90Us),
    samples: m.samples,
    batch: m.batch,
  }
}
const classify = perLine(classifyLogLine)
row('log/classifyLogLine', `  classifyLogLine, per line`, classify, {
  linesPerSec: Math.round(1e6 / classify.medianUs),
})
row('log/parseLogLine', `  parseLogLine, per line`, perLine(parseLogLine))

const parseMs = results['sample-1-engine/parseExposition'].ms
const met = parseMs < TARGET_MS
log(
  `\ntarget: parseExposition of a ~600-line exposition < ${TARGET_MS} ms: ${parseMs.toFixed(3)} ms (${met ? 'met' : 'NOT met'})`,
)

const report = {
  bench: 'parse',
  node: process.version,
  cpu: cpus()[0]?.model ?? null,
  cpus: cpus().length,
  secondsPerFigure: seconds,
  expositions: expositionInfo,
  baseline:
    'JSON.parse of a JSON document of the same byte size: the exposition samples as [{"name","labels","value"}...] cut at that size',
  logMix: { lines: logMix.length, meanChars: Math.round(meanChars), classified },
  results,
  target: { parseMs: TARGET_MS, exposition: 'sample-1-engine', met },
}
if (json) {
  const text = `${JSON.stringify(report, null, 2)}\n`
  if (jsonFile === null) process.stdout.write(text)
  else {
    mkdirSync(dirname(jsonFile), { recursive: true })
    writeFileSync(jsonFile, text)
  }
  if (process.env.OUT) writeFileSync(join(process.env.OUT, 'parse.json'), text)
}
