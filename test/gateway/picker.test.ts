import { describe, expect, it } from 'vitest'
import { InvalidArgumentError, InvalidOptionError } from '../../src/errors.js'
import { type PickerOptions, ReplicaPicker } from '../../src/gateway/picker.js'
import type { ReplicaView } from '../../src/gateway/types.js'

function view(name: string, over: Partial<ReplicaView> = {}): ReplicaView {
  return {
    name,
    url: `http://${name}:8000`,
    kvCacheUsage: 0.1,
    requestsWaiting: 0,
    requestsRunning: 0,
    stale: false,
    serving: true,
    risk: 0,
    ...over,
  }
}

function setup(views: ReplicaView[], options: PickerOptions = {}) {
  const clock = { t: 0 }
  const picker = new ReplicaPicker({ now: () => clock.t, ...options })
  picker.update(views)
  return { picker, clock }
}

/** Names of `n` successive picks. */
function picks(picker: ReplicaPicker, n: number, exclude?: ReadonlySet<string>): Array<string | null> {
  const out: Array<string | null> = []
  for (let i = 0; i < n; i++) out.push(picker.pick(exclude)?.name ?? null)
  return out
}

describe('ReplicaPicker scoring', () => {
  it('prefers the replica with the lower KV-cache usage', () => {
    const { picker } = setup([view('a', { kvCacheUsage: 0.7 }), view('b', { kvCacheUsage: 0.2 })])
    expect(picks(picker, 3)).toEqual(['b', 'b', 'b'])
  })

  it('prefers the replica with the shorter queue', () => {
    const { picker } = setup([view('a', { requestsWaiting: 4 }), view('b', { requestsWaiting: 1 })])
    expect(picker.pick()?.name).toBe('b')
  })

  it('treats KV at or above kvThreshold and a queue at or above queueThreshold as no headroom', () => {
    const { picker } = setup([
      view('a', { kvCacheUsage: 0.8, requestsWaiting: 5 }),
      view('b', { kvCacheUsage: 0.99, requestsWaiting: 50 }),
    ])
    const [a, b] = picker.snapshot()
    expect(a!.score).toBe(b!.score)
    // inflight headroom 1 (all equal) + risk headroom 1, weighted 1 and 2.
    expect(a!.score).toBe(3)
  })

  it('counts stale readings as saturated', () => {
    const { picker } = setup([
      view('fresh', { kvCacheUsage: 0.7, requestsWaiting: 4 }),
      view('stale', { kvCacheUsage: 0, requestsWaiting: 0, stale: true }),
    ])
    expect(picker.pick()?.name).toBe('fresh')
    const stale = picker.snapshot().find((s) => s.name === 'stale')!
    expect(stale).toMatchObject({ stale: true, score: 3 })
  })

  it('counts missing readings as saturated', () => {
    const { picker } = setup([
      view('known', { kvCacheUsage: 0.5 }),
      view('unknown', { kvCacheUsage: null, requestsWaiting: null }),
    ])
    expect(picker.pick()?.name).toBe('known')
  })

  it('moves traffic away from a replica the forecaster flags as at risk', () => {
    const { picker } = setup([view('a', { kvCacheUsage: 0.1 }), view('b', { kvCacheUsage: 0.3, risk: 0 })])
    expect(picker.pick()?.name).toBe('a')
    picker.update([view('a', { kvCacheUsage: 0.1, risk: 0.9 }), view('b', { kvCacheUsage: 0.3, risk: 0 })])
    expect(picker.pick()?.name).toBe('b')
  })

  it('scales scores by the weight multiplier, and picks a weight-0 replica only when nothing else is left', () => {
    const { picker } = setup([view('a', { kvCacheUsage: 0 }), view('b', { kvCacheUsage: 0.7 })])
    expect(picker.pick()?.name).toBe('a')
    picker.setWeight('a', 0.3)
    expect(picker.pick()?.name).toBe('b')
    picker.setWeight('a', 0)
    picker.update([
      view('a', { kvCacheUsage: 0 }),
      view('b', { kvCacheUsage: 0.8, requestsWaiting: 9, risk: 1 }),
    ])
    // b scores only its in-flight headroom, a would score far more, yet weight 0 keeps it out.
    expect(picks(picker, 3)).toEqual(['b', 'b', 'b'])
    expect(picker.pick(new Set(['b']))?.name).toBe('a')
    picker.setWeight('a', 1)
    expect(picker.pick()?.name).toBe('a')
    expect(() => picker.setWeight('a', -1)).toThrow(InvalidArgumentError)
  })

  it('honours custom weights', () => {
    const views = [
      view('lowKv', { kvCacheUsage: 0, requestsWaiting: 4 }),
      view('lowQ', { kvCacheUsage: 0.6 }),
    ]
    expect(setup(views, { weights: { kv: 5, queue: 1 } }).picker.pick()?.name).toBe('lowKv')
    expect(setup(views, { weights: { kv: 1, queue: 5 } }).picker.pick()?.name).toBe('lowQ')
  })
})

describe('ReplicaPicker load spreading', () => {
  it('round-robins among equal scores, deterministically', () => {
    const { picker } = setup([view('a'), view('b'), view('c')])
    expect(picks(picker, 6)).toEqual(['a', 'b', 'c', 'a', 'b', 'c'])
  })

  it('spreads load through local in-flight accounting between scrapes', () => {
    const { picker } = setup([view('a'), view('b'), view('c')])
    const counts = new Map<string, number>()
    for (let i = 0; i < 30; i++) {
      const name = picker.pick()!.name
      picker.onStart(name)
      counts.set(name, (counts.get(name) ?? 0) + 1)
    }
    expect([...counts.values()]).toEqual([10, 10, 10])
    expect(picker.snapshot().map((s) => s.inflight)).toEqual([10, 10, 10])
    for (let i = 0; i < 5; i++) picker.onEnd('b')
    expect(picker.pick()?.name).toBe('b')
  })

  it('keeps in-flight counts and breaker state of replicas that stay across updates, and drops the rest', () => {
    const { picker } = setup([view('a'), view('b')], { breaker: { failureThreshold: 1 } })
    picker.onStart('a')
    picker.onStart('b')
    picker.record('b', 'connect-error')
    picker.update([view('a'), view('b'), view('c')])
    expect(picker.breakerState('b')).toBe('open')
    expect(picker.snapshot().map((s) => [s.name, s.inflight])).toEqual([
      ['a', 1],
      ['b', 1],
      ['c', 0],
    ])
    picker.update([view('a')])
    expect(picker.snapshot().map((s) => s.name)).toEqual(['a'])
    expect(picker.snapshot()[0]!.inflight).toBe(1)
    picker.update([view('a'), view('b')])
    expect(picker.breakerState('b')).toBe('closed')
    expect(picker.snapshot()[1]!.inflight).toBe(0)
  })
})

describe('ReplicaPicker eligibility', () => {
  it('never picks a draining or non-serving replica', () => {
    const { picker } = setup([
      view('a', { kvCacheUsage: 0 }),
      view('b', { kvCacheUsage: 0.5 }),
      view('c', { serving: false }),
    ])
    picker.setDraining('a', true)
    expect(picks(picker, 4)).toEqual(['b', 'b', 'b', 'b'])
    picker.setDraining('a', false)
    expect(picker.pick()?.name).toBe('a')
  })

  it('skips excluded replicas (failover to the next best)', () => {
    const { picker } = setup([
      view('a', { kvCacheUsage: 0 }),
      view('b', { kvCacheUsage: 0.3 }),
      view('c', { kvCacheUsage: 0.6 }),
    ])
    expect(picker.pick(new Set(['a']))?.name).toBe('b')
    expect(picker.pick(new Set(['a', 'b']))?.name).toBe('c')
  })

  it('returns null when no replica is eligible', () => {
    const { picker } = setup([view('a', { serving: false }), view('b')])
    expect(picker.pick(new Set(['b']))).toBeNull()
    picker.setDraining('b', true)
    expect(picker.pick()).toBeNull()
    expect(new ReplicaPicker().pick()).toBeNull()
  })

  it('returns the view object it was given', () => {
    const a = view('a')
    const { picker } = setup([a])
    expect(picker.pick()).toBe(a)
  })
})

describe('ReplicaPicker circuit breaker', () => {
  it('opens after failureThreshold consecutive connect errors, 5xx or timeouts', () => {
    const { picker } = setup([view('a', { kvCacheUsage: 0 }), view('b', { kvCacheUsage: 0.5 })])
    picker.record('a', 'connect-error')
    picker.record('a', 'server-error')
    picker.record('a', 'timeout')
    picker.record('a', 'connect-error')
    expect(picker.breakerState('a')).toBe('closed')
    expect(picker.pick()?.name).toBe('a')
    picker.record('a', 'connect-error')
    expect(picker.breakerState('a')).toBe('open')
    expect(picks(picker, 3)).toEqual(['b', 'b', 'b'])
  })

  it('does not count client errors (4xx), and a success resets the count', () => {
    const { picker } = setup([view('a')])
    for (let i = 0; i < 20; i++) picker.record('a', 'client-error')
    expect(picker.breakerState('a')).toBe('closed')
    for (let i = 0; i < 4; i++) picker.record('a', 'connect-error')
    picker.record('a', 'success')
    for (let i = 0; i < 4; i++) picker.record('a', 'connect-error')
    expect(picker.breakerState('a')).toBe('closed')
    picker.record('a', 'client-error')
    picker.record('a', 'connect-error')
    expect(picker.breakerState('a')).toBe('open')
  })

  it('goes half-open after openMs, admits one trial at a time, and closes after halfOpenSuccesses', () => {
    const { picker, clock } = setup([view('a', { kvCacheUsage: 0 }), view('b', { kvCacheUsage: 0.5 })], {
      breaker: { failureThreshold: 2, openMs: 1_000, halfOpenSuccesses: 2 },
    })
    picker.record('a', 'connect-error')
    picker.record('a', 'connect-error')
    clock.t = 999
    expect(picker.breakerState('a')).toBe('open')
    expect(picker.pick()?.name).toBe('b')
    clock.t = 1_000
    expect(picker.breakerState('a')).toBe('half-open')
    // First trial.
    expect(picker.pick()?.name).toBe('a')
    picker.onStart('a')
    expect(picker.pick()?.name).toBe('b')
    picker.record('a', 'success')
    picker.onEnd('a')
    expect(picker.breakerState('a')).toBe('half-open')
    // Second trial closes it.
    expect(picker.pick()?.name).toBe('a')
    picker.onStart('a')
    picker.record('a', 'success')
    picker.onEnd('a')
    expect(picker.breakerState('a')).toBe('closed')
    expect(picker.snapshot()[0]).toMatchObject({ name: 'a', breaker: 'closed', inflight: 0 })
  })

  it('reopens on a failure in half-open, for another openMs', () => {
    const { picker, clock } = setup([view('a')], { breaker: { failureThreshold: 1, openMs: 500 } })
    picker.record('a', 'timeout')
    clock.t = 500
    expect(picker.breakerState('a')).toBe('half-open')
    picker.onStart('a')
    picker.record('a', 'server-error')
    picker.onEnd('a')
    expect(picker.breakerState('a')).toBe('open')
    expect(picker.pick()).toBeNull()
    clock.t = 999
    expect(picker.breakerState('a')).toBe('open')
    clock.t = 1_000
    expect(picker.breakerState('a')).toBe('half-open')
    expect(picker.pick()?.name).toBe('a')
  })

  it('reports breaker state in the snapshot', () => {
    const { picker } = setup([view('a', { kvCacheUsage: 0 }), view('b')], {
      breaker: { failureThreshold: 1 },
    })
    picker.record('b', 'connect-error')
    expect(picker.snapshot()).toEqual([
      {
        name: 'a',
        score: 7,
        weight: 1,
        inflight: 0,
        breaker: 'closed',
        draining: false,
        serving: true,
        stale: false,
      },
      {
        name: 'b',
        score: 0,
        weight: 1,
        inflight: 0,
        breaker: 'open',
        draining: false,
        serving: true,
        stale: false,
      },
    ])
    expect(picker.breakerState('unknown')).toBe('closed')
  })
})

describe('ReplicaPicker options', () => {
  it('rejects invalid options, naming the option', () => {
    const bad: Array<[PickerOptions, string]> = [
      [{ weights: { kv: -1 } }, 'weights.kv'],
      [{ weights: { risk: Number.NaN } }, 'weights.risk'],
      [{ kvThreshold: 0 }, 'kvThreshold'],
      [{ queueThreshold: -2 }, 'queueThreshold'],
      [{ breaker: { failureThreshold: 0 } }, 'breaker.failureThreshold'],
      [{ breaker: { openMs: -1 } }, 'breaker.openMs'],
      [{ breaker: { halfOpenSuccesses: 1.5 } }, 'breaker.halfOpenSuccesses'],
      [{ now: 'x' as unknown as () => number }, 'now'],
    ]
    for (const [options, name] of bad) {
      expect(() => new ReplicaPicker(options)).toThrow(InvalidOptionError)
      expect(() => new ReplicaPicker(options)).toThrow(`"${name}"`)
    }
  })
})
