/**
 * RebalanceLoad: send less of the new traffic to the replica at risk (its routing weight), as long
 * as another replica serves and can take it. A failed GPU gets weight 0: the picker then chooses it
 * only when nothing else is eligible.
 */
import type { FailureType, MitigationContext, MitigationResult, MitigationStrategy } from '../types.js'
import { abortedBeforeActing, errorText, isServing, OptionReader, result } from './common.js'

export interface RebalanceLoadOptions {
  /** The replica's routing weight while at risk (default 0.25; 1 is normal). */
  weight?: number
  /** The weight for a hardware failure (default 0). */
  hardwareFailureWeight?: number
  /**
   * The weight for thermal throttling (default 0.1): heat follows the work, and with degraded
   * cooling a quarter of the traffic still heats the GPU past its slowdown point (bench/mitigation);
   * a trickle keeps it warm and serving.
   */
  thermalWeight?: number
  handles?: readonly FailureType[]
}

const kName = 'RebalanceLoad'

export class RebalanceLoad implements MitigationStrategy {
  readonly name = kName
  readonly handles: readonly FailureType[]
  readonly disruptive = false
  readonly weight: number
  readonly hardwareFailureWeight: number
  readonly thermalWeight: number
  /** Per replica: the weight before this strategy lowered it. */
  readonly #previous = new Map<string, number>()

  constructor(options?: RebalanceLoadOptions) {
    const o = new OptionReader(kName, options)
    this.weight = o.nonNegative('weight', 0.25)
    this.hardwareFailureWeight = o.nonNegative('hardwareFailureWeight', 0)
    this.thermalWeight = o.nonNegative('thermalWeight', 0.1)
    this.handles = o.failureTypes('handles', [
      'kv-exhaustion',
      'thermal-throttle',
      'hardware-failure',
      'slo-violation',
      'queue-overflow',
      'oom',
    ])
  }

  async execute(ctx: MitigationContext): Promise<MitigationResult> {
    const actions: string[] = []
    if (ctx.signal.aborted) return abortedBeforeActing(ctx, actions)
    const { replica } = ctx
    const routing = ctx.actuators.routing
    if (routing === null)
      return result(
        'SKIPPED',
        `no routing actuator (no gateway embedded): cannot shift load off ${replica}`,
        actions,
      )
    // A replica that serves but is weighted out already would not take the load either.
    const others = ctx.replicas.filter(
      (r) => r !== replica && isServing(ctx.checkpoint, r) && routing.weight(r) > 0,
    )
    if (others.length === 0) return result('SKIPPED', 'no other replica to take the load', actions)
    const weight =
      ctx.failureType === 'hardware-failure'
        ? this.hardwareFailureWeight
        : ctx.failureType === 'thermal-throttle'
          ? this.thermalWeight
          : this.weight
    let prev: number
    try {
      prev = routing.weight(replica)
      routing.setWeight(replica, weight)
    } catch (err) {
      return result(
        'FAILURE',
        `setting the weight of ${replica} to ${weight} failed: ${errorText(err)}`,
        actions,
      )
    }
    // Repeated runs keep the weight from before the first one, so rollback goes back to it.
    if (!this.#previous.has(replica)) this.#previous.set(replica, prev)
    actions.push(`weight ${replica} ${weight}`)
    return result(
      'SUCCESS',
      `weight of ${replica} ${prev} → ${weight}; ${others.join(', ')} take${others.length === 1 ? 's' : ''} the rest`,
      actions,
    )
  }

  async rollback(ctx: MitigationContext): Promise<void> {
    const prev = this.#previous.get(ctx.replica)
    const routing = ctx.actuators.routing
    if (routing === null) return
    routing.setWeight(ctx.replica, prev ?? 1)
    this.#previous.delete(ctx.replica)
  }
}
