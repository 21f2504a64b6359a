/**
 * ShedLoad: turn low-priority requests to the replica away at once (429 with Retry-After) instead
 * of queueing them, so the important ones still get through. Not disruptive to admitted requests.
 */
import type { FailureType, MitigationContext, MitigationResult, MitigationStrategy } from '../types.js'
import { abortedBeforeActing, errorText, OptionReader, result } from './common.js'

export interface ShedLoadOptions {
  /** Requests with a priority below this are shed (default 0: GIE's "priority < 0 is sheddable"). */
  belowPriority?: number
  handles?: readonly FailureType[]
}

const kName = 'ShedLoad'

export class ShedLoad implements MitigationStrategy {
  readonly name = kName
  readonly handles: readonly FailureType[]
  readonly disruptive = false
  readonly belowPriority: number

  constructor(options?: ShedLoadOptions) {
    const o = new OptionReader(kName, options)
    this.belowPriority = o.number('belowPriority', 0)
    this.handles = o.failureTypes('handles', ['slo-violation', 'queue-overflow', 'kv-exhaustion'])
  }

  async execute(ctx: MitigationContext): Promise<MitigationResult> {
    const actions: string[] = []
    if (ctx.signal.aborted) return abortedBeforeActing(ctx, actions)
    const { replica } = ctx
    const shedding = ctx.actuators.shedding ?? null
    if (shedding === null)
      return result(
        'SKIPPED',
        `no shedding actuator (no gateway embedded): cannot shed load on ${replica}`,
        actions,
      )
    try {
      shedding.shed(replica, this.belowPriority, `${kName}: ${ctx.trigger.detail}`)
    } catch (err) {
      return result('FAILURE', `shedding on ${replica} failed: ${errorText(err)}`, actions)
    }
    actions.push(`shed ${replica} below priority ${this.belowPriority}`)
    return result(
      'SUCCESS',
      `${replica} answers 429 to requests with priority < ${this.belowPriority}`,
      actions,
    )
  }

  async rollback(ctx: MitigationContext): Promise<void> {
    ctx.actuators.shedding?.unshed(ctx.replica)
  }
}
