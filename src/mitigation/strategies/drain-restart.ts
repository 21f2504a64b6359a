/**
 * The drain choreography the restarting strategies share (gateways.md §10): stop routing to the
 * replica, stop admitting and wait for its in-flight requests up to a bound, restart vLLM, then
 * route to it again. A hung engine never drains, so a drain timeout is expected and the restart
 * goes ahead. Whatever the choreography changed and did not restore is restored by `restore()`.
 */
import { MitigationError } from '../../errors.js'
import type {
  FailureType,
  MitigationContext,
  MitigationResult,
  MitigationStrategy,
  RestartActuator,
} from '../types.js'
import { abortedBeforeActing, abortText, errorText, OptionReader, result, unlessAborted } from './common.js'

export interface DrainRestartOptions {
  drainTimeoutMs: number
  /** Undrain and restore the routing weight as soon as the restart resolved. */
  restoreAfterRestart: boolean
}

export class DrainRestart {
  /** Per replica: the routing weight before the choreography set it to 0. */
  readonly #weights = new Map<string, number>()
  readonly #drained = new Set<string>()

  async run(
    ctx: MitigationContext,
    sup: RestartActuator,
    reason: string,
    overrides: { maxNumSeqs?: number } | undefined,
    o: DrainRestartOptions,
    actions: string[],
  ): Promise<MitigationResult> {
    if (ctx.signal.aborted) return abortedBeforeActing(ctx, actions)
    const { replica } = ctx
    const { admission, routing } = ctx.actuators
    const notes: string[] = []
    if (routing !== null) {
      try {
        const prev = routing.weight(replica)
        if (!this.#weights.has(replica)) this.#weights.set(replica, prev)
        routing.setWeight(replica, 0)
        actions.push(`weight ${replica} 0`)
      } catch (err) {
        notes.push(`routing weight not lowered: ${errorText(err)}`)
      }
    }
    if (admission === null) notes.push('no admission actuator: restarted without a drain')
    else {
      actions.push(`drain ${replica} (up to ${o.drainTimeoutMs} ms)`)
      this.#drained.add(replica)
      let drained: boolean
      try {
        const s = await unlessAborted(admission.drain(replica, o.drainTimeoutMs), ctx.signal)
        if (s.aborted) {
          const undo = this.#restore(ctx, actions)
          return result('SKIPPED', `aborted during the drain (${abortText(ctx.signal)}); ${undo}`, actions)
        }
        drained = s.value
      } catch (err) {
        const undo = this.#restore(ctx, actions)
        return result('FAILURE', `drain of ${replica} failed: ${errorText(err)}; ${undo}`, actions)
      }
      notes.push(
        drained
          ? 'drained'
          : `drain timed out after ${o.drainTimeoutMs} ms with requests in flight (expected of a hung engine)`,
      )
    }
    if (ctx.signal.aborted) {
      const undo = this.#restore(ctx, actions)
      return result('SKIPPED', `aborted before the restart (${abortText(ctx.signal)}); ${undo}`, actions)
    }
    const seqs = overrides?.maxNumSeqs
    actions.push(seqs === undefined ? `restart ${replica}` : `restart ${replica} with --max-num-seqs ${seqs}`)
    const restarting = sup.restart(reason, overrides)
    try {
      const s = await unlessAborted(restarting, ctx.signal)
      if (s.aborted) {
        // The restart cannot be called back; route to the replica again once it is through.
        if (o.restoreAfterRestart)
          restarting.then(
            () => this.#restore(ctx, []),
            () => this.#restore(ctx, []),
          )
        notes.push(`aborted while vLLM restarts (${abortText(ctx.signal)})`)
        return result('PARTIAL', notes.join('; '), actions)
      }
    } catch (err) {
      const undo = this.#restore(ctx, actions)
      notes.push(`restart failed: ${errorText(err)}; ${undo}`)
      return result('FAILURE', notes.join('; '), actions)
    }
    notes.push(seqs === undefined ? 'restarted' : `restarted with --max-num-seqs ${seqs}`)
    if (o.restoreAfterRestart) notes.push(this.#restore(ctx, actions))
    else notes.push('stays drained until rollback')
    return result('SUCCESS', notes.join('; '), actions)
  }

  /** Undoes what `run` left in place (rollback); throws a MitigationError naming what failed. */
  restore(ctx: MitigationContext): void {
    const failed: string[] = []
    this.#restore(ctx, [], failed)
    if (failed.length > 0) throw new MitigationError(`restoring ${ctx.replica} failed: ${failed.join('; ')}`)
  }

  /** Undrains and restores the weight; says what it did. Never throws. */
  #restore(ctx: MitigationContext, actions: string[], failed: string[] = []): string {
    const { replica } = ctx
    const { admission, routing } = ctx.actuators
    const done: string[] = []
    if (admission !== null && this.#drained.has(replica)) {
      try {
        admission.undrain(replica)
        this.#drained.delete(replica)
        actions.push(`undrain ${replica}`)
        done.push('undrained')
      } catch (err) {
        failed.push(`undrain: ${errorText(err)}`)
      }
    }
    const prev = this.#weights.get(replica)
    if (routing !== null && prev !== undefined) {
      try {
        routing.setWeight(replica, prev)
        this.#weights.delete(replica)
        actions.push(`weight ${replica} ${prev}`)
        done.push(`weight back to ${prev}`)
      } catch (err) {
        failed.push(`weight: ${errorText(err)}`)
      }
    }
    const said = done.length === 0 ? 'nothing to restore' : done.join(', ')
    return failed.length === 0 ? said : `${said}; restore failed: ${failed.join('; ')}`
  }
}

export interface RestartStrategyOptions {
  /** How long to wait for in-flight requests before restarting anyway (default 30 000 ms). */
  drainTimeoutMs?: number
  /**
   * Undrain and restore the routing weight as soon as the restart resolved (default true): vLLM
   * refuses connections until it listens, and the gateway's breaker keeps it out meanwhile. With
   * false the replica stays out until `rollback()`.
   */
  restoreAfterRestart?: boolean
  handles?: readonly FailureType[]
}

/** A disruptive strategy that is the drain choreography and nothing else, under a name of its own. */
export abstract class RestartStrategy implements MitigationStrategy {
  abstract readonly name: string
  readonly handles: readonly FailureType[]
  readonly disruptive = true
  readonly drainTimeoutMs: number
  readonly restoreAfterRestart: boolean
  readonly #choreography = new DrainRestart()

  constructor(name: string, defaultHandles: readonly FailureType[], options?: RestartStrategyOptions) {
    const o = new OptionReader(name, options)
    this.drainTimeoutMs = o.nonNegative('drainTimeoutMs', 30_000)
    this.restoreAfterRestart = o.boolean('restoreAfterRestart', true)
    this.handles = o.failureTypes('handles', defaultHandles)
  }

  async execute(ctx: MitigationContext): Promise<MitigationResult> {
    const actions: string[] = []
    if (ctx.signal.aborted) return abortedBeforeActing(ctx, actions)
    // Checked before anything is drained: without a supervisor nothing would restart it.
    const sup = ctx.actuators.supervisor(ctx.replica)
    if (sup === null)
      return result('SKIPPED', `no supervisor for ${ctx.replica}: vLLM is not run by this monitor`, actions)
    return this.#choreography.run(
      ctx,
      sup,
      `${this.name}: ${ctx.trigger.detail}`,
      undefined,
      { drainTimeoutMs: this.drainTimeoutMs, restoreAfterRestart: this.restoreAfterRestart },
      actions,
    )
  }

  async rollback(ctx: MitigationContext): Promise<void> {
    this.#choreography.restore(ctx)
  }
}
