/**
 * A stack of Dense layers as plain loops, with no tfjs: what the forecast workers run once a model
 * compiled (model.ts's compileDense, checked against tfjs there), and what the pool runs on the
 * calling thread for batches cheaper than a trip to a worker (pool.ts, `inlineMaxMacs`).
 */

export type DenseActivation = 'relu' | 'sigmoid' | 'linear' | 'tanh'

export const DENSE_ACTIVATIONS: readonly DenseActivation[] = ['relu', 'sigmoid', 'linear', 'tanh']

/** One Dense layer: `w` is inDim × outDim row-major (tfjs's kernel layout), `b` outDim long. */
export interface DenseLayer {
  w: Float32Array
  b: Float32Array
  inDim: number
  outDim: number
  act: DenseActivation
}

/** A model's forward pass in plain JavaScript: rows × inputs in, rows × outputs out. */
export type DenseForward = (x: Float32Array, rows: number) => Float32Array

/** Multiply-adds one row costs: the measure of a batch's cost that `inlineMaxMacs` bounds. */
export function denseMacsPerRow(layers: readonly DenseLayer[]): number {
  let n = 0
  for (const l of layers) n += l.inDim * l.outDim
  return n
}

/**
 * Why `layers` (sent by a worker, so checked rather than trusted) is not a usable stack from
 * `inputs` features to `outputs` probabilities, or null.
 */
export function checkDenseLayers(layers: unknown, inputs: number, outputs: number): string | null {
  if (!Array.isArray(layers) || layers.length === 0) return 'no layers'
  let width = inputs
  for (let k = 0; k < layers.length; k++) {
    const l = layers[k] as Partial<DenseLayer> | null
    if (typeof l !== 'object' || l === null) return `layer ${k} is not an object`
    if (l.inDim !== width) return `layer ${k} takes ${l.inDim} inputs where ${width} arrive`
    if (!Number.isSafeInteger(l.outDim) || l.outDim! < 1) return `layer ${k} has no output width`
    if (!(l.w instanceof Float32Array) || l.w.length !== width * l.outDim!)
      return `layer ${k}'s kernel is not ${width} × ${l.outDim} float32`
    if (!(l.b instanceof Float32Array) || l.b.length !== l.outDim)
      return `layer ${k}'s bias is not ${l.outDim} float32`
    if (!DENSE_ACTIVATIONS.includes(l.act as DenseActivation))
      return `layer ${k}'s activation ${String(l.act)}`
    if (!allFinite(l.w) || !allFinite(l.b)) return `layer ${k} holds a weight that is not finite`
    width = l.outDim!
  }
  return width === outputs ? null : `the last layer gives ${width} outputs, the model lists ${outputs}`
}

/**
 * The forward pass over `layers`. It allocates only its result: the activations live in two
 * buffers sized once for the widest layer, and rows are computed one at a time (float64 sums, as
 * close to tfjs's float32 as 1e-5 on the forecaster).
 */
export function denseForward(layers: readonly DenseLayer[]): DenseForward {
  const widest = Math.max(...layers.map((l) => l.outDim))
  const bufA = new Float64Array(widest)
  const bufB = new Float64Array(widest)
  const inDim0 = layers[0]!.inDim
  const outDim = layers[layers.length - 1]!.outDim
  return (x, rows) => {
    const out = new Float32Array(rows * outDim)
    for (let r = 0; r < rows; r++) {
      let src: Float64Array | Float32Array = x
      let srcOff = r * inDim0
      let dst = bufA
      for (let li = 0; li < layers.length; li++) {
        const { w, b, inDim, outDim: od, act } = layers[li]!
        for (let j = 0; j < od; j++) dst[j] = b[j]!
        for (let i = 0; i < inDim; i++) {
          const v = src[srcOff + i]!
          if (v === 0) continue
          const row = i * od
          for (let j = 0; j < od; j++) dst[j]! += v * w[row + j]!
        }
        for (let j = 0; j < od; j++) {
          const z = dst[j]!
          dst[j] =
            act === 'relu'
              ? Math.max(z, 0)
              : act === 'sigmoid'
                ? 1 / (1 + Math.exp(-z))
                : act === 'tanh'
                  ? Math.tanh(z)
                  : z
        }
        src = dst
        srcOff = 0
        dst = dst === bufA ? bufB : bufA
      }
      for (let j = 0; j < outDim; j++) out[r * outDim + j] = src[j]!
    }
    return out
  }
}

function allFinite(v: Float32Array): boolean {
  for (let i = 0; i < v.length; i++) if (!Number.isFinite(v[i]!)) return false
  return true
}
