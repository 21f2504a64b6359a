/**
 * The forecast model run on the calling thread: what the workers do (normalise, the Dense stack as
 * plain loops or tfjs predict), without the pool. For the closed-loop simulator and benchmarks,
 * which run thousands of simulated seconds per wall second: a worker answering in wall time would
 * make each run depend on thread scheduling, and its start-up would span whole simulated minutes.
 * tfjs is imported on first use only.
 */
import type { DenseForward } from './dense.js'
import { type ModelArtifacts, normalize } from './model-io.js'

interface Loaded {
  artifacts: ModelArtifacts
  predict: (features: Float32Array, rows: number) => Float32Array
  dispose: () => void
}

export class LocalForecaster {
  private artifacts: ModelArtifacts
  private loaded: Promise<Loaded> | null = null
  readonly starting = false

  constructor(artifacts: ModelArtifacts) {
    this.artifacts = artifacts
  }

  /** Predicts run so far: all of them on the calling thread (this forecaster has no workers). */
  inlinePredicts = 0

  setModel(artifacts: ModelArtifacts): void {
    this.artifacts = artifacts
  }

  async predict(features: Float32Array, rows: number): Promise<Float32Array> {
    let l = await this.load()
    if (l.artifacts !== this.artifacts) {
      l.dispose()
      this.loaded = null
      l = await this.load()
    }
    normalize(features, rows, l.artifacts.meta.normalization)
    const out = l.predict(features, rows)
    this.inlinePredicts++
    return out
  }

  async close(): Promise<void> {
    const l = await this.loaded?.catch(() => null)
    l?.dispose()
    this.loaded = null
  }

  private load(): Promise<Loaded> {
    const artifacts = this.artifacts
    this.loaded ??= (async () => {
      const m = await import('./model.js')
      await m.initBackend()
      const model = await m.fromArtifacts(artifacts)
      const fast: DenseForward | null = m.compileDense(model)?.forward ?? null
      return {
        artifacts,
        predict: fast !== null ? fast : (x, rows) => m.predictRows(model, x, rows),
        dispose: () => model.dispose(),
      }
    })()
    return this.loaded
  }
}
