/**
 * Request arrivals for the simulator: when each request comes and how long it is. Every generator is
 * pull-based (`peek()` / `next()`), so a run at 1000x real time draws only the arrivals it reaches and
 * never builds an hour of requests up front. Generators are deterministic given their seed or `Rng`.
 *
 * Sources: the real Azure code-completion trace (bursty, long prompts, short outputs), Poisson, Poisson
 * with periodic bursts, a diurnal (sinusoidal) rate, and a `surge` combinator that multiplies any
 * source's rate in a window (fault injection uses it to drive the KV cache into exhaustion).
 */
import { readFileSync } from 'node:fs'
import { basename } from 'node:path'
import { fileURLToPath } from 'node:url'
import { SimScenarioError, TraceParseError } from '../errors.js'
import { createRng, lognormalParams, type Rng, type Seed } from './random.js'

/** One request: when it arrives (ms of simulated time), its prompt length and its output length. */
export interface Arrival {
  atMs: number
  promptTokens: number
  /** The request's `max_tokens`; the simulator generates exactly this many (as with `ignore_eos`). */
  maxTokens: number
}

/**
 * A lazy, time-ordered stream of arrivals. `null` means the stream has ended (it stays ended).
 * Synthetic sources are endless unless given `endMs`: pull them with `takeUntil`, not a spread.
 */
export interface ArrivalSource extends Iterable<Arrival> {
  /** The next arrival without consuming it. */
  peek(): Arrival | null
  /** The next arrival, consumed. */
  next(): Arrival | null
}

/** Shared peek/next plumbing: subclasses only say how to produce the next arrival. */
abstract class LazyArrivals implements ArrivalSource {
  #head: Arrival | null | undefined = undefined

  protected abstract produce(): Arrival | null

  peek(): Arrival | null {
    if (this.#head === undefined) this.#head = this.produce()
    return this.#head
  }

  next(): Arrival | null {
    const head = this.peek()
    if (head !== null) this.#head = undefined
    return head
  }

  *[Symbol.iterator](): Iterator<Arrival> {
    for (let a = this.next(); a !== null; a = this.next()) yield a
  }
}

/**
 * Consumes and returns every arrival strictly before `untilMs` (the simulator's per-step pull),
 * appending to `out` when given so a step loop can reuse one array.
 */
export function takeUntil(source: ArrivalSource, untilMs: number, out: Arrival[] = []): Arrival[] {
  for (let a = source.peek(); a !== null && a.atMs < untilMs; a = source.peek()) out.push(source.next()!)
  return out
}

// ---------------------------------------------------------------------------------------------------
// Option checks: every message names the generator and the option.

function fail(fn: string, option: string, must: string, got: unknown): never {
  throw new SimScenarioError(`${fn}: option "${option}" must be ${must}, got ${formatValue(got)}`)
}

function formatValue(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v)
  if (typeof v === 'function') return 'a function'
  if (Array.isArray(v)) return 'an array'
  if (v !== null && typeof v === 'object') return 'an object'
  return String(v)
}

function checkOptions(fn: string, options: unknown): void {
  if (options === null || typeof options !== 'object')
    throw new SimScenarioError(`${fn}: options must be an object`)
}

function num(fn: string, option: string, v: unknown, min: number, inclusive: boolean): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || (inclusive ? v < min : v <= min))
    fail(fn, option, `a finite number ${inclusive ? '>=' : '>'} ${min}`, v)
  return v
}

function optNum(
  fn: string,
  option: string,
  v: unknown,
  fallback: number,
  min: number,
  inclusive: boolean,
): number {
  return v === undefined ? fallback : num(fn, option, v, min, inclusive)
}

function integer(fn: string, option: string, v: unknown, min: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min) fail(fn, option, `an integer >= ${min}`, v)
  return v
}

/**
 * The stream an option set asks for: `rng` wins over `seed`; one of them is required (reproducibility).
 * Generators only fork it (forks depend on its seed path, not its state), so they never disturb the
 * caller's stream, and two generators given the same `rng` draw the same numbers: give each its own fork.
 */
function rngOf(fn: string, options: { seed?: Seed; rng?: Rng }): Rng {
  if (options.rng !== undefined) {
    // Duck-typed, so an Rng from a second copy of this module (src/ and dist/) is still accepted.
    const r = options.rng as Partial<Rng> | null
    if (r === null || typeof r !== 'object' || typeof r.fork !== 'function' || typeof r.next !== 'function')
      fail(fn, 'rng', 'an Rng (from createRng)', options.rng)
    return options.rng
  }
  if (options.seed === undefined)
    throw new SimScenarioError(
      `${fn}: option "seed" or "rng" is required: arrivals are random and a run must be reproducible`,
    )
  if (typeof options.seed === 'number' ? !Number.isFinite(options.seed) : typeof options.seed !== 'string')
    fail(fn, 'seed', 'a finite number or a string', options.seed)
  return createRng(options.seed)
}

// ---------------------------------------------------------------------------------------------------
// Request lengths

/** Draws a token count (rounded and clipped by the caller). */
export type TokenSampler = (rng: Rng) => number

/**
 * A request-length distribution: a fixed count, a sampler function, a log-normal given by its
 * mean and median (how published traces report lengths) or by mu/sigma, or a uniform range.
 */
export type TokenDist =
  | number
  | TokenSampler
  | { dist: 'lognormal'; mean: number; median: number }
  | { dist: 'lognormal'; mu: number; sigma: number }
  | { dist: 'uniform'; min: number; max: number }

/** Azure LLM inference trace 2023, conversation (sim-calibration.md §6): the synthetic default. */
export const CONVERSATION_TOKENS = {
  prompt: { dist: 'lognormal', mean: 1155, median: 1020 },
  output: { dist: 'lognormal', mean: 211, median: 129 },
} as const satisfies Record<string, TokenDist>

/** Azure LLM inference trace 2023, code (sim-calibration.md §6): long prompts, very short outputs. */
export const CODE_TOKENS = {
  prompt: { dist: 'lognormal', mean: 2048, median: 1469 },
  output: { dist: 'lognormal', mean: 27.9, median: 13 },
} as const satisfies Record<string, TokenDist>

/** vLLM's `max_model_len` for Llama-3-8B, the clip for synthetic lengths unless `maxModelLen` says otherwise. */
export const DEFAULT_MAX_MODEL_LEN = 8192

/** Turns a `TokenDist` into a sampler, checking it once up front. */
export function tokenSampler(dist: TokenDist, fn = 'tokenSampler', option = 'dist'): TokenSampler {
  if (typeof dist === 'number') {
    const n = num(fn, option, dist, 1, true)
    return () => n
  }
  if (typeof dist === 'function') return dist
  if (dist === null || typeof dist !== 'object')
    fail(fn, option, 'a number, a function or { dist: "lognormal" | "uniform", ... }', dist)
  if (dist.dist === 'uniform') {
    const min = num(fn, `${option}.min`, dist.min, 0, true)
    const max = num(fn, `${option}.max`, dist.max, min, true)
    return (rng) => rng.uniform(min, max)
  }
  if (dist.dist === 'lognormal') {
    let mu: number
    let sigma: number
    if ('mean' in dist) {
      const median = num(fn, `${option}.median`, dist.median, 0, false)
      const mean = num(fn, `${option}.mean`, dist.mean, median, true)
      ;({ mu, sigma } = lognormalParams({ mean, median }))
    } else {
      mu = num(fn, `${option}.mu`, dist.mu, -Infinity, false)
      sigma = num(fn, `${option}.sigma`, dist.sigma, 0, true)
    }
    return (rng) => rng.lognormal(mu, sigma)
  }
  return fail(fn, `${option}.dist`, '"lognormal" or "uniform"', (dist as { dist?: unknown }).dist)
}

function clipTokens(x: number, maxModelLen: number): number {
  const n = Math.round(x)
  // A NaN from a custom sampler becomes 1 rather than poisoning the simulator's arithmetic.
  return Number.isNaN(n) ? 1 : Math.min(Math.max(n, 1), maxModelLen)
}

// ---------------------------------------------------------------------------------------------------
// Synthetic processes

/** Options every synthetic generator takes. */
export interface SyntheticOptions {
  /** Prompt lengths. Default: log-normal, mean 1155 / median 1020 (Azure conversation trace). */
  promptTokens?: TokenDist
  /** Output lengths (`maxTokens`). Default: log-normal, mean 211 / median 129 (Azure conversation trace). */
  outputTokens?: TokenDist
  /** Both lengths are rounded and clipped to [1, maxModelLen] each. Default 8192. */
  maxModelLen?: number
  /** Seed for a fresh stream; or pass `rng` (e.g. `scenarioRng.fork('arrivals')`). One is required. */
  seed?: Seed
  rng?: Rng
  /** No arrivals before this time. Default 0. */
  startMs?: number
  /** No arrivals at or after this time (the stream ends). Default: never. */
  endMs?: number
}

/**
 * A point process `nextTime(t)` → the arrival after `t` (Infinity: none), plus lengths. Times and
 * lengths come from separate forks so that changing the length distribution keeps the arrival times.
 */
class ProcessArrivals extends LazyArrivals {
  #t: number
  readonly #end: number
  readonly #times: Rng
  readonly #lengths: Rng
  readonly #prompt: TokenSampler
  readonly #output: TokenSampler
  readonly #maxLen: number
  readonly #nextTime: (t: number, rng: Rng) => number

  constructor(fn: string, options: SyntheticOptions, nextTime: (t: number, rng: Rng) => number) {
    super()
    const rng = rngOf(fn, options)
    this.#times = rng.fork('times')
    this.#lengths = rng.fork('lengths')
    this.#prompt = tokenSampler(options.promptTokens ?? CONVERSATION_TOKENS.prompt, fn, 'promptTokens')
    this.#output = tokenSampler(options.outputTokens ?? CONVERSATION_TOKENS.output, fn, 'outputTokens')
    this.#maxLen =
      options.maxModelLen === undefined
        ? DEFAULT_MAX_MODEL_LEN
        : integer(fn, 'maxModelLen', options.maxModelLen, 1)
    this.#t = optNum(fn, 'startMs', options.startMs, 0, 0, true)
    this.#end = optNum(fn, 'endMs', options.endMs, Infinity, this.#t, false)
    this.#nextTime = nextTime
  }

  protected produce(): Arrival | null {
    if (this.#t >= this.#end) return null
    const t = this.#nextTime(this.#t, this.#times)
    if (!(t < this.#end)) {
      this.#t = this.#end
      return null
    }
    this.#t = t
    return {
      atMs: t,
      promptTokens: clipTokens(this.#prompt(this.#lengths), this.#maxLen),
      maxTokens: clipTokens(this.#output(this.#lengths), this.#maxLen),
    }
  }
}

export interface PoissonOptions extends SyntheticOptions {
  /** Mean arrivals per second. */
  ratePerSec: number
}

/** Arrivals of a homogeneous Poisson process (exponential gaps): the classic synthetic load. */
export function poissonArrivals(options: PoissonOptions): ArrivalSource {
  const fn = 'poissonArrivals'
  checkOptions(fn, options)
  const perMs = num(fn, 'ratePerSec', options.ratePerSec, 0, false) / 1000
  return new ProcessArrivals(fn, options, (t, rng) => t + rng.exponential(perMs))
}

export interface BurstOptions extends SyntheticOptions {
  /** Mean arrivals per second outside bursts. */
  ratePerSec: number
  /** A burst starts every `periodMs`. */
  periodMs: number
  /** Each burst lasts `durationMs` (less than `periodMs`). */
  durationMs: number
  /** The rate during a burst is `multiplier` x `ratePerSec` (0 makes a lull instead). */
  multiplier: number
  /** When the first burst starts. Default `periodMs` (a run opens at the base rate). */
  firstBurstAtMs?: number
}

/**
 * Poisson arrivals whose rate steps up to `multiplier` x for `durationMs` every `periodMs`. Exact:
 * each constant-rate segment is sampled on its own (the process is memoryless at the boundaries).
 */
export function burstArrivals(options: BurstOptions): ArrivalSource {
  const fn = 'burstArrivals'
  checkOptions(fn, options)
  const base = num(fn, 'ratePerSec', options.ratePerSec, 0, false) / 1000
  const period = num(fn, 'periodMs', options.periodMs, 0, false)
  const duration = num(fn, 'durationMs', options.durationMs, 0, false)
  if (duration >= period)
    fail(
      fn,
      'durationMs',
      `less than "periodMs" (${period}); a burst that never ends is just a higher rate`,
      duration,
    )
  const burst = base * num(fn, 'multiplier', options.multiplier, 0, true)
  const first = optNum(fn, 'firstBurstAtMs', options.firstBurstAtMs, period, 0, true)
  return new ProcessArrivals(fn, options, (from, rng) => {
    let t = from
    for (;;) {
      let rate: number
      let segEnd: number
      if (t < first) {
        rate = base
        segEnd = first
      } else {
        // Index arithmetic, then correction, so rounding can never produce a segment that ends at `t`.
        let k = Math.floor((t - first) / period)
        if (first + k * period > t) k--
        if (first + (k + 1) * period <= t) k++
        const start = first + k * period
        if (t < start + duration) {
          rate = burst
          segEnd = start + duration
        } else {
          rate = base
          segEnd = start + period
        }
      }
      if (rate > 0) {
        const next = t + rng.exponential(rate)
        if (next < segEnd) return next
      }
      t = segEnd
    }
  })
}

export interface RateOptions extends SyntheticOptions {
  /** Arrivals per second at time `tMs`; must stay within [0, maxRatePerSec]. */
  rate: (tMs: number) => number
  /** An upper bound of `rate`, used for thinning. */
  maxRatePerSec: number
}

// Thinning needs at least one acceptance now and then; a rate stuck at 0 would otherwise spin forever.
const kMaxRejections = 1_000_000

/** Arrivals of a Poisson process with a time-varying rate (Lewis-Shedler thinning). */
export function rateArrivals(options: RateOptions): ArrivalSource {
  return thinned('rateArrivals', options)
}

function thinned(fn: string, options: RateOptions): ArrivalSource {
  checkOptions(fn, options)
  if (typeof options.rate !== 'function')
    fail(fn, 'rate', 'a function (tMs) => arrivals per second', options.rate)
  const max = num(fn, 'maxRatePerSec', options.maxRatePerSec, 0, false)
  const rate = options.rate
  return new ProcessArrivals(fn, options, (from, rng) => {
    let t = from
    for (let i = 0; i < kMaxRejections; i++) {
      t += rng.exponential(max / 1000)
      const r = rate(t)
      if (!(r >= 0 && r <= max))
        throw new SimScenarioError(`${fn}: rate(${t}) is ${r}, outside [0, maxRatePerSec = ${max}]`)
      if (rng.next() * max < r) return t
    }
    throw new SimScenarioError(
      `${fn}: the rate stayed at 0 for ${kMaxRejections} candidate arrivals (to ${Math.round(t)} ms); set "endMs" to end the stream`,
    )
  })
}

export interface DiurnalOptions extends SyntheticOptions {
  minRatePerSec: number
  maxRatePerSec: number
  /** One full cycle, e.g. 86_400_000 for a day (or minutes, for a compressed day). */
  periodMs: number
  /** Shifts the cycle; at t = -phaseMs the rate is at its minimum. Default 0 (the run starts at the trough). */
  phaseMs?: number
}

/** Poisson arrivals whose rate follows a sinusoid between min and max over `periodMs` (thinning). */
export function diurnalArrivals(options: DiurnalOptions): ArrivalSource {
  const fn = 'diurnalArrivals'
  checkOptions(fn, options)
  const lo = num(fn, 'minRatePerSec', options.minRatePerSec, 0, true)
  const hi = num(fn, 'maxRatePerSec', options.maxRatePerSec, lo, lo !== 0)
  const period = num(fn, 'periodMs', options.periodMs, 0, false)
  const phase = optNum(fn, 'phaseMs', options.phaseMs, 0, -Infinity, false)
  const w = (2 * Math.PI) / period
  const rate = (t: number) => Math.min(hi, lo + ((hi - lo) * (1 - Math.cos(w * (t + phase)))) / 2)
  return thinned(fn, { ...options, rate, maxRatePerSec: hi })
}

// ---------------------------------------------------------------------------------------------------
// Combinators

export interface SurgeOptions {
  /** The window's start (ms of simulated time). */
  atMs: number
  durationMs: number
  /** The rate inside the window is `multiplier` x the source's (below 1 thins it). */
  multiplier: number
  seed?: Seed
  rng?: Rng
}

/**
 * Multiplies the arrival rate of any source inside [atMs, atMs + durationMs). With multiplier m >= 1
 * each arrival in the window brings floor(m - 1) copies, plus one more with probability frac(m),
 * placed uniformly between it and the next arrival (or the window's end), so the surge keeps the
 * source's shape and request sizes (an integer m multiplies the window's count exactly). With m < 1
 * each arrival in the window is kept with probability m. Outside the window nothing changes.
 */
export function surge(source: ArrivalSource, options: SurgeOptions): ArrivalSource {
  const fn = 'surge'
  checkOptions(fn, options)
  checkSource(fn, source)
  const from = num(fn, 'atMs', options.atMs, 0, true)
  const to = from + num(fn, 'durationMs', options.durationMs, 0, false)
  const m = num(fn, 'multiplier', options.multiplier, 0, true)
  return new SurgeArrivals(source, from, to, m, rngOf(fn, options).fork('surge'))
}

class SurgeArrivals extends LazyArrivals {
  readonly #clones: Arrival[] = []
  constructor(
    readonly source: ArrivalSource,
    readonly from: number,
    readonly to: number,
    readonly multiplier: number,
    readonly rng: Rng,
  ) {
    super()
  }

  protected produce(): Arrival | null {
    // Clones lie between their original and the source's next arrival, so they always come first.
    if (this.#clones.length > 0) return this.#clones.shift()!
    for (;;) {
      const a = this.source.next()
      if (a === null || a.atMs < this.from || a.atMs >= this.to) return a
      const m = this.multiplier
      if (m < 1) {
        if (this.rng.next() < m) return a
        continue
      }
      const extra = Math.floor(m - 1) + (this.rng.next() < m - Math.floor(m) ? 1 : 0)
      if (extra > 0) {
        const nextAt = this.source.peek()?.atMs ?? this.to
        const bound = Math.min(nextAt, this.to)
        for (let i = 0; i < extra; i++)
          this.#clones.push({ ...a, atMs: a.atMs + (bound - a.atMs) * this.rng.next() })
        this.#clones.sort((x, y) => x.atMs - y.atMs)
      }
      return a
    }
  }
}

function checkSource(fn: string, source: unknown): asserts source is ArrivalSource {
  const s = source as ArrivalSource | null
  if (s === null || typeof s !== 'object' || typeof s.peek !== 'function' || typeof s.next !== 'function')
    throw new SimScenarioError(
      `${fn}: expected an arrival source (with peek() and next()), got ${formatValue(source)}`,
    )
}

/** Interleaves several sources in time order (ties: the earlier argument first). */
export function mergeArrivals(...sources: ArrivalSource[]): ArrivalSource {
  for (let i = 0; i < sources.length; i++) checkSource(`mergeArrivals (argument ${i + 1})`, sources[i])
  return new MergedArrivals(sources)
}

class MergedArrivals extends LazyArrivals {
  constructor(readonly sources: readonly ArrivalSource[]) {
    super()
  }

  protected produce(): Arrival | null {
    // A linear scan: a scenario merges a handful of sources, where a heap would only cost more.
    let best: ArrivalSource | null = null
    let bestAt = Infinity
    for (const s of this.sources) {
      const a = s.peek()
      if (a !== null && a.atMs < bestAt) {
        best = s
        bestAt = a.atMs
      }
    }
    return best === null ? null : best.next()
  }
}

// ---------------------------------------------------------------------------------------------------
// The Azure trace

/** One row of an Azure LLM inference trace: offset from the first row, prompt and output lengths. */
export interface TraceRow {
  /** ms after the first row's timestamp (sub-ms precision kept). */
  atMs: number
  promptTokens: number
  outputTokens: number
}

/**
 * The Azure code trace shipped with the package (`data/traces/`, CC-BY 4.0, see its README).
 * Resolved from this module's location: src/sim/ under vitest and dist/sim/ after a build both sit
 * two levels below the package root.
 */
export function defaultTracePath(): string {
  return fileURLToPath(new URL('../../data/traces/azure-llm-inference-2023-code.csv', import.meta.url))
}

const kTimestamp = /^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?Z?$/
const kUint = /^\d+$/
const kColumns = 'TIMESTAMP,ContextTokens,GeneratedTokens'

type CsvError = TraceParseError & { readonly line: number }

function csvError(name: string, line: number, message: string): CsvError {
  const err = new TraceParseError(`${name} line ${line}: ${message}`) as CsvError
  // errors.ts gives TraceParseError no fields; the 1-based line rides on the instance.
  Object.defineProperty(err, 'line', { value: line, enumerable: true })
  return err
}

/**
 * Parses an Azure LLM inference trace (`TIMESTAMP,ContextTokens,GeneratedTokens`, timestamps like
 * `2023-11-16 18:17:03.9799600`, UTC) into rows relative to the first. A header line is skipped; a
 * bad row throws `TraceParseError` naming its 1-based line. `name` labels the errors.
 */
export function parseTraceCsv(text: string, name = 'trace CSV'): TraceRow[] {
  const rows: TraceRow[] = []
  // The first row's time as whole seconds + nanoseconds: one double of epoch ms cannot hold the
  // 100 ns resolution, and the gaps (tens of ms) would pick up rounding noise.
  let sec0 = 0
  let ns0 = 0
  let prevSec = -Infinity
  let prevNs = 0
  let lineNo = 0
  let start = 0
  while (start < text.length) {
    let end = text.indexOf('\n', start)
    if (end === -1) end = text.length
    const line = text.slice(start, end > start && text.charCodeAt(end - 1) === 13 ? end - 1 : end)
    start = end + 1
    lineNo++
    if (line.trim() === '') continue
    const c1 = line.indexOf(',')
    const c2 = c1 === -1 ? -1 : line.indexOf(',', c1 + 1)
    if (c1 === -1 || c2 === -1 || line.indexOf(',', c2 + 1) !== -1) {
      const found = line.split(',').length
      throw csvError(name, lineNo, `expected 3 columns (${kColumns}), found ${found}`)
    }
    const ts = line.slice(0, c1).trim()
    const m = kTimestamp.exec(ts)
    if (m === null) {
      // A first line that is not a timestamp is the column header.
      if (lineNo === 1 && rows.length === 0) continue
      throw csvError(
        name,
        lineNo,
        `bad timestamp ${JSON.stringify(ts)} (expected YYYY-MM-DD HH:MM:SS[.fffffff])`,
      )
    }
    const [, y, mo, d, h, mi, s, frac] = m
    const month = Number(mo)
    const day = Number(d)
    const ms = Date.UTC(Number(y), month - 1, day, Number(h), Number(mi), Number(s))
    const date = new Date(ms)
    if (
      month < 1 ||
      month > 12 ||
      date.getUTCDate() !== day ||
      Number(h) > 23 ||
      Number(mi) > 59 ||
      Number(s) > 59
    )
      throw csvError(name, lineNo, `bad timestamp ${JSON.stringify(ts)} (no such date or time)`)
    const sec = ms / 1000
    const ns = frac === undefined ? 0 : Number(frac.padEnd(9, '0'))
    const prompt = line.slice(c1 + 1, c2).trim()
    const output = line.slice(c2 + 1).trim()
    if (!kUint.test(prompt))
      throw csvError(
        name,
        lineNo,
        `ContextTokens must be a non-negative integer, found ${JSON.stringify(prompt)}`,
      )
    if (!kUint.test(output))
      throw csvError(
        name,
        lineNo,
        `GeneratedTokens must be a non-negative integer, found ${JSON.stringify(output)}`,
      )
    if (sec < prevSec || (sec === prevSec && ns < prevNs))
      throw csvError(name, lineNo, `timestamp ${ts} is before the previous row's; rows must be in time order`)
    prevSec = sec
    prevNs = ns
    if (rows.length === 0) {
      sec0 = sec
      ns0 = ns
    }
    rows.push({
      atMs: ((sec - sec0) * 1e9 + (ns - ns0)) / 1e6,
      promptTokens: Number(prompt),
      outputTokens: Number(output),
    })
  }
  if (rows.length === 0) throw csvError(name, Math.max(lineNo, 1), `no rows (expected ${kColumns} lines)`)
  return rows
}

/** Reads and parses an Azure trace CSV file (see `parseTraceCsv`); errors name the file and line. */
export function loadTraceCsv(path: string = defaultTracePath()): TraceRow[] {
  if (typeof path !== 'string' || path.length === 0)
    throw new SimScenarioError(`loadTraceCsv: the path must be a non-empty string, got ${formatValue(path)}`)
  // Read whole: the shipped trace is 320 KB and a scenario loads it once at setup.
  return parseTraceCsv(readFileSync(path, 'utf8'), basename(path))
}

export interface TraceArrivalOptions {
  /** 2 = arrivals twice as dense (the trace's time axis is divided by it). Default 1. */
  rateMultiplier?: number
  /** Start again from the top when the trace ends, forever. Default false. */
  loop?: boolean
  /**
   * Where in the trace simulated time 0 is, in trace ms (before `rateMultiplier`): rows before it are
   * skipped (with `loop`, they come at the end of the first cycle). Default 0.
   */
  startOffsetMs?: number
  /**
   * Length of one cycle with `loop`, in trace ms. Default: the trace's span plus its mean gap, so the
   * looped stream keeps the trace's mean rate and the seam has an ordinary gap.
   */
  loopPeriodMs?: number
  /** Clip both lengths to [1, maxModelLen]. Default: no upper clip (outputs are still at least 1). */
  maxModelLen?: number
}

/** Replays trace rows as arrivals (deterministic: no randomness involved). */
export function traceArrivals(rows: readonly TraceRow[], options: TraceArrivalOptions = {}): ArrivalSource {
  const fn = 'traceArrivals'
  checkOptions(fn, options)
  if (!Array.isArray(rows) || rows.length === 0)
    throw new SimScenarioError(`${fn}: rows must be a non-empty array (from loadTraceCsv)`)
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i]!
    const prev = i === 0 ? -Infinity : rows[i - 1]!.atMs
    if (
      !(r?.atMs >= prev) ||
      !Number.isFinite(r.atMs) ||
      !(r.promptTokens >= 0) ||
      !(r.outputTokens >= 0) ||
      !Number.isFinite(r.promptTokens) ||
      !Number.isFinite(r.outputTokens)
    )
      throw new SimScenarioError(
        `${fn}: rows[${i}] must have finite atMs (not before the previous row's) and token counts >= 0`,
      )
  }
  const multiplier = optNum(fn, 'rateMultiplier', options.rateMultiplier, 1, 0, false)
  const loop = options.loop ?? false
  if (typeof loop !== 'boolean') fail(fn, 'loop', 'a boolean', loop)
  const first = rows[0]!.atMs
  const last = rows.at(-1)!.atMs
  const span = last - first
  let period = Infinity
  if (loop) {
    if (options.loopPeriodMs !== undefined)
      period = num(fn, 'loopPeriodMs', options.loopPeriodMs, Math.max(span, 0), span > 0)
    else if (span > 0) period = span + span / (rows.length - 1)
    else
      throw new SimScenarioError(
        `${fn}: option "loopPeriodMs" is required to loop a trace whose rows share one time`,
      )
  }
  const offset = optNum(fn, 'startOffsetMs', options.startOffsetMs, 0, 0, true)
  if (offset > (loop ? period : span))
    fail(fn, 'startOffsetMs', `within the trace (0 to ${loop ? period : span} ms)`, offset)
  const maxLen =
    options.maxModelLen === undefined ? Infinity : integer(fn, 'maxModelLen', options.maxModelLen, 1)
  return new TraceArrivals(rows, first, offset, period, loop, multiplier, maxLen)
}

class TraceArrivals extends LazyArrivals {
  #i: number
  #cycle = 0
  constructor(
    readonly rows: readonly TraceRow[],
    readonly first: number,
    readonly offset: number,
    readonly period: number,
    readonly loop: boolean,
    readonly multiplier: number,
    readonly maxLen: number,
  ) {
    super()
    // The first row at or after the offset (binary search: the trace is sorted).
    let lo = 0
    let hi = rows.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (rows[mid]!.atMs - first < offset) lo = mid + 1
      else hi = mid
    }
    this.#i = lo
  }

  protected produce(): Arrival | null {
    if (this.#i >= this.rows.length) {
      if (!this.loop) return null
      this.#i = 0
      this.#cycle++
    }
    const r = this.rows[this.#i++]!
    // Without loop the period is Infinity, and 0 * Infinity would be NaN.
    const traceMs = (this.#cycle === 0 ? 0 : this.#cycle * this.period) + (r.atMs - this.first) - this.offset
    const max = this.maxLen
    return {
      atMs: traceMs / this.multiplier,
      promptTokens: Math.min(Math.max(r.promptTokens, 1), max),
      maxTokens: Math.min(Math.max(r.outputTokens, 1), max),
    }
  }
}
