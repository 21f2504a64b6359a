/**
 * RestartNCCL: a collective hung or a peer dropped out (NCCL watchdog, `nccl-timeout`); the engine
 * does not recover in place, so drain and restart it (gateways.md §10). Disruptive.
 */
import { RestartStrategy, type RestartStrategyOptions } from './drain-restart.js'

export type RestartNCCLOptions = RestartStrategyOptions

export class RestartNCCL extends RestartStrategy {
  readonly name = 'RestartNCCL'

  constructor(options?: RestartNCCLOptions) {
    super('RestartNCCL', ['network-failure'], options)
  }
}
