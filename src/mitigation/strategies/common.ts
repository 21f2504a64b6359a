/**
 * What the built-in strategies share: reading the replica out of the checkpoint, building results,
 * waiting on an actuator without outliving `ctx.signal`, and option validation with exact messages.
 */
import { InvalidOptionError } from '../../errors.js'
import { FAILURE_TYPES } from '../../forecast/spec.js'
import type { Checkpoint, EngineReading, FailureType } from '../../telemetry/types.js'
import type { MitigationContext, MitigationOutcome, MitigationResult } from '../types.js'

export function result(outcome: MitigationOutcome, detail: string, actions: string[]): MitigationResult {
  return { outcome, detail, actions }
}

/** An error (or a rejection value) in words, for a result's detail. */
export function errorText(err: unknown): string {
  if (err instanceof Error) return err.message || err.name
  return String(err)
}

export function abortText(signal: AbortSignal): string {
  const r: unknown = signal.reason
  return r instanceof Error ? r.message || r.name : r === undefined ? 'aborted' : String(r)
}

/** The checkpoint's readings of the replica's engines (one per data-parallel engine). */
export function readingsOf(cp: Checkpoint | null, replica: string): EngineReading[] {
  if (cp === null) return []
  const out: EngineReading[] = []
  for (const e of cp.engines) if (e.replica === replica && e.reading !== null) out.push(e.reading)
  return out
}

/** Requests running on the replica (summed over its engines), null when no engine reported it. */
export function requestsRunning(cp: Checkpoint | null, replica: string): number | null {
  let sum: number | null = null
  for (const r of readingsOf(cp, replica)) {
    if (r.requestsRunning !== null && Number.isFinite(r.requestsRunning)) sum = (sum ?? 0) + r.requestsRunning
  }
  return sum
}

/** The replica's KV-cache usage (0-1, the fullest engine), null when unknown. */
export function kvCacheUsage(cp: Checkpoint | null, replica: string): number | null {
  let max: number | null = null
  for (const r of readingsOf(cp, replica)) {
    const kv = r.kvCacheUsage
    if (kv !== null && Number.isFinite(kv) && (max === null || kv > max)) max = kv
  }
  return max
}

/** Lifecycle says some engine of the replica can serve (SERVING or DEGRADED). */
export function isServing(cp: Checkpoint | null, replica: string): boolean {
  if (cp === null) return false
  return cp.engines.some(
    (e) => e.replica === replica && (e.lifecycleState === 'SERVING' || e.lifecycleState === 'DEGRADED'),
  )
}

export type Settled<T> = { aborted: false; value: T } | { aborted: true }

/**
 * Waits for `p` unless `signal` aborts first. A rejection of `p` propagates; an abort resolves
 * `{ aborted: true }` (what `p` does later is ignored).
 */
export function unlessAborted<T>(p: Promise<T>, signal: AbortSignal): Promise<Settled<T>> {
  if (signal.aborted) {
    p.catch(() => {})
    return Promise.resolve({ aborted: true })
  }
  return new Promise<Settled<T>>((resolve, reject) => {
    const onAbort = () => {
      p.catch(() => {})
      resolve({ aborted: true })
    }
    signal.addEventListener('abort', onAbort, { once: true })
    p.then(
      (value) => {
        signal.removeEventListener('abort', onAbort)
        resolve({ aborted: false, value })
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort)
        reject(err)
      },
    )
  })
}

/** The result for a strategy aborted before it pulled any lever. */
export function abortedBeforeActing(ctx: MitigationContext, actions: string[]): MitigationResult {
  return result('SKIPPED', `aborted before acting: ${abortText(ctx.signal)}`, actions)
}

// ---- options ------------------------------------------------------------------------------------

/** Validates options against one defaults object; each check throws InvalidOptionError. */
export class OptionReader<O extends object> {
  readonly #strategy: string
  readonly #o: Record<string, unknown>

  constructor(strategy: string, options: O | undefined) {
    if (options !== undefined && (options === null || typeof options !== 'object'))
      throw new InvalidOptionError(`${strategy}: options must be an object`)
    this.#strategy = strategy
    this.#o = (options ?? {}) as Record<string, unknown>
  }

  #fail(key: string, rule: string): never {
    throw new InvalidOptionError(`${this.#strategy}: option "${key}" must be ${rule}`)
  }

  /** A number in (0, 1]. */
  fraction(key: keyof O & string, fallback: number): number {
    const v = this.#o[key]
    if (v === undefined) return fallback
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0 || v > 1) this.#fail(key, 'a number in (0, 1]')
    return v
  }

  /** A finite number >= 0. */
  nonNegative(key: keyof O & string, fallback: number): number {
    const v = this.#o[key]
    if (v === undefined) return fallback
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) this.#fail(key, 'a finite number >= 0')
    return v
  }

  positiveInt(key: keyof O & string, fallback: number): number {
    const v = this.#o[key]
    if (v === undefined) return fallback
    if (!Number.isInteger(v) || (v as number) < 1) this.#fail(key, 'a positive integer')
    return v as number
  }

  /** A number that is not NaN (infinities allowed). */
  number(key: keyof O & string, fallback: number): number {
    const v = this.#o[key]
    if (v === undefined) return fallback
    if (typeof v !== 'number' || Number.isNaN(v)) this.#fail(key, 'a number')
    return v
  }

  boolean(key: keyof O & string, fallback: boolean): boolean {
    const v = this.#o[key]
    if (v === undefined) return fallback
    if (typeof v !== 'boolean') this.#fail(key, 'a boolean')
    return v
  }

  oneOf<T>(key: keyof O & string, allowed: readonly T[], fallback: T): T {
    const v = this.#o[key]
    if (v === undefined) return fallback
    if (!allowed.includes(v as T)) this.#fail(key, `one of ${allowed.join(', ')}`)
    return v as T
  }

  /** A non-empty list of failure types. */
  failureTypes(key: keyof O & string, fallback: readonly FailureType[]): readonly FailureType[] {
    const v = this.#o[key]
    if (v === undefined) return fallback
    if (!Array.isArray(v) || v.length === 0 || v.some((t) => !FAILURE_TYPES.includes(t as FailureType)))
      this.#fail(key, `a non-empty array of failure types (${FAILURE_TYPES.join(', ')})`)
    return Object.freeze([...new Set(v as FailureType[])])
  }

  /** An object handed in by the caller (a shared ledger...), checked only for being an object. */
  object<T extends object>(key: keyof O & string, fallback: () => T): T {
    const v = this.#o[key]
    if (v === undefined) return fallback()
    if (v === null || typeof v !== 'object') this.#fail(key, 'an object')
    return v as T
  }
}
