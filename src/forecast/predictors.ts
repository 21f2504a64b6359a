/**
 * The predictors as the evaluation sees them (evaluate.ts AlarmSource): the model (its heads at
 * each type's scoring horizon against the thresholds chosen in training, plus the calibrated
 * detectors for hardware and network failures), and the two baselines.
 */
import type { TraceDataset } from './dataset.js'
import { logistic } from './detectors.js'
import type { AlarmSource } from './evaluate.js'
import { type ModelMeta, normalize, predictRows, type tfl } from './model.js'
import { ALARM_RELEASE, FAILURE_TYPES, type FailureType, MODEL_OUTPUTS, SCORING } from './spec.js'

const NT = FAILURE_TYPES.length
const NO = MODEL_OUTPUTS.length

/**
 * A baseline as an alarm source. `limits` moves a rule's limit per failure type (1 = the rule as
 * written; 1.2 = fires 20 % later): the evaluation uses it to match the model's false-alarm rate.
 */
export function baselineSource(
  which: 'threshold' | 'predict_linear',
  limits?: ArrayLike<number>,
  name?: string,
): AlarmSource {
  return {
    name: name ?? which,
    alarm: (ds, r, k) =>
      (which === 'threshold' ? ds.threshold : ds.linear)[r * NT + k]! >= (limits?.[k] ?? 1),
  }
}

export const thresholdSource: AlarmSource = baselineSource('threshold')
export const predictLinearSource: AlarmSource = baselineSource('predict_linear')

/** The head that raises each type's alarm: the one whose horizon is the type's scoring horizon. */
export function alarmHead(type: FailureType): number {
  return MODEL_OUTPUTS.findIndex((o) => o.failureType === type && o.horizonS === SCORING[type].horizonS)
}

/** Runs the model over every row of a dataset (in this thread): rows x outputs. */
export function predictDataset(model: tfl.LayersModel, meta: ModelMeta, ds: TraceDataset): Float32Array {
  if (ds.rows === 0) return new Float32Array(0)
  const x = ds.features.slice()
  normalize(x, ds.rows, meta.normalization)
  return predictRows(model, x, ds.rows)
}

export const DEFAULT_THRESHOLD = 0.5

/**
 * The model as an alarm source, over precomputed probabilities (one array per dataset, keyed by
 * the dataset object). Hardware and network alarms come from the detectors at 0.5.
 */
export function modelSource(
  name: string,
  meta: Pick<ModelMeta, 'thresholds' | 'detectors'>,
  probs: Map<TraceDataset, Float32Array>,
  only?: { type: FailureType; threshold: number },
): AlarmSource {
  const heads = FAILURE_TYPES.map(alarmHead)
  const thr = FAILURE_TYPES.map((t) =>
    only !== undefined && only.type === t ? only.threshold : (meta.thresholds[t] ?? DEFAULT_THRESHOLD),
  )
  const hwK = FAILURE_TYPES.indexOf('hardware-failure')
  const netK = FAILURE_TYPES.indexOf('network-failure')
  // The model's alarms with hysteresis, per dataset, computed once in row (time) order.
  const flags = new Map<TraceDataset, Uint8Array>()
  const alarmsOf = (ds: TraceDataset): Uint8Array => {
    let f = flags.get(ds)
    if (f !== undefined) return f
    f = new Uint8Array(ds.rows * NT)
    const p = probs.get(ds)
    const on = new Uint8Array(ds.replicas.length * NT)
    for (let r = 0; r < ds.rows; r++) {
      for (let k = 0; k < NT; k++) {
        const h = heads[k]!
        if (h < 0 || p === undefined || p.length === 0) continue
        const v = p[r * NO + h]!
        const s = ds.replica[r]! * NT + k
        on[s] = v >= thr[k]! || (on[s] === 1 && v >= thr[k]! * ALARM_RELEASE) ? 1 : 0
        f[r * NT + k] = on[s]!
      }
    }
    flags.set(ds, f)
    return f
  }
  return {
    name,
    alarm(ds, r, k) {
      if (k === hwK)
        return (
          logistic(meta.detectors.hardware, ds.hardware, r * meta.detectors.hardware.weights.length) >=
          thr[k]!
        )
      if (k === netK)
        return (
          logistic(meta.detectors.network, ds.network, r * meta.detectors.network.weights.length) >= thr[k]!
        )
      return alarmsOf(ds)[r * NT + k] === 1
    },
  }
}
