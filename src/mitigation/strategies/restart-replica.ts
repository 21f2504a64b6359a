/**
 * RestartReplica: some failures live in the process and leave with it: vLLM's own memory creeping
 * up until CUDA OOM (#17243), a step time that drifts with uptime (#16985). Drain, then restart,
 * before the failure does it uncleanly with requests in flight (gateways.md §10). Disruptive.
 */
import type { FailureType, MitigationContext, MitigationResult, MitigationStrategy } from '../types.js'
import { abortedBeforeActing, OptionReader, result } from './common.js'
import { DrainRestart } from './drain-restart.js'

export interface RestartReplicaOptions {
  /** How long to wait for in-flight requests before restarting anyway (default 30 000 ms). */
  drainTimeoutMs?: number
  /** Undrain and restore the routing weight once the restart resolved (default true). */
  restoreAfterRestart?: boolean
  handles?: readonly FailureType[]
}

const kName = 'RestartReplica'

export class RestartReplica implements MitigationStrategy {
  readonly name = kName
  readonly handles: readonly FailureType[]
  readonly disruptive = true
  readonly drainTimeoutMs: number
  readonly restoreAfterRestart: boolean
  readonly #choreography = new DrainRestart()

  constructor(options?: RestartReplicaOptions) {
    const o = new OptionReader(kName, options)
    this.drainTimeoutMs = o.nonNegative('drainTimeoutMs', 30_000)
    this.restoreAfterRestart = o.boolean('restoreAfterRestart', true)
    this.handles = o.failureTypes('handles', ['oom', 'slo-violation', 'network-failure'])
  }

  async execute(ctx: MitigationContext): Promise<MitigationResult> {
    const actions: string[] = []
    if (ctx.signal.aborted) return abortedBeforeActing(ctx, actions)
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
