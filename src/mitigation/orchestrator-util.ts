/**
 * The orchestrator's small helpers: its option checks, error text that cannot throw, what an
 * admission actuator holds for a replica, the check of what a strategy returned, and the deadline
 * every strategy call runs under.
 */
import { InvalidOptionError } from '../errors.js'
import { FAILURE_TYPES } from '../forecast/spec.js'
import type { OrchestratorOptions } from './orchestrator.js'
import type { MitigationOutcome, MitigationResult } from './types.js'

export function noop(): void {}

/** The options a caller can get wrong, checked once: a NaN deadline would fail every action at once. */
export function validateOptions(o: OrchestratorOptions): void {
  const fail = (m: string): never => {
    throw new InvalidOptionError(`MitigationOrchestrator: ${m}`)
  }
  if (o === null || typeof o !== 'object') fail('options must be an object')
  for (const k of ['now', 'emit', 'reportError'] as const)
    if (typeof o[k] !== 'function') fail(`option "${k}" must be a function`)
  const inUnit = (k: 'threshold' | 'holdout', v: unknown) => {
    if (v !== undefined && !(typeof v === 'number' && v >= 0 && v <= 1))
      fail(`option "${k}" must be a number in [0, 1], got ${String(v)}`)
  }
  inUnit('threshold', o.threshold)
  inUnit('holdout', o.holdout)
  const positive = (k: string, v: unknown, zero = false) => {
    if (v !== undefined && !(typeof v === 'number' && Number.isFinite(v) && (zero ? v >= 0 : v > 0)))
      fail(`option "${k}" must be a ${zero ? 'number >= 0' : 'positive number'} of ms, got ${String(v)}`)
  }
  positive('actionTimeoutMs', o.actionTimeoutMs)
  positive('rollbackQuietMs', o.rollbackQuietMs, true)
  for (const [k, v] of Object.entries(o.judgeWindowMs ?? {})) {
    if (!(FAILURE_TYPES as readonly string[]).includes(k))
      fail(`option "judgeWindowMs" has an unknown failure type "${k}"`)
    positive(`judgeWindowMs["${k}"]`, v)
  }
  const f = o.nativeCapFraction
  if (f !== undefined && !(typeof f === 'number' && f > 0 && f <= 1))
    fail(`option "nativeCapFraction" must be a number in (0, 1], got ${String(f)}`)
}

/** What went wrong, whatever was thrown (`throw undefined` included: reporting must not throw). */
export function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

/** The cap the admission actuator holds on the replica now (null: none, or it cannot tell). */
export function capOf(admission: unknown, replica: string): number | null {
  const a = admission as { state?: (r: string) => { cap?: number | null } } | null
  return typeof a?.state === 'function' ? (a.state(replica).cap ?? null) : null
}

/** Requests the gateway holds back for the replica now (0 when the actuator cannot tell). */
export function queuedFor(admission: unknown, replica: string): number {
  const a = admission as { queued?: (r: string) => number; state?: (r: string) => { queued?: number } } | null
  try {
    if (typeof a?.queued === 'function') return a.queued(replica)
    if (typeof a?.state === 'function') return a.state(replica).queued ?? 0
  } catch {
    // An unknown replica, a closed gateway: nothing is held back that we can see.
  }
  return 0
}

export function sanitize(name: string, r: unknown): MitigationResult {
  const x = r as Partial<MitigationResult> | null
  const outcomes: readonly string[] = ['SUCCESS', 'PARTIAL', 'FAILURE', 'SKIPPED']
  if (x === null || typeof x !== 'object' || !outcomes.includes(String(x.outcome))) {
    return { outcome: 'FAILURE', detail: `${name} returned no valid outcome`, actions: [] }
  }
  return {
    outcome: x.outcome as MitigationOutcome,
    detail: typeof x.detail === 'string' ? x.detail : '',
    actions: Array.isArray(x.actions) ? x.actions.map(String) : [],
  }
}

/**
 * Runs `work` with a signal that aborts when `closing` does (close()) or past `timeoutMs`; past it,
 * resolves null without waiting for `work` any longer (a strategy that ignores its signal must not
 * hold a key, a safety slot or close() forever).
 */
export async function bounded<T>(
  closing: AbortSignal,
  timeoutMs: number,
  work: (signal: AbortSignal) => Promise<T>,
): Promise<{ value: T } | null> {
  const ac = new AbortController()
  const onClose = () => ac.abort(closing.reason)
  // Started after close() (a native alert's queued response): the abort event has already fired.
  if (closing.aborted) onClose()
  else closing.addEventListener('abort', onClose, { once: true })
  let timer: ReturnType<typeof setTimeout> | null = null
  const deadline = new Promise<null>((resolve) => {
    timer = setTimeout(() => {
      ac.abort(new Error(`deadline of ${timeoutMs} ms passed`))
      resolve(null)
    }, timeoutMs)
    timer.unref?.()
  })
  try {
    return await Promise.race([work(ac.signal).then((value) => ({ value })), deadline])
  } finally {
    if (timer !== null) clearTimeout(timer)
    closing.removeEventListener('abort', onClose)
  }
}
