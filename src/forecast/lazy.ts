/**
 * Entry points that need TensorFlow.js, loaded on first use: importing the package (a gateway
 * embedding the monitor) must not pull tfjs into the main thread, where nothing else runs it.
 */
import type { TraceDataset } from './dataset.js'
import type { ModelMeta } from './model-io.js'
import type { Report } from './report.js'
import type { TrainOptions, TrainResult } from './train.js'

/** Trains a forecaster on the simulated scenario suite (see train.ts). */
export async function train(options: TrainOptions): Promise<TrainResult> {
  const m = await import('./train.js')
  return m.train(options)
}

/**
 * Scores the model in `modelDir` (or only the baselines, with null) on datasets built by
 * datasetFromTrace / datasetFromScenario: the table `vllm-monitor eval` prints.
 */
export async function evaluateRuns(
  datasets: readonly TraceDataset[],
  modelDir: string | null,
): Promise<Report> {
  const report = await import('./report.js')
  if (modelDir === null) return report.evaluateRuns(datasets, null, null)
  const tfm = await import('./model.js')
  const a = await tfm.loadModelArtifacts(modelDir)
  await tfm.initBackend()
  const model = await tfm.fromArtifacts(a)
  try {
    return report.evaluateRuns(datasets, model, a.meta as ModelMeta)
  } finally {
    model.dispose()
  }
}
