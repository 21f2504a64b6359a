/**
 * Fault injection: what can go wrong with a vLLM replica and its GPU, each with the parameters that
 * shape it. Every fault emits ground-truth labels: `injected` when it starts and `failure` at the
 * instant a perfect monitor would call the failure.
 *
 * | fault | what happens | failure instant |
 * |---|---|---|
 * | kv-exhaustion | a load surge of long generations; KV fills, preemption storm, queue grows | first preemption |
 * | gpu-oom-spike | transient activations outside the pool grow (long-context batch) | CUDA OOM |
 * | gpu-oom-cotenant | another process on the GPU leaks memory until vLLM's next allocation fails | CUDA OOM |
 * | memory-leak | vLLM's own non-torch memory creeps up (#17243) | CUDA OOM |
 * | thermal-throttle | cooling degrades; temperature passes 87 °C, clocks drop | SW thermal slowdown |
 * | xid-48 | single-bit ECC errors rise, then a double-bit error (Xid 48) kills the engine | Xid 48 |
 * | xid-79 | the GPU falls off the bus; the worker dies | Xid 79 |
 * | nccl-hang | no more engine steps, `/health` stays 200; the NCCL watchdog kills it after `timeoutMs` | hang start |
 * | engine-death | the worker is killed; vLLM logs the death and exits 0 | death |
 * | perf-drift | step time grows with uptime (#16985, #42484) | slowdown reaches 1.5× |
 */
import { z } from 'zod'
import { SimScenarioError } from '../errors.js'
import type { FaultType } from '../telemetry/types.js'

const MiB = 1024 ** 2
const GiB = 1024 ** 3

const base = {
  /** Simulated ms since the fleet started. */
  atMs: z.number().nonnegative(),
  /** Replica name; default the first replica. */
  replica: z.string().optional(),
}

export const faultSpecSchema = z.discriminatedUnion('fault', [
  z.object({
    fault: z.literal('kv-exhaustion'),
    ...base,
    /** Extra arrivals per second on top of the base load, all on this replica. */
    surgeRatePerSec: z.number().positive().default(12),
    /**
     * The surge rate climbs linearly from 0 to `surgeRatePerSec` over this long (0: a step).
     * Organic growth (a launch, a batch job fanning out, the diurnal climb) ramps; a retry storm steps.
     */
    rampMs: z.number().nonnegative().default(0),
    durationMs: z.number().positive().default(120_000),
    promptTokens: z.number().int().positive().default(3000),
    outputTokens: z.number().int().positive().default(1500),
  }),
  z.object({
    fault: z.literal('gpu-oom-spike'),
    ...base,
    /** Transient memory outside the pool grows to this over `rampMs`. */
    peakBytes: z
      .number()
      .positive()
      .default(16 * GiB),
    rampMs: z.number().positive().default(20_000),
  }),
  z.object({
    fault: z.literal('gpu-oom-cotenant'),
    ...base,
    bytesPerSec: z
      .number()
      .positive()
      .default(64 * MiB),
    initialBytes: z
      .number()
      .nonnegative()
      .default(1 * GiB),
  }),
  z.object({
    fault: z.literal('memory-leak'),
    ...base,
    bytesPerSec: z
      .number()
      .positive()
      .default(24 * MiB),
  }),
  z.object({
    fault: z.literal('thermal-throttle'),
    ...base,
    /** Cooling degrades to this factor (1 = healthy) over `rampMs`. */
    coolingFactor: z.number().min(1).default(1.9),
    rampMs: z.number().positive().default(90_000),
  }),
  z.object({
    fault: z.literal('xid-48'),
    ...base,
    /** Single-bit errors climb for this long before the double-bit error. */
    precursorMs: z.number().nonnegative().default(60_000),
  }),
  z.object({ fault: z.literal('xid-79'), ...base }),
  z.object({
    fault: z.literal('nccl-hang'),
    ...base,
    /** NCCL watchdog timeout (`Timeout(ms)=600000` by default). */
    timeoutMs: z.number().positive().default(600_000),
  }),
  z.object({ fault: z.literal('engine-death'), ...base }),
  z.object({
    fault: z.literal('perf-drift'),
    ...base,
    /** Step-time multiplier gained per hour of uptime after `atMs`. */
    slowdownPerHour: z.number().positive().default(1.5),
  }),
])

export type FaultSpecInput = z.input<typeof faultSpecSchema>
export type FaultSpec = z.output<typeof faultSpecSchema>

export const FAULT_TYPES: readonly FaultType[] = [
  'kv-exhaustion',
  'gpu-oom-spike',
  'gpu-oom-cotenant',
  'memory-leak',
  'thermal-throttle',
  'xid-48',
  'xid-79',
  'nccl-hang',
  'engine-death',
  'perf-drift',
]

export function parseFaultSpec(input: unknown, where: string): FaultSpec {
  const r = faultSpecSchema.safeParse(input)
  if (r.success) return r.data
  const issue = r.error.issues[0]
  const path = issue?.path.join('.') ?? ''
  const fault = (input as { fault?: unknown } | null)?.fault
  if (path === 'fault' || issue?.code === 'invalid_union') {
    throw new SimScenarioError(
      `${where}: unknown fault ${JSON.stringify(fault)}; expected one of ${FAULT_TYPES.join(', ')}`,
    )
  }
  throw new SimScenarioError(`${where}: field "${path}" ${issue?.message ?? 'is invalid'}`)
}
