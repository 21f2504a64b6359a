import { execFile } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, describe, expect, it } from 'vitest'

const cli = join(import.meta.dirname, '../../dist/cli/index.js')
const exec = promisify(execFile)
const run = (args: string[], timeout = 60_000) =>
  exec(process.execPath, [cli, ...args], { timeout, env: { ...process.env, NO_COLOR: '1' } })
const dir = mkdtempSync(join(tmpdir(), 'vllm-monitor-cli-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

describe('vllm-monitor demo', () => {
  it('watches the scripted incident and reports it against the ground truth (--json --no-mitigate)', async () => {
    const { stdout } = await run([
      'demo',
      '--duration',
      '7',
      '--speed',
      '40',
      '--json',
      '--no-real-gpu',
      '--no-mitigate',
    ])
    const lines = stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l))
    const statuses = lines.filter((l) => l.status !== undefined)
    expect(statuses.length).toBeGreaterThanOrEqual(5)
    expect(statuses.at(-1).status.replicas).toHaveLength(2)
    const summary = lines.at(-1).summary
    const failures = summary.labels
      .filter((l: { phase: string }) => l.phase === 'failure')
      .map((l: { fault: string }) => l.fault)
    expect(failures).toEqual(['kv-exhaustion', 'gpu-oom-cotenant'])
    const seen = summary.transitions.map((t: { replica: string; to: string }) => `${t.replica}:${t.to}`)
    expect(seen).toContain('r0:DEGRADED')
    expect(seen).toContain('r1:ERROR')
    // Watching only: nothing done, and the learner still says what it would do.
    expect(summary.mitigation.enabled).toBe(false)
    expect(summary.mitigation.actions).toEqual([])
    expect(summary.mitigation.recommendations.length).toBeGreaterThan(0)
  }, 60_000)

  it('prints transitions as lines with --plain', async () => {
    const { stdout } = await run([
      'demo',
      '--duration',
      '3',
      '--speed',
      '40',
      '--plain',
      '--no-real-gpu',
      '--no-mitigate',
    ])
    expect(stdout).toMatch(/r0: READY -> SERVING/)
    expect(stdout).toMatch(/r0: SERVING -> DEGRADED {2}\(KV cache exhausted/)
    expect(stdout).toMatch(/Ground truth vs what the monitor saw/)
  }, 60_000)
})

describe('npm start (the demo with the shipped model)', () => {
  // The suite runs monitors on the baselines (vitest.config.ts); the demo as users run it does not.
  const shipped = (args: string[]) => {
    const env: NodeJS.ProcessEnv = { ...process.env, NO_COLOR: '1' }
    delete env.VLLM_MONITOR_MODEL
    return exec(process.execPath, [cli, 'demo', '--speed', '40', '--plain', '--no-real-gpu', ...args], {
      timeout: 60_000,
      env,
    })
  }

  it('predicts the incident, mitigates it, judges what it did, and says what the learner recommends', async () => {
    const { stdout } = await shipped(['--duration', '7'])
    // As they happen: the action, then its judgement once the window ended.
    expect(stdout).toMatch(/r0 {4}MITIGATION {6}ReduceBatchSize for kv-exhaustion on r0: SUCCESS \(/)
    expect(stdout).toMatch(
      /r1 {4}MITIGATION {6}EmergencyGPUMemoryCleanup for oom on r1: SUCCESS \(.*co-tenant/,
    )
    expect(stdout).toMatch(/r0 {4}JUDGEMENT {7}kv-exhaustion on r0 avoided after ReduceBatchSize/)
    const incident = stdout.slice(stdout.indexOf('Incident: predicted -> mitigated -> judged'))
    // The r0 block: its header and its indented lines.
    const r0 = incident.slice(incident.indexOf('  r0 kv-exhaustion')).split(/\n(?! {4})/)[0] as string
    expect(r0).toMatch(
      /^ {4}predicted +\d+\.\ds {2}p 0\.\d\d within 120 s, failure in ~\d+ s \(forecaster-v\d+\)$/m,
    )
    expect(r0).toMatch(/^ {4}mitigated +\d+\.\ds {2}ReduceBatchSize \(runbook\): SUCCESS/m)
    expect(r0).toMatch(
      /^ {4}judged +\d+\.\ds {2}kv-exhaustion on r0 avoided after ReduceBatchSize; SLO (met|violated) at the end of the window \(reward \d\.\d\d\)$/m,
    )
    expect(r0).toMatch(/^ {4}truth +- {2}kv-exhaustion injected at 60\.0s; .*no failure/m)
    expect(r0).toMatch(
      /^ {4}learner: for kv-exhaustion on r0 \(kv_cache_usage [^)]+\) recommend ReduceBatchSize \(runbook, confidence 1\.00, 1 judged\)/m,
    )
    expect(incident).toMatch(
      /^ {4}learner: for oom on r1 \(.+\) recommend EmergencyGPUMemoryCleanup \(runbook/m,
    )
    expect(incident).toMatch(/^mitigations: .*ReduceBatchSize SUCCESS 1/m)
    expect(incident).toMatch(/^mitigations: .*EmergencyGPUMemoryCleanup SUCCESS 1/m)
    // Avoided: neither failure happened.
    expect(stdout).not.toMatch(/kv-exhaustion failure|gpu-oom-cotenant failure/)
  }, 60_000)

  it('forecasts the KV exhaustion and the OOM with a probability and a time to failure before they happen (--no-mitigate)', async () => {
    const { stdout } = await shipped(['--duration', '6', '--no-mitigate'])
    const summary = stdout.slice(stdout.indexOf('Ground truth vs what the monitor saw'))
    const at = (re: RegExp) => {
      const m = summary.match(re)
      expect(m, `${re} in\n${summary}`).not.toBeNull()
      return Number(m![1])
    }
    const kvFailure = at(/(\d+\.\d)s {2}r0 {2}kv-exhaustion failure/)
    const oomFailure = at(/(\d+\.\d)s {2}r1 {2}gpu-oom-cotenant failure/)
    const kvForecast = at(
      /(\d+\.\d)s {2}r0 {2}monitor: kv-exhaustion predicted within 120 s \(p 0\.\d\d, failure in ~\d+ s; forecaster-v\d+\): KV cache/,
    )
    const oomForecast = at(
      /(\d+\.\d)s {2}r1 {2}monitor: oom predicted within 120 s \(p [01]\.\d\d.*forecaster-v\d+\)/,
    )
    expect(kvFailure - kvForecast).toBeGreaterThanOrEqual(5)
    expect(oomFailure - oomForecast).toBeGreaterThanOrEqual(5)
  }, 60_000)
})

describe('vllm-monitor demo --model', () => {
  it('forecasts with the baselines only under --model none, and says so in its status', async () => {
    // Without the suite's VLLM_MONITOR_MODEL=none: the flag alone must turn the model off.
    const env: NodeJS.ProcessEnv = { ...process.env, NO_COLOR: '1' }
    delete env.VLLM_MONITOR_MODEL
    const { stdout } = await exec(
      process.execPath,
      [cli, 'demo', '--duration', '4', '--speed', '40', '--json', '--no-real-gpu', '--model', 'none'],
      { timeout: 60_000, env },
    )
    const statuses = stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l))
      .filter((l) => l.status !== undefined)
    const models = new Set(
      statuses.flatMap((l) => l.status.predictions.map((p: { model: string }) => p.model)),
    )
    expect(models.size).toBeGreaterThan(0)
    for (const m of models) expect(['detector', 'threshold']).toContain(m)
  }, 60_000)
})

describe('vllm-monitor sim --fast and replay', () => {
  it('writes a simulator trace and replays it to the failure', async () => {
    const trace = join(dir, 'xid79.jsonl.gz')
    const sim = await run(['sim', '--fast', '--trace', trace, '--scenario', 'xid-79', '--duration', '70'])
    expect(sim.stdout).toMatch(/wrote .*xid79\.jsonl\.gz: scenario xid-79, 70 s simulated/)
    const replay = await run(['replay', trace])
    expect(replay.stdout).toMatch(/xid\s+Xid 79 on GPU 0/)
    expect(replay.stderr).toMatch(/final: r0 ERROR/)
  }, 60_000)

  it('names the line of a malformed trace and exits 1', async () => {
    const bad = join(dir, 'bad.jsonl')
    writeFileSync(
      bad,
      `${JSON.stringify({ format: 'vllm-monitor-trace', version: 1, createdAt: new Date().toISOString(), source: 'test', replicas: [] })}\n{"t":1,"kind":"gpu"}\n`,
    )
    await expect(run(['replay', bad])).rejects.toMatchObject({
      code: 1,
      stderr: expect.stringMatching(/trace line 2: gpu record/),
    })
  })

  it('takes the load from a CSV in the Azure trace format, naming the line of a bad row', async () => {
    const csv = join(dir, 'arrivals.csv')
    writeFileSync(
      csv,
      'TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,4808,10\nbad,row\n',
    )
    await expect(
      run(['sim', '--fast', '--trace', join(dir, 'x.jsonl'), '--trace-csv', csv]),
    ).rejects.toMatchObject({
      code: 1,
      stderr: expect.stringMatching(/arrivals\.csv line 3: expected 3 columns/),
    })
    const trace = join(dir, 'poisson.jsonl')
    const ok = await run([
      'sim',
      '--fast',
      '--trace',
      trace,
      '--load',
      'poisson',
      '--rate',
      '20',
      '--duration',
      '60',
    ])
    expect(ok.stdout).toMatch(/scenario steady, 60 s simulated/)
  })

  it('refuses an unknown scenario and lists the known ones', async () => {
    await expect(run(['sim', '--scenario', 'nope'])).rejects.toMatchObject({
      stderr: expect.stringMatching(/Allowed choices are steady, kv-exhaustion/),
    })
  })
})
