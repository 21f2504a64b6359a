/**
 * The safety gate: decides whether a mitigation action may start now. It bounds how much the
 * monitor can disrupt on its own: one disruptive action per replica, a fleet-wide bound on
 * replicas being restarted or drained at once, cooldowns so the same lever is not pulled again
 * before the last pull could show its effect, and hourly rate limits against a flapping predictor.
 *
 * Rules on one replica (checked in this order, the first that applies is the verdict):
 * - a disruptive action running excludes every other action there ('disruptive-in-progress');
 * - a disruptive action may not start while any action runs there ('busy');
 * - non-disruptive actions may overlap, but not two of the same strategy nor two for the same
 *   failure type (those would fight over the same lever or the same symptom) ('busy');
 * - (replica, strategy) cools down `cooldownMs` after its action ends, (replica, failure type)
 *   `failureTypeCooldownMs` after any action for it ends ('cooldown'), so that the next strategy
 *   for a failure waits until the previous one could show its effect.
 * Then, fleet-wide: at most `maxConcurrentRestarts` disruptive actions at once ('restart-bound'),
 * at most `maxActionsPerReplicaPerHour` starts per replica ('replica-rate-limit') and
 * `maxActionsPerHour` in all ('rate-limit'), over a sliding hour.
 *
 * An action holds its slots from `admit()` (before the approval hook is asked, so two concurrent
 * admits cannot both take the last slot) until `finish(id)`.
 */
import { InvalidArgumentError, InvalidOptionError } from '../errors.js'

export interface ApprovalRequest {
  id: string
  replica: string
  failureType: string
  strategy: string
  disruptive: boolean
  reason: string
  /** See `SafetyRequest.escalation`. */
  escalation?: boolean
}

export interface SafetyOptions {
  /** Per (replica, strategy), after an action ends. Default 120_000. */
  cooldownMs?: number
  /** Per (replica, failure type), after any action for it ends. Default 30_000. */
  failureTypeCooldownMs?: number
  /** Fleet-wide bound on disruptive actions running at once. Default 1. */
  maxConcurrentRestarts?: number
  /** Fleet-wide action starts per sliding hour. Default 30. */
  maxActionsPerHour?: number
  /** Action starts per replica per sliding hour. Default 10. */
  maxActionsPerReplicaPerHour?: number
  /**
   * Every check passes and the verdict says `dryRun`, so the caller logs instead of acting.
   * Nothing is reserved (no `finish()` is needed) and the approval hook is not asked. Default false.
   */
  dryRun?: boolean
  /**
   * Asked before a disruptive action (before every action with `approveAll`). A throw, a rejection
   * or no answer within `approvalTimeoutMs` counts as a denial. Without it, nothing needs approval.
   */
  approve?: (request: ApprovalRequest) => boolean | Promise<boolean>
  /** Ask `approve` for non-disruptive actions too. Default false; requires `approve`. */
  approveAll?: boolean
  /** Default 10_000. */
  approvalTimeoutMs?: number
  /** Clock, ms. Default `Date.now`. */
  now?: () => number
}

export type DenialReason =
  | 'cooldown'
  | 'disruptive-in-progress'
  | 'restart-bound'
  | 'rate-limit'
  | 'replica-rate-limit'
  | 'denied'
  | 'busy'

export type Verdict =
  | { allowed: true; dryRun: boolean }
  | {
      allowed: false
      reason: DenialReason
      /** In words, for the audit log ("restart on r0 is cooling down until t+95 s"). */
      detail: string
      /** When the same request would pass the check that refused it; null when that is unknown. */
      retryAfterMs: number | null
    }

export interface SafetyRequest {
  replica: string
  failureType: string
  strategy: string
  disruptive: boolean
  /**
   * The next step of an action in place that the failure got past: the (replica, failure type)
   * cooldown, which keeps one strategy from following another on a hunch, does not apply to it.
   */
  escalation?: boolean
}

export interface ActiveAction {
  id: string
  replica: string
  failureType: string
  strategy: string
  disruptive: boolean
  /** Gate clock when admitted (when the approval hook was asked, for one awaiting approval). */
  startedAt: number
  /** True while the approval hook has not answered yet. */
  awaitingApproval: boolean
}

const kHourMs = 3_600_000

const kDefaultOptions = {
  cooldownMs: 120_000,
  failureTypeCooldownMs: 30_000,
  maxConcurrentRestarts: 1,
  maxActionsPerHour: 30,
  maxActionsPerReplicaPerHour: 10,
  dryRun: false,
  approveAll: false,
  approvalTimeoutMs: 10_000,
} as const

function optionError(name: string, rule: string, got: unknown): InvalidOptionError {
  return new InvalidOptionError(`SafetyGate: option "${name}" must be ${rule}, got ${String(got)}`)
}

function nonNegative(name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw optionError(name, 'a number >= 0', v)
  return v
}

function positiveInt(name: string, v: unknown): number {
  if (!Number.isInteger(v) || (v as number) < 1) throw optionError(name, 'a positive integer', v)
  return v as number
}

function bool(name: string, v: unknown): boolean {
  if (typeof v !== 'boolean') throw optionError(name, 'a boolean', v)
  return v
}

/** How often finishing an action also sweeps what has expired. */
const kPruneEveryMs = 600_000
const seconds = (ms: number) => `${Math.ceil(ms / 1000)} s`

function deny(reason: DenialReason, detail: string, retryAfterMs: number | null = null): Verdict {
  return { allowed: false, reason, detail, retryAfterMs }
}

function checkRequest(req: SafetyRequest, fn: string): void {
  if (req === null || typeof req !== 'object')
    throw new InvalidArgumentError(`${fn}: the request must be an object`)
  for (const k of ['replica', 'failureType', 'strategy'] as const)
    if (typeof req[k] !== 'string' || req[k].length === 0)
      throw new InvalidArgumentError(`${fn}: "${k}" must be a non-empty string`)
  if (typeof req.disruptive !== 'boolean')
    throw new InvalidArgumentError(`${fn}: "disruptive" must be a boolean`)
}

/** Start times within the last hour, oldest first. */
class Window {
  readonly #starts: number[] = []

  count(now: number): number {
    while (this.#starts.length > 0 && this.#starts[0]! <= now - kHourMs) this.#starts.shift()
    return this.#starts.length
  }

  /** How long until fewer than `max` starts remain in the window. */
  retryAfterMs(now: number, max: number): number {
    const oldest = this.#starts[this.#starts.length - max] ?? now
    return Math.max(0, oldest + kHourMs - now)
  }

  add(t: number): void {
    this.#starts.push(t)
  }

  /** Takes back a start (an admission that approval then refused). */
  remove(t: number): void {
    const i = this.#starts.lastIndexOf(t)
    if (i !== -1) this.#starts.splice(i, 1)
  }
}

export class SafetyGate {
  readonly #cooldownMs: number
  readonly #failureTypeCooldownMs: number
  readonly #maxConcurrentRestarts: number
  readonly #maxActionsPerHour: number
  readonly #maxActionsPerReplicaPerHour: number
  readonly #dryRun: boolean
  readonly #approve: SafetyOptions['approve'] | null
  readonly #approveAll: boolean
  readonly #approvalTimeoutMs: number
  readonly #now: () => number
  readonly #active = new Map<string, ActiveAction>()
  /** `${replica}\0${strategy}` and `${replica}\0${failureType}` -> when its cooldown ends. */
  readonly #strategyCooldownUntil = new Map<string, number>()
  readonly #failureCooldownUntil = new Map<string, number>()
  readonly #fleet = new Window()
  readonly #perReplica = new Map<string, Window>()
  #lastPruneAt = Number.NEGATIVE_INFINITY

  constructor(options: SafetyOptions = {}) {
    if (options === null || typeof options !== 'object')
      throw new InvalidOptionError('SafetyGate: options must be an object')
    // An option given as undefined means the default (callers forward optional settings as they are).
    const given = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined))
    const o = { ...kDefaultOptions, ...given } as typeof kDefaultOptions & typeof options
    this.#cooldownMs = nonNegative('cooldownMs', o.cooldownMs)
    this.#failureTypeCooldownMs = nonNegative('failureTypeCooldownMs', o.failureTypeCooldownMs)
    this.#maxConcurrentRestarts = positiveInt('maxConcurrentRestarts', o.maxConcurrentRestarts)
    this.#maxActionsPerHour = positiveInt('maxActionsPerHour', o.maxActionsPerHour)
    this.#maxActionsPerReplicaPerHour = positiveInt(
      'maxActionsPerReplicaPerHour',
      o.maxActionsPerReplicaPerHour,
    )
    this.#dryRun = bool('dryRun', o.dryRun)
    this.#approveAll = bool('approveAll', o.approveAll)
    this.#approvalTimeoutMs = positiveInt('approvalTimeoutMs', o.approvalTimeoutMs)
    if (o.approve !== undefined && typeof o.approve !== 'function')
      throw optionError('approve', 'a function', o.approve)
    this.#approve = o.approve ?? null
    if (this.#approveAll && this.#approve === null)
      throw new InvalidOptionError('SafetyGate: option "approveAll" requires option "approve"')
    if (o.now !== undefined && typeof o.now !== 'function') throw optionError('now', 'a function', o.now)
    this.#now = o.now ?? Date.now
  }

  /** Decide and log only: every verdict says `dryRun`, and reflexes must not act either. */
  get dryRun(): boolean {
    return this.#dryRun
  }

  /** The synchronous checks (no approval): may this action start now? Reserves nothing. */
  check(req: SafetyRequest): Verdict {
    checkRequest(req, 'SafetyGate.check')
    if (this.#dryRun) return { allowed: true, dryRun: true }
    return this.#check(req, this.#now())
  }

  /**
   * `check()`, then the approval hook where one applies. On allow the action has started: its
   * slots stay taken until `finish(id)`. In a dry run nothing is taken and no approval is asked.
   */
  async admit(req: ApprovalRequest): Promise<Verdict> {
    checkRequest(req, 'SafetyGate.admit')
    if (typeof req.id !== 'string' || req.id.length === 0)
      throw new InvalidArgumentError('SafetyGate.admit: "id" must be a non-empty string')
    if (this.#dryRun) return { allowed: true, dryRun: true }
    if (this.#active.has(req.id)) return deny('busy', `action ${req.id} is already admitted`)
    const now = this.#now()
    const verdict = this.#check(req, now)
    if (!verdict.allowed) return verdict
    const action: ActiveAction = {
      id: req.id,
      replica: req.replica,
      failureType: req.failureType,
      strategy: req.strategy,
      disruptive: req.disruptive,
      startedAt: now,
      awaitingApproval: false,
    }
    this.#reserve(action)
    if (this.#approve === null || !(req.disruptive || this.#approveAll)) return verdict
    action.awaitingApproval = true
    const refusal = await this.#ask(req)
    if (refusal !== null) {
      this.#release(action)
      return deny('denied', `${req.strategy} on ${req.replica}: ${refusal}`)
    }
    action.awaitingApproval = false
    action.startedAt = this.#now()
    return verdict
  }

  /** The action ended (whatever its outcome): frees its slots and starts its cooldowns. Idempotent. */
  finish(id: string): void {
    const action = this.#active.get(id)
    // One still awaiting approval is ended by admit() itself, whichever way approval goes.
    if (action === undefined || action.awaitingApproval) return
    this.#active.delete(id)
    const now = this.#now()
    this.#strategyCooldownUntil.set(`${action.replica}\0${action.strategy}`, now + this.#cooldownMs)
    this.#failureCooldownUntil.set(
      `${action.replica}\0${action.failureType}`,
      now + this.#failureTypeCooldownMs,
    )
    if (now - this.#lastPruneAt >= kPruneEveryMs) this.#prune(now)
  }

  /**
   * Forgets cooldowns that have ended and hourly windows that are empty: replicas come and go
   * (a rolling deployment renames them all), and a gate that runs for months must not keep them.
   */
  #prune(now: number): void {
    this.#lastPruneAt = now
    for (const m of [this.#strategyCooldownUntil, this.#failureCooldownUntil])
      for (const [k, until] of m) if (until <= now) m.delete(k)
    for (const [replica, w] of this.#perReplica) if (w.count(now) === 0) this.#perReplica.delete(replica)
  }

  /** Entries held for cooldowns and per-replica windows (for tests and diagnostics). */
  get trackedKeys(): number {
    return this.#strategyCooldownUntil.size + this.#failureCooldownUntil.size + this.#perReplica.size
  }

  /** Actions admitted and not yet finished, those awaiting approval included, oldest first. */
  active(): ActiveAction[] {
    return [...this.#active.values()].map((a) => ({ ...a }))
  }

  #check(req: SafetyRequest, now: number): Verdict {
    const { replica, failureType, strategy } = req
    let running = 0
    for (const a of this.#active.values()) {
      if (a.disruptive) running++
      if (a.replica !== replica) continue
      if (a.disruptive)
        return deny('disruptive-in-progress', `${a.strategy} (disruptive) is running on ${replica} (${a.id})`)
      if (req.disruptive)
        return deny('busy', `${a.strategy} is running on ${replica} (${a.id}); ${strategy} needs it idle`)
      if (a.strategy === strategy)
        return deny('busy', `${strategy} is already running on ${replica} (${a.id})`)
      if (a.failureType === failureType)
        return deny('busy', `${a.strategy} is already acting on ${failureType} on ${replica} (${a.id})`)
    }
    const cooldown = this.#cooldown(req, now)
    if (cooldown !== null) return cooldown
    if (req.disruptive && running >= this.#maxConcurrentRestarts)
      return deny(
        'restart-bound',
        `${running} disruptive action(s) already running in the fleet (maxConcurrentRestarts ${this.#maxConcurrentRestarts})`,
      )
    const own = this.#perReplica.get(replica)
    if (own !== undefined && own.count(now) >= this.#maxActionsPerReplicaPerHour) {
      const wait = own.retryAfterMs(now, this.#maxActionsPerReplicaPerHour)
      return deny(
        'replica-rate-limit',
        `${replica} had ${this.#maxActionsPerReplicaPerHour} actions in the last hour; the next may start at t+${seconds(wait)}`,
        wait,
      )
    }
    if (this.#fleet.count(now) >= this.#maxActionsPerHour) {
      const wait = this.#fleet.retryAfterMs(now, this.#maxActionsPerHour)
      return deny(
        'rate-limit',
        `the fleet had ${this.#maxActionsPerHour} actions in the last hour; the next may start at t+${seconds(wait)}`,
        wait,
      )
    }
    return { allowed: true, dryRun: false }
  }

  /** The later-ending of the two cooldowns in force, as a denial; null when neither is. */
  #cooldown(req: SafetyRequest, now: number): Verdict | null {
    const byStrategy = until(this.#strategyCooldownUntil, `${req.replica}\0${req.strategy}`, now)
    const byFailure =
      req.escalation === true
        ? null
        : until(this.#failureCooldownUntil, `${req.replica}\0${req.failureType}`, now)
    if (byStrategy === null && byFailure === null) return null
    if (byFailure === null || (byStrategy !== null && byStrategy >= byFailure)) {
      const wait = byStrategy! - now
      return deny(
        'cooldown',
        `${req.strategy} on ${req.replica} is cooling down until t+${seconds(wait)}`,
        wait,
      )
    }
    const wait = byFailure - now
    return deny(
      'cooldown',
      `${req.failureType} on ${req.replica} was acted on recently; cooling down until t+${seconds(wait)}`,
      wait,
    )
  }

  #reserve(action: ActiveAction): void {
    this.#active.set(action.id, action)
    this.#fleet.add(action.startedAt)
    let own = this.#perReplica.get(action.replica)
    if (own === undefined) {
      own = new Window()
      this.#perReplica.set(action.replica, own)
    }
    own.add(action.startedAt)
  }

  /** Undoes `#reserve` for an action that never started: no cooldown, no rate-limit charge. */
  #release(action: ActiveAction): void {
    this.#active.delete(action.id)
    this.#fleet.remove(action.startedAt)
    this.#perReplica.get(action.replica)?.remove(action.startedAt)
  }

  /** Asks the hook; null when approved, else why not in words. */
  async #ask(req: ApprovalRequest): Promise<string | null> {
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<string>((resolve) => {
      timer = setTimeout(
        () => resolve(`no approval within ${seconds(this.#approvalTimeoutMs)}`),
        this.#approvalTimeoutMs,
      )
      // A pending approval must not keep the process alive.
      timer.unref()
    })
    const answer = (async () => {
      try {
        return (await this.#approve!({ ...req })) === true ? null : 'approval denied'
      } catch (err) {
        return `the approval hook failed: ${err instanceof Error ? err.message : String(err)}`
      }
    })()
    try {
      return await Promise.race([answer, timeout])
    } finally {
      clearTimeout(timer)
    }
  }
}

function until(map: Map<string, number>, key: string, now: number): number | null {
  const t = map.get(key)
  if (t === undefined) return null
  if (t > now) return t
  // Expired: drop it so the maps hold only cooldowns in force.
  map.delete(key)
  return null
}
