/**
 * One replica's lifecycle as a state machine over the moves vLLM can actually make. Time is
 * passed in, never read from a clock, so replaying a trace gives the same history.
 */
import { IllegalTransitionError, InvalidArgumentError, InvalidOptionError } from '../errors.js'
import { reportCallbackError } from '../gpu/util.js'
import type { LifecycleState, Transition } from '../telemetry/types.js'

/** Every state, start-up order first. */
export const LIFECYCLE_STATES: readonly LifecycleState[] = [
  'NOT_STARTED',
  'INITIALIZING',
  'LOADING_MODEL',
  'READY',
  'SERVING',
  'DEGRADED',
  'ERROR',
  'SHUTTING_DOWN',
]

/**
 * The legal moves, from -> allowed targets. What vLLM does, and why each edge exists:
 *
 * - NOT_STARTED -> INITIALIZING: the process was launched (engine config, distributed init).
 *   Nothing else: a process the monitor never saw start cannot have failed or be serving. A
 *   monitor that meets an already-running server uses `attach` instead.
 * - INITIALIZING -> LOADING_MODEL: workers are up and weights are loading.
 * - LOADING_MODEL -> READY: weights loaded, KV cache allocated (`num_gpu_blocks` known), `/health`
 *   answers 200.
 * - READY -> SERVING: the first requests are being served. READY -> DEGRADED: it came up already
 *   impaired (e.g. KV cache too small, preempting from the first batch).
 * - SERVING <-> DEGRADED: impaired (preemption storms, stalls, 5xx) and back. Going idle is not
 *   a move: SERVING means able to take traffic and has taken it, not that it has some right now.
 * - INITIALIZING, LOADING_MODEL, READY, SERVING, DEGRADED -> ERROR: any running state can fail
 *   (start-up failures such as CUDA OOM while loading, or EngineDeadError while serving).
 * - ERROR -> INITIALIZING: restarted in place. ERROR never goes straight back to SERVING: vLLM's
 *   engine errors are fatal to the engine, so recovery is a restart. A blip that heals on its
 *   own belongs in DEGRADED.
 * - every state but NOT_STARTED -> SHUTTING_DOWN: a stop was requested, or a failing process is
 *   tearing itself down.
 * - SHUTTING_DOWN -> NOT_STARTED: the process is gone. SHUTTING_DOWN -> INITIALIZING: a restart
 *   (e.g. a supervisor relaunching it). A shutdown that fails still ends with the process gone,
 *   so SHUTTING_DOWN has no edge to ERROR; the reason says how it ended.
 */
export const LEGAL_TRANSITIONS: Readonly<Record<LifecycleState, readonly LifecycleState[]>> = {
  NOT_STARTED: ['INITIALIZING'],
  INITIALIZING: ['LOADING_MODEL', 'ERROR', 'SHUTTING_DOWN'],
  LOADING_MODEL: ['READY', 'ERROR', 'SHUTTING_DOWN'],
  READY: ['SERVING', 'DEGRADED', 'ERROR', 'SHUTTING_DOWN'],
  SERVING: ['DEGRADED', 'ERROR', 'SHUTTING_DOWN'],
  DEGRADED: ['SERVING', 'ERROR', 'SHUTTING_DOWN'],
  ERROR: ['INITIALIZING', 'SHUTTING_DOWN'],
  SHUTTING_DOWN: ['NOT_STARTED', 'INITIALIZING'],
}

export function isLegalTransition(from: LifecycleState, to: LifecycleState): boolean {
  return LEGAL_TRANSITIONS[from].includes(to)
}

export type TransitionListener = (transition: Transition) => void

export interface LifecycleMachineOptions {
  /** Transitions kept by `history()` (default 256); older ones are forgotten. */
  historyLimit?: number
  /** When the machine starts in NOT_STARTED (ms on the caller's clock, default 0). */
  t0?: number
  /** Who this machine belongs to (a replica name), for error messages. */
  name?: string
}

export class LifecycleMachine {
  readonly name: string | null
  readonly historyLimit: number
  private current: LifecycleState = 'NOT_STARTED'
  private sinceMs: number
  private why = 'not started'
  /** Ring of the last `historyLimit` transitions; `histNext` is the next write. */
  private readonly hist: Transition[] = []
  private histNext = 0
  // Copy-on-write, so a listener that subscribes or unsubscribes during an emit does not
  // disturb the loop in progress.
  private listeners: readonly TransitionListener[] = []
  // Transitions made by listeners while an emit is in progress wait here, so every listener
  // sees every transition, in order.
  private readonly pending: Transition[] = []
  private emitting = false

  constructor(options: LifecycleMachineOptions = {}) {
    if (options === null || typeof options !== 'object')
      throw new InvalidOptionError('LifecycleMachine options must be an object')
    const limit = options.historyLimit ?? 256
    if (typeof limit !== 'number' || !Number.isInteger(limit) || limit < 1)
      throw new InvalidOptionError(
        `LifecycleMachine option historyLimit must be a positive integer, got ${String(limit)}`,
      )
    const t0 = options.t0 ?? 0
    if (typeof t0 !== 'number' || !Number.isFinite(t0))
      throw new InvalidOptionError(`LifecycleMachine option t0 must be a finite number, got ${String(t0)}`)
    if (options.name !== undefined && typeof options.name !== 'string')
      throw new InvalidOptionError('LifecycleMachine option name must be a string')
    this.historyLimit = limit
    this.sinceMs = t0
    this.name = options.name ?? null
  }

  get state(): LifecycleState {
    return this.current
  }

  /** When the current state was entered (ms). */
  get since(): number {
    return this.sinceMs
  }

  /** Why the current state was entered. */
  get reason(): string {
    return this.why
  }

  /** Whether `to` is a legal move from the current state (the current state itself is not). */
  canTransition(to: LifecycleState): boolean {
    return isLegalTransition(this.current, to)
  }

  /**
   * Moves to `to` at `t`. Returns false, changing nothing, when already in `to`; throws
   * IllegalTransitionError for a move vLLM cannot make, and InvalidArgumentError for a `t`
   * that is not finite or is earlier than the current state's `since`.
   */
  transition(to: LifecycleState, t: number, reason: string): boolean {
    if (to === this.current) return false
    if (!isLegalTransition(this.current, to)) {
      const who = this.name === null ? '' : ` (${this.name})`
      throw new IllegalTransitionError(
        `illegal lifecycle transition ${this.current} -> ${to}${who}: ${reason}; allowed from ${this.current}: ${LEGAL_TRANSITIONS[this.current].join(', ') || 'none'}`,
      )
    }
    this.apply(to, t, reason)
    return true
  }

  /** Like `transition`, but an illegal move returns false instead of throwing. A bad `t` still throws. */
  tryTransition(to: LifecycleState, t: number, reason: string): boolean {
    if (to === this.current || !isLegalTransition(this.current, to)) return false
    this.apply(to, t, reason)
    return true
  }

  /**
   * For a monitor that meets a server already running: jumps from NOT_STARTED straight to
   * whatever state the server is found in (SERVING, ERROR, ...), skipping the start-up it did not
   * see. Recorded as a transition from NOT_STARTED. Only legal in NOT_STARTED; attaching to
   * NOT_STARTED is a no-op returning false.
   */
  attach(state: LifecycleState, t: number, reason: string): boolean {
    if (this.current !== 'NOT_STARTED') {
      const who = this.name === null ? '' : ` (${this.name})`
      throw new IllegalTransitionError(
        `cannot attach in ${state}${who}: attach is only for a machine in NOT_STARTED, this one is ${this.current}`,
      )
    }
    if (state === 'NOT_STARTED') return false
    if (!LIFECYCLE_STATES.includes(state))
      throw new InvalidArgumentError(`unknown lifecycle state ${String(state)}`)
    this.apply(state, t, reason)
    return true
  }

  /** The kept transitions, oldest first. */
  history(): Transition[] {
    const h = this.hist
    if (h.length < this.historyLimit) return h.slice()
    return [...h.slice(this.histNext), ...h.slice(0, this.histNext)]
  }

  on(event: 'transition', listener: TransitionListener): this {
    this.checkEvent(event)
    if (typeof listener !== 'function') throw new InvalidArgumentError('listener must be a function')
    this.listeners = [...this.listeners, listener]
    return this
  }

  off(event: 'transition', listener: TransitionListener): this {
    this.checkEvent(event)
    const i = this.listeners.indexOf(listener)
    if (i !== -1) this.listeners = [...this.listeners.slice(0, i), ...this.listeners.slice(i + 1)]
    return this
  }

  private checkEvent(event: string) {
    if (event !== 'transition')
      throw new InvalidArgumentError(`unknown LifecycleMachine event ${String(event)}`)
  }

  private apply(to: LifecycleState, t: number, reason: string) {
    if (typeof t !== 'number' || !Number.isFinite(t))
      throw new InvalidArgumentError(`transition time must be a finite number of ms, got ${String(t)}`)
    if (t < this.sinceMs)
      throw new InvalidArgumentError(
        `transition time ${t} is earlier than the current state's (${this.sinceMs}): time must not go back`,
      )
    // Frozen: the same record goes to history and to every listener.
    const rec: Transition = Object.freeze({ t, from: this.current, to, reason: String(reason) })
    this.current = to
    this.sinceMs = t
    this.why = rec.reason
    if (this.hist.length < this.historyLimit) this.hist.push(rec)
    else this.hist[this.histNext] = rec
    this.histNext = (this.histNext + 1) % this.historyLimit
    this.emit(rec)
  }

  private emit(rec: Transition) {
    this.pending.push(rec)
    if (this.emitting) return
    this.emitting = true
    try {
      for (let k = 0; k < this.pending.length; k++) {
        const r = this.pending[k]!
        for (const fn of this.listeners) {
          try {
            fn(r)
          } catch (err) {
            reportCallbackError('lifecycle transition listener', err)
          }
        }
      }
    } finally {
      this.pending.length = 0
      this.emitting = false
    }
  }
}
