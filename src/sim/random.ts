/**
 * Seeded randomness for the simulator. Every random draw in a simulation comes from an `Rng`, so a
 * run is reproducible from its seed; `fork(label)` gives each consumer (a replica, the arrivals, a
 * fault) its own stream, derived from the seed and the label path only, so that adding a replica or
 * drawing more numbers in one place never shifts another stream.
 *
 * The generator is xoshiro128** (Blackman & Vigna): 128-bit state in four uint32 words, a few ns a
 * draw in V8, and statistically sound for simulation (not for cryptography).
 */
import { InvalidArgumentError } from '../errors.js'

export type Seed = number | string

/** cyrb128: a string hash with four well-mixed 32-bit outputs, used only to derive seeds. */
function hash128(text: string): [number, number, number, number] {
  let h1 = 1779033703
  let h2 = 3144134277
  let h3 = 1013904242
  let h4 = 2773480762
  for (let i = 0; i < text.length; i++) {
    const k = text.charCodeAt(i)
    h1 = h2 ^ Math.imul(h1 ^ k, 597399067)
    h2 = h3 ^ Math.imul(h2 ^ k, 2869860233)
    h3 = h4 ^ Math.imul(h3 ^ k, 951274213)
    h4 = h1 ^ Math.imul(h4 ^ k, 2716044179)
  }
  h1 = Math.imul(h3 ^ (h1 >>> 18), 597399067)
  h2 = Math.imul(h4 ^ (h2 >>> 22), 2869860233)
  h3 = Math.imul(h1 ^ (h3 >>> 17), 951274213)
  h4 = Math.imul(h2 ^ (h4 >>> 19), 2716044179)
  h1 ^= h2 ^ h3 ^ h4
  h2 ^= h1
  h3 ^= h1
  h4 ^= h1
  return [h1 >>> 0, h2 >>> 0, h3 >>> 0, h4 >>> 0]
}

const kTwoPow32 = 4294967296
const kLog2Pi = Math.log(2 * Math.PI)
// Lanczos approximation (g = 7, n = 9), accurate to ~1e-15 for the log-gamma the Poisson sampler needs.
const kLanczos = [
  0.9999999999998099, 676.5203681218851, -1259.1392167224028, 771.3234287776531, -176.6150291621406,
  12.507343278686905, -0.13857109526572012, 9.984369578019572e-6, 1.5056327351493116e-7,
]

function logGamma(x: number): number {
  if (x < 0.5) return Math.log(Math.PI / Math.abs(Math.sin(Math.PI * x))) - logGamma(1 - x)
  const z = x - 1
  let a = kLanczos[0]!
  const t = z + 7.5
  for (let i = 1; i < 9; i++) a += kLanczos[i]! / (z + i)
  return 0.5 * kLog2Pi + (z + 0.5) * Math.log(t) - t + Math.log(a)
}

function positive(name: string, v: number): void {
  if (!(v > 0) || !Number.isFinite(v))
    throw new InvalidArgumentError(`Rng: ${name} must be a positive number, got ${v}`)
}

/** A deterministic random stream. Create with `createRng(seed)`; derive children with `fork`. */
export class Rng {
  /** The seed and fork labels this stream was derived from, e.g. `42/replica-0/arrivals`. */
  readonly path: string
  #a: number
  #b: number
  #c: number
  #d: number
  #spareNormal: number | null = null

  constructor(seed: Seed) {
    if (typeof seed === 'number' ? !Number.isFinite(seed) : typeof seed !== 'string')
      throw new InvalidArgumentError(`Rng: seed must be a finite number or a string, got ${String(seed)}`)
    this.path = String(seed)
    ;[this.#a, this.#b, this.#c, this.#d] = hash128(`vllm-monitor:${this.path}`)
    this.#init()
  }

  #init(): void {
    // An all-zero state would emit zeros forever; the hash makes it astronomically unlikely, but cheap to rule out.
    if ((this.#a | this.#b | this.#c | this.#d) === 0) this.#a = 0x9e3779b9
    // The first outputs of a freshly hashed state are fine, but a short warm-up costs nothing.
    for (let i = 0; i < 8; i++) this.nextUint32()
  }

  /** A child stream named `label`; the same seed and label path always give the same stream. */
  fork(label: string): Rng {
    if (typeof label !== 'string' || label.length === 0)
      throw new InvalidArgumentError('Rng: fork label must be a non-empty string')
    // Derived from the path, not the current state, so forks do not depend on draws made so far.
    return new Rng(`${this.path}/${label}`)
  }

  /** A uniform 32-bit unsigned integer. */
  nextUint32(): number {
    const a = this.#a
    const b = this.#b
    const c = this.#c
    const d = this.#d
    const r = Math.imul(b, 5)
    const result = Math.imul((r << 7) | (r >>> 25), 9) >>> 0
    const t = b << 9
    const c2 = c ^ a
    const d2 = d ^ b
    this.#b = b ^ c2
    this.#a = a ^ d2
    this.#c = c2 ^ t
    this.#d = (d2 << 11) | (d2 >>> 21)
    return result
  }

  /** A uniform number in [0, 1) with 32 bits of resolution. */
  next(): number {
    return this.nextUint32() / kTwoPow32
  }

  /** A uniform integer in [0, n). `n` must be a positive integer up to 2^32. */
  int(n: number): number {
    if (!Number.isInteger(n) || n < 1 || n > kTwoPow32)
      throw new InvalidArgumentError(`Rng: int(n) needs an integer n between 1 and 2^32, got ${n}`)
    // Multiply-shift; the bias is below n / 2^32, far under anything a simulation can notice.
    return Math.floor(this.next() * n)
  }

  /** Shuffles `a` in place (Fisher-Yates), uniformly over its permutations. */
  shuffle(a: Uint32Array | number[]): void {
    for (let i = a.length - 1; i > 0; i--) {
      const j = Math.floor(this.next() * (i + 1))
      const v = a[i]!
      a[i] = a[j]!
      a[j] = v
    }
  }

  /** A uniform number in [min, max). */
  uniform(min: number, max: number): number {
    if (!(max >= min) || !Number.isFinite(min) || !Number.isFinite(max))
      throw new InvalidArgumentError(`Rng: uniform(min, max) needs finite min <= max, got ${min}, ${max}`)
    return min + (max - min) * this.next()
  }

  /** True with probability `p` (clamped to [0, 1]). */
  chance(p: number): boolean {
    return this.next() < p
  }

  /** One element of `items`, uniformly. */
  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new InvalidArgumentError('Rng: pick() needs a non-empty array')
    return items[this.int(items.length)]!
  }

  /** A normal draw (Marsaglia's polar method; the second value of each pair is kept for the next call). */
  normal(mean = 0, sd = 1): number {
    if (this.#spareNormal !== null) {
      const z = this.#spareNormal
      this.#spareNormal = null
      return mean + sd * z
    }
    let u: number
    let v: number
    let s: number
    do {
      u = 2 * this.next() - 1
      v = 2 * this.next() - 1
      s = u * u + v * v
    } while (s >= 1 || s === 0)
    const f = Math.sqrt((-2 * Math.log(s)) / s)
    this.#spareNormal = v * f
    return mean + sd * u * f
  }

  /** An exponential draw with the given rate (mean 1 / rate): the gap between Poisson events. */
  exponential(rate: number): number {
    positive('exponential rate', rate)
    // 1 - next() is in (0, 1], so the log is finite.
    return -Math.log(1 - this.next()) / rate
  }

  /** A log-normal draw: exp(mu + sigma * N(0, 1)). See `lognormalParams` to fit mu, sigma. */
  lognormal(mu: number, sigma: number): number {
    if (!Number.isFinite(mu) || !(sigma >= 0) || !Number.isFinite(sigma))
      throw new InvalidArgumentError(`Rng: lognormal needs a finite mu and sigma >= 0, got ${mu}, ${sigma}`)
    return Math.exp(mu + sigma * this.normal())
  }

  /** A Poisson count with mean `lambda` (>= 0): how many events a window of a Poisson process holds. */
  poisson(lambda: number): number {
    if (!(lambda >= 0) || !Number.isFinite(lambda))
      throw new InvalidArgumentError(`Rng: poisson lambda must be a finite number >= 0, got ${lambda}`)
    if (lambda === 0) return 0
    if (lambda < 30) {
      // Knuth: multiply uniforms until below e^-lambda; O(lambda) draws, exact.
      const limit = Math.exp(-lambda)
      let k = 0
      let p = this.next()
      while (p > limit) {
        k++
        p *= this.next()
      }
      return k
    }
    // Hörmann's PTRS (transformed rejection with squeeze): O(1) draws for large lambda, exact.
    const slam = Math.sqrt(lambda)
    const logLam = Math.log(lambda)
    const b = 0.931 + 2.53 * slam
    const a = -0.059 + 0.02483 * b
    const invAlpha = 1.1239 + 1.1328 / (b - 3.4)
    const vr = 0.9277 - 3.6224 / (b - 2)
    for (;;) {
      const u = this.next() - 0.5
      const v = this.next()
      const us = 0.5 - Math.abs(u)
      const k = Math.floor(((2 * a) / us + b) * u + lambda + 0.43)
      if (us >= 0.07 && v <= vr) return k
      if (k < 0 || (us < 0.013 && v > us)) continue
      if (
        Math.log(v) + Math.log(invAlpha) - Math.log(a / (us * us) + b) <=
        -lambda + k * logLam - logGamma(k + 1)
      )
        return k
    }
  }
}

/** A stream seeded with `seed` (a number or a string; the same seed always gives the same stream). */
export function createRng(seed: Seed): Rng {
  return new Rng(seed)
}

/**
 * The log-normal parameters with the given mean and median (median = e^mu, mean = e^(mu + sigma²/2)),
 * the way published length statistics are usually given. Needs mean >= median > 0.
 */
export function lognormalParams(stats: { mean: number; median: number }): { mu: number; sigma: number } {
  const { mean, median } = stats
  if (!(median > 0) || !(mean >= median) || !Number.isFinite(mean))
    throw new InvalidArgumentError(
      `lognormalParams: needs a finite mean >= median > 0 (a log-normal's mean is never below its median), got mean ${mean}, median ${median}`,
    )
  return { mu: Math.log(median), sigma: Math.sqrt(2 * Math.log(mean / median)) }
}
