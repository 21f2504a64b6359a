/**
 * ScaleResources: ask the platform for another replica through every configured scaler (a webhook,
 * the Kubernetes scale subresource). Not disruptive; nothing to roll back (scaling in is the
 * platform's call).
 */
import type {
  FailureType,
  MitigationContext,
  MitigationResult,
  MitigationStrategy,
  ScaleRequest,
} from '../types.js'
import { abortedBeforeActing, abortText, errorText, OptionReader, result, unlessAborted } from './common.js'

export interface ScaleResourcesOptions {
  /** Replicas asked for beyond the ones known (default 1). */
  extraReplicas?: number
  handles?: readonly FailureType[]
}

const kName = 'ScaleResources'

export class ScaleResources implements MitigationStrategy {
  readonly name = kName
  readonly handles: readonly FailureType[]
  readonly disruptive = false
  readonly extraReplicas: number

  constructor(options?: ScaleResourcesOptions) {
    const o = new OptionReader(kName, options)
    this.extraReplicas = o.positiveInt('extraReplicas', 1)
    this.handles = o.failureTypes('handles', [
      'kv-exhaustion',
      'queue-overflow',
      'slo-violation',
      'hardware-failure',
      'thermal-throttle',
    ])
  }

  async execute(ctx: MitigationContext): Promise<MitigationResult> {
    const actions: string[] = []
    if (ctx.signal.aborted) return abortedBeforeActing(ctx, actions)
    const scalers = ctx.actuators.scalers
    if (scalers.length === 0)
      return result('SKIPPED', 'no scaler configured (webhook or Kubernetes)', actions)
    const request: ScaleRequest = {
      replica: ctx.replica,
      failureType: ctx.failureType,
      desiredReplicas: ctx.replicas.length + this.extraReplicas,
      reason: `${kName}: ${ctx.trigger.detail}`,
      probability: ctx.prediction?.probability ?? null,
      timeToFailureS: ctx.prediction?.timeToFailureS ?? null,
    }
    const settled = await Promise.all(
      scalers.map(async (s) => {
        actions.push(`scale via ${s.name} to ${request.desiredReplicas}`)
        try {
          const r = await unlessAborted(
            Promise.resolve().then(() => s.scale(request)),
            ctx.signal,
          )
          if (r.aborted) return { ok: false, detail: `${s.name}: aborted (${abortText(ctx.signal)})` }
          return { ok: r.value.ok === true, detail: `${s.name}: ${r.value.detail}` }
        } catch (err) {
          return { ok: false, detail: `${s.name}: ${errorText(err)}` }
        }
      }),
    )
    const ok = settled.filter((r) => r.ok).length
    const outcome = ok === settled.length ? 'SUCCESS' : ok > 0 ? 'PARTIAL' : 'FAILURE'
    return result(outcome, settled.map((r) => r.detail).join('; '), actions)
  }
}
