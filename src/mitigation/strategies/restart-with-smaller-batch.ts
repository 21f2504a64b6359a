/**
 * RestartWithSmallerBatch: the escalation of ReduceBatchSize. When a cap set within the last
 * `escalateAfterMs` did not stop the failure being predicted, drain the replica and restart vLLM
 * with `--max-num-seqs` cut by `factor` (vLLM reads it only at start-up). Disruptive.
 */
import type { FailureType, MitigationContext, MitigationResult, MitigationStrategy } from '../types.js'
import { abortedBeforeActing, OptionReader, requestsRunning, result } from './common.js'
import { DrainRestart } from './drain-restart.js'
import { CapLedger } from './reduce-batch-size.js'

export interface RestartWithSmallerBatchOptions {
  /** The new `--max-num-seqs` is the current one times this (default 0.5). */
  factor?: number
  /** The lowest `--max-num-seqs` it restarts with (default 1). */
  minMaxNumSeqs?: number
  /** Escalate only when ReduceBatchSize capped the replica at most this long ago (default 600 000 ms). */
  escalateAfterMs?: number
  /** Without a recent cap in the ledger, answer SKIPPED instead of restarting (default true). */
  requirePriorCap?: boolean
  /** How long to wait for in-flight requests before restarting anyway (default 30 000 ms). */
  drainTimeoutMs?: number
  /** Undrain and restore the routing weight once the restart resolved (default true). */
  restoreAfterRestart?: boolean
  /** The ReduceBatchSize's ledger (`builtinStrategies` shares one). */
  ledger?: CapLedger
  handles?: readonly FailureType[]
}

const kName = 'RestartWithSmallerBatch'

export class RestartWithSmallerBatch implements MitigationStrategy {
  readonly name = kName
  readonly handles: readonly FailureType[]
  readonly disruptive = true
  readonly factor: number
  readonly minMaxNumSeqs: number
  readonly escalateAfterMs: number
  readonly requirePriorCap: boolean
  readonly drainTimeoutMs: number
  readonly restoreAfterRestart: boolean
  readonly ledger: CapLedger
  readonly #choreography = new DrainRestart()

  constructor(options?: RestartWithSmallerBatchOptions) {
    const o = new OptionReader(kName, options)
    this.factor = o.fraction('factor', 0.5)
    this.minMaxNumSeqs = o.positiveInt('minMaxNumSeqs', 1)
    // Long enough to cover the judge's stretched window (up to 3 × 120 s) while the cap stays in place.
    this.escalateAfterMs = o.nonNegative('escalateAfterMs', 600_000)
    this.requirePriorCap = o.boolean('requirePriorCap', true)
    this.drainTimeoutMs = o.nonNegative('drainTimeoutMs', 30_000)
    this.restoreAfterRestart = o.boolean('restoreAfterRestart', true)
    this.ledger = o.object('ledger', () => new CapLedger())
    this.handles = o.failureTypes('handles', ['kv-exhaustion', 'oom'])
  }

  async execute(ctx: MitigationContext): Promise<MitigationResult> {
    const actions: string[] = []
    if (ctx.signal.aborted) return abortedBeforeActing(ctx, actions)
    const { replica } = ctx
    const sup = ctx.actuators.supervisor(replica)
    if (sup === null)
      return result('SKIPPED', `no supervisor for ${replica}: vLLM is not run by this monitor`, actions)
    const cap = this.ledger.get(replica)
    const recent = cap !== null && ctx.now() - cap.at <= this.escalateAfterMs
    if (this.requirePriorCap && !recent)
      return result(
        'SKIPPED',
        `${replica} was not capped by ReduceBatchSize in the last ${this.escalateAfterMs} ms: cap it first`,
        actions,
      )
    const current = sup.maxNumSeqs() ?? cap?.limit ?? requestsRunning(ctx.checkpoint, replica)
    if (current === null || current < 1)
      return result('SKIPPED', `the --max-num-seqs of ${replica} is unknown (not in its arguments)`, actions)
    const next = Math.max(this.minMaxNumSeqs, Math.floor(current * this.factor))
    if (next >= current)
      return result(
        'SKIPPED',
        `--max-num-seqs of ${replica} is ${current}, not above the floor ${next}`,
        actions,
      )
    const r = await this.#choreography.run(
      ctx,
      sup,
      `${kName}: --max-num-seqs ${current} → ${next}: ${ctx.trigger.detail}`,
      { maxNumSeqs: next },
      { drainTimeoutMs: this.drainTimeoutMs, restoreAfterRestart: this.restoreAfterRestart },
      actions,
    )
    // The next escalation needs a fresh cap that did not help either.
    if (r.outcome === 'SUCCESS' || r.outcome === 'PARTIAL') this.ledger.clear(replica)
    return r
  }

  async rollback(ctx: MitigationContext): Promise<void> {
    this.#choreography.restore(ctx)
  }
}
