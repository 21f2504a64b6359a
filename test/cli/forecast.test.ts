// `vllm-monitor sim --record`, `eval` and `train`, spawned from the compiled CLI: run
// `npm run build:ts` first.
import { execFile } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { TypeScore } from '../../src/forecast/evaluate.js'
import { loadModelArtifacts, saveModel } from '../../src/forecast/model-io.js'
import { DEFAULT_MODEL_DIR } from '../../src/forecast/predictive.js'
import { FAILURE_TYPES } from '../../src/forecast/spec.js'

const root = join(import.meta.dirname, '../..')
const cli = join(root, 'dist/cli/index.js')
const bundledCsv = join(root, 'data/traces/azure-llm-inference-2023-code.csv')
const dir = mkdtempSync(join(tmpdir(), 'vllm-monitor-cli-forecast-'))
const exec = promisify(execFile)
const run = (args: string[], timeout = 60_000) =>
  exec(process.execPath, [cli, ...args], { timeout, cwd: dir, env: { ...process.env, NO_COLOR: '1' } })
const trace = join(dir, 'kv.jsonl')

interface Line {
  kind?: string
  [k: string]: unknown
}
const linesOf = (file: string): Line[] =>
  readFileSync(file, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Line)
/** A trace without its header (whose createdAt differs between runs). */
const recordsOf = (file: string) => readFileSync(file, 'utf8').split('\n').slice(1).join('\n')

let simStdout = ''

beforeAll(async () => {
  simStdout = (await run(['sim', '--scenario', 'kv-exhaustion', '--seed', '3', '--record', trace])).stdout
}, 60_000)

afterAll(() => rmSync(dir, { recursive: true, force: true }))

describe('vllm-monitor sim --record', () => {
  it('writes the run as a trace at full speed, with the ground-truth labels', () => {
    expect(simStdout).toMatch(/^wrote .*kv\.jsonl: scenario kv-exhaustion, 300 s simulated in [\d.]+ s/)
    const [header, ...records] = linesOf(trace)
    expect(header).toMatchObject({
      format: 'vllm-monitor-trace',
      source: 'sim',
      scenario: 'kv-exhaustion',
      seed: 3,
      replicas: [{ name: 'r0' }],
    })
    expect(records.filter((r) => r.kind === 'engine').length).toBeGreaterThan(2900)
    const labels = records.filter((r) => r.kind === 'label')
    expect(labels.map((l) => `${l.replica} ${l.fault} ${l.phase}`)).toEqual(
      expect.arrayContaining(['r0 kv-exhaustion injected', 'r0 kv-exhaustion failure']),
    )
    const injected = labels.find((l) => l.phase === 'injected')!
    const failure = labels.find((l) => l.phase === 'failure')!
    expect(failure.t as number).toBeGreaterThan(injected.t as number)
  })

  it('takes its arrivals from the bundled CSV with --arrivals, the same run as the default', async () => {
    const withCsv = join(dir, 'kv-arrivals.jsonl')
    await run([
      'sim',
      '--scenario',
      'kv-exhaustion',
      '--seed',
      '3',
      '--arrivals',
      bundledCsv,
      '--record',
      withCsv,
    ])
    expect(recordsOf(withCsv)).toBe(recordsOf(trace))
  })

  it('reads the file given to --arrivals, naming the line of a bad row', async () => {
    const csv = join(dir, 'bad-arrivals.csv')
    writeFileSync(
      csv,
      'TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,4808,10\nbad,row\n',
    )
    await expect(
      run(['sim', '--scenario', 'kv-exhaustion', '--arrivals', csv, '--record', join(dir, 'never.jsonl')]),
    ).rejects.toMatchObject({
      code: 1,
      stderr: expect.stringMatching(/bad-arrivals\.csv line 3: expected 3 columns/),
    })
  })
})

describe('vllm-monitor eval', () => {
  it('prints a table with the shipped model, predict_linear and threshold for each failure type', async () => {
    const { stdout } = await run(['eval', trace])
    expect(stdout).toMatch(
      /^failure type\s+predictor\s+failures\s+recall\s+precision\s+median lead s\s+false\/h$/m,
    )
    for (const type of FAILURE_TYPES) {
      for (const predictor of ['forecaster-v\\d+', 'predict_linear', 'threshold']) {
        expect(stdout, `${type} ${predictor}`).toMatch(new RegExp(`^${type}\\s+${predictor}\\s+\\d+\\s`, 'm'))
      }
    }
    expect(stdout).toMatch(/^kv-exhaustion\s+forecaster-v\d+\s+1\s+1\.00\s/m)
  })

  it('prints the scores as JSON with --json: the shipped model predicts the failure with at least 5 s of warning', async () => {
    const { stdout } = await run(['eval', trace, '--json'])
    const report = JSON.parse(stdout) as { traces: string[]; model: string; scores: TypeScore[] }
    expect(report.traces).toEqual([trace])
    expect(report.model).toMatch(/^forecaster-v\d+$/)
    const kv = report.scores.filter((s) => s.failureType === 'kv-exhaustion')
    expect(kv.map((s) => s.predictor)).toEqual(
      expect.arrayContaining([report.model, 'predict_linear', 'threshold']),
    )
    const model = kv.find((s) => s.predictor === report.model)!
    expect(model).toMatchObject({ failures: 1, predicted: 1, recall: 1 })
    expect(model.leadsS).toHaveLength(1)
    expect(model.leadsS[0]).toBeGreaterThanOrEqual(5)
    expect(new Set(report.scores.map((s) => s.failureType))).toEqual(new Set(FAILURE_TYPES))
  })

  it('scores only the baselines with --no-model', async () => {
    const { stdout } = await run(['eval', trace, '--no-model', '--json'])
    const report = JSON.parse(stdout) as { model: string | null; scores: TypeScore[] }
    expect(report.model).toBeNull()
    expect([...new Set(report.scores.map((s) => s.predictor))].sort()).toEqual([
      'predict_linear',
      'threshold',
    ])
    const table = (await run(['eval', trace, '--no-model'])).stdout
    expect(table).not.toMatch(/forecaster/)
    expect(table).toMatch(/^kv-exhaustion\s+predict_linear\s+1\s/m)
  })

  it('lists each run with --runs', async () => {
    const { stdout } = await run(['eval', trace, '--runs'])
    expect(stdout).toMatch(/kv\.jsonl: .*kv-exhaustion 1\/1 lead \d+ s/)
  })

  it('exits 1 naming a trace that does not exist', async () => {
    await expect(run(['eval', join(dir, 'missing.jsonl')])).rejects.toMatchObject({
      code: 1,
      stdout: '',
      stderr: expect.stringMatching(/^vllm-monitor: .*no such file.*missing\.jsonl/),
    })
  })

  it('exits 1 naming a corrupt model and its error code', async () => {
    const bad = join(dir, 'corrupt-model')
    await saveModel(bad, await loadModelArtifacts(DEFAULT_MODEL_DIR))
    const weights = readFileSync(join(bad, 'weights.bin'))
    weights[100] = weights[100]! ^ 0xff
    writeFileSync(join(bad, 'weights.bin'), weights)
    await expect(run(['eval', trace, '--model', bad])).rejects.toMatchObject({
      code: 1,
      stdout: '',
      stderr: expect.stringMatching(
        /^vllm-monitor: model .*corrupt-model: weights\.bin does not match the checksum in meta\.json .*\(VLLM_MONITOR_MODEL_LOAD\)$/m,
      ),
    })
  })
})

describe('vllm-monitor train', () => {
  it('refuses an unknown scenario, naming it, before writing anything', async () => {
    const out = join(dir, 'never-trained')
    await expect(run(['train', '--out', out, '--scenarios', 'kv-exhaustion,nope'])).rejects.toMatchObject({
      code: 1,
      stderr: expect.stringMatching(/unknown scenario "nope"; expected some of steady, kv-exhaustion/),
    })
    expect(existsSync(out)).toBe(false)
  })

  it('refuses an epoch count that is not a positive integer', async () => {
    await expect(run(['train', '--out', join(dir, 'x'), '--epochs', '0'])).rejects.toMatchObject({
      code: 1,
      stderr: expect.stringMatching(/--epochs must be a positive integer/),
    })
  })
})
