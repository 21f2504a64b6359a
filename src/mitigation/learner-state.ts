/**
 * The learner's state on disk: its versioned JSON shape, the checks a restored file must pass, and
 * the atomic write. A file that fails them is set aside, never half applied.
 */
import { mkdir, readFile, rename } from 'node:fs/promises'
import { basename, dirname } from 'node:path'
import { LearnerStateError } from '../errors.js'
import { writeAtomic } from '../forecast/model-io.js'
import { FAILURE_TYPES } from '../forecast/spec.js'
import type { FailureType } from '../telemetry/types.js'

export interface LearnerArmState {
  failureType: FailureType
  context: string
  strategy: string
  trials: number
  successes: number
  rewardSum: number
}

/**
 * The ledger of one failure type: every judged decision, whatever its basis. It says what the
 * learner collected; the budget check itself bounds each arm from the arms' own counts, which
 * this ledger must agree with.
 */
export interface LearnerBudgetState {
  trials: number
  rewardSum: number
  explorations: number
}

export interface LearnerState {
  version: 1
  /** Decisions made so far: keys each decision's random stream, so restarts replay the same draws. */
  decisions: number
  arms: LearnerArmState[]
  budget: Partial<Record<FailureType, LearnerBudgetState>>
  /** Clock (ms) of the last update, null before any. */
  updatedAt: number | null
}

export function isFailureType(x: unknown): x is FailureType {
  return typeof x === 'string' && (FAILURE_TYPES as readonly string[]).includes(x)
}

/** What is wrong with `data` as a learner state, null when nothing is. */
export function stateProblem(data: unknown): string | null {
  if (data === null || typeof data !== 'object' || Array.isArray(data)) return 'not a learner state object'
  const s = data as Record<string, unknown>
  if (s.version !== 1) return `version ${JSON.stringify(s.version)} is not the supported version 1`
  if (!(Number.isInteger(s.decisions) && (s.decisions as number) >= 0)) return 'decisions is not a count'
  if (!Array.isArray(s.arms)) return 'arms is not an array'
  if (s.updatedAt !== null && typeof s.updatedAt !== 'number') return 'updatedAt is not a number or null'
  if (s.budget === null || typeof s.budget !== 'object' || Array.isArray(s.budget))
    return 'budget is not an object'
  for (const [i, arm] of (s.arms as unknown[]).entries()) {
    const problem = armProblem(arm)
    if (problem !== null) return `arms[${i}] ${problem}`
  }
  for (const [k, v] of Object.entries(s.budget)) {
    if (!isFailureType(k)) return `budget has an unknown failure type "${k}"`
    const l = v as Record<string, unknown> | null
    if (
      l === null ||
      typeof l !== 'object' ||
      !isCount(l.trials) ||
      !isCount(l.explorations) ||
      !(typeof l.rewardSum === 'number' && l.rewardSum >= 0 && l.rewardSum <= (l.trials as number))
    )
      return `budget["${k}"] is not a ledger of trials, rewardSum and explorations`
  }
  return null
}

function isCount(x: unknown): boolean {
  return Number.isInteger(x) && (x as number) >= 0
}

function armProblem(x: unknown): string | null {
  if (x === null || typeof x !== 'object') return 'is not an object'
  const a = x as Record<string, unknown>
  if (!isFailureType(a.failureType)) return `has an unknown failure type ${JSON.stringify(a.failureType)}`
  if (
    typeof a.context !== 'string' ||
    !(a.context === a.failureType || a.context.startsWith(`${a.failureType}|`))
  )
    return 'has a context that is not of its failure type'
  if (typeof a.strategy !== 'string' || a.strategy.length === 0) return 'has no strategy name'
  if (!isCount(a.trials) || !isCount(a.successes) || (a.successes as number) > (a.trials as number))
    return 'has trials and successes that are not counts (successes <= trials)'
  if (!(typeof a.rewardSum === 'number' && a.rewardSum >= 0 && a.rewardSum <= (a.trials as number)))
    return 'has a rewardSum outside [0, trials]'
  return null
}

/** What `readLearnerState` found at the path. */
export type LearnerStateRead =
  | { kind: 'missing' }
  /** There, but not readable: left where it is. */
  | { kind: 'unreadable'; error: LearnerStateError }
  /** Not a valid state: moved aside to `<path>.corrupt-<ms>` (where possible). */
  | { kind: 'corrupt'; error: LearnerStateError }
  | { kind: 'ok'; state: LearnerState }

/** Reads and checks the state at `path`; never rejects. `now` names a corrupt file set aside. */
export async function readLearnerState(path: string, now: () => number): Promise<LearnerStateRead> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { kind: 'missing' }
    return {
      kind: 'unreadable',
      error: new LearnerStateError(
        `learner state ${path}: cannot read it (${(err as Error).message}); learning starts fresh`,
        { cause: err },
      ),
    }
  }
  let data: unknown
  let problem: string | null
  let cause: unknown
  try {
    data = JSON.parse(text)
    problem = stateProblem(data)
  } catch (err) {
    problem = `not valid JSON (${(err as Error).message})`
    cause = err
  }
  if (problem === null) return { kind: 'ok', state: data as LearnerState }
  const aside = `${path}.corrupt-${now()}`
  let moved = `moved aside to ${basename(aside)}`
  try {
    await rename(path, aside)
  } catch (err) {
    moved = `could not be moved aside (${(err as Error).message})`
  }
  return {
    kind: 'corrupt',
    error: new LearnerStateError(
      `learner state ${path}: ${problem}; ${moved}, learning starts fresh`,
      cause === undefined ? undefined : { cause },
    ),
  }
}

/** Writes `state` atomically (a reader sees the old file or the new one), creating the directory. */
export async function writeLearnerState(path: string, state: LearnerState): Promise<void> {
  try {
    await mkdir(dirname(path), { recursive: true })
    await writeAtomic(path, `${JSON.stringify(state)}\n`)
  } catch (err) {
    throw new LearnerStateError(`learner state ${path}: cannot write it (${(err as Error).message})`, {
      cause: err,
    })
  }
}
