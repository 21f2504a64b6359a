/**
 * The levers of a simulated fleet as mitigation actuators: the `SimGateway` for admission, routing
 * and shedding, and per replica what the sim server's control endpoints, a supervisor and
 * nvidia-smi's process list would do to it.
 */
import { InvalidArgumentError } from '../errors.js'
import type {
  ControlActuator,
  ControlCallResult,
  MitigationActuators,
  ProcessActuator,
  RestartActuator,
} from '../mitigation/types.js'
import { DEV_MODE_OFF } from '../vllm/control.js'
import type { SimFleet } from './fleet.js'
import type { ShedActuator, SimGateway } from './gateway.js'
import type { SimReplica } from './replica.js'

/** Co-tenant processes get fake pids above any the simulated vLLM uses. */
const kCotenantPidBase = 3_000_000

export interface SimActuatorOptions {
  /** As the sim server's `devMode` (vLLM's `VLLM_SERVER_DEV_MODE=1`): without it the control endpoints 404. Default true. */
  devMode?: boolean
  /** As `vllm serve --enable-sleep-mode`: without it `/sleep` answers 500. Default false. */
  enableSleepMode?: boolean
}

/** The levers of a simulated fleet, for `MitigationContext.actuators`; the gateway also sheds. No scalers. */
export function simActuators(
  fleet: SimFleet,
  gateway: SimGateway,
  options: SimActuatorOptions = {},
): MitigationActuators & { shedding: ShedActuator } {
  const devMode = options.devMode ?? true
  const enableSleepMode = options.enableSleepMode ?? false
  const find = (name: string) => fleet.replicas.find((r) => r.name === name) ?? null
  return {
    admission: gateway,
    routing: gateway,
    shedding: gateway,
    control: (name) => {
      const r = find(name)
      return r === null ? null : simControl(r, devMode, enableSleepMode)
    },
    supervisor: (name) => {
      const r = find(name)
      return r === null ? null : simSupervisor(fleet, r)
    },
    processes: simProcesses(fleet),
    scalers: [],
  }
}

/** What the sim server would answer, as `VllmControlClient` reports it. */
function simControl(replica: SimReplica, devMode: boolean, enableSleepMode: boolean): ControlActuator {
  const call = (path: string, run: (e: NonNullable<SimReplica['engine']>) => ControlCallResult) => {
    let result: ControlCallResult
    if (!devMode)
      result = { ok: false, unavailable: true, error: `${DEV_MODE_OFF}: POST ${path} answered 404` }
    else if (!replica.listening) result = { ok: false, error: `POST ${path}: ECONNREFUSED` }
    else if (replica.phase === 'hung') {
      // A utility call into an EngineCore wedged in a collective never answers.
      result = {
        ok: false,
        error: `POST ${path}: ETIMEDOUT (no answer in time; the call may still take effect)`,
      }
    } else if (replica.engine === null || replica.engine.dead) {
      result = { ok: false, error: `POST ${path} answered HTTP 500: Internal Server Error` }
    } else result = run(replica.engine)
    return Promise.resolve(result)
  }
  return {
    resetPrefixCache: (o = {}) =>
      call('/reset_prefix_cache', () => {
        // vLLM answers 200 whether or not the reset worked (vllm.md §1.7).
        replica.resetPrefixCache(o.resetRunningRequests === true)
        return { ok: true, status: 200 }
      }),
    sleep: (o = {}) =>
      call('/sleep', (e) => {
        if (!enableSleepMode)
          return { ok: false, error: 'POST /sleep answered HTTP 500: Internal Server Error' }
        // The sim server's default: pause with mode=abort (requests in flight fail), then sleep.
        e.pause('abort')
        if (replica.engine === e && !e.dead) replica.sleep(o.level ?? 1)
        return { ok: true, status: 200 }
      }),
    wakeUp: (o = {}) =>
      call('/wake_up', (e) => {
        const tags = o.tags === undefined || o.tags.length === 0 ? null : o.tags
        if (replica.wakeUp(tags)) e.resume()
        return { ok: true, status: 200 }
      }),
  }
}

function simSupervisor(fleet: SimFleet, replica: SimReplica): RestartActuator {
  return {
    restart: (_reason, overrides = {}) => {
      const n = overrides.maxNumSeqs
      if (n !== undefined && (!Number.isInteger(n) || n < 1))
        return Promise.reject(new InvalidArgumentError('maxNumSeqs must be a positive integer'))
      replica.restart(fleet.now, n === undefined ? {} : { maxNumSeqs: n })
      return Promise.resolve()
    },
    maxNumSeqs: () => replica.maxNumSeqs,
  }
}

/** One fake process per GPU that has a co-tenant. */
function simProcesses(fleet: SimFleet): ProcessActuator {
  return {
    cotenants: (name) => {
      const list = fleet.gpus
        .filter((g) => g.replica === name && !g.lost && g.cotenantBytes > 0)
        .sort((a, b) => b.cotenantBytes - a.cotenantBytes)
        .map((g) => ({
          pid: kCotenantPidBase + g.index,
          name: 'python3',
          memoryUsedBytes: Math.round(g.cotenantBytes),
        }))
      return Promise.resolve(list)
    },
    terminate: (pid) => {
      const gpu = fleet.gpus.find((g) => kCotenantPidBase + g.index === pid)
      const owner = gpu === undefined ? undefined : fleet.replicas.find((r) => r.name === gpu.replica)
      if (gpu === undefined || owner === undefined) return Promise.resolve(false)
      owner.terminateCotenant(gpu, fleet.now)
      return Promise.resolve(gpu.cotenantBytes <= 0)
    },
  }
}
