/**
 * The mitigation side's contracts: what a strategy is, the situation it acts in, the actuators it
 * acts through, and what it reports. Strategies never reach into the monitor; everything they may
 * touch is an actuator in `MitigationContext.actuators`, so the same strategy drives a real
 * gateway and vLLM server in production and the simulated fleet in `bench/mitigation`.
 *
 * An actuator that is absent (`null`) means the deployment lacks that lever (no gateway embedded,
 * vLLM not supervised, no webhook configured): the strategy answers SKIPPED and says which.
 */
import type { AdmissionActuator } from '../gateway/types.js'
import type { Checkpoint, FailureType, Prediction } from '../telemetry/types.js'

export type { FailureType }

/** How an action ended. SKIPPED: it did not act (missing actuator, dry run, nothing to do). */
export type MitigationOutcome = 'SUCCESS' | 'PARTIAL' | 'FAILURE' | 'SKIPPED'

export const MITIGATION_OUTCOMES: readonly MitigationOutcome[] = ['SUCCESS', 'PARTIAL', 'FAILURE', 'SKIPPED']

/** What `execute` returns: the outcome of the action itself (did the levers move), not of the incident. */
export interface MitigationResult {
  outcome: MitigationOutcome
  /** In words, for the audit log and events: what was done, or why not. */
  detail: string
  /** Each lever pulled, in order ("cap r0 at 12", "POST /reset_prefix_cache: 200"). */
  actions: string[]
}

/** Shifts traffic between replicas (the gateway's picker). */
export interface RoutingActuator {
  /** Multiplies the replica's share of new requests (1 = normal, 0 = none). */
  setWeight(replica: string, multiplier: number): void
  /** The multiplier in force (1 when never set). */
  weight(replica: string): number
}

/** vLLM's dev-mode control endpoints for one replica (`VllmControlClient` fits). */
export interface ControlActuator {
  resetPrefixCache(options?: { resetRunningRequests?: boolean }): Promise<ControlCallResult>
  sleep(options?: { level?: 0 | 1 | 2 }): Promise<ControlCallResult>
  wakeUp(options?: { tags?: readonly string[] }): Promise<ControlCallResult>
}

export type ControlCallResult =
  | { ok: true; status: number }
  | { ok: false; error: string; unavailable?: boolean }

/** Restarts one replica's vLLM (the supervisor). */
export interface RestartActuator {
  /**
   * Stops vLLM gracefully and starts it again; with `maxNumSeqs`, the new process runs with that
   * `--max-num-seqs`. Resolves once the new process was started (not once it serves).
   */
  restart(reason: string, overrides?: { maxNumSeqs?: number }): Promise<void>
  /** The `--max-num-seqs` the process runs with now, null when unknown. */
  maxNumSeqs(): number | null
}

/** Other processes on a replica's GPUs (co-tenants), and the lever to end one. */
export interface ProcessActuator {
  /** Processes on the replica's GPUs that are not the replica's vLLM, largest memory first. */
  cotenants(replica: string): Promise<Array<{ pid: number; name: string; memoryUsedBytes: number | null }>>
  /** Sends SIGTERM (then SIGKILL after a grace period); true when the process is gone. */
  terminate(pid: number): Promise<boolean>
}

/** What a scale request says: who needs what, and why. */
export interface ScaleRequest {
  replica: string
  failureType: FailureType
  /** Replicas wanted in total (the current count + 1 by default). */
  desiredReplicas: number
  reason: string
  probability: number | null
  timeToFailureS: number | null
}

/** Asks the platform for capacity (a webhook, the Kubernetes scale subresource). */
export interface ScaleActuator {
  readonly name: string
  scale(request: ScaleRequest): Promise<{ ok: boolean; detail: string }>
}

/**
 * Load shedding per replica: requests below a priority are turned away at once (429 with
 * Retry-After) while it is in force, saturated or not (`AdmissionController` fits).
 */
export interface ShedActuator {
  shed(replica: string, belowPriority: number, reason: string): void
  unshed(replica: string): void
}

export interface MitigationActuators {
  admission: AdmissionActuator | null
  routing: RoutingActuator | null
  /** The replica's control client, null when it has none. */
  control(replica: string): ControlActuator | null
  /** The replica's supervisor, null when vLLM is not supervised by this monitor. */
  supervisor(replica: string): RestartActuator | null
  processes: ProcessActuator | null
  scalers: readonly ScaleActuator[]
  /** Sheds low-priority requests (the embedded gateway's admission); absent or null without one. */
  shedding?: ShedActuator | null
}

/** Why the orchestrator is acting. */
export interface MitigationTrigger {
  kind: 'prediction' | 'native-alert' | 'event'
  /** In words ("kv-exhaustion p=0.93 in 30 s", "GPU 0 memory 97 % (native watch)"). */
  detail: string
}

/** The situation a strategy acts in. */
export interface MitigationContext {
  /** The replica at risk. */
  replica: string
  failureType: FailureType
  /** The prediction that triggered this, null for a native alert or event. */
  prediction: Prediction | null
  trigger: MitigationTrigger
  /** The newest checkpoint (null when none was taken yet). */
  checkpoint: Checkpoint | null
  /** Every replica the monitor knows, the one at risk included. */
  replicas: readonly string[]
  actuators: MitigationActuators
  /** Clock of the monitor, ms. */
  now(): number
  /** Aborted when the orchestrator closes or the action's deadline passes. */
  signal: AbortSignal
}

/** A way to mitigate one or more failure types. */
export interface MitigationStrategy {
  readonly name: string
  readonly handles: readonly FailureType[]
  /** Interrupts requests (restart, drain): at most one at a time per replica, fleet-wide bounds apply. */
  readonly disruptive: boolean
  /**
   * The strategy to run next when this one is in place and the failure starts anyway (a cap the
   * storm got past → a restart with a smaller batch). The orchestrator escalates once per action.
   */
  readonly escalatesTo?: string
  execute(ctx: MitigationContext): Promise<MitigationResult>
  /** Undoes what execute did (caps, weights) once the risk has passed or the action is judged. */
  rollback?(ctx: MitigationContext): Promise<void>
}
