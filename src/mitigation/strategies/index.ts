/**
 * The built-in mitigation strategies. `builtinStrategies()` makes one of each, with
 * ReduceBatchSize and RestartWithSmallerBatch sharing a CapLedger (the restart escalates a cap).
 */
import { InvalidOptionError } from '../../errors.js'
import type { MitigationStrategy } from '../types.js'
import {
  EmergencyGPUMemoryCleanup,
  type EmergencyGPUMemoryCleanupOptions,
} from './emergency-gpu-memory-cleanup.js'
import { RebalanceLoad, type RebalanceLoadOptions } from './rebalance-load.js'
import { CapLedger, ReduceBatchSize, type ReduceBatchSizeOptions } from './reduce-batch-size.js'
import { RestartNCCL, type RestartNCCLOptions } from './restart-nccl.js'
import { RestartReplica, type RestartReplicaOptions } from './restart-replica.js'
import { RestartWithSmallerBatch, type RestartWithSmallerBatchOptions } from './restart-with-smaller-batch.js'
import { ScaleResources, type ScaleResourcesOptions } from './scale-resources.js'
import { ShedLoad, type ShedLoadOptions } from './shed-load.js'

export {
  EmergencyGPUMemoryCleanup,
  type EmergencyGPUMemoryCleanupOptions,
} from './emergency-gpu-memory-cleanup.js'
export { RebalanceLoad, type RebalanceLoadOptions } from './rebalance-load.js'
export {
  type CapEntry,
  CapLedger,
  ReduceBatchSize,
  type ReduceBatchSizeOptions,
} from './reduce-batch-size.js'
export { RestartNCCL, type RestartNCCLOptions } from './restart-nccl.js'
export { RestartReplica, type RestartReplicaOptions } from './restart-replica.js'
export { RestartWithSmallerBatch, type RestartWithSmallerBatchOptions } from './restart-with-smaller-batch.js'
export { ScaleResources, type ScaleResourcesOptions } from './scale-resources.js'
export { ShedLoad, type ShedLoadOptions } from './shed-load.js'

/** Options per strategy, keyed by the strategy's name; `false` leaves that strategy out. */
export interface BuiltinStrategiesOptions {
  EmergencyGPUMemoryCleanup?: EmergencyGPUMemoryCleanupOptions | false
  ReduceBatchSize?: ReduceBatchSizeOptions | false
  RestartWithSmallerBatch?: RestartWithSmallerBatchOptions | false
  RestartNCCL?: RestartNCCLOptions | false
  RestartReplica?: RestartReplicaOptions | false
  RebalanceLoad?: RebalanceLoadOptions | false
  ScaleResources?: ScaleResourcesOptions | false
  ShedLoad?: ShedLoadOptions | false
}

const kNames = [
  'EmergencyGPUMemoryCleanup',
  'ReduceBatchSize',
  'RestartWithSmallerBatch',
  'RestartNCCL',
  'RestartReplica',
  'RebalanceLoad',
  'ScaleResources',
  'ShedLoad',
] as const

/** One instance of each built-in strategy, in the order above. */
export function builtinStrategies(options: BuiltinStrategiesOptions = {}): MitigationStrategy[] {
  if (options === null || typeof options !== 'object')
    throw new InvalidOptionError('builtinStrategies: options must be an object')
  for (const key of Object.keys(options)) {
    if (!(kNames as readonly string[]).includes(key))
      throw new InvalidOptionError(
        `builtinStrategies: unknown strategy "${key}" (known: ${kNames.join(', ')})`,
      )
  }
  const o = options
  const reduce = o.ReduceBatchSize
  const restart = o.RestartWithSmallerBatch
  const given = typeof reduce === 'object' && reduce !== null ? reduce.ledger : undefined
  const ledger = given ?? new CapLedger()
  const out: MitigationStrategy[] = []
  if (o.EmergencyGPUMemoryCleanup !== false)
    out.push(new EmergencyGPUMemoryCleanup(o.EmergencyGPUMemoryCleanup))
  if (reduce !== false) out.push(new ReduceBatchSize(withLedger(reduce, ledger)))
  if (restart !== false) out.push(new RestartWithSmallerBatch(withLedger(restart, ledger)))
  if (o.RestartNCCL !== false) out.push(new RestartNCCL(o.RestartNCCL))
  if (o.RestartReplica !== false) out.push(new RestartReplica(o.RestartReplica))
  if (o.RebalanceLoad !== false) out.push(new RebalanceLoad(o.RebalanceLoad))
  if (o.ScaleResources !== false) out.push(new ScaleResources(o.ScaleResources))
  if (o.ShedLoad !== false) out.push(new ShedLoad(o.ShedLoad))
  return out
}

/** The options with `ledger` filled in; anything that is not an object passes through to be rejected. */
function withLedger<T extends { ledger?: CapLedger }>(options: T | undefined, ledger: CapLedger): T {
  if (options === undefined) return { ledger } as T
  if (options === null || typeof options !== 'object') return options
  return { ...options, ledger: options.ledger ?? ledger }
}
