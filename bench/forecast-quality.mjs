// Forecast quality on the standard scenario suite: every scenario simulated with held-out seeds
// (not used in training or threshold choice), over the last fifth of the request trace (training
// used the first three fifths), replayed through the monitor, and scored per failure
// type for the model, predict_linear and the static thresholds, as written and tuned to the model's
// false-alarm rate. Checks the targets for OOM and KV exhaustion.
//   node bench/forecast-quality.mjs [--model DIR] [--seeds 101,102,103,104,105] [--json] [--runs]
import { DEFAULT_MODEL_DIR, evaluateRuns, SUITE, suiteDataset } from '../dist/index.js'

const args = process.argv.slice(2)
const opt = (name, fallback) => {
  const i = args.indexOf(name)
  return i >= 0 ? args[i + 1] : fallback
}
const modelDir = opt('--model', DEFAULT_MODEL_DIR)
const seeds = opt('--seeds', '101,102,103,104,105').split(',').map(Number)
const json = args.includes('--json')

const t0 = performance.now()
const sets = []
for (const seed of seeds) for (const s of SUITE) sets.push(await suiteDataset(s, seed, { split: 'test' }))
const report = await evaluateRuns(sets, modelDir)
const wallS = (performance.now() - t0) / 1000

const model = report.scores[0].predictor
const get = (type, predictor) =>
  report.scores.find((s) => s.failureType === type && s.predictor === predictor)
const targets = []
for (const type of ['kv-exhaustion', 'oom']) {
  const m = get(type, model)
  const lin = get(type, 'predict_linear@FA')
  targets.push({
    failureType: type,
    recall: m.recall,
    precision: m.precision,
    medianLeadS: m.medianLeadS,
    falseAlarmsPerHour: m.falseAlarmsPerHour,
    predictLinearAtSameFaMedianLeadS: lin.medianLeadS,
    predictLinearAtSameFaRecall: lin.recall,
    met:
      (m.recall ?? 0) >= 0.9 &&
      (m.precision ?? 0) >= 0.9 &&
      (m.medianLeadS ?? 0) >= 30 &&
      m.falseAlarmsPerHour <= 1 &&
      (m.medianLeadS ?? 0) * (m.recall ?? 0) > (lin.medianLeadS ?? 0) * (lin.recall ?? 0),
  })
}
if (json) {
  console.log(JSON.stringify({ seeds, scenarios: SUITE, wallS, scores: report.scores, targets }))
} else {
  console.log(
    `forecast quality: ${SUITE.length} scenarios x seeds ${seeds.join(',')} (${sets.length} runs, ${wallS.toFixed(1)} s)\n`,
  )
  console.log(report.table)
  if (args.includes('--runs')) console.log(`\n${report.perRun}`)
  console.log(
    '\ntargets (OOM, KV exhaustion): recall >= 0.9, precision >= 0.9, median lead >= 30 s, <= 1 false alarm/h,',
  )
  console.log('and more lead than predict_linear at an equal false-alarm rate:')
  for (const t of targets)
    console.log(
      `  ${t.failureType.padEnd(14)} recall ${t.recall?.toFixed(2)} precision ${t.precision?.toFixed(2)} lead ${t.medianLeadS?.toFixed(1)} s ` +
        `false/h ${t.falseAlarmsPerHour.toFixed(2)} | predict_linear@FA lead ${t.predictLinearAtSameFaMedianLeadS?.toFixed(1) ?? '-'} s ` +
        `recall ${t.predictLinearAtSameFaRecall?.toFixed(2) ?? '-'}  ${t.met ? 'MET' : 'NOT MET'}`,
    )
}
