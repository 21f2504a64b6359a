/**
 * A parser for the Prometheus text exposition format 0.0.4, the format vLLM's `/metrics` serves.
 *
 * Written by hand rather than with a regex per line: a scrape every 100 ms of a 60 KB body must cost
 * well under a millisecond, and the input comes from the network, so nothing in here may throw or
 * backtrack badly whatever bytes arrive. A line that cannot be parsed is reported with its 1-based
 * number and skipped; the rest of the exposition is still read.
 */

/** The metric types 0.0.4 knows. Anything else in a `# TYPE` line is reported and read as `untyped`. */
export type MetricType = 'counter' | 'gauge' | 'histogram' | 'summary' | 'untyped'

export interface Sample {
  /** The series name as exposed, suffix included (`vllm:ttft_seconds_bucket`, `..._total`). */
  name: string
  labels: Record<string, string>
  /** May be NaN or ±Infinity: the format allows them and the caller decides what they mean. */
  value: number
  /** The optional exposition timestamp (ms since the epoch), null when the line has none. */
  timestampMs: number | null
}

export interface MetricFamily {
  type: MetricType
  /** The `# HELP` text with its escapes resolved, null when the family has no HELP line. */
  help: string | null
}

export interface ExpositionError {
  /** 1-based line number in the text. */
  line: number
  message: string
}

export interface ParsedExposition {
  samples: Sample[]
  /** Keyed by the name in the HELP/TYPE line (for counters that is the `_total` name in 0.0.4). */
  families: Map<string, MetricFamily>
  errors: ExpositionError[]
}

/** Garbage input can have a bad line every few bytes; the first errors say enough. */
export const MAX_REPORTED_ERRORS = 100

const TYPES: ReadonlySet<string> = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped'])

// Character codes, named so the scanner reads like the grammar.
const TAB = 9
const CR = 13
const SPACE = 32
const QUOTE = 34
const HASH = 35
const COMMA = 44
const COLON = 58
const EQUALS = 61
const BACKSLASH = 92
const UNDERSCORE = 95
const LBRACE = 123
const RBRACE = 125

function isNameStart(c: number): boolean {
  // [a-zA-Z_]
  return (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || c === UNDERSCORE
}

function isNameChar(c: number): boolean {
  // [a-zA-Z0-9_]
  return isNameStart(c) || (c >= 48 && c <= 57)
}

function isBlank(c: number): boolean {
  return c === SPACE || c === TAB
}

function isRadixLiteral(token: string): boolean {
  if (token.length < 3 || token.charCodeAt(0) !== 48 /* 0 */) return false
  const c = token.charCodeAt(1) | 0x20 // lower case
  return c === 120 /* x */ || c === 111 /* o */ || c === 98 /* b */
}

/**
 * A sample value: Go's ParseFloat forms (what Prometheus accepts), i.e. decimals, exponents and the
 * specials in any case. Returns undefined for anything else.
 */
export function parseSampleValue(token: string): number | undefined {
  const n = Number(token)
  // Number('') is 0 and Number(' 1') is 1, but tokens never hold blanks and are never empty here.
  // Number also reads `0x1A`, `0o7` and `0b1` as integers, which Go's ParseFloat (and so
  // Prometheus) rejects: a hex float needs a `p` exponent, and Prometheus refuses `p` anyway.
  if (!Number.isNaN(n)) return isRadixLiteral(token) ? undefined : n
  switch (token.toLowerCase()) {
    case 'nan':
    case '+nan':
    case '-nan':
      return Number.NaN
    case 'inf':
    case '+inf':
    case 'infinity':
    case '+infinity':
      return Number.POSITIVE_INFINITY
    case '-inf':
    case '-infinity':
      return Number.NEGATIVE_INFINITY
    default:
      return undefined
  }
}

/** `\\` → `\`, `\"` → `"`, `\n` → newline; any other escape is kept as written (as Prometheus does). */
function unescapeText(s: string, quotes: boolean): string {
  let out = ''
  let from = 0
  let replaced = 0
  for (let i = s.indexOf('\\'); i !== -1 && i < s.length - 1; i = s.indexOf('\\', i + 1)) {
    const next = s.charCodeAt(i + 1)
    let rep: string | null = null
    if (next === BACKSLASH) rep = '\\'
    else if (next === 110 /* n */) rep = '\n'
    else if (quotes && next === QUOTE) rep = '"'
    if (rep === null) continue
    // Concatenating per escape builds a rope V8 must flatten: 30+ ms for a 1 MB run of `\"`.
    if (++replaced > 32) return out + unescapeDense(s, from, quotes)
    out += s.slice(from, i) + rep
    from = i + 2
    i++ // the escaped character is consumed: `\\n` is a backslash then `n`
  }
  return out + s.slice(from)
}

/** unescapeText from `from` on, a code unit at a time: for text dense with escapes. */
function unescapeDense(s: string, from: number, quotes: boolean): string {
  const n = s.length
  const buf = new Uint16Array(n - from)
  let j = 0
  for (let i = from; i < n; i++) {
    let c = s.charCodeAt(i)
    if (c === BACKSLASH && i + 1 < n) {
      const next = s.charCodeAt(i + 1)
      if (next === BACKSLASH) i++
      else if (next === 110 /* n */) {
        c = 10
        i++
      } else if (quotes && next === QUOTE) {
        c = QUOTE
        i++
      }
    }
    buf[j++] = c
  }
  let out = ''
  // In chunks: apply() passes every code unit as an argument, and the stack has a limit.
  for (let k = 0; k < j; k += 4096)
    out += String.fromCharCode.apply(null, buf.subarray(k, Math.min(j, k + 4096)) as unknown as number[])
  return out
}

/** A name as quoted in an error: a 1 MB name must not make a 1 MB message (100 of them, at worst). */
function short(s: string): string {
  return s.length > 80 ? `${s.slice(0, 80)}...` : s
}

function setLabel(labels: Record<string, string>, name: string, value: string): void {
  // A plain assignment to `__proto__` would replace the prototype instead of adding a label.
  if (name === '__proto__') {
    Object.defineProperty(labels, name, { value, enumerable: true, writable: true, configurable: true })
  } else labels[name] = value
}

class Parser {
  readonly samples: Sample[] = []
  readonly families = new Map<string, MetricFamily>()
  readonly errors: ExpositionError[] = []
  #errorCount = 0
  #text: string
  #line = 0

  constructor(text: string) {
    this.#text = text
  }

  run(): void {
    const text = this.#text
    const n = text.length
    let pos = 0
    while (pos < n) {
      let end = text.indexOf('\n', pos)
      if (end === -1) end = n
      this.#line++
      let stop = end
      if (stop > pos && text.charCodeAt(stop - 1) === CR) stop--
      this.#parseLine(pos, stop)
      pos = end + 1
    }
  }

  #error(message: string): void {
    this.#errorCount++
    if (this.#errorCount < MAX_REPORTED_ERRORS) this.errors.push({ line: this.#line, message })
    else if (this.#errorCount === MAX_REPORTED_ERRORS)
      this.errors.push({ line: this.#line, message: `${message} (further errors are not reported)` })
  }

  #parseLine(start: number, end: number): void {
    const t = this.#text
    let i = start
    while (i < end && isBlank(t.charCodeAt(i))) i++
    if (i === end) return // blank line
    if (t.charCodeAt(i) === HASH) {
      this.#parseComment(i + 1, end)
      return
    }
    this.#parseSample(i, end)
  }

  /** `# HELP name text` and `# TYPE name type` matter; every other comment is ignored. */
  #parseComment(start: number, end: number): void {
    const t = this.#text
    let i = start
    while (i < end && isBlank(t.charCodeAt(i))) i++
    if (end - i < 5) return
    const isHelp = t.startsWith('HELP', i)
    const isType = !isHelp && t.startsWith('TYPE', i)
    if ((!isHelp && !isType) || !isBlank(t.charCodeAt(i + 4))) return
    i += 5
    while (i < end && isBlank(t.charCodeAt(i))) i++
    const nameStart = i
    i = this.#scanMetricName(i, end)
    if (i === nameStart || (i < end && !isBlank(t.charCodeAt(i)))) {
      this.#error(`invalid metric name in # ${isHelp ? 'HELP' : 'TYPE'} line`)
      return
    }
    const name = t.slice(nameStart, i)
    // One blank separates the name from the text; HELP text keeps any further leading blanks.
    if (i < end) i++
    const family = this.families.get(name) ?? { type: 'untyped' as MetricType, help: null }
    if (isHelp) {
      const raw = t.slice(i, end)
      family.help = raw.includes('\\') ? unescapeText(raw, false) : raw
    } else {
      while (i < end && isBlank(t.charCodeAt(i))) i++
      let typeEnd = end
      while (typeEnd > i && isBlank(t.charCodeAt(typeEnd - 1))) typeEnd--
      const type = t.slice(i, typeEnd)
      if (TYPES.has(type)) family.type = type as MetricType
      else this.#error(`unknown metric type "${type.slice(0, 40)}" for ${short(name)}`)
    }
    this.families.set(name, family)
  }

  /** [a-zA-Z_:][a-zA-Z0-9_:]*; returns the index after the name (== start when there is none). */
  #scanMetricName(start: number, end: number): number {
    const t = this.#text
    if (start >= end) return start
    const c0 = t.charCodeAt(start)
    if (!isNameStart(c0) && c0 !== COLON) return start
    let i = start + 1
    while (i < end) {
      const c = t.charCodeAt(i)
      if (!isNameChar(c) && c !== COLON) break
      i++
    }
    return i
  }

  #parseSample(start: number, end: number): void {
    const t = this.#text
    let i = this.#scanMetricName(start, end)
    if (i === start) {
      this.#error('expected a metric name')
      return
    }
    const name = t.slice(start, i)
    const labels: Record<string, string> = {}
    let j = i
    while (j < end && isBlank(t.charCodeAt(j))) j++
    if (j < end && t.charCodeAt(j) === LBRACE) {
      i = this.#parseLabels(j + 1, end, labels)
      if (i < 0) return
    }
    // The value, then an optional timestamp, each after at least one blank.
    const valueStart = i
    while (i < end && isBlank(t.charCodeAt(i))) i++
    if (i === valueStart && i < end) {
      this.#error(`expected a blank before the value of ${short(name)}`)
      return
    }
    const tokenStart = i
    while (i < end && !isBlank(t.charCodeAt(i))) i++
    if (i === tokenStart) {
      this.#error(`missing value for ${short(name)}`)
      return
    }
    const valueToken = t.slice(tokenStart, i)
    const value = parseSampleValue(valueToken)
    if (value === undefined) {
      this.#error(`invalid value "${valueToken.slice(0, 40)}" for ${short(name)}`)
      return
    }
    while (i < end && isBlank(t.charCodeAt(i))) i++
    let timestampMs: number | null = null
    if (i < end) {
      const tsStart = i
      while (i < end && !isBlank(t.charCodeAt(i))) i++
      const tsToken = t.slice(tsStart, i)
      const ts = Number(tsToken)
      if (!Number.isSafeInteger(ts) || !/^[+-]?\d+$/.test(tsToken)) {
        this.#error(`invalid timestamp "${tsToken.slice(0, 40)}" for ${short(name)}`)
        return
      }
      timestampMs = ts
      while (i < end && isBlank(t.charCodeAt(i))) i++
      if (i < end) {
        this.#error(`unexpected text after the timestamp of ${short(name)}`)
        return
      }
    }
    this.samples.push({ name, labels, value, timestampMs })
  }

  /**
   * Reads `name="value", ...}` (a trailing comma is allowed). Returns the index after `}`, or -1
   * after reporting an error.
   */
  #parseLabels(start: number, end: number, labels: Record<string, string>): number {
    const t = this.#text
    let i = start
    for (;;) {
      while (i < end && isBlank(t.charCodeAt(i))) i++
      if (i >= end) {
        this.#error('unterminated label set')
        return -1
      }
      if (t.charCodeAt(i) === RBRACE) return i + 1
      const nameStart = i
      if (!isNameStart(t.charCodeAt(i))) {
        this.#error('invalid label name')
        return -1
      }
      i++
      while (i < end && isNameChar(t.charCodeAt(i))) i++
      const labelName = t.slice(nameStart, i)
      while (i < end && isBlank(t.charCodeAt(i))) i++
      if (t.charCodeAt(i) !== EQUALS) {
        this.#error(`expected "=" after label ${short(labelName)}`)
        return -1
      }
      i++
      while (i < end && isBlank(t.charCodeAt(i))) i++
      if (t.charCodeAt(i) !== QUOTE) {
        this.#error(`expected a quoted value for label ${short(labelName)}`)
        return -1
      }
      i++
      const valueStart = i
      let escaped = false
      while (i < end) {
        const c = t.charCodeAt(i)
        if (c === QUOTE) break
        if (c === BACKSLASH) {
          escaped = true
          i++
        }
        i++
      }
      if (i >= end) {
        this.#error(`unterminated value for label ${short(labelName)}`)
        return -1
      }
      const raw = t.slice(valueStart, i)
      if (Object.hasOwn(labels, labelName)) {
        this.#error(`duplicate label ${short(labelName)}`)
        return -1
      }
      setLabel(labels, labelName, escaped ? unescapeText(raw, true) : raw)
      i++ // closing quote
      while (i < end && isBlank(t.charCodeAt(i))) i++
      const c = t.charCodeAt(i)
      if (c === COMMA) i++
      else if (c !== RBRACE) {
        this.#error(`expected "," or "}" after label ${short(labelName)}`)
        return -1
      }
    }
  }
}

/**
 * Parses a Prometheus 0.0.4 text exposition. Never throws: bad lines land in `errors` (at most
 * {@link MAX_REPORTED_ERRORS} are listed) and are skipped; a non-string input gives an empty result
 * with one error.
 */
export function parseExposition(text: string): ParsedExposition {
  if (typeof text !== 'string') {
    return { samples: [], families: new Map(), errors: [{ line: 0, message: 'input is not a string' }] }
  }
  const p = new Parser(text)
  try {
    p.run()
  } catch (err) {
    // Unreachable by design; kept so a bug here degrades to a partial result, never a crash.
    p.errors.push({ line: 0, message: `parser failure: ${(err as Error)?.message ?? String(err)}` })
  }
  return { samples: p.samples, families: p.families, errors: p.errors }
}
