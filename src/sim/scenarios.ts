/**
 * Named scenarios: a fleet, its load and a fault schedule. One per fault type (the fault strikes
 * replica r0 after the fleet has warmed up), `steady` with no fault, and `demo`: two replicas where
 * a load surge exhausts r0's KV cache and a co-tenant process leaks memory on r1's GPU until vLLM
 * dies of CUDA OOM.
 *
 * Load: the Azure LLM code trace (real arrivals and lengths, very bursty) replayed at
 * `ratePerReplica` requests/s per replica, looping. Scenario times are simulated ms.
 */
import { SimScenarioError } from '../errors.js'
import type { FaultType } from '../telemetry/types.js'
import {
  CODE_TOKENS,
  loadTraceCsv,
  mergeArrivals,
  poissonArrivals,
  type TraceRow,
  traceArrivals,
} from './arrivals.js'
import type { FaultSpecInput } from './faults.js'
import type { FleetOptions } from './fleet.js'
import type { Seed } from './random.js'

export interface Scenario {
  name: string
  description: string
  /** How long the scenario needs to play out, simulated ms. */
  durationMs: number
  /** The fault types it injects (ground truth for tests and scoring). */
  faults: FaultType[]
  fleet: FleetOptions
}

export interface ScenarioOptions {
  seed?: Seed
  replicas?: number
  /** Requests/s per replica from the trace (default 5). */
  ratePerReplica?: number
  /** Rows of the arrivals trace (default: the Azure code trace shipped in data/traces). */
  traceRows?: readonly TraceRow[]
  /**
   * Load shape. `mixed` (default): the real trace for 3/4 of the rate plus a Poisson background
   * (conversation lengths) for 1/4, since the code trace alone has silent half-minutes that a
   * production fleet with other tenants rarely sees. `trace`: the trace alone. `poisson`: Poisson alone.
   */
  load?: 'mixed' | 'trace' | 'poisson'
}

const TRACE_MEAN_RATE = 2.57
/** Boot takes ≈12 s; faults start once the fleet has served for a while. */
const WARM_MS = 45_000

let cachedRows: TraceRow[] | null = null
function defaultRows(): TraceRow[] {
  cachedRows ??= loadTraceCsv()
  return cachedRows
}

interface Recipe {
  description: string
  durationMs: number
  replicas?: number
  faults: FaultSpecInput[]
  fleet?: Partial<FleetOptions>
  /** Requests/s per replica unless the caller says otherwise. */
  ratePerReplica?: number
}

const RECIPES: Record<string, Recipe> = {
  steady: {
    description: 'trace-driven load with a Poisson background, no fault',
    durationMs: 300_000,
    faults: [],
  },
  'kv-exhaustion': {
    description:
      'demand for long generations on r0 climbs over two minutes until its KV cache fills: preemption storm, queue grows',
    durationMs: 300_000,
    faults: [{ fault: 'kv-exhaustion', atMs: WARM_MS, replica: 'r0', rampMs: 150_000, durationMs: 180_000 }],
  },
  'kv-surge': {
    description: 'a step surge of long generations on r0 fills its KV cache within seconds: preemption storm',
    durationMs: 240_000,
    faults: [{ fault: 'kv-exhaustion', atMs: WARM_MS, replica: 'r0' }],
  },
  'gpu-oom-spike': {
    description: 'activations outside the pool grow on r0 until CUDA OOM kills the engine',
    durationMs: 150_000,
    faults: [{ fault: 'gpu-oom-spike', atMs: WARM_MS, replica: 'r0' }],
  },
  'gpu-oom-cotenant': {
    description: "a co-tenant process leaks memory on r0's GPU until vLLM's next allocation fails",
    durationMs: 200_000,
    faults: [{ fault: 'gpu-oom-cotenant', atMs: WARM_MS, replica: 'r0' }],
  },
  'memory-leak': {
    description: "vLLM's own non-torch memory creeps up on r0 until CUDA OOM",
    durationMs: 400_000,
    faults: [{ fault: 'memory-leak', atMs: WARM_MS, replica: 'r0' }],
  },
  'thermal-throttle': {
    description: "r0's cooling degrades: temperature passes 87 °C, clocks and throughput drop",
    durationMs: 360_000,
    faults: [{ fault: 'thermal-throttle', atMs: WARM_MS, replica: 'r0' }],
    // Prefill-heavy load keeps the GPU near its power limit, so heat builds.
    fleet: {},
  },
  'xid-48': {
    description: 'single-bit ECC errors climb on r0, then a double-bit error (Xid 48) kills the engine',
    durationMs: 150_000,
    faults: [{ fault: 'xid-48', atMs: WARM_MS, replica: 'r0' }],
  },
  'xid-79': {
    description: "r0's GPU falls off the bus (Xid 79); the worker dies, vLLM exits 0",
    durationMs: 90_000,
    faults: [{ fault: 'xid-79', atMs: WARM_MS, replica: 'r0' }],
  },
  'nccl-hang': {
    description: 'r0 stops stepping (NCCL deadlock); /health stays 200; the watchdog kills it after 10 min',
    durationMs: 720_000,
    faults: [{ fault: 'nccl-hang', atMs: WARM_MS, replica: 'r0' }],
  },
  'engine-death': {
    description: "r0's worker is killed: EngineCore dies, /health 503, the server exits with code 0",
    durationMs: 90_000,
    faults: [{ fault: 'engine-death', atMs: WARM_MS, replica: 'r0' }],
  },
  'perf-drift': {
    description: "r0's step time grows with uptime until it is 1.5x slower",
    durationMs: 1_500_000,
    faults: [{ fault: 'perf-drift', atMs: WARM_MS, replica: 'r0', slowdownPerHour: 2 }],
  },
  demo: {
    description:
      "two replicas: demand on r0 climbs until its KV cache is exhausted; a co-tenant leak on r1's GPU ends in CUDA OOM",
    durationMs: 240_000,
    replicas: 2,
    ratePerReplica: 3,
    faults: [
      { fault: 'kv-exhaustion', atMs: 60_000, replica: 'r0', durationMs: 120_000, rampMs: 120_000 },
      { fault: 'gpu-oom-cotenant', atMs: 70_000, replica: 'r1', bytesPerSec: 96 * 1024 ** 2 },
    ],
  },
}

export const SCENARIO_NAMES: readonly string[] = Object.keys(RECIPES)

export function scenario(name: string, options: ScenarioOptions = {}): Scenario {
  const recipe = RECIPES[name]
  if (recipe === undefined) {
    throw new SimScenarioError(
      `unknown scenario ${JSON.stringify(name)}; expected one of ${SCENARIO_NAMES.join(', ')}`,
    )
  }
  const seed = options.seed ?? 1
  const replicas = options.replicas ?? recipe.replicas ?? 1
  const rate = options.ratePerReplica ?? recipe.ratePerReplica ?? 5
  if (!(rate > 0)) throw new SimScenarioError(`ratePerReplica must be > 0 (got ${rate})`)
  const load = options.load ?? 'mixed'
  if (load !== 'mixed' && load !== 'trace' && load !== 'poisson') {
    throw new SimScenarioError(`load must be 'mixed', 'trace' or 'poisson' (got ${JSON.stringify(load)})`)
  }
  const poissonShare = load === 'poisson' ? 1 : load === 'mixed' ? 0.25 : 0
  const poisson = () =>
    poissonArrivals({
      ratePerSec: rate * replicas * poissonShare,
      seed: `${String(seed)}/arrivals`,
      maxModelLen: 8192,
    })
  const trace = () =>
    traceArrivals(options.traceRows ?? defaultRows(), {
      rateMultiplier: (rate * replicas * (1 - poissonShare)) / TRACE_MEAN_RATE,
      loop: true,
      maxModelLen: 8192,
    })
  const arrivals =
    load === 'poisson' ? poisson() : load === 'trace' ? trace() : mergeArrivals(trace(), poisson())
  const faults = recipe.faults.map((f) => ({ ...f }))
  if (name === 'thermal-throttle' && options.load === undefined) {
    // Heat needs sustained, steady prefill: code-trace lengths as a Poisson stream at about 70 % of
    // an H100's prefill capacity, so the GPU sits near its power limit without a standing queue.
    return {
      name,
      description: recipe.description,
      durationMs: recipe.durationMs,
      faults: faults.map((f) => f.fault),
      fleet: {
        seed,
        replicas,
        ...recipe.fleet,
        arrivals: poissonArrivals({
          ratePerSec: (options.ratePerReplica ?? 12) * replicas,
          seed: `${String(seed)}/prefill`,
          promptTokens: CODE_TOKENS.prompt,
          outputTokens: CODE_TOKENS.output,
        }),
        faults,
      },
    }
  }
  return {
    name,
    description: recipe.description,
    durationMs: recipe.durationMs,
    faults: faults.map((f) => f.fault),
    fleet: { seed, replicas, ...recipe.fleet, arrivals, faults },
  }
}
