/**
 * RestartNCCL: a collective hung or a peer dropped out (NCCL watchdog, `nccl-timeout`); the engine
 * does not recover in place, so drain and restart it (gateways.md §10). Disruptive.
 */
import type { FailureType, MitigationContext, MitigationResult, MitigationStrategy } from '../types.js'
import { abortedBeforeActing, OptionReader, result } from './common.js'
import { DrainRestart } from './drain-restart.js'

export interface RestartNCCLOptions {
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

const kName = 'RestartNCCL'

export class RestartNCCL implements MitigationStrategy {
  readonly name = kName
  readonly handles: readonly FailureType[]
  readonly disruptive = true
  readonly drainTimeoutMs: number
  readonly restoreAfterRestart: boolean
  readonly #choreography = new DrainRestart()

  constructor(options?: RestartNCCLOptions) {
    const o = new OptionReader(kName, options)
    this.drainTimeoutMs = o.nonNegative('drainTimeoutMs', 30_000)
    this.restoreAfterRestart = o.boolean('restoreAfterRestart', true)
    this.handles = o.failureTypes('handles', ['network-failure'])
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
      `${kName}: ${ctx.trigger.detail}`,
      undefined,
      { drainTimeoutMs: this.drainTimeoutMs, restoreAfterRestart: this.restoreAfterRestart },
      actions,
    )
  }

  async rollback(ctx: MitigationContext): Promise<void> {
    this.#choreography.restore(ctx)
  }
}
