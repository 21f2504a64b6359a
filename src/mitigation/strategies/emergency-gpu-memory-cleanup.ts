/**
 * EmergencyGPUMemoryCleanup: an OOM is imminent on a replica. Stop it taking on more work at once
 * (an admission cap below what runs now), then free what vLLM can free without a restart: the
 * prefix cache and, when configured, a sleep/wake cycle; end co-tenant processes on its GPUs only
 * when configured.
 *
 * `/reset_prefix_cache` frees only blocks no running request holds (vllm.md §0 #7), and a level-1
 * sleep aborts the requests in flight, which is why the sleep is off by default.
 */
import type {
  ControlActuator,
  FailureType,
  MitigationContext,
  MitigationResult,
  MitigationStrategy,
  ProcessActuator,
} from '../types.js'
import { abortedBeforeActing, abortText, errorText, OptionReader, requestsRunning, result } from './common.js'

export interface EmergencyGPUMemoryCleanupOptions {
  /** The cap is this fraction of the requests running now (default 0.5). */
  capFraction?: number
  /** The lowest cap, also used when the running count is unknown (default 1). */
  minCap?: number
  /** Sleep (level 1) and wake the engine to defragment its memory; aborts running requests (default false). */
  sleepWake?: boolean
  /** End the other processes on the replica's GPUs (default false). */
  killCotenants?: boolean
}

const kName = 'EmergencyGPUMemoryCleanup'
const kMiB = 1_048_576

/** How one optional step went: `ok` null when it was not attempted. */
interface Step {
  ok: boolean | null
  note: string
}

export class EmergencyGPUMemoryCleanup implements MitigationStrategy {
  readonly name = kName
  readonly handles: readonly FailureType[] = ['oom']
  readonly disruptive = false
  readonly capFraction: number
  readonly minCap: number
  readonly sleepWake: boolean
  readonly killCotenants: boolean

  constructor(options?: EmergencyGPUMemoryCleanupOptions) {
    const o = new OptionReader(kName, options)
    this.capFraction = o.fraction('capFraction', 0.5)
    this.minCap = o.positiveInt('minCap', 1)
    this.sleepWake = o.boolean('sleepWake', false)
    this.killCotenants = o.boolean('killCotenants', false)
  }

  async execute(ctx: MitigationContext): Promise<MitigationResult> {
    const actions: string[] = []
    if (ctx.signal.aborted) return abortedBeforeActing(ctx, actions)
    const { replica, actuators } = ctx
    const control = actuators.control(replica)
    if (actuators.admission === null && control === null && actuators.processes === null)
      return result(
        'SKIPPED',
        `no admission, control or process actuator for ${replica}: nothing to act through`,
        actions,
      )
    const notes: string[] = []
    const capped = this.#cap(ctx, actions, notes)
    const steps: Step[] = []
    const stages: Array<() => Promise<Step>> = [() => resetPrefixCache(control, actions)]
    if (this.sleepWake) stages.push(() => sleepWake(control, actions))
    stages.push(() => this.#cotenants(ctx, actuators.processes, actions))
    for (const stage of stages) {
      if (ctx.signal.aborted) {
        notes.push(`aborted: ${abortText(ctx.signal)}`)
        return result(capped || steps.some((s) => s.ok) ? 'PARTIAL' : 'SKIPPED', notes.join('; '), actions)
      }
      const step = await stage()
      steps.push(step)
      notes.push(step.note)
    }
    const failed = steps.some((s) => s.ok === false)
    const anyOk = capped || steps.some((s) => s.ok === true)
    const outcome = capped && !failed ? 'SUCCESS' : anyOk ? 'PARTIAL' : 'FAILURE'
    return result(outcome, notes.join('; '), actions)
  }

  async rollback(ctx: MitigationContext): Promise<void> {
    ctx.actuators.admission?.release(ctx.replica)
  }

  #cap(ctx: MitigationContext, actions: string[], notes: string[]): boolean {
    const { replica } = ctx
    const admission = ctx.actuators.admission
    if (admission === null) {
      notes.push(`not capped: no admission actuator (no gateway embedded)`)
      return false
    }
    const running = requestsRunning(ctx.checkpoint, replica)
    const limit =
      running === null ? this.minCap : Math.max(this.minCap, Math.floor(running * this.capFraction))
    const why = running === null ? 'running unknown' : `${running} running`
    try {
      admission.cap(replica, limit, `${kName}: ${ctx.trigger.detail}`)
    } catch (err) {
      notes.push(`cap ${replica} at ${limit} failed: ${errorText(err)}`)
      return false
    }
    actions.push(`cap ${replica} at ${limit}`)
    notes.push(`capped ${replica} at ${limit} (${why})`)
    return true
  }

  async #cotenants(
    ctx: MitigationContext,
    processes: ProcessActuator | null,
    actions: string[],
  ): Promise<Step> {
    if (processes === null) return { ok: null, note: 'co-tenants not checked: no process actuator' }
    let list: Awaited<ReturnType<ProcessActuator['cotenants']>>
    try {
      list = await processes.cotenants(ctx.replica)
    } catch (err) {
      return { ok: false, note: `listing co-tenants failed: ${errorText(err)}` }
    }
    if (list.length === 0) return { ok: null, note: `no co-tenant on ${ctx.replica}'s GPUs` }
    const named = list.map((p) => `pid ${p.pid} (${p.name}${mib(p.memoryUsedBytes)})`)
    if (!this.killCotenants)
      return { ok: false, note: `co-tenants left running (killCotenants off): ${named.join(', ')}` }
    const left: string[] = []
    for (let i = 0; i < list.length; i++) {
      const p = list[i]!
      if (ctx.signal.aborted) {
        left.push(`${named[i]} (aborted)`)
        continue
      }
      actions.push(`terminate pid ${p.pid} (${p.name})`)
      try {
        if (!(await processes.terminate(p.pid))) left.push(`${named[i]} still running`)
      } catch (err) {
        left.push(`${named[i]}: ${errorText(err)}`)
      }
    }
    if (left.length === 0) return { ok: true, note: `ended co-tenants ${named.join(', ')}` }
    return { ok: false, note: `co-tenants not ended: ${left.join(', ')}` }
  }
}

function mib(bytes: number | null): string {
  return bytes === null ? '' : `, ${Math.round(bytes / kMiB)} MiB`
}

async function resetPrefixCache(control: ControlActuator | null, actions: string[]): Promise<Step> {
  if (control === null) return { ok: null, note: 'prefix cache not reset: no control client' }
  actions.push('POST /reset_prefix_cache')
  try {
    const r = await control.resetPrefixCache()
    if (r.ok) return { ok: true, note: `prefix cache reset (HTTP ${r.status})` }
    if (r.unavailable) return { ok: null, note: `prefix cache not reset: ${r.error}` }
    return { ok: false, note: `prefix cache reset failed: ${r.error}` }
  } catch (err) {
    return { ok: false, note: `prefix cache reset failed: ${errorText(err)}` }
  }
}

async function sleepWake(control: ControlActuator | null, actions: string[]): Promise<Step> {
  if (control === null) return { ok: false, note: 'no sleep/wake: no control client' }
  actions.push('POST /sleep?level=1')
  let slept: boolean
  let why = ''
  try {
    const r = await control.sleep({ level: 1 })
    slept = r.ok
    if (!r.ok) {
      // An endpoint that is not there cannot have put the engine to sleep: nothing to wake.
      if (r.unavailable) return { ok: false, note: `no sleep/wake: ${r.error}` }
      why = r.error
    }
  } catch (err) {
    slept = false
    why = errorText(err)
  }
  // Wake even after a failed sleep: a POST that timed out may still have taken effect.
  actions.push('POST /wake_up')
  try {
    const w = await control.wakeUp()
    if (!w.ok) return { ok: false, note: `wake_up failed, ${replicaState(slept)}: ${w.error}` }
  } catch (err) {
    return { ok: false, note: `wake_up failed, ${replicaState(slept)}: ${errorText(err)}` }
  }
  return slept
    ? { ok: true, note: 'slept (level 1) and woke up' }
    : { ok: false, note: `sleep failed: ${why} (woke up to be sure)` }
}

function replicaState(slept: boolean): string {
  return slept ? 'the engine may be left asleep' : 'after a failed sleep'
}
