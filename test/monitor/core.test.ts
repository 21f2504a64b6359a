import { describe, expect, it } from 'vitest'
import { MonitorCore } from '../../src/monitor/core.js'
import type { EngineReading, GpuReading, TelemetryRecord } from '../../src/telemetry/types.js'
import { engineRecord, gpuRecord } from '../helpers/records.js'

function engine(t: number, replica: string, over: Partial<EngineReading> = {}): TelemetryRecord {
  return engineRecord(t, replica, over)
}

function refused(t: number, replica: string): TelemetryRecord {
  const r = engine(t, replica, { reachable: false, healthStatus: null, error: 'ECONNREFUSED' })
  for (const k of Object.keys(r) as Array<keyof typeof r>) {
    if (typeof r[k] === 'number' && k !== 't') (r as unknown as Record<string, unknown>)[k] = null
  }
  return r
}

function gpu(t: number, over: Partial<GpuReading> = {}): TelemetryRecord {
  return gpuRecord(t, over)
}

/** Feeds records and ticks every 100 ms up to each record's time. */
function drive(core: MonitorCore, records: TelemetryRecord[], until?: number): void {
  let next = 0
  for (const r of records) {
    while (next < r.t) {
      core.tick(next)
      next += 100
    }
    core.push(r)
  }
  const end = until ?? (records.at(-1)?.t ?? 0) + 100
  while (next <= end) {
    core.tick(next)
    next += 100
  }
}

const states = (core: MonitorCore, replica = 'r0') => core.history(replica).map((t) => t.to)

describe('MonitorCore', () => {
  it('walks a replica from a refused port through start-up to SERVING when it answers', () => {
    const core = new MonitorCore()
    drive(core, [refused(100, 'r0'), refused(200, 'r0'), engine(300, 'r0')])
    expect(states(core)).toEqual(['INITIALIZING', 'LOADING_MODEL', 'READY', 'SERVING'])
    expect(core.checkpoint?.lifecycleState).toBe('SERVING')
  })

  it('treats a refused port after serving as the server being gone (ERROR), and stays there while it is down', () => {
    const core = new MonitorCore()
    drive(core, [engine(100, 'r0'), refused(200, 'r0'), refused(300, 'r0')])
    expect(states(core).at(-1)).toBe('ERROR')
    expect(core.checkpoint?.engines[0]?.reason).toMatch(/connection refused/)
  })

  it('calls /health 503 engine death, and a server answering again after being down a restart', () => {
    const core = new MonitorCore()
    drive(core, [
      engine(100, 'r0'),
      engine(200, 'r0', { healthStatus: 503 }),
      refused(300, 'r0'),
      engine(400, 'r0'),
    ])
    expect(states(core)).toEqual([
      'INITIALIZING',
      'LOADING_MODEL',
      'READY',
      'SERVING',
      'ERROR',
      'INITIALIZING',
      'LOADING_MODEL',
      'READY',
      'SERVING',
    ])
    expect(core.history('r0')[4]?.reason).toMatch(/503/)
  })

  it('does not leave ERROR for a hung engine whose /health still says 200', () => {
    const core = new MonitorCore({ hangAfterMs: 1000 })
    const recs: TelemetryRecord[] = [
      engine(100, 'r0', { requestsRunning: 4, generationTokensTotal: 10, stepsTotal: 5 }),
    ]
    for (let t = 200; t <= 3000; t += 100) {
      recs.push(engine(t, 'r0', { requestsRunning: 4, generationTokensTotal: 10, stepsTotal: 5 }))
    }
    drive(core, recs)
    expect(states(core).at(-1)).toBe('ERROR')
    expect(core.checkpoint?.engines[0]?.reason).toMatch(/hung/)
    expect(core.checkpoint?.events.some((e) => e.type === 'hang')).toBe(true)
  })

  it('marks KV exhaustion with preemptions DEGRADED and recovers once pressure is gone', () => {
    const core = new MonitorCore({ recoverAfterMs: 500 })
    const recs: TelemetryRecord[] = []
    let pre = 0
    let gen = 0
    for (let t = 100; t <= 3000; t += 100) {
      const pressure = t >= 1000 && t < 1500
      if (pressure) pre += 2
      gen += 50
      recs.push(
        engine(t, 'r0', {
          kvCacheUsage: pressure ? 0.99 : 0.4,
          preemptionsTotal: pre,
          generationTokensTotal: gen,
          stepsTotal: gen,
          requestsRunning: 3,
        }),
      )
    }
    drive(core, recs)
    expect(states(core).slice(3)).toEqual(['SERVING', 'DEGRADED', 'SERVING'])
    expect(core.history('r0')[4]?.reason).toMatch(/KV cache exhausted/)
  })

  it('puts a replica in ERROR on a fatal Xid from its GPU, and only on a fatal one', () => {
    const core = new MonitorCore()
    drive(core, [
      engine(100, 'r0'),
      gpu(150),
      {
        t: 200,
        kind: 'event',
        type: 'xid',
        severity: 'warning',
        replica: null,
        gpu: 0,
        message: 'Xid 92',
        data: { xid: 92 },
      },
    ])
    expect(states(core).at(-1)).toBe('SERVING')
    core.push({
      t: 400,
      kind: 'event',
      type: 'xid',
      severity: 'critical',
      replica: null,
      gpu: 0,
      message: 'Xid 48',
      data: { xid: 48 },
    })
    core.tick(400)
    expect(states(core).at(-1)).toBe('ERROR')
  })

  it('re-stamps a record that arrives after its checkpoint passed, so the trace stays replayable', () => {
    const seen: TelemetryRecord[] = []
    const core = new MonitorCore({ onRecord: (r) => seen.push(r) })
    core.tick(0)
    core.tick(100)
    core.push(engine(50, 'r0'))
    core.tick(200)
    expect(seen[0]?.t).toBeCloseTo(100.001, 6)
  })

  it('keeps going when a plugin or a detector throws, and reports it as an error', () => {
    const core = new MonitorCore({
      plugins: [
        {
          name: 'bad',
          onCheckpoint() {
            throw new Error('boom')
          },
        },
      ],
      detectors: [
        {
          name: 'worse',
          detect() {
            throw new Error('bang')
          },
        },
      ],
    })
    drive(core, [engine(100, 'r0')])
    const codes = core.checkpoint?.errors.map((e) => e.code) ?? []
    expect(codes).toContain('VLLM_MONITOR_PLUGIN_FAILED')
    expect(codes).toContain('VLLM_MONITOR_DETECTOR_FAILED')
    expect(core.checkpoint?.lifecycleState).toBe('SERVING')
  })

  it('rolls the fleet up: one replica serving and one in ERROR is DEGRADED', () => {
    const core = new MonitorCore()
    drive(core, [engine(100, 'r0'), engine(100, 'r1'), engine(200, 'r1', { healthStatus: 503 })])
    expect(core.checkpoint?.lifecycleState).toBe('DEGRADED')
  })

  it('counts ground-truth failure labels without letting them change the lifecycle', () => {
    const core = new MonitorCore()
    drive(core, [
      engine(100, 'r0'),
      { t: 200, kind: 'label', fault: 'engine-death', phase: 'failure', replica: 'r0', gpu: 0, detail: 'x' },
    ])
    expect(core.labelCounts['engine-death']).toBe(1)
    expect(states(core).at(-1)).toBe('SERVING')
  })
})
