import { describe, expect, it } from 'vitest'
import { MAX_REPORTED_ERRORS, parseExposition, parseSampleValue } from '../../src/vllm/exposition.js'
import { fixture, fixtureNames } from './helpers.js'

describe('parseExposition', () => {
  it('reads HELP and TYPE into families and samples with their labels', () => {
    const p = parseExposition(
      [
        '# HELP vllm:num_requests_running Number of requests in model execution batches.',
        '# TYPE vllm:num_requests_running gauge',
        'vllm:num_requests_running{engine="0",model_name="m"} 8.0',
      ].join('\n'),
    )
    expect(p.errors).toEqual([])
    expect(p.families.get('vllm:num_requests_running')).toEqual({
      type: 'gauge',
      help: 'Number of requests in model execution batches.',
    })
    expect(p.samples).toEqual([
      {
        name: 'vllm:num_requests_running',
        labels: { engine: '0', model_name: 'm' },
        value: 8,
        timestampMs: null,
      },
    ])
  })

  it('resolves the three label escapes and keeps other backslashes as written', () => {
    const p = parseExposition('m{a="back\\\\slash",b="say \\"hi\\"",c="two\\nlines",d="C:\\\\x\\y"} 1')
    expect(p.errors).toEqual([])
    expect(p.samples[0]?.labels).toEqual({ a: 'back\\slash', b: 'say "hi"', c: 'two\nlines', d: 'C:\\x\\y' })
  })

  it('resolves escapes in HELP text', () => {
    const p = parseExposition('# HELP m a \\\\ b\\nc\n# TYPE m counter')
    expect(p.families.get('m')).toEqual({ type: 'counter', help: 'a \\ b\nc' })
  })

  it('reads NaN, +Inf, -Inf, integers and exponents', () => {
    const p = parseExposition(
      [
        'a NaN',
        'b +Inf',
        'c -Inf',
        'd 42',
        'e 1.7537953269352946e+09',
        'f 9.75010481363281e-06',
        'g -3',
      ].join('\n'),
    )
    expect(p.errors).toEqual([])
    const v = Object.fromEntries(p.samples.map((s) => [s.name, s.value]))
    expect(v.a).toBeNaN()
    expect(v).toMatchObject({
      b: Number.POSITIVE_INFINITY,
      c: Number.NEGATIVE_INFINITY,
      d: 42,
      e: 1753795326.9352946,
      f: 9.75010481363281e-6,
      g: -3,
    })
  })

  it('reads an optional millisecond timestamp', () => {
    const p = parseExposition('a 1 1700000000123\nb{x="y"} 2 -5\nc 3')
    expect(p.errors).toEqual([])
    expect(p.samples.map((s) => s.timestampMs)).toEqual([1700000000123, -5, null])
  })

  it('accepts names with colons, CRLF line ends, blank lines, tabs and plain comments', () => {
    const p = parseExposition(
      '# a comment\r\n\r\n\tvllm:x:y_total{le="+Inf",}\t7\r\n   \r\n# TYPE vllm:x:y_total counter\r\n',
    )
    expect(p.errors).toEqual([])
    expect(p.samples).toEqual([
      { name: 'vllm:x:y_total', labels: { le: '+Inf' }, value: 7, timestampMs: null },
    ])
    expect(p.families.get('vllm:x:y_total')?.type).toBe('counter')
  })

  it('reports a garbage line with its number, skips it and reads the rest', () => {
    const p = parseExposition(
      ['good 1', 'this is not a sample', 'also{good="yes"} 2', '{oops} 3', 'x{a="b"'].join('\n'),
    )
    expect(p.samples.map((s) => s.name)).toEqual(['good', 'also'])
    expect(p.errors.map((e) => e.line)).toEqual([2, 4, 5])
    for (const e of p.errors) expect(e.message).toBeTypeOf('string')
  })

  it('rejects malformed values, timestamps and label sets', () => {
    const bad = [
      'a 1x',
      'a 1 2 3',
      'a 1 1.5',
      'a{b} 1',
      'a{b="c" d="e"} 1',
      'a{b="c",b="d"} 1',
      'a{1b="c"} 1',
      'a',
      'a{b="c"}',
    ]
    for (const line of bad) {
      const p = parseExposition(line)
      expect(p.samples, line).toEqual([])
      expect(p.errors, line).toHaveLength(1)
    }
  })

  it('reports an unknown TYPE and reads the family as untyped', () => {
    const p = parseExposition('# TYPE a gaugeish\na 1')
    expect(p.errors).toHaveLength(1)
    expect(p.families.get('a')?.type).toBe('untyped')
    expect(p.samples).toHaveLength(1)
  })

  it('keeps a label named __proto__ as a label', () => {
    const p = parseExposition('a{__proto__="x"} 1')
    const labels = p.samples[0]?.labels ?? {}
    expect(Object.keys(labels)).toEqual(['__proto__'])
    expect(Object.getPrototypeOf(labels)).toBe(Object.prototype)
  })

  it('treats a HELP/TYPE-only exposition as families without samples', () => {
    const p = parseExposition(fixture('metrics-v0-functionary-263.txt'))
    expect(p.errors).toEqual([])
    expect(p.samples).toEqual([])
    expect(p.families.get('vllm:gpu_cache_usage_perc')).toEqual({
      type: 'gauge',
      help: 'GPU KV-cache usage. 1 means 100 percent usage.',
    })
  })

  it('parses every capture and the sample without errors', () => {
    for (const name of [...fixtureNames('metrics-'), 'vllm-metrics-sample.txt']) {
      const p = parseExposition(fixture(name))
      expect(p.errors, name).toEqual([])
    }
  })

  it('counts the samples of the captures as their READMEs state', () => {
    const counts: Record<string, number> = {
      'metrics-v0-1890.txt': 3,
      'metrics-v0-ibmvllm-18.txt': 20,
      'metrics-v0-functionary-263.txt': 0,
      'metrics-v0-8819.txt': 15,
      'metrics-v0-11117.txt': 34,
      'metrics-v1early-prodstack-318.txt': 31,
      'metrics-v1-prodstack-617.txt': 16,
      'metrics-v1-22227.txt': 26,
    }
    for (const [name, n] of Object.entries(counts)) {
      expect(parseExposition(fixture(name)).samples, name).toHaveLength(n)
    }
  })

  it('keeps the integer values of the earliest exporter', () => {
    const p = parseExposition(fixture('metrics-v0-1890.txt'))
    expect(p.samples[2]).toEqual({
      name: 'status_codes_counter',
      labels: { method: 'POST', path: '/v1/chat/completions', status_code: '200' },
      value: 1,
      timestampMs: null,
    })
  })

  it('reads the whole sample: every family and its cache_config_info labels', () => {
    const p = parseExposition(fixture('vllm-metrics-sample.txt'))
    expect(p.families.get('vllm:kv_cache_usage_perc')?.type).toBe('gauge')
    expect(p.families.get('vllm:iteration_tokens_total')?.type).toBe('histogram')
    const info = p.samples.find((s) => s.name === 'vllm:cache_config_info')
    expect(info?.labels.num_gpu_blocks).toBe('27810')
    expect(info?.labels.kv_cache_dtype_skip_layers).toBe('[]')
    expect(p.samples).toHaveLength(436)
  })

  it('never throws on random bytes, truncated captures or non-strings', () => {
    let seed = 42
    const rand = () => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff
      return seed
    }
    for (let k = 0; k < 200; k++) {
      const len = rand() % 400
      let s = ''
      for (let i = 0; i < len; i++)
        s += String.fromCharCode(rand() % 3 === 0 ? rand() % 128 : rand() % 0x3000)
      expect(() => parseExposition(s)).not.toThrow()
    }
    const sample = fixture('vllm-metrics-sample.txt')
    for (let cut = 0; cut < sample.length; cut += 997) {
      const p = parseExposition(sample.slice(0, cut))
      expect(p.errors.length).toBeLessThanOrEqual(1)
    }
    for (const junk of [undefined, null, 42, {}, Buffer.from('a 1')]) {
      const p = parseExposition(junk as unknown as string)
      expect(p.samples).toEqual([])
      expect(p.errors).toHaveLength(1)
    }
  })

  it('lists at most MAX_REPORTED_ERRORS errors however bad the input', () => {
    const p = parseExposition('!\n'.repeat(10_000))
    expect(p.errors).toHaveLength(MAX_REPORTED_ERRORS)
    expect(p.errors.at(-1)?.message).toMatch(/further errors/)
  })

  it('parses the 60 KB sample in well under 2 ms once warm', () => {
    const sample = fixture('vllm-metrics-sample.txt')
    for (let i = 0; i < 50; i++) parseExposition(sample)
    // The best of several batches: the test machine is shared, and the question is the parser's cost.
    let perParse = Number.POSITIVE_INFINITY
    for (let batch = 0; batch < 5; batch++) {
      const t0 = performance.now()
      for (let i = 0; i < 40; i++) parseExposition(sample)
      perParse = Math.min(perParse, (performance.now() - t0) / 40)
    }
    console.info(`parseExposition: ${(sample.length / 1024).toFixed(1)} KB in ${perParse.toFixed(3)} ms`)
    expect(perParse).toBeLessThan(2)
  })
})

describe('parseSampleValue', () => {
  it('accepts the forms Go ParseFloat accepts and rejects the rest', () => {
    expect(parseSampleValue('1e3')).toBe(1000)
    expect(parseSampleValue('+1')).toBe(1)
    expect(parseSampleValue('inf')).toBe(Number.POSITIVE_INFINITY)
    expect(parseSampleValue('nan')).toBeNaN()
    expect(parseSampleValue('1,5')).toBeUndefined()
    expect(parseSampleValue('abc')).toBeUndefined()
  })

  it('rejects the radix integers Number() reads but Go ParseFloat does not (0x1F, 0o7, 0b1)', () => {
    for (const t of ['0x1F', '0X1f', '0o7', '0O7', '0b1', '0B1'])
      expect(parseSampleValue(t), t).toBeUndefined()
    expect(parseExposition('a 0x1F').errors[0]?.message).toBe('invalid value "0x1F" for a')
    expect(parseSampleValue('0')).toBe(0)
    expect(parseSampleValue('0.5')).toBe(0.5)
    expect(parseSampleValue('0e1')).toBe(0)
  })
})

describe('parseExposition on hostile input', () => {
  it('quotes at most 80 characters of a name in an error, however long the name', () => {
    const p = parseExposition(`${'n'.repeat(1_000_000)} oops\na{${'l'.repeat(1_000_000)} 1`)
    expect(p.errors).toHaveLength(2)
    for (const e of p.errors) expect(e.message.length).toBeLessThan(150)
  })

  it('unescapes a label value or HELP text dense with escapes exactly as a sparse one', () => {
    const value = 'a\\"b\\\\c\\nd\\xé✓'.repeat(200)
    const expected = value.replace(/\\(\\|n|")/g, (_, c: string) => (c === 'n' ? '\n' : c))
    expect(parseExposition(`a{b="${value}"} 1`).samples[0]?.labels.b).toBe(expected)
    const help = value.replace(/\\(\\|n)/g, (_, c: string) => (c === 'n' ? '\n' : c))
    expect(parseExposition(`# HELP a ${value}`).families.get('a')?.help).toBe(help)
  })
})
