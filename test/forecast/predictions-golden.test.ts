// Predictions (probabilities, times to failure, evidence lines) for fixed simulated runs, pinned
// bit for bit: the forecast tick's hot path (feature extraction, the pool, fromProbs and its
// evidence) is tuned for speed, and none of that tuning may change a single output. The digest is
// of JSON.stringify over every tick's predictions (JSON round-trips doubles exactly).
//
// The pool path uses the compiled worker (dist/forecast/worker.js): run `npm run build:ts` first.
// After a deliberate change of the model, the features or the evidence wording, print the new
// digests with GOLDEN_PRINT=1 and update GOLDEN below.
import { createHash } from 'node:crypto'
import { afterEach, describe, expect, it } from 'vitest'
import { PredictiveDetector } from '../../src/forecast/predictive.js'
import { MonitorCore } from '../../src/monitor/core.js'
import { runSimulation } from '../../src/sim/run.js'
import type { Checkpoint, Prediction, TelemetryRecord } from '../../src/telemetry/types.js'

/** scenario -> [ticks with predictions, sha256 of their JSON]. */
const GOLDEN: Record<string, [number, string]> = {
  'kv-exhaustion': [55, '3afa158a19e327cb94e09ecc014ab12cc22105aa2c9d8f06549ce8ef95645926'],
  'memory-leak': [55, 'df006eb23205a618afdf5df5ad27a32a8c7717288445fc6e93ea5a812304eb96'],
  'thermal-throttle': [55, '54d6402713bec564736edfe2054f04975fd7cef2c67085b25b88903727fb2609'],
}
const DURATION_MS = 120_000

const detectors: PredictiveDetector[] = []
afterEach(async () => {
  await Promise.all(detectors.splice(0).map((d) => d.close()))
})

/** Checkpoints every 100 ms of a seeded 2-replica run; every 2nd simulated second is forecast. */
function checkpoints(name: string): { core: MonitorCore; steps: Array<() => Checkpoint> } {
  const records: TelemetryRecord[] = []
  runSimulation({
    scenario: name,
    seed: 7,
    replicas: 2,
    durationMs: DURATION_MS,
    onRecord: (r) => records.push(r),
  })
  records.sort((a, b) => a.t - b.t)
  const core = new MonitorCore()
  const steps: Array<() => Checkpoint> = []
  let i = 0
  let t = 0
  // Each step pushes the records up to its tick, ticks the core to there and returns the last checkpoint.
  for (let end = 2000; end <= DURATION_MS; end += 2000) {
    const until = end
    steps.push(() => {
      let cp: Checkpoint | null = null
      for (; t <= until; t += 100) {
        while (i < records.length && records[i]!.t <= t) core.push(records[i++]!)
        cp = core.tick(t)
      }
      return cp!
    })
  }
  return { core, steps }
}

/** 'in-process': LocalForecaster; 'auto': the pool, which runs this small batch itself; 'worker': every batch in the worker. */
type Route = 'in-process' | 'auto' | 'worker'

async function run(name: string, route: Route): Promise<{ ticks: Prediction[][]; inlineTicks: number }> {
  const { core, steps } = checkpoints(name)
  const inProcess = route === 'in-process'
  const detector = new PredictiveDetector(core.store, {
    inProcess,
    taskTimeoutMs: 10_000,
    ...(route === 'worker' ? { inlineMaxMacs: 0 } : {}),
  })
  detectors.push(detector)
  await detector.ready
  const out: Prediction[][] = []
  for (const step of steps) {
    const cp = step()
    let ps = await detector.analyzeCheckpoint(cp)
    // A worker still starting answers with the baseline: ask again until the model does.
    for (let k = 0; k < 200 && !inProcess && ps.some((p) => p.model === 'threshold'); k++) {
      await new Promise((r) => setTimeout(r, 20))
      ps = await detector.analyzeCheckpoint(cp)
    }
    out.push(ps)
  }
  return { ticks: out, inlineTicks: detector.status().inlineTicks }
}

function digest(ticks: Prediction[][]): string {
  return createHash('sha256').update(JSON.stringify(ticks)).digest('hex')
}

describe('forecast predictions are pinned bit for bit', () => {
  for (const name of Object.keys(GOLDEN)) {
    it(`${name}: in-process predictions match the pinned digest`, async () => {
      const { ticks } = await run(name, 'in-process')
      const nonEmpty = ticks.filter((t) => t.length > 0).length
      if (process.env.GOLDEN_PRINT === '1') console.log(`'${name}': [${nonEmpty}, '${digest(ticks)}'],`)
      expect(ticks.flat().some((p) => p.evidence.length > 0 && p.model.startsWith('forecaster'))).toBe(true)
      expect([nonEmpty, digest(ticks)]).toEqual(GOLDEN[name])
    }, 60_000)
  }

  it('the worker pool answers exactly as the in-process model does, on either route', async () => {
    const local = (await run('kv-exhaustion', 'in-process')).ticks
    const worker = await run('kv-exhaustion', 'worker')
    const auto = await run('kv-exhaustion', 'auto')
    expect(worker.inlineTicks).toBe(0)
    // The small batch runs on the calling thread once the worker has handed its layers over.
    expect(auto.inlineTicks).toBeGreaterThan(0)
    expect(worker.ticks).toEqual(local)
    expect(digest(worker.ticks)).toBe(digest(local))
    expect(digest(auto.ticks)).toBe(digest(local))
  }, 90_000)
})
