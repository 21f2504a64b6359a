/**
 * The learner's arithmetic: Beta draws for Thompson sampling, and the one-sided bounds of an arm's
 * mean reward that the conservative budget is checked with.
 */
import type { Rng } from '../sim/random.js'

/** One arm's judged trials: how many, how many with reward >= 0.5, and the rewards' sum. */
export interface ArmStats {
  trials: number
  successes: number
  rewardSum: number
}

export const kEmptyArm: ArmStats = Object.freeze({ trials: 0, successes: 0, rewardSum: 0 })

// One-sided 95 % normal quantile: the pessimistic and optimistic bounds of the budget check.
const kZ = 1.645

// Thompson sampling from Beta posteriors needs Gamma draws; Marsaglia & Tsang, "A simple method for
// generating gamma variables" (ACM TOMS 2000), with their boost U^(1/a) for shapes below 1.
function sampleGamma(rng: Rng, shape: number): number {
  if (shape < 1) return sampleGamma(rng, shape + 1) * (1 - rng.next()) ** (1 / shape)
  const d = shape - 1 / 3
  const c = 1 / Math.sqrt(9 * d)
  for (;;) {
    let x: number
    let v: number
    do {
      x = rng.normal()
      v = 1 + c * x
    } while (v <= 0)
    v = v * v * v
    const u = rng.next()
    if (u < 1 - 0.0331 * x * x * x * x) return d * v
    if (Math.log(u) < 0.5 * x * x + d * (1 - v + Math.log(v))) return d * v
  }
}

/** A Beta(a, b) draw (both > 0). */
export function sampleBeta(rng: Rng, a: number, b: number): number {
  const x = sampleGamma(rng, a)
  const y = sampleGamma(rng, b)
  const s = x + y
  // Both underflow only for shapes near 0; the mean is then the honest answer.
  return s > 0 ? x / s : a / (a + b)
}

function betaMeanSd(a: number, b: number): [number, number] {
  const n = a + b
  return [a / n, Math.sqrt((a * b) / (n * n * (n + 1)))]
}

/** One-sided 95 % bounds of an arm's mean from its own trials (uniform prior, normal approximation). */
export function lowerBound(arm: ArmStats): number {
  const [mean, sd] = betaMeanSd(1 + arm.rewardSum, 1 + arm.trials - arm.rewardSum)
  return Math.max(0, mean - kZ * sd)
}

export function upperBound(arm: ArmStats): number {
  const [mean, sd] = betaMeanSd(1 + arm.rewardSum, 1 + arm.trials - arm.rewardSum)
  return Math.min(1, mean + kZ * sd)
}
