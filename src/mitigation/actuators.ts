/**
 * Production actuators: adapters that turn the gateway's picker, the vLLM supervisor, nvidia-smi's
 * process list, a webhook and the Kubernetes scale subresource into the levers strategies pull.
 * (`AdmissionController` and `VllmControlClient` are actuators as they are; the admission
 * controller is also the `ShedActuator`.)
 */
import { InvalidArgumentError, MitigationError } from '../errors.js'
import type { ReplicaPicker } from '../gateway/picker.js'
import type { ExitInfo } from '../vllm/supervisor.js'
import type { RestartActuator, RoutingActuator } from './types.js'

export { type NvidiaSmiProcessesOptions, processesFromNvidiaSmi, processesFromNvml } from './processes.js'
export {
  type KubernetesScalerOptions,
  kubernetesScaler,
  type WebhookScaleBody,
  type WebhookScalerOptions,
  webhookScaler,
} from './scalers.js'
export type { ShedActuator } from './types.js'

// ---- routing ------------------------------------------------------------------------------------

/** The picker's weights as a RoutingActuator. */
export function routingFromPicker(picker: Pick<ReplicaPicker, 'setWeight' | 'snapshot'>): RoutingActuator {
  const set = new Map<string, number>()
  return {
    setWeight(replica, multiplier) {
      picker.setWeight(replica, multiplier)
      set.set(replica, multiplier)
    },
    weight(replica) {
      const current = picker.snapshot().find((e) => e.name === replica)
      return current?.weight ?? set.get(replica) ?? 1
    },
  }
}

// ---- restart ------------------------------------------------------------------------------------

const kSeqFlags = ['--max-num-seqs', '--max_num_seqs']

/** The `--max-num-seqs` in vLLM arguments (the last one wins, as in argparse), null when absent. */
export function maxNumSeqsOf(args: readonly string[]): number | null {
  let value: string | null = null
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!
    if (kSeqFlags.includes(a)) value = args[i + 1] ?? null
    else {
      const eq = a.indexOf('=')
      if (eq > 0 && kSeqFlags.includes(a.slice(0, eq))) value = a.slice(eq + 1)
    }
  }
  if (value === null || !/^\d+$/.test(value)) return null
  return Number(value)
}

/** `args` with every `--max-num-seqs` (either form) set to `n`, or `--max-num-seqs n` appended. */
export function withMaxNumSeqs(args: readonly string[], n: number): string[] {
  if (!Number.isInteger(n) || n < 1)
    throw new InvalidArgumentError('withMaxNumSeqs: n must be a positive integer')
  const out = [...args]
  let found = false
  for (let i = 0; i < out.length; i++) {
    const a = out[i]!
    if (kSeqFlags.includes(a)) {
      found = true
      if (i + 1 < out.length) out[i + 1] = String(n)
      else out.push(String(n))
      i++
    } else {
      const eq = a.indexOf('=')
      if (eq > 0 && kSeqFlags.includes(a.slice(0, eq))) {
        found = true
        out[i] = `${a.slice(0, eq)}=${n}`
      }
    }
  }
  if (!found) out.push('--max-num-seqs', String(n))
  return out
}

/** What `restartFromSupervisor` needs of a `VllmSupervisor`. */
export interface RestartableSupervisor {
  readonly args: readonly string[]
  readonly pid: number | null
  readonly lastExit: ExitInfo | null
  restart(reason: string, options?: { args?: readonly string[] }): Promise<void>
}

/**
 * The supervisor as a RestartActuator: a restart with `maxNumSeqs` rewrites `--max-num-seqs` in
 * the arguments (for this and later starts). Rejects when no vLLM runs once the restart is through.
 */
export function restartFromSupervisor(sup: RestartableSupervisor): RestartActuator {
  return {
    async restart(reason, overrides) {
      const n = overrides?.maxNumSeqs
      if (n !== undefined && (!Number.isInteger(n) || n < 1))
        throw new InvalidArgumentError('restart: overrides.maxNumSeqs must be a positive integer')
      await sup.restart(reason, n === undefined ? undefined : { args: withMaxNumSeqs(sup.args, n) })
      if (sup.pid === null)
        throw new MitigationError(
          `vLLM is not running after the restart: ${sup.lastExit?.message ?? 'the supervisor is not started or stopped'}`,
        )
    },
    maxNumSeqs: () => maxNumSeqsOf(sup.args),
  }
}
