import { describe, expect, it } from 'vitest'
import { FEATURE_COUNT } from '../../src/forecast/features.js'
import { buildModel, compileDense, initBackend, predictRows, tfl } from '../../src/forecast/model.js'
import { MODEL_OUTPUTS } from '../../src/forecast/spec.js'

function rows(n: number, seed: number): Float32Array {
  const x = new Float32Array(n * FEATURE_COUNT)
  let s = seed
  for (let i = 0; i < x.length; i++) {
    s = (s * 1664525 + 1013904223) >>> 0
    x[i] = (s / 4294967296) * 6 - 3
  }
  return x
}

describe('compileDense', () => {
  it('computes what tfjs computes for the forecaster MLP, row by row', async () => {
    await initBackend('cpu')
    const model = buildModel({ seed: 7 })
    const fast = compileDense(model)
    expect(fast).not.toBeNull()
    const x = rows(33, 99)
    const want = predictRows(model, x, 33)
    const got = fast!.forward(x, 33)
    expect(got.length).toBe(33 * MODEL_OUTPUTS.length)
    for (let i = 0; i < want.length; i++) expect(got[i]!).toBeCloseTo(want[i]!, 5)
    model.dispose()
  })

  it('declines a model that is not a stack of Dense layers', async () => {
    await initBackend('cpu')
    const m = tfl.sequential({
      layers: [
        tfl.layers.reshape({ inputShape: [FEATURE_COUNT], targetShape: [FEATURE_COUNT, 1] }),
        tfl.layers.conv1d({ filters: 2, kernelSize: 5 }),
        tfl.layers.flatten(),
        tfl.layers.dense({ units: MODEL_OUTPUTS.length, activation: 'sigmoid' }),
      ],
    })
    expect(compileDense(m)).toBeNull()
    m.dispose()
  })

  it('declines an activation it does not implement', async () => {
    await initBackend('cpu')
    const m = tfl.sequential({
      layers: [
        tfl.layers.dense({ inputShape: [FEATURE_COUNT], units: 8, activation: 'elu' }),
        tfl.layers.dense({ units: MODEL_OUTPUTS.length, activation: 'sigmoid' }),
      ],
    })
    expect(compileDense(m)).toBeNull()
    m.dispose()
  })
})
