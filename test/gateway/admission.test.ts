import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { InvalidArgumentError, InvalidOptionError, VllmMonitorError } from '../../src/errors.js'
import {
  AdmissionController,
  type AdmissionOptions,
  AdmissionRejectedError,
} from '../../src/gateway/admission.js'
import type { Permit } from '../../src/gateway/types.js'

const R = 'replica-a'

/** A controller on a hand-moved clock, with a fixed limit unless the options say otherwise. */
function setup(options: AdmissionOptions = {}) {
  const clock = { t: 1_000 }
  const ctl = new AdmissionController({
    initialLimit: 2,
    minLimit: 1,
    maxLimit: 100,
    now: () => clock.t,
    ...options,
  })
  return { ctl, clock }
}

function fill(ctl: AdmissionController, n: number, replica = R): Permit[] {
  const permits: Permit[] = []
  for (let i = 0; i < n; i++) {
    const p = ctl.tryAcquire(replica)
    if (p === null) throw new Error(`no permit #${i}`)
    permits.push(p)
  }
  return permits
}

async function rejectionOf(p: Promise<unknown>): Promise<AdmissionRejectedError> {
  try {
    await p
  } catch (err) {
    if (err instanceof AdmissionRejectedError) return err
    throw err
  }
  throw new Error('expected a rejection')
}

/** Lets settled promise callbacks run. */
const flush = () => new Promise((resolve) => setImmediate(resolve))

/** A full GC (WeakRefs made in this turn survive until it ends, hence the ticks around it). */
async function collectGarbage(): Promise<void> {
  setFlagsFromString('--expose-gc')
  const gc = runInNewContext('gc') as () => void
  await flush()
  gc()
  await flush()
  gc()
}

afterEach(() => {
  vi.useRealTimers()
})

describe('AdmissionController fast path', () => {
  it('grants permits up to the limit, then returns null', () => {
    const { ctl } = setup({ initialLimit: 3 })
    const permits = fill(ctl, 3)
    expect(permits.map((p) => p.replica)).toEqual([R, R, R])
    expect(ctl.tryAcquire(R)).toBeNull()
    expect(ctl.state(R)).toMatchObject({ limit: 3, inflight: 3, queued: 0, admitted: 3, rejected: 0 })
  })

  it('creates replicas on first use and keeps them apart', () => {
    const { ctl } = setup({ initialLimit: 1 })
    expect(ctl.replicas()).toEqual([])
    fill(ctl, 1, 'a')
    fill(ctl, 1, 'b')
    expect(ctl.tryAcquire('a')).toBeNull()
    expect(ctl.replicas()).toEqual(['a', 'b'])
  })

  it('frees the slot once per permit, whichever way it ends', () => {
    const { ctl } = setup({ initialLimit: 2 })
    const [a, b] = fill(ctl, 2)
    a!.success()
    a!.success()
    a!.dropped()
    a!.ignore()
    expect(ctl.state(R).inflight).toBe(1)
    b!.ignore()
    b!.success()
    expect(ctl.state(R).inflight).toBe(0)
  })

  it('feeds success RTTs to the adaptive limit, which grows while the replica is fully used', () => {
    const { ctl, clock } = setup({ initialLimit: 10 })
    for (let round = 0; round < 20; round++) {
      const limit = ctl.state(R).limit
      const permits = fill(ctl, limit)
      clock.t += 50
      for (const p of permits) p.success()
    }
    expect(ctl.state(R).adaptiveLimit).toBeGreaterThan(10)
  })

  it('backs the adaptive limit off on dropped permits, and leaves it alone on ignored ones', () => {
    const { ctl } = setup({ initialLimit: 50 })
    for (const p of fill(ctl, 10)) p.ignore()
    expect(ctl.state(R).adaptiveLimit).toBe(50)
    for (const p of fill(ctl, 10)) p.dropped()
    expect(ctl.state(R).adaptiveLimit).toBe(Math.floor(50 * 0.9 ** 10))
  })
})

describe('AdmissionController queue', () => {
  it('admits queued requests by priority, then first come first served', async () => {
    const { ctl } = setup({ initialLimit: 1, maxLimit: 1 })
    const [held] = fill(ctl, 1)
    const order: string[] = []
    const granted: Permit[] = []
    const track = (name: string, priority: number) =>
      ctl.acquire(R, priority).then((p) => {
        order.push(name)
        granted.push(p)
      })
    const waiting = [
      track('low-1', 0),
      track('high-1', 5),
      track('low-2', 0),
      track('high-2', 5),
      track('mid', 2),
    ]
    expect(ctl.state(R).queued).toBe(5)
    expect(ctl.tryAcquire(R, 10)).toBeNull()
    held!.success()
    for (let i = 0; i < waiting.length; i++) {
      await flush()
      expect(order).toHaveLength(i + 1)
      expect(ctl.state(R).inflight).toBe(1)
      granted[i]!.success()
    }
    await Promise.all(waiting)
    expect(order).toEqual(['high-1', 'high-2', 'mid', 'low-1', 'low-2'])
    expect(ctl.state(R)).toMatchObject({ queued: 0, inflight: 0 })
  })

  it('rejects with 429 overloaded and a Retry-After of at least 1 s when the queue is full', async () => {
    const { ctl } = setup({ initialLimit: 1, maxQueue: 2 })
    fill(ctl, 1)
    const queued = [ctl.acquire(R), ctl.acquire(R)]
    const err = await rejectionOf(ctl.acquire(R))
    expect(err).toBeInstanceOf(VllmMonitorError)
    expect(err.code).toBe('VLLM_MONITOR_ADMISSION_REJECTED')
    expect(err.name).toBe('AdmissionRejectedError')
    expect(err.rejection.reason).toBe('overloaded')
    expect(err.rejection.status).toBe(429)
    expect(err.rejection.retryAfterS).toBeGreaterThanOrEqual(1)
    expect(err.message).toBe(err.rejection.message)
    expect(ctl.state(R)).toMatchObject({ queued: 2, rejected: 1 })
    expect(queued).toHaveLength(2)
  })

  it('rejects sheddable requests (priority < 0) at once while saturated, and admits them otherwise', async () => {
    const { ctl } = setup({ initialLimit: 2 })
    const first = await ctl.acquire(R, -1)
    expect(first.replica).toBe(R)
    fill(ctl, 1)
    const err = await rejectionOf(ctl.acquire(R, -1))
    expect(err.rejection).toMatchObject({ reason: 'overloaded', status: 429 })
    expect(ctl.state(R).queued).toBe(0)
  })

  it('honours a custom sheddableBelow', async () => {
    const { ctl } = setup({ initialLimit: 1, sheddableBelow: 5 })
    fill(ctl, 1)
    expect((await rejectionOf(ctl.acquire(R, 4))).rejection.reason).toBe('overloaded')
    void ctl.acquire(R, 5)
    expect(ctl.state(R).queued).toBe(1)
  })

  it('rejects a request that waited past queueTimeoutMs with 429 queue-timeout', async () => {
    vi.useFakeTimers()
    const { ctl } = setup({ initialLimit: 1, queueTimeoutMs: 5_000 })
    fill(ctl, 1)
    const waiting = rejectionOf(ctl.acquire(R))
    vi.advanceTimersByTime(4_999)
    expect(ctl.state(R).queued).toBe(1)
    vi.advanceTimersByTime(1)
    const err = await waiting
    expect(err.rejection).toMatchObject({ reason: 'queue-timeout', status: 429 })
    expect(ctl.state(R).queued).toBe(0)
  })

  it('does not admit a waiter found past its timeout when a slot frees; it rejects it instead', async () => {
    const { ctl, clock } = setup({ initialLimit: 1, queueTimeoutMs: 5_000 })
    const [held] = fill(ctl, 1)
    const late = rejectionOf(ctl.acquire(R))
    clock.t += 6_000
    const fresh = ctl.acquire(R)
    held!.success()
    expect((await late).rejection.reason).toBe('queue-timeout')
    expect((await fresh).replica).toBe(R)
  })

  it('removes an aborted waiter and rejects it with the signal reason', async () => {
    const { ctl } = setup({ initialLimit: 1 })
    const [held] = fill(ctl, 1)
    const ac = new AbortController()
    const aborted = ctl.acquire(R, 0, ac.signal)
    const next = ctl.acquire(R, 0)
    expect(ctl.state(R).queued).toBe(2)
    const reason = new Error('client went away')
    ac.abort(reason)
    await expect(aborted).rejects.toBe(reason)
    expect(ctl.state(R).queued).toBe(1)
    held!.success()
    expect((await next).replica).toBe(R)
    expect(ctl.state(R)).toMatchObject({ inflight: 1, queued: 0 })
  })

  it('lets go of waiters that left a band still behind a longer-lived one (no growth under sustained overload)', async () => {
    // A high-priority waiter stays queued for the whole test, so the queue never empties; the
    // priority-0 waiters behind it are aborted (clients gone) one after another.
    const { ctl } = setup({ initialLimit: 1, maxLimit: 1, queueTimeoutMs: 60_000 })
    const [held] = fill(ctl, 1)
    const high = ctl.acquire(R, 10)
    const refs: WeakRef<AbortSignal>[] = []
    const leave = async () => {
      const ac = new AbortController()
      refs.push(new WeakRef(ac.signal))
      const w = ctl.acquire(R, 0, ac.signal)
      ac.abort(new Error('gone'))
      await w.catch(() => undefined)
    }
    for (let i = 0; i < 200; i++) await leave()
    expect(ctl.state(R).queued).toBe(1)
    await collectGarbage()
    expect(refs.filter((r) => r.deref() !== undefined)).toHaveLength(0)
    // Those still queued keep their order through the compactions.
    const order: number[] = []
    const live = [1, 2, 3].map((n) =>
      ctl.acquire(R, 0).then((p) => {
        order.push(n)
        return p
      }),
    )
    for (let i = 0; i < 100; i++) await leave()
    held!.success()
    ;(await high).success()
    for (const p of live) (await p).success()
    expect(order).toEqual([1, 2, 3])
    expect(ctl.state(R)).toMatchObject({ queued: 0, inflight: 0 })
  })

  it('rejects at once with the reason of an already aborted signal', async () => {
    const { ctl } = setup()
    const ac = new AbortController()
    ac.abort(new Error('gone'))
    await expect(ctl.acquire(R, 0, ac.signal)).rejects.toThrow('gone')
    expect(ctl.state(R).inflight).toBe(0)
  })
})

describe('AdmissionController as an actuator', () => {
  it('caps the effective limit below the adaptive one, and release restores it and admits waiters', async () => {
    const { ctl } = setup({ initialLimit: 4 })
    ctl.cap(R, 1, 'kv pressure')
    expect(ctl.state(R)).toMatchObject({ limit: 1, adaptiveLimit: 4, cap: 1, capReason: 'kv pressure' })
    fill(ctl, 1)
    expect(ctl.tryAcquire(R)).toBeNull()
    const waiting = ctl.acquire(R)
    ctl.release(R)
    expect((await waiting).replica).toBe(R)
    expect(ctl.state(R)).toMatchObject({ limit: 4, cap: null, capReason: null, inflight: 2 })
  })

  it('a cap above the adaptive limit changes nothing', () => {
    const { ctl } = setup({ initialLimit: 2 })
    ctl.cap(R, 10, 'loose')
    expect(ctl.state(R).limit).toBe(2)
  })

  it('treats a cap of 0 as draining: 503, queued waiters rejected', async () => {
    const { ctl } = setup({ initialLimit: 1 })
    fill(ctl, 1)
    const queued = rejectionOf(ctl.acquire(R))
    ctl.cap(R, 0, 'hung')
    expect((await queued).rejection).toMatchObject({ reason: 'draining', status: 503 })
    expect((await rejectionOf(ctl.acquire(R))).rejection).toMatchObject({ reason: 'draining', status: 503 })
    expect(() => ctl.cap(R, -1, 'x')).toThrow(InvalidArgumentError)
  })

  it('drain rejects queued waiters with 503 and resolves true once in-flight requests end', async () => {
    const { ctl } = setup({ initialLimit: 2 })
    const [a, b] = fill(ctl, 2)
    const queued = rejectionOf(ctl.acquire(R, 3))
    const drained = ctl.drain(R, 60_000)
    expect((await queued).rejection).toMatchObject({ reason: 'draining', status: 503 })
    expect(ctl.state(R)).toMatchObject({ draining: true, queued: 0, inflight: 2 })
    a!.success()
    expect(ctl.tryAcquire(R)).toBeNull()
    expect((await rejectionOf(ctl.acquire(R))).rejection.reason).toBe('draining')
    let settled = false
    void drained.then(() => {
      settled = true
    })
    await flush()
    expect(settled).toBe(false)
    b!.dropped()
    await expect(drained).resolves.toBe(true)
  })

  it('drain with a timeout longer than a timer can wait does not give up at once', async () => {
    const { ctl } = setup({ initialLimit: 1 })
    const [held] = fill(ctl, 1)
    let result: boolean | null = null
    const drained = ctl.drain(R, 2 ** 31).then((d) => {
      result = d
    })
    await new Promise((resolve) => setTimeout(resolve, 30))
    expect(result).toBeNull()
    held!.success()
    await drained
    expect(result).toBe(true)
  })

  it('drain resolves true at once when nothing is in flight', async () => {
    const { ctl } = setup()
    await expect(ctl.drain(R, 1_000)).resolves.toBe(true)
    expect(ctl.state(R).draining).toBe(true)
  })

  it('drain resolves false at its timeout when requests are still in flight', async () => {
    vi.useFakeTimers()
    const { ctl } = setup()
    fill(ctl, 1)
    const drained = ctl.drain(R, 2_000)
    vi.advanceTimersByTime(2_000)
    await expect(drained).resolves.toBe(false)
    expect(ctl.state(R)).toMatchObject({ draining: true, inflight: 1 })
  })

  it('undrain admits again (and tells a pending drain it did not complete)', async () => {
    const { ctl } = setup()
    fill(ctl, 1)
    const drained = ctl.drain(R, 60_000)
    ctl.undrain(R)
    await expect(drained).resolves.toBe(false)
    expect(ctl.state(R).draining).toBe(false)
    expect(ctl.tryAcquire(R)).not.toBeNull()
  })
})

describe('AdmissionController Retry-After', () => {
  it('is 1 s before anything is known', async () => {
    const { ctl } = setup({ initialLimit: 1, maxQueue: 0 })
    fill(ctl, 1)
    expect((await rejectionOf(ctl.acquire(R))).rejection.retryAfterS).toBe(1)
  })

  it('follows the measured completion rate: (queued + 1) / rate, rounded up', async () => {
    const { ctl, clock } = setup({ initialLimit: 1, maxLimit: 1 })
    // Ten completions 100 ms apart: 10 per second.
    for (let i = 0; i < 10; i++) {
      const [p] = fill(ctl, 1)
      clock.t += 100
      p!.success()
    }
    expect(ctl.state(R).completionsPerSec).toBeCloseTo(10, 6)
    fill(ctl, 1)
    for (let i = 0; i < 29; i++) void ctl.acquire(R).catch(() => {})
    // 29 queued + this one = 30 requests at 10/s.
    expect((await rejectionOf(ctl.acquire(R, -1))).rejection.retryAfterS).toBe(3)
    ctl.cap(R, 0, 'cleanup')
  })

  it('slows down with the completion rate and is clamped to 60 s', async () => {
    const { ctl, clock } = setup({ initialLimit: 1, maxLimit: 1 })
    for (let i = 0; i < 30; i++) {
      const [p] = fill(ctl, 1)
      clock.t += 2_000
      p!.success()
    }
    expect(ctl.state(R).completionsPerSec).toBeCloseTo(0.5, 3)
    fill(ctl, 1)
    for (let i = 0; i < 3; i++) void ctl.acquire(R).catch(() => {})
    expect((await rejectionOf(ctl.acquire(R, -1))).rejection.retryAfterS).toBe(8)
    for (let i = 0; i < 100; i++) void ctl.acquire(R).catch(() => {})
    expect((await rejectionOf(ctl.acquire(R, -1))).rejection.retryAfterS).toBe(60)
    ctl.cap(R, 0, 'cleanup')
  })

  it('uses limit / average latency as the rate before two completions were seen', async () => {
    const { ctl, clock } = setup({ initialLimit: 4 })
    const permits = fill(ctl, 4)
    clock.t += 2_000
    permits[0]!.success()
    // Little's law prior: 4 slots / 2 s = 2 per second; 3 queued + 1 → 2 s.
    fill(ctl, 1)
    for (let i = 0; i < 3; i++) void ctl.acquire(R).catch(() => {})
    expect((await rejectionOf(ctl.acquire(R, -1))).rejection.retryAfterS).toBe(2)
    ctl.cap(R, 0, 'cleanup')
  })
})

describe('AdmissionController options', () => {
  it('rejects invalid options, naming the option', () => {
    const bad: Array<[AdmissionOptions, string]> = [
      [{ maxQueue: -1 }, 'maxQueue'],
      [{ maxQueue: 1.5 }, 'maxQueue'],
      [{ queueTimeoutMs: 0 }, 'queueTimeoutMs'],
      // Longer than a timer can wait: Node would time every waiter out after 1 ms.
      [{ queueTimeoutMs: 2 ** 31 }, 'queueTimeoutMs'],
      [{ minLimit: 0 }, 'minLimit'],
      [{ minLimit: 10, maxLimit: 5, initialLimit: 5 }, 'maxLimit'],
      [{ initialLimit: 500 }, 'initialLimit'],
      [{ sheddableBelow: Number.NaN }, 'sheddableBelow'],
      [{ now: 5 as unknown as () => number }, 'now'],
    ]
    for (const [options, name] of bad) {
      expect(() => new AdmissionController(options)).toThrow(InvalidOptionError)
      expect(() => new AdmissionController(options)).toThrow(`"${name}"`)
    }
  })

  it('uses the documented defaults', () => {
    const ctl = new AdmissionController()
    expect(ctl.state(R)).toEqual({
      limit: 20,
      adaptiveLimit: 20,
      cap: null,
      capReason: null,
      inflight: 0,
      queued: 0,
      draining: false,
      completionsPerSec: 0,
      admitted: 0,
      rejected: 0,
    })
  })
})
