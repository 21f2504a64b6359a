/**
 * RestartReplica: some failures live in the process and leave with it: vLLM's own memory creeping
 * up until CUDA OOM (#17243), a step time that drifts with uptime (#16985). Drain, then restart,
 * before the failure does it uncleanly with requests in flight (gateways.md §10). Disruptive.
 */
import { RestartStrategy, type RestartStrategyOptions } from './drain-restart.js'

export type RestartReplicaOptions = RestartStrategyOptions

export class RestartReplica extends RestartStrategy {
  readonly name = 'RestartReplica'

  constructor(options?: RestartReplicaOptions) {
    super('RestartReplica', ['oom', 'slo-violation', 'network-failure'], options)
  }
}
