/**
 * Assembles the mitigation side from the monitor's resolved options: the learner (restored from its
 * state file), the safety gate, the audit log, the built-in strategies plus the user's, the
 * actuators, and — when `autoMitigate` — the orchestrator. The monitor owns one of these; the
 * closed-loop simulator builds its own with the simulator's actuators.
 */
import type { SloOptions } from '../forecast/spec.js'
import type { ResolvedMonitorOptions } from '../monitor/options.js'
import type { MonitorEvent } from '../telemetry/types.js'
import { VllmControlClient } from '../vllm/control.js'
import { kubernetesScaler, webhookScaler } from './actuators.js'
import { type AuditEntry, AuditLog } from './audit.js'
import { ContinuousLearner } from './learner.js'
import { MitigationOrchestrator, type OrchestratorOptions } from './orchestrator.js'
import { SafetyGate } from './safety.js'
import { builtinStrategies } from './strategies/index.js'
import type { MitigationActuators, MitigationStrategy } from './types.js'

export type MitigationOptions = ResolvedMonitorOptions['mitigation']

export interface MitigationRuntimeInput {
  options: MitigationOptions
  /** Build the orchestrator (the monitor's `autoMitigate`). */
  act: boolean
  threshold?: number | undefined
  slo: SloOptions
  now: () => number
  /** Replica name → base URL, for the control clients. */
  replicaUrl: (replica: string) => string | null
  emit: (event: MonitorEvent) => void
  reportError: (code: string, message: string) => void
  reportOutcome?: OrchestratorOptions['reportOutcome']
  seed?: number
}

/** The audit log as the orchestrator sees it: appends queue until the file is open. */
class DeferredAudit {
  private log: Promise<AuditLog | null>
  constructor(path: string, reportError: (code: string, message: string) => void) {
    this.log = AuditLog.open(path).catch((err: unknown) => {
      reportError('VLLM_MONITOR_AUDIT_LOG', err instanceof Error ? err.message : String(err))
      return null
    })
  }
  async append(entry: Omit<AuditEntry, 'at'>): Promise<void> {
    const log = await this.log
    await log?.append(entry)
  }
  async close(): Promise<void> {
    await (await this.log)?.close()
  }
}

export class MitigationRuntime {
  readonly learner: ContinuousLearner
  readonly orchestrator: MitigationOrchestrator | null
  readonly safety: SafetyGate
  /** What strategies act through. The monitor fills in the gateway's levers when one is created. */
  readonly actuators: MitigationActuators
  /** Resolves once the learner's state was restored (never rejects). */
  readonly ready: Promise<void>
  private readonly audit: DeferredAudit | null
  private readonly controls = new Map<string, VllmControlClient>()
  private readonly reportError: (code: string, message: string) => void

  constructor(input: MitigationRuntimeInput) {
    const o = input.options
    this.reportError = input.reportError
    this.learner = new ContinuousLearner({
      statePath: o.learnerState ?? null,
      explore: o.explore,
      ...(input.seed === undefined ? {} : { seed: input.seed }),
      now: input.now,
    })
    for (const s of builtinStrategies()) this.learner.registerStrategy(s.name, s)
    for (const s of o.strategies as MitigationStrategy[]) {
      try {
        this.learner.registerStrategy(s.name, s)
      } catch (err) {
        input.reportError(
          'VLLM_MONITOR_INVALID_OPTION',
          `options.mitigation.strategies: ${(err as Error).message}`,
        )
      }
    }
    this.ready = this.learner.load().then(() => {
      const e = this.learner.lastError
      if (e !== null)
        input.reportError((e as { code?: string }).code ?? 'VLLM_MONITOR_LEARNER_STATE', e.message)
    })
    const given = (o.actuators ?? {}) as Partial<MitigationActuators>
    this.actuators = {
      admission: null,
      routing: null,
      shedding: null,
      control: (replica) => {
        let c = this.controls.get(replica)
        if (c === undefined) {
          const url = input.replicaUrl(replica)
          if (url === null) return null
          c = new VllmControlClient({ url })
          this.controls.set(replica, c)
        }
        return c
      },
      supervisor: () => null,
      processes: null,
      scalers: [
        ...(o.webhookUrl === undefined ? [] : [webhookScaler({ url: o.webhookUrl })]),
        ...(o.kubernetes === undefined ? [] : [kubernetesScaler(stripUndefined(o.kubernetes))]),
      ],
      ...given,
    }
    this.safety = new SafetyGate({
      cooldownMs: o.cooldownMs,
      maxConcurrentRestarts: o.maxConcurrentRestarts,
      maxActionsPerHour: o.maxActionsPerHour,
      dryRun: o.dryRun,
      approveAll: o.approveAll,
      ...(o.approve === undefined ? {} : { approve: o.approve as never }),
      now: input.now,
    })
    this.audit = o.auditLog === undefined ? null : new DeferredAudit(o.auditLog, input.reportError)
    this.orchestrator = input.act
      ? new MitigationOrchestrator({
          learner: this.learner,
          actuators: this.actuators,
          safety: this.safety,
          audit: this.audit,
          ...(input.threshold === undefined ? {} : { threshold: input.threshold }),
          holdout: o.holdout,
          slo: input.slo,
          now: input.now,
          ...(input.seed === undefined ? {} : { seed: input.seed }),
          ready: this.ready,
          emit: input.emit,
          reportError: input.reportError,
          ...(input.reportOutcome === undefined ? {} : { reportOutcome: input.reportOutcome }),
        })
      : null
  }

  async close(): Promise<void> {
    await this.ready
    if (this.orchestrator !== null) await this.orchestrator.close()
    else
      await this.learner.save().catch((err: unknown) => {
        this.reportError(
          'VLLM_MONITOR_LEARNER_STATE',
          `saving the learner failed: ${err instanceof Error ? err.message : String(err)}`,
        )
      })
    await this.audit?.close()
  }
}

/** Zod leaves absent optional keys as `undefined`; the scalers treat a present key as given. */
function stripUndefined<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T
}
