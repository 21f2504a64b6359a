import { describe, expect, it } from 'vitest'
import { checkDenseLayers, type DenseLayer, denseForward, denseMacsPerRow } from '../../src/forecast/dense.js'

function layer(inDim: number, outDim: number, act: DenseLayer['act'] = 'relu', fill = 0.1): DenseLayer {
  return { w: new Float32Array(inDim * outDim).fill(fill), b: new Float32Array(outDim), inDim, outDim, act }
}

describe('checkDenseLayers', () => {
  it('accepts a stack that takes the inputs to the outputs', () => {
    expect(checkDenseLayers([layer(4, 3), layer(3, 2, 'sigmoid')], 4, 2)).toBeNull()
  })

  it('names what does not fit: widths, kernels, biases, activations, weights and the output count', () => {
    expect(checkDenseLayers([], 4, 2)).toBe('no layers')
    expect(checkDenseLayers('layers', 4, 2)).toBe('no layers')
    expect(checkDenseLayers([null], 4, 2)).toBe('layer 0 is not an object')
    expect(checkDenseLayers([layer(5, 2)], 4, 2)).toBe('layer 0 takes 5 inputs where 4 arrive')
    expect(checkDenseLayers([{ ...layer(4, 2), w: new Float32Array(7) }], 4, 2)).toBe(
      "layer 0's kernel is not 4 × 2 float32",
    )
    expect(checkDenseLayers([{ ...layer(4, 2), w: new Float64Array(8) }], 4, 2)).toBe(
      "layer 0's kernel is not 4 × 2 float32",
    )
    expect(checkDenseLayers([{ ...layer(4, 2), b: new Float32Array(3) }], 4, 2)).toBe(
      "layer 0's bias is not 2 float32",
    )
    expect(checkDenseLayers([layer(4, 2, 'softmax' as DenseLayer['act'])], 4, 2)).toBe(
      "layer 0's activation softmax",
    )
    expect(checkDenseLayers([layer(4, 2, 'relu', Number.NaN)], 4, 2)).toBe(
      'layer 0 holds a weight that is not finite',
    )
    expect(checkDenseLayers([layer(4, 3)], 4, 2)).toBe('the last layer gives 3 outputs, the model lists 2')
  })
})

describe('denseForward', () => {
  it('computes each activation, row by row, and counts its multiply-adds', () => {
    const stack = [
      {
        w: Float32Array.of(1, -1, 2, 0),
        b: Float32Array.of(0.5, 0),
        inDim: 2,
        outDim: 2,
        act: 'relu' as const,
      },
      { w: Float32Array.of(1, 1), b: Float32Array.of(0), inDim: 2, outDim: 1, act: 'sigmoid' as const },
    ]
    const f = denseForward(stack)
    // Row [1, 2]: hidden = relu([1 + 4 + 0.5, -1 + 0]) = [5.5, 0]; out = sigmoid(5.5).
    // Row [0, 0]: hidden = relu([0.5, 0]); out = sigmoid(0.5).
    const out = f(Float32Array.of(1, 2, 0, 0), 2)
    expect(out[0]).toBeCloseTo(1 / (1 + Math.exp(-5.5)), 6)
    expect(out[1]).toBeCloseTo(1 / (1 + Math.exp(-0.5)), 6)
    expect(denseMacsPerRow(stack)).toBe(2 * 2 + 2 * 1)
    const tanh = denseForward([{ ...layer(1, 1, 'tanh', 2) }])
    const linear = denseForward([{ ...layer(1, 1, 'linear', 2) }])
    expect(tanh(Float32Array.of(0.25), 1)[0]).toBeCloseTo(Math.tanh(0.5), 6)
    expect(linear(Float32Array.of(-3), 1)[0]).toBe(-6)
  })
})
