// When failures start (src/forecast/onsets.ts), on checkpoints built by hand.
import { describe, expect, it } from 'vitest'
import { FAULT_FAILURE_TYPE, OnsetTracker, type TimedLabel } from '../../src/forecast/onsets.js'
import type { FailureType } from '../../src/forecast/spec.js'
import { nullDerived } from '../../src/telemetry/store.js'
import type {
  Checkpoint,
  EngineReading,
  EngineSnapshot,
  FaultType,
  GpuReading,
  LifecycleState,
  TimedEvent,
} from '../../src/telemetry/types.js'
import { engineReading, gpuReading } from '../helpers/records.js'

function engine(
  over: Partial<EngineReading> = {},
  { replica = 'r0', state = 'SERVING' as LifecycleState, stale = false } = {},
): EngineSnapshot {
  return {
    replica,
    lifecycleState: state,
    since: 0,
    reason: '',
    reading: engineReading(replica, over),
    readingAt: 0,
    stale,
    derived: nullDerived(),
  }
}

function cp(
  t: number,
  {
    engines = [engine()],
    gpus = [],
    events = [],
  }: { engines?: EngineSnapshot[]; gpus?: GpuReading[]; events?: TimedEvent[] } = {},
): Checkpoint {
  return { t, lifecycleState: 'SERVING', engines, gpus, events, errors: [], predictions: [] }
}

function event(t: number, type: string, over: Partial<TimedEvent> = {}): TimedEvent {
  return { t, type, severity: 'critical', replica: 'r0', gpu: 0, message: `${type} at ${t}`, ...over }
}

function label(
  t: number,
  fault: FaultType,
  phase: TimedLabel['phase'] = 'failure',
  replica = 'r0',
): TimedLabel {
  return { t, fault, phase, replica, gpu: 0, detail: 'injected by the test' }
}

const types = (onsets: { failureType: FailureType }[]) => onsets.map((o) => o.failureType)

/** Observes one engine reading a second from t = 0 and returns every onset. */
function run(tracker: OnsetTracker, readings: Partial<EngineReading>[], t0 = 0) {
  return readings.flatMap((r, i) => tracker.observe(cp(t0 + i * 1000, { engines: [engine(r)] })))
}

describe('OnsetTracker: kv-exhaustion', () => {
  it('starts when preemptions increase at KV usage >= 0.9', () => {
    const tr = new OnsetTracker()
    const onsets = run(tr, [
      { preemptionsTotal: 0, kvCacheUsage: 0.95 },
      { preemptionsTotal: 3, kvCacheUsage: 0.9 },
    ])
    expect(onsets).toEqual([
      { failureType: 'kv-exhaustion', replica: 'r0', t: 1000, detail: '3 preemptions at KV 90%' },
    ])
    expect(tr.ongoing('kv-exhaustion', 'r0')).toBe(true)
  })

  it('does not start when preemptions increase below 0.9', () => {
    const tr = new OnsetTracker()
    expect(
      run(tr, [
        { preemptionsTotal: 0, kvCacheUsage: 0.5 },
        { preemptionsTotal: 3, kvCacheUsage: 0.89 },
      ]),
    ).toEqual([])
    expect(tr.ongoing('kv-exhaustion', 'r0')).toBe(false)
  })

  it('does not start at high KV usage without new preemptions', () => {
    const tr = new OnsetTracker()
    expect(
      run(tr, [
        { preemptionsTotal: 5, kvCacheUsage: 0.99 },
        { preemptionsTotal: 5, kvCacheUsage: 0.99 },
      ]),
    ).toEqual([])
  })

  it('does not take the first reading of a replica with preemptions as an increase', () => {
    expect(run(new OnsetTracker(), [{ preemptionsTotal: 40, kvCacheUsage: 0.99 }])).toEqual([])
  })

  it('counts one onset while the storm goes on, and a new one once it has been clear for rearmMs', () => {
    const tr = new OnsetTracker({ rearmMs: 10_000 })
    // Preemptions every second from 1 s to 5 s, then none.
    const storm = Array.from({ length: 6 }, (_, i) => ({ preemptionsTotal: i, kvCacheUsage: 0.95 }))
    const quiet = Array.from({ length: 9 }, () => ({ preemptionsTotal: 5, kvCacheUsage: 0.95 }))
    const first = run(tr, [...storm, ...quiet])
    expect(first.map((o) => o.t)).toEqual([1000])
    // Last preemption at 5 s: at 14 s it has been clear 9 s, still under way; at 15 s, 10 s.
    expect(tr.ongoing('kv-exhaustion', 'r0')).toBe(true)
    expect(run(tr, [{ preemptionsTotal: 5, kvCacheUsage: 0.95 }], 15_000)).toEqual([])
    expect(tr.ongoing('kv-exhaustion', 'r0')).toBe(false)
    const again = run(tr, [{ preemptionsTotal: 6, kvCacheUsage: 0.95 }], 16_000)
    expect(again.map((o) => [o.failureType, o.t])).toEqual([['kv-exhaustion', 16_000]])
  })

  it('keeps a storm that pauses for less than rearmMs as one failure', () => {
    const tr = new OnsetTracker({ rearmMs: 10_000 })
    const onsets = run(tr, [
      { preemptionsTotal: 0, kvCacheUsage: 0.95 },
      { preemptionsTotal: 1, kvCacheUsage: 0.95 },
      ...Array.from({ length: 8 }, () => ({ preemptionsTotal: 1, kvCacheUsage: 0.95 })),
      { preemptionsTotal: 2, kvCacheUsage: 0.95 },
    ])
    expect(onsets.map((o) => o.t)).toEqual([1000])
  })

  it('does not take the first reading after an unreachable one as an increase', () => {
    const tr = new OnsetTracker()
    const onsets = run(tr, [
      { preemptionsTotal: 0, kvCacheUsage: 0.95 },
      { reachable: false, preemptionsTotal: null, kvCacheUsage: null },
      { preemptionsTotal: 7, kvCacheUsage: 0.95 },
    ])
    expect(onsets).toEqual([])
  })

  it('tracks replicas separately', () => {
    const tr = new OnsetTracker()
    const a = (pre: number) => engine({ preemptionsTotal: pre, kvCacheUsage: 0.95 }, { replica: 'a' })
    const b = (pre: number) => engine({ preemptionsTotal: pre, kvCacheUsage: 0.5 }, { replica: 'b' })
    tr.observe(cp(0, { engines: [a(0), b(0)] }))
    const onsets = tr.observe(cp(1000, { engines: [a(1), b(1)] }))
    expect(onsets.map((o) => o.replica)).toEqual(['a'])
    expect(tr.ongoing('kv-exhaustion', 'b')).toBe(false)
  })
})

describe('OnsetTracker: slo-violation', () => {
  it('starts when TTFT p99 exceeds the SLO', () => {
    const onsets = run(new OnsetTracker(), [{ ttftP99Ms: 2000 }, { ttftP99Ms: 2500 }])
    expect(onsets.map((o) => [o.failureType, o.t])).toEqual([['slo-violation', 1000]])
    expect(onsets[0]!.detail).toBe('TTFT p99 2500 ms > 2000 ms')
  })

  it('starts when inter-token p99 exceeds the SLO', () => {
    const onsets = run(new OnsetTracker(), [{ itlP99Ms: 200 }, { itlP99Ms: 250 }])
    expect(onsets.map((o) => [o.failureType, o.t])).toEqual([['slo-violation', 1000]])
    expect(onsets[0]!.detail).toBe('inter-token p99 250 ms > 200 ms')
  })

  it('uses the SLO it is given', () => {
    const tr = new OnsetTracker({ slo: { ttftP99Ms: 500, itlP99Ms: 50, queueS: 10 } })
    expect(types(run(tr, [{ ttftP99Ms: 600 }]))).toEqual(['slo-violation'])
  })
})

describe('OnsetTracker: queue-overflow', () => {
  /** `waiting` queued every second while `finishedPerS` requests complete per second. */
  const queue = (waiting: number, finishedPerS: number, seconds: number) =>
    Array.from({ length: seconds }, (_, i) => ({
      requestsWaiting: waiting,
      requestsFinishedTotal: i * finishedPerS,
    }))

  it('starts once the queue has needed longer than queueS to drain for 3 s', () => {
    // 8 waiting, nothing finishing: the drain time is over the SLO from the second reading (1 s) on.
    const onsets = run(new OnsetTracker(), queue(8, 0, 6))
    expect(onsets.map((o) => [o.failureType, o.t])).toEqual([['queue-overflow', 4000]])
  })

  it('does not start with fewer than 8 waiting', () => {
    expect(run(new OnsetTracker(), queue(7, 0, 10))).toEqual([])
  })

  it('does not start when the queue drains within queueS', () => {
    // 50 waiting at 10 finished/s: 5 s to drain.
    expect(run(new OnsetTracker(), queue(50, 10, 10))).toEqual([])
    // 150 waiting at 10/s: 15 s.
    expect(types(run(new OnsetTracker(), queue(150, 10, 10)))).toEqual(['queue-overflow'])
  })

  it('restarts the 3 s count when the queue recovers in between', () => {
    const readings = [...queue(8, 0, 3), { requestsWaiting: 0, requestsFinishedTotal: 0 }, ...queue(8, 0, 3)]
    expect(run(new OnsetTracker(), readings)).toEqual([])
  })
})

describe('OnsetTracker: thermal-throttle', () => {
  const gpuCp = (t: number, reasons: number | null, replica: string | null = 'r0') =>
    cp(t, { gpus: [gpuReading({ clockEventReasons: reasons, replica, temperatureCelsius: 88 })] })

  it.each([
    ['SW thermal slowdown', 0x20],
    ['HW thermal slowdown', 0x40],
    ['HW slowdown', 0x8],
    ['SW thermal slowdown with power cap', 0x24],
  ])('starts on %s (0x%s)', (_, reasons) => {
    const onsets = new OnsetTracker().observe(gpuCp(1000, reasons))
    expect(onsets).toEqual([
      { failureType: 'thermal-throttle', replica: 'r0', t: 1000, detail: 'GPU 0 thermal slowdown at 88 °C' },
    ])
  })

  it.each([
    ['power cap', 0x4],
    ['no reason', 0],
    ['an unreadable reason mask', null],
  ])('does not start on %s', (_, reasons) => {
    expect(new OnsetTracker().observe(gpuCp(1000, reasons))).toEqual([])
  })

  it('gives an unassigned GPU to the only replica', () => {
    expect(new OnsetTracker().observe(gpuCp(1000, 0x40, null)).map((o) => o.replica)).toEqual(['r0'])
  })

  it('ignores an unassigned GPU when there are several replicas', () => {
    const c = cp(1000, {
      engines: [engine({}, { replica: 'a' }), engine({}, { replica: 'b' })],
      gpus: [gpuReading({ clockEventReasons: 0x40, replica: null })],
    })
    expect(new OnsetTracker().observe(c)).toEqual([])
  })
})

describe('OnsetTracker: simulator labels', () => {
  it('maps the faults that are failures by themselves', () => {
    expect(FAULT_FAILURE_TYPE).toEqual({
      'gpu-oom-spike': 'oom',
      'gpu-oom-cotenant': 'oom',
      'memory-leak': 'oom',
      'xid-48': 'hardware-failure',
      'xid-79': 'hardware-failure',
      'nccl-hang': 'network-failure',
    })
  })

  it.each([
    ['gpu-oom-spike', 'oom'],
    ['gpu-oom-cotenant', 'oom'],
    ['memory-leak', 'oom'],
    ['xid-48', 'hardware-failure'],
    ['xid-79', 'hardware-failure'],
    ['nccl-hang', 'network-failure'],
  ] as [FaultType, FailureType][])('starts %s failure labels as %s', (fault, type) => {
    const onsets = new OnsetTracker().observe(cp(1000), [label(900, fault)])
    expect(onsets).toEqual([
      { failureType: type, replica: 'r0', t: 1000, detail: `${fault}: injected by the test` },
    ])
  })

  it.each(['kv-exhaustion', 'thermal-throttle', 'engine-death', 'perf-drift'] as FaultType[])(
    'ignores %s labels (load-driven failures are read from the data)',
    (fault) => {
      expect(new OnsetTracker().observe(cp(1000), [label(900, fault)])).toEqual([])
    },
  )

  it('ignores labels that are not the failure phase', () => {
    const tr = new OnsetTracker()
    expect(
      tr.observe(cp(1000), [label(900, 'gpu-oom-spike', 'injected'), label(950, 'xid-79', 'cleared')]),
    ).toEqual([])
  })
})

describe('OnsetTracker: monitor events', () => {
  it.each([
    ['cuda-oom', 'oom'],
    ['gpu-lost', 'hardware-failure'],
    ['uncorrectable-ecc', 'hardware-failure'],
    ['ecc-double-bit', 'hardware-failure'],
    ['hang', 'network-failure'],
    ['nccl-timeout', 'network-failure'],
    ['nccl-error', 'network-failure'],
  ] as [string, FailureType][])('starts %s events as %s', (type, failure) => {
    const onsets = new OnsetTracker().observe(cp(1000, { events: [event(800, type)] }))
    expect(onsets).toEqual([{ failureType: failure, replica: 'r0', t: 1000, detail: `${type} at 800` }])
  })

  it.each([48, 79, 74])('starts fatal Xid %i as a hardware failure', (xid) => {
    const onsets = new OnsetTracker().observe(cp(1000, { events: [event(800, 'xid', { data: { xid } })] }))
    expect(types(onsets)).toEqual(['hardware-failure'])
  })

  it.each([92, 13, 31])('does not start on non-fatal Xid %i', (xid) => {
    expect(new OnsetTracker().observe(cp(1000, { events: [event(800, 'xid', { data: { xid } })] }))).toEqual(
      [],
    )
  })

  it('ignores events that name no replica, and event types that are not failures', () => {
    const tr = new OnsetTracker()
    const events = [event(700, 'cuda-oom', { replica: null }), event(800, 'kv-pressure'), event(900, 'log')]
    expect(tr.observe(cp(1000, { events }))).toEqual([])
  })

  it('reads an event once even though later checkpoints still list it', () => {
    const tr = new OnsetTracker({ rearmMs: 5000 })
    const events = [event(800, 'cuda-oom')]
    expect(types(tr.observe(cp(1000, { events })))).toEqual(['oom'])
    for (let t = 2000; t <= 20_000; t += 1000) expect(tr.observe(cp(t, { events }))).toEqual([])
    expect(tr.ongoing('oom', 'r0')).toBe(false)
  })

  it('keeps the event-driven failure of a replica that has not come back under way', () => {
    const tr = new OnsetTracker({ rearmMs: 10_000 })
    const dead = engine({ reachable: false }, { state: 'ERROR' })
    tr.observe(cp(1000, { engines: [dead], events: [event(900, 'hang')] }))
    for (let t = 2000; t <= 120_000; t += 1000) tr.observe(cp(t, { engines: [dead] }))
    expect(tr.ongoing('network-failure', 'r0')).toBe(true)
    // Serving again from 121 s: clear since 120 s, re-armed rearmMs later (130 s).
    for (let t = 121_000; t <= 129_000; t += 1000) tr.observe(cp(t))
    expect(tr.ongoing('network-failure', 'r0')).toBe(true)
    tr.observe(cp(130_000))
    expect(tr.ongoing('network-failure', 'r0')).toBe(false)
  })

  it('does not keep a load-driven failure under way while the replica is down', () => {
    const tr = new OnsetTracker({ rearmMs: 10_000 })
    run(tr, [{ ttftP99Ms: 5000 }])
    const dead = engine({ reachable: false }, { state: 'ERROR' })
    for (let t = 1000; t <= 10_000; t += 1000) tr.observe(cp(t, { engines: [dead] }))
    expect(tr.ongoing('slo-violation', 'r0')).toBe(false)
  })

  it('lets a serving replica re-arm an event-driven failure after rearmMs', () => {
    const tr = new OnsetTracker({ rearmMs: 10_000 })
    tr.observe(cp(1000, { events: [event(900, 'cuda-oom')] }))
    for (let t = 2000; t <= 11_000; t += 1000) tr.observe(cp(t))
    expect(tr.ongoing('oom', 'r0')).toBe(false)
    expect(types(tr.observe(cp(12_000, { events: [event(11_500, 'cuda-oom')] })))).toEqual(['oom'])
  })
})
