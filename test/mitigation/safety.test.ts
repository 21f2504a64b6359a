import { afterEach, describe, expect, it, vi } from 'vitest'
import { InvalidArgumentError, InvalidOptionError } from '../../src/errors.js'
import { type ApprovalRequest, SafetyGate, type SafetyOptions } from '../../src/mitigation/safety.js'

afterEach(() => vi.useRealTimers())

/** A gate on a fake clock that the test moves by hand. */
function gate(options: SafetyOptions = {}) {
  const clock = { ms: 1_000_000 }
  const g = new SafetyGate({ now: () => clock.ms, ...options })
  return { g, clock }
}

let seq = 0
function req(replica: string, strategy: string, extra: Partial<ApprovalRequest> = {}): ApprovalRequest {
  return {
    id: `a${++seq}`,
    replica,
    failureType: 'kv-exhaustion',
    strategy,
    disruptive: false,
    reason: 'test',
    ...extra,
  }
}
const restart = (replica: string, extra: Partial<ApprovalRequest> = {}) =>
  req(replica, 'restart', { disruptive: true, failureType: 'engine-hang', ...extra })

const allowed = { allowed: true, dryRun: false }

describe('SafetyGate', () => {
  describe('on one replica', () => {
    it('refuses any action while a disruptive one runs there', async () => {
      const { g } = gate()
      const r = restart('r0')
      expect(await g.admit(r)).toEqual(allowed)
      expect(await g.admit(req('r0', 'shift-weight', { failureType: 'other' }))).toMatchObject({
        allowed: false,
        reason: 'disruptive-in-progress',
        detail: `restart (disruptive) is running on r0 (${r.id})`,
        retryAfterMs: null,
      })
    })

    it('lets an escalation follow the action it escalates past the failure-type cooldown, not past its own', async () => {
      const { g, clock } = gate()
      const cap = req('r0', 'cap-admission')
      await g.admit(cap)
      g.finish(cap.id)
      clock.ms += 5_000
      expect(await g.admit(req('r0', 'restart-smaller', { disruptive: true }))).toMatchObject({
        allowed: false,
        reason: 'cooldown',
      })
      const next = req('r0', 'restart-smaller', { disruptive: true, escalation: true })
      expect(await g.admit(next)).toEqual(allowed)
      g.finish(next.id)
      expect(
        await g.admit(req('r0', 'restart-smaller', { disruptive: true, escalation: true })),
      ).toMatchObject({
        allowed: false,
        reason: 'cooldown',
      })
    })

    it('refuses a disruptive action while a non-disruptive one runs there', async () => {
      const { g } = gate()
      await g.admit(req('r0', 'cap-admission'))
      expect(await g.admit(restart('r0'))).toMatchObject({ allowed: false, reason: 'busy' })
    })

    it('lets non-disruptive actions of different strategies and failure types overlap', async () => {
      const { g } = gate()
      expect(await g.admit(req('r0', 'cap-admission'))).toEqual(allowed)
      expect(await g.admit(req('r0', 'shift-weight', { failureType: 'latency' }))).toEqual(allowed)
      expect(g.active().map((a) => a.strategy)).toEqual(['cap-admission', 'shift-weight'])
    })

    it('refuses a second run of the same strategy, or a second action for the same failure type', async () => {
      const { g } = gate()
      await g.admit(req('r0', 'cap-admission'))
      expect(await g.admit(req('r0', 'cap-admission', { failureType: 'latency' }))).toMatchObject({
        reason: 'busy',
        detail: expect.stringContaining('cap-admission is already running on r0'),
      })
      expect(await g.admit(req('r0', 'shift-weight'))).toMatchObject({
        reason: 'busy',
        detail: expect.stringContaining('already acting on kv-exhaustion on r0'),
      })
    })

    it('refuses an id that is already admitted', async () => {
      const { g } = gate()
      const r = req('r0', 'cap-admission')
      await g.admit(r)
      expect(await g.admit({ ...r, replica: 'r1' })).toMatchObject({ reason: 'busy' })
    })

    it('frees the replica once the action finishes', async () => {
      const { g, clock } = gate({ cooldownMs: 0, failureTypeCooldownMs: 0 })
      const r = restart('r0')
      await g.admit(r)
      clock.ms += 5_000
      g.finish(r.id)
      expect(g.active()).toEqual([])
      expect(await g.admit(restart('r0'))).toEqual(allowed)
    })
  })

  describe('cooldowns', () => {
    it('cools (replica, strategy) down for cooldownMs after the action ends, and says until when', async () => {
      const { g, clock } = gate({ cooldownMs: 120_000, failureTypeCooldownMs: 0 })
      const r = restart('r0')
      await g.admit(r)
      clock.ms += 10_000
      g.finish(r.id)
      clock.ms += 25_000
      expect(g.check(restart('r0'))).toEqual({
        allowed: false,
        reason: 'cooldown',
        detail: 'restart on r0 is cooling down until t+95 s',
        retryAfterMs: 95_000,
      })
      expect(g.check(restart('r1'))).toEqual(allowed)
      expect(g.check(req('r0', 'cap-admission'))).toEqual(allowed)
      clock.ms += 95_000
      expect(g.check(restart('r0'))).toEqual(allowed)
    })

    it('cools (replica, failure type) down for failureTypeCooldownMs after any action for it', async () => {
      const { g, clock } = gate({ cooldownMs: 0, failureTypeCooldownMs: 30_000 })
      const r = req('r0', 'cap-admission')
      await g.admit(r)
      g.finish(r.id)
      clock.ms += 10_000
      expect(g.check(req('r0', 'shift-weight'))).toEqual({
        allowed: false,
        reason: 'cooldown',
        detail: 'kv-exhaustion on r0 was acted on recently; cooling down until t+20 s',
        retryAfterMs: 20_000,
      })
      expect(g.check(req('r0', 'shift-weight', { failureType: 'latency' }))).toEqual(allowed)
      clock.ms += 20_000
      expect(g.check(req('r0', 'shift-weight'))).toEqual(allowed)
    })

    it('reports the cooldown that ends last when both apply', async () => {
      const { g } = gate({ cooldownMs: 60_000, failureTypeCooldownMs: 90_000 })
      const r = req('r0', 'cap-admission')
      await g.admit(r)
      g.finish(r.id)
      expect(g.check(req('r0', 'cap-admission'))).toMatchObject({ reason: 'cooldown', retryAfterMs: 90_000 })
    })

    it('starts no cooldown for an action that was denied approval', async () => {
      const { g } = gate({ approve: () => false })
      const r = restart('r0')
      await g.admit(r)
      g.finish(r.id)
      expect(g.check(restart('r0'))).toEqual(allowed)
    })
  })

  describe('fleet-wide bounds', () => {
    it('runs at most maxConcurrentRestarts disruptive actions at once', async () => {
      const { g } = gate({ maxConcurrentRestarts: 2 })
      expect(await g.admit(restart('r0'))).toEqual(allowed)
      expect(await g.admit(restart('r1'))).toEqual(allowed)
      expect(await g.admit(restart('r2'))).toEqual({
        allowed: false,
        reason: 'restart-bound',
        detail: '2 disruptive action(s) already running in the fleet (maxConcurrentRestarts 2)',
        retryAfterMs: null,
      })
      expect(await g.admit(req('r2', 'cap-admission'))).toEqual(allowed)
    })

    it('limits each replica to maxActionsPerReplicaPerHour starts over a sliding hour', async () => {
      const { g, clock } = gate({ maxActionsPerReplicaPerHour: 2, cooldownMs: 0, failureTypeCooldownMs: 0 })
      for (let i = 0; i < 2; i++) {
        const r = req('r0', 'cap-admission')
        expect(await g.admit(r)).toEqual(allowed)
        g.finish(r.id)
        clock.ms += 600_000
      }
      expect(g.check(req('r0', 'cap-admission'))).toEqual({
        allowed: false,
        reason: 'replica-rate-limit',
        detail: 'r0 had 2 actions in the last hour; the next may start at t+2400 s',
        retryAfterMs: 2_400_000,
      })
      expect(g.check(req('r1', 'cap-admission'))).toEqual(allowed)
      clock.ms += 2_400_000
      expect(g.check(req('r0', 'cap-admission'))).toEqual(allowed)
    })

    it('limits the fleet to maxActionsPerHour starts over a sliding hour', async () => {
      const { g, clock } = gate({ maxActionsPerHour: 3 })
      for (const replica of ['r0', 'r1', 'r2']) {
        const r = req(replica, 'cap-admission')
        await g.admit(r)
        g.finish(r.id)
        clock.ms += 1_000
      }
      expect(g.check(req('r3', 'cap-admission'))).toMatchObject({
        allowed: false,
        reason: 'rate-limit',
        retryAfterMs: kHour - 3_000,
      })
      clock.ms += kHour - 3_000
      expect(g.check(req('r3', 'cap-admission'))).toEqual(allowed)
    })

    it('does not charge the rate limit for an action that was denied approval', async () => {
      const { g } = gate({ maxActionsPerHour: 1, approve: () => false })
      await g.admit(restart('r0'))
      expect(g.check(req('r1', 'cap-admission'))).toEqual(allowed)
    })
  })

  describe('dry run', () => {
    it('passes every check, says dryRun, reserves nothing and asks no approval', async () => {
      const approve = vi.fn(() => true)
      const { g } = gate({ dryRun: true, approve, maxConcurrentRestarts: 1, maxActionsPerHour: 1 })
      const dry = { allowed: true, dryRun: true }
      expect(await g.admit(restart('r0'))).toEqual(dry)
      expect(await g.admit(restart('r0'))).toEqual(dry)
      expect(g.check(restart('r1'))).toEqual(dry)
      expect(g.active()).toEqual([])
      expect(approve).not.toHaveBeenCalled()
    })
  })

  describe('approval', () => {
    it('asks the hook about disruptive actions only, and admits what it approves', async () => {
      const approve = vi.fn(async () => true)
      const { g } = gate({ approve })
      const r = restart('r0')
      expect(await g.admit(r)).toEqual(allowed)
      expect(await g.admit(req('r1', 'cap-admission'))).toEqual(allowed)
      expect(approve).toHaveBeenCalledOnce()
      expect(approve).toHaveBeenCalledWith(r)
    })

    it('asks about every action with approveAll', async () => {
      const approve = vi.fn(() => true)
      const { g } = gate({ approve, approveAll: true })
      await g.admit(req('r0', 'cap-admission'))
      expect(approve).toHaveBeenCalledOnce()
    })

    it('refuses what the hook denies and frees its slots', async () => {
      const { g } = gate({ approve: () => false })
      const r = restart('r0')
      expect(await g.admit(r)).toEqual({
        allowed: false,
        reason: 'denied',
        detail: 'restart on r0: approval denied',
        retryAfterMs: null,
      })
      expect(g.active()).toEqual([])
    })

    it('counts a throwing hook as a denial', async () => {
      const { g } = gate({
        approve: () => {
          throw new Error('pager unreachable')
        },
      })
      expect(await g.admit(restart('r0'))).toMatchObject({
        reason: 'denied',
        detail: 'restart on r0: the approval hook failed: pager unreachable',
      })
      expect(g.active()).toEqual([])
    })

    it('counts a hook that does not answer within approvalTimeoutMs as a denial', async () => {
      vi.useFakeTimers()
      const { g } = gate({ approve: () => new Promise<boolean>(() => {}), approvalTimeoutMs: 5_000 })
      const verdict = g.admit(restart('r0'))
      await vi.advanceTimersByTimeAsync(5_000)
      expect(await verdict).toMatchObject({
        reason: 'denied',
        detail: 'restart on r0: no approval within 5 s',
      })
      expect(g.active()).toEqual([])
    })

    it('holds the slots while approval is pending, so a concurrent admit cannot take them', async () => {
      let answer!: (ok: boolean) => void
      const { g } = gate({ approve: () => new Promise<boolean>((resolve) => (answer = resolve)) })
      const first = g.admit(restart('r0'))
      await Promise.resolve()
      expect(await g.admit(restart('r1'))).toMatchObject({ reason: 'restart-bound' })
      expect(g.active()).toMatchObject([{ replica: 'r0', awaitingApproval: true }])
      answer(true)
      expect(await first).toEqual(allowed)
      expect(g.active()).toMatchObject([{ replica: 'r0', awaitingApproval: false }])
    })
  })

  describe('options', () => {
    it.each([
      [{ cooldownMs: -1 }, 'option "cooldownMs" must be a number >= 0, got -1'],
      [
        { failureTypeCooldownMs: Number.NaN },
        'option "failureTypeCooldownMs" must be a number >= 0, got NaN',
      ],
      [{ maxConcurrentRestarts: 0 }, 'option "maxConcurrentRestarts" must be a positive integer, got 0'],
      [{ maxActionsPerHour: 1.5 }, 'option "maxActionsPerHour" must be a positive integer, got 1.5'],
      [
        { maxActionsPerReplicaPerHour: '10' },
        'option "maxActionsPerReplicaPerHour" must be a positive integer, got 10',
      ],
      [{ dryRun: 1 }, 'option "dryRun" must be a boolean, got 1'],
      [{ approvalTimeoutMs: 0 }, 'option "approvalTimeoutMs" must be a positive integer, got 0'],
      [{ approve: true }, 'option "approve" must be a function, got true'],
      [{ approveAll: true }, 'option "approveAll" requires option "approve"'],
      [{ now: 5 }, 'option "now" must be a function, got 5'],
    ])('rejects %o with an InvalidOptionError that names the option', (options, message) => {
      expect(() => new SafetyGate(options as SafetyOptions)).toThrow(
        new InvalidOptionError(`SafetyGate: ${message}`),
      )
    })

    it('takes an option given as undefined for its default', () => {
      const { g } = gate({ cooldownMs: undefined, dryRun: undefined, approve: undefined })
      expect(g.check(restart('r0'))).toEqual(allowed)
    })

    it('rejects a request without a replica', () => {
      const { g } = gate()
      expect(() => g.check({ replica: '', failureType: 'x', strategy: 's', disruptive: false })).toThrow(
        InvalidArgumentError,
      )
    })

    it('defaults to one disruptive action at a time and a two-minute strategy cooldown', async () => {
      const clock = { ms: 0 }
      const g = new SafetyGate({ now: () => clock.ms })
      const r = restart('r0')
      await g.admit(r)
      expect(g.check(restart('r1'))).toMatchObject({ reason: 'restart-bound' })
      g.finish(r.id)
      expect(g.check(restart('r0'))).toMatchObject({ reason: 'cooldown', retryAfterMs: 120_000 })
    })
  })
})

const kHour = 3_600_000

describe('SafetyGate over months', () => {
  it('forgets the cooldowns and hourly windows of replicas that have left', async () => {
    const { g, clock } = gate({ maxActionsPerHour: 10_000 })
    // A rolling deployment: a new replica every ten minutes for a week, one action each.
    for (let i = 0; i < 1008; i++) {
      const r = req(`pod-${i}`, 'cap-admission')
      expect(await g.admit(r)).toEqual(allowed)
      g.finish(r.id)
      clock.ms += 600_000
    }
    // What is left is the last hour's: a handful of replicas, not a week's worth.
    expect(g.trackedKeys).toBeLessThan(30)
  })
})
