/**
 * When did a failure actually start? The one definition that training labels, the evaluation
 * and online retraining all use, so that a model is trained and judged against the same truth.
 *
 * Load-driven failures are read from the data itself, so the definition holds on a real trace as
 * well as a simulated one:
 * - kv-exhaustion: a preemption while KV usage is at or above 0.9 (vLLM V1 preempts only when it
 *   cannot allocate a block: this is the first step of a preemption storm);
 * - slo-violation: TTFT or inter-token p99 above the SLO;
 * - queue-overflow: the waiting queue needs longer than the SLO to drain at the current
 *   completion rate, with at least 8 waiting, for 3 s;
 * - thermal-throttle: a thermal slowdown reason bit on one of the replica's GPUs.
 * OOM, hardware and network failures come from what the monitor saw (classified log lines, Xids,
 * hangs) and, in simulated traces, the simulator's ground-truth labels.
 *
 * A failure stays "under way" until its condition has been clear for `rearmMs`; only then can a
 * new onset of the same type on the same replica be counted.
 */
import { FATAL_XIDS } from '../monitor/core.js'
import { THERMAL_REASONS_MASK } from '../telemetry/store.js'
import type { Checkpoint, FaultLabel, FaultType } from '../telemetry/types.js'
import { isForecastable } from './features.js'
import { DEFAULT_SLO, FAILURE_TYPES, type FailureType, type SloOptions } from './spec.js'

export interface FailureOnset {
  failureType: FailureType
  replica: string
  t: number
  detail: string
}

export interface TimedLabel extends FaultLabel {
  t: number
}

/** Which failure type each simulated fault's `failure` label is. Load-driven ones come from the data. */
export const FAULT_FAILURE_TYPE: Partial<Record<FaultType, FailureType>> = {
  'gpu-oom-spike': 'oom',
  'gpu-oom-cotenant': 'oom',
  'memory-leak': 'oom',
  'xid-48': 'hardware-failure',
  'xid-79': 'hardware-failure',
  'nccl-hang': 'network-failure',
}

const EVENT_FAILURE_TYPE: Record<string, FailureType> = {
  'cuda-oom': 'oom',
  'gpu-lost': 'hardware-failure',
  'ecc-double-bit': 'hardware-failure',
  'uncorrectable-ecc': 'hardware-failure',
  hang: 'network-failure',
  'nccl-timeout': 'network-failure',
  'nccl-error': 'network-failure',
}

const EVENT_DRIVEN: readonly FailureType[] = ['oom', 'hardware-failure', 'network-failure']

export interface OnsetTrackerOptions {
  slo?: SloOptions
  /** How long a condition must stay clear before the same failure can start again (default 60 s). */
  rearmMs?: number
}

interface ReplicaState {
  preemptions: number
  /** (t, finished total) for the last 10 s: the completion rate the queue drains at. */
  finishedT: number[]
  finishedV: number[]
  queueSince: number
  /** Per failure type: when its condition was last true (NaN: not under way). */
  lastTrue: Float64Array
}

export class OnsetTracker {
  readonly slo: SloOptions
  readonly rearmMs: number
  private readonly replicas = new Map<string, ReplicaState>()
  private lastEventT = Number.NEGATIVE_INFINITY

  constructor(options: OnsetTrackerOptions = {}) {
    this.slo = options.slo ?? DEFAULT_SLO
    this.rearmMs = options.rearmMs ?? 60_000
  }

  /**
   * Looks at one checkpoint (on a 1 s grid) and the labels that arrived since the last call;
   * returns the failures that started.
   */
  observe(cp: Checkpoint, labels: readonly TimedLabel[] = []): FailureOnset[] {
    const out: FailureOnset[] = []
    const t = cp.t
    const hit = (type: FailureType, replica: string, detail: string) => {
      const st = this.state(replica)
      const i = FAILURE_TYPES.indexOf(type)
      const last = st.lastTrue[i]!
      if (Number.isNaN(last)) out.push({ failureType: type, replica, t, detail })
      st.lastTrue[i] = t
    }
    for (const l of labels) {
      if (l.phase !== 'failure') continue
      const type = FAULT_FAILURE_TYPE[l.fault]
      if (type !== undefined) hit(type, l.replica, `${l.fault}: ${l.detail}`)
    }
    for (const e of cp.events) {
      if (e.t <= this.lastEventT) continue
      if (e.replica === null) continue
      let type = EVENT_FAILURE_TYPE[e.type]
      if (e.type === 'xid') {
        const xid = Number(e.data?.xid)
        if (FATAL_XIDS.has(xid)) type = 'hardware-failure'
      }
      if (type !== undefined) hit(type, e.replica, e.message)
    }
    if (cp.events.length > 0) this.lastEventT = Math.max(this.lastEventT, cp.events[cp.events.length - 1]!.t)

    for (const e of cp.engines) {
      const r = e.reading
      const st = this.state(e.replica)
      if (r === null || !r.reachable || e.stale) {
        // Nothing is known across the gap: no counter baseline, no queue already building.
        st.preemptions = Number.NaN
        st.queueSince = Number.NaN
        continue
      }
      const pre = r.preemptionsTotal
      if (pre !== null) {
        if (pre > st.preemptions && (r.kvCacheUsage ?? 0) >= 0.9)
          hit(
            'kv-exhaustion',
            e.replica,
            `${pre - st.preemptions} preemptions at KV ${(r.kvCacheUsage! * 100).toFixed(0)}%`,
          )
        st.preemptions = pre
      }
      const ttft = r.ttftP99Ms ?? null
      const itl = r.itlP99Ms ?? null
      if (ttft !== null && ttft > this.slo.ttftP99Ms)
        hit('slo-violation', e.replica, `TTFT p99 ${ttft.toFixed(0)} ms > ${this.slo.ttftP99Ms} ms`)
      else if (itl !== null && itl > this.slo.itlP99Ms)
        hit('slo-violation', e.replica, `inter-token p99 ${itl.toFixed(0)} ms > ${this.slo.itlP99Ms} ms`)
      const drain = this.drainSeconds(st, t, r.requestsWaiting, r.requestsFinishedTotal)
      if (drain !== null && drain > this.slo.queueS) {
        if (Number.isNaN(st.queueSince)) st.queueSince = t
        if (t - st.queueSince >= 3000)
          hit(
            'queue-overflow',
            e.replica,
            `${r.requestsWaiting} waiting drain in ${drain.toFixed(0)} s > ${this.slo.queueS} s`,
          )
      } else st.queueSince = Number.NaN
    }
    const single = cp.engines.length === 1 ? cp.engines[0]!.replica : null
    for (const g of cp.gpus) {
      const replica = g.replica ?? single
      if (replica === null || g.clockEventReasons === null) continue
      if ((g.clockEventReasons & THERMAL_REASONS_MASK) !== 0)
        hit('thermal-throttle', replica, `GPU ${g.gpu} thermal slowdown at ${g.temperatureCelsius ?? '?'} °C`)
    }
    // A replica that has not come back keeps its event-driven failure under way (a hung
    // engine's watchdog fires ten minutes later: the same failure, not a new one).
    for (const e of cp.engines) {
      if (isForecastable(e.lifecycleState)) continue
      const st = this.replicas.get(e.replica)
      if (st === undefined) continue
      for (const type of EVENT_DRIVEN) {
        const i = FAILURE_TYPES.indexOf(type)
        if (!Number.isNaN(st.lastTrue[i]!)) st.lastTrue[i] = t
      }
    }
    // Re-arm what has been clear long enough.
    for (const st of this.replicas.values()) {
      for (let i = 0; i < st.lastTrue.length; i++)
        if (t - st.lastTrue[i]! >= this.rearmMs) st.lastTrue[i] = Number.NaN
    }
    return out
  }

  /** The failure is under way on the replica (started, and not yet clear for `rearmMs`). */
  ongoing(type: FailureType, replica: string): boolean {
    const st = this.replicas.get(replica)
    return st !== undefined && !Number.isNaN(st.lastTrue[FAILURE_TYPES.indexOf(type)]!)
  }

  private drainSeconds(
    st: ReplicaState,
    t: number,
    waiting: number | null,
    finished: number | null,
  ): number | null {
    if (finished === null || waiting === null) return null
    const ts = st.finishedT
    const vs = st.finishedV
    if (vs.length > 0 && finished < vs[vs.length - 1]!) {
      ts.length = 0
      vs.length = 0
    }
    ts.push(t)
    vs.push(finished)
    while (ts.length > 1 && t - ts[0]! > 10_000) {
      ts.shift()
      vs.shift()
    }
    if (waiting < 8 || ts.length < 2) return null
    const rate = (vs[vs.length - 1]! - vs[0]!) / ((t - ts[0]!) / 1000)
    return waiting / Math.max(rate, 0.05)
  }

  private state(replica: string): ReplicaState {
    let st = this.replicas.get(replica)
    if (st === undefined) {
      st = {
        preemptions: Number.NaN,
        finishedT: [],
        finishedV: [],
        queueSince: Number.NaN,
        lastTrue: new Float64Array(FAILURE_TYPES.length).fill(Number.NaN),
      }
      this.replicas.set(replica, st)
    }
    return st
  }
}
