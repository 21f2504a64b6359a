/**
 * ReduceBatchSize: vLLM cannot change `max_num_seqs` while it runs, so lower the concurrency the
 * gateway admits instead (an admission cap). Not disruptive: requests over the cap queue or are
 * shed by the gateway. When the cap is not enough, `RestartWithSmallerBatch` restarts vLLM with a
 * smaller `--max-num-seqs`; the two share a `CapLedger` so the restart only follows a cap.
 */
import type { FailureType, MitigationContext, MitigationResult, MitigationStrategy } from '../types.js'
import {
  abortedBeforeActing,
  errorText,
  kvCacheUsage,
  OptionReader,
  requestsRunning,
  result,
} from './common.js'

/** A cap one strategy set on a replica: its limit and when (`ctx.now()`, ms). */
export interface CapEntry {
  limit: number
  at: number
}

/** Which replicas ReduceBatchSize capped, and when: what RestartWithSmallerBatch escalates from. */
export class CapLedger {
  readonly #entries = new Map<string, CapEntry>()

  record(replica: string, limit: number, at: number): void {
    this.#entries.set(replica, { limit, at })
  }

  get(replica: string): CapEntry | null {
    return this.#entries.get(replica) ?? null
  }

  clear(replica: string): void {
    this.#entries.delete(replica)
  }
}

export interface ReduceBatchSizeOptions {
  /** Cap at this fraction of the requests running when the KV usage is unknown or not the issue (default 0.7). */
  factor?: number
  /** KV usage to aim for: with KV usage `kv` known, the cap is running × target / kv (default 0.85). */
  targetKvUsage?: number
  /** The lowest cap (default 1). */
  minCap?: number
  /** Shared with RestartWithSmallerBatch (`builtinStrategies` does this). */
  ledger?: CapLedger
  handles?: readonly FailureType[]
}

const kName = 'ReduceBatchSize'
/** KV usage tells how far to cut only when the KV cache (or GPU memory) is what runs out. */
const kKvDriven: ReadonlySet<FailureType> = new Set(['kv-exhaustion', 'oom'])

export class ReduceBatchSize implements MitigationStrategy {
  readonly name = kName
  readonly handles: readonly FailureType[]
  readonly disruptive = false
  /** When the failure starts under the cap anyway, a cap was not enough: restart with a smaller batch. */
  readonly escalatesTo = 'RestartWithSmallerBatch'
  readonly factor: number
  readonly targetKvUsage: number
  readonly minCap: number
  readonly ledger: CapLedger

  constructor(options?: ReduceBatchSizeOptions) {
    const o = new OptionReader(kName, options)
    this.factor = o.fraction('factor', 0.7)
    this.targetKvUsage = o.fraction('targetKvUsage', 0.85)
    this.minCap = o.positiveInt('minCap', 1)
    this.ledger = o.object('ledger', () => new CapLedger())
    this.handles = o.failureTypes('handles', [
      'kv-exhaustion',
      'oom',
      'slo-violation',
      'queue-overflow',
      // A smaller batch draws less power: the GPU cools while the cooling is degraded.
      'thermal-throttle',
    ])
  }

  async execute(ctx: MitigationContext): Promise<MitigationResult> {
    const actions: string[] = []
    if (ctx.signal.aborted) return abortedBeforeActing(ctx, actions)
    const { replica } = ctx
    const admission = ctx.actuators.admission
    if (admission === null)
      return result('SKIPPED', `no admission actuator (no gateway embedded): cannot cap ${replica}`, actions)
    const running = requestsRunning(ctx.checkpoint, replica)
    if (running === null)
      return result(
        'SKIPPED',
        `no reading of the requests running on ${replica}: no basis for a cap`,
        actions,
      )
    if (running === 0)
      return result('SKIPPED', `nothing runs on ${replica}: no concurrency to lower`, actions)
    const kv = kvCacheUsage(ctx.checkpoint, replica)
    const byKv = kv !== null && kv > 0 && kKvDriven.has(ctx.failureType)
    const f = byKv ? Math.min(1, this.targetKvUsage / kv) : this.factor
    const limit = Math.max(this.minCap, Math.floor(running * f))
    const basis = byKv
      ? `${running} running, kv ${kv.toFixed(2)} → ${this.targetKvUsage}`
      : `${running} running × ${f}`
    try {
      admission.cap(replica, limit, `${kName}: ${ctx.trigger.detail}`)
    } catch (err) {
      return result('FAILURE', `cap ${replica} at ${limit} failed: ${errorText(err)}`, actions)
    }
    actions.push(`cap ${replica} at ${limit}`)
    this.ledger.record(replica, limit, ctx.now())
    return result('SUCCESS', `capped ${replica} at ${limit} (${basis})`, actions)
  }

  async rollback(ctx: MitigationContext): Promise<void> {
    this.ledger.clear(ctx.replica)
    ctx.actuators.admission?.release(ctx.replica)
  }
}
