/**
 * One evaluation of the model and both baselines over a set of runs: the table `vllm-monitor eval`
 * prints, the model card quotes and `bench/forecast-quality` reports. Besides the baselines as
 * written, each is also tuned on the same runs to make no more false alarms than the model (its
 * limit moved per failure type; the most recall, then the most lead, at that rate), which is the
 * comparison that matters: more lead at an equal false-alarm rate.
 */
import type { TraceDataset } from './dataset.js'
import { type AlarmSource, formatScores, scoreDatasets, type TypeScore } from './evaluate.js'
import type { ModelMeta, tfl } from './model.js'
import { baselineSource, modelSource, predictDataset } from './predictors.js'
import { FAILURE_TYPES } from './spec.js'

export interface Report {
  scores: TypeScore[]
  table: string
  /** Per run: each failure's lead (or miss) and each false alarm of the model. */
  perRun: string
}

const LIMITS = [0.5, 0.6, 0.7, 0.8, 0.9, 1, 1.05, 1.1, 1.2, 1.3, 1.5, 1.75, 2, 2.5, 3, 4, 6]

/** Moves each rule's limit to the best recall (then lead) at no more false alarms per hour than `maxFaPerHour[type]`. */
export function tuneBaseline(
  datasets: readonly TraceDataset[],
  which: 'threshold' | 'predict_linear',
  maxFaPerHour: readonly number[],
): Float64Array {
  const limits = new Float64Array(FAILURE_TYPES.length).fill(1)
  const scored = LIMITS.map((l) => {
    const lim = new Float64Array(FAILURE_TYPES.length).fill(l)
    return scoreDatasets(datasets, [baselineSource(which, lim)])
  })
  for (let k = 0; k < FAILURE_TYPES.length; k++) {
    let best = -1
    let bestKey: number[] = []
    for (let i = 0; i < LIMITS.length; i++) {
      const s = scored[i]![k]!
      if (s.falseAlarmsPerHour > maxFaPerHour[k]! + 1e-9) continue
      const key = [s.recall ?? 0, s.medianLeadS ?? 0, -LIMITS[i]!]
      if (best < 0 || greater(key, bestKey)) {
        best = i
        bestKey = key
      }
    }
    // No limit gets as few false alarms: take the strictest.
    limits[k] = best < 0 ? LIMITS[LIMITS.length - 1]! : LIMITS[best]!
  }
  return limits
}

function greater(a: number[], b: number[]): boolean {
  for (let i = 0; i < a.length; i++) {
    if (a[i]! > b[i]!) return true
    if (a[i]! < b[i]!) return false
  }
  return false
}

export function evaluateRuns(
  datasets: readonly TraceDataset[],
  model: tfl.LayersModel | null,
  meta: ModelMeta | null,
): Report {
  const sources: AlarmSource[] = []
  let modelScores: TypeScore[] | null = null
  const probs = new Map<TraceDataset, Float32Array>()
  if (model !== null && meta !== null) {
    for (const ds of datasets) probs.set(ds, predictDataset(model, meta, ds))
    const src = modelSource(`${meta.name}-v${meta.version}`, meta, probs)
    sources.push(src)
    modelScores = scoreDatasets(datasets, [src])
  }
  sources.push(baselineSource('predict_linear'), baselineSource('threshold'))
  if (modelScores !== null) {
    const fa = modelScores.map((s) => s.falseAlarmsPerHour)
    sources.push(
      baselineSource('predict_linear', tuneBaseline(datasets, 'predict_linear', fa), 'predict_linear@FA'),
      baselineSource('threshold', tuneBaseline(datasets, 'threshold', fa), 'threshold@FA'),
    )
  }
  const scores = scoreDatasets(datasets, sources)
  const table = `${formatScores(scores)}\n@FA: the baseline with its limit moved (on these runs) to make no more false alarms per hour than the model.`
  return { scores, table, perRun: model !== null && meta !== null ? perRun(datasets, sources[0]!) : '' }
}

function perRun(datasets: readonly TraceDataset[], src: AlarmSource): string {
  const lines: string[] = []
  for (const ds of datasets) {
    const s = scoreDatasets([ds], [src]).filter((x) => x.failures > 0 || x.falseAlarms > 0)
    if (s.length === 0) continue
    lines.push(
      `${ds.name}: ${s
        .map(
          (x) =>
            `${x.failureType} ${x.predicted}/${x.failures}` +
            (x.leadsS.length > 0 ? ` lead ${x.leadsS.map((l) => l.toFixed(0)).join(',')} s` : '') +
            (x.falseAlarms > 0 ? ` ${x.falseAlarms} false` : ''),
        )
        .join('; ')}`,
    )
  }
  return lines.join('\n')
}
