import { afterEach, describe, expect, it, vi } from 'vitest'
import { IllegalTransitionError, InvalidArgumentError, InvalidOptionError } from '../../src/errors.js'
import {
  isLegalTransition,
  LEGAL_TRANSITIONS,
  LIFECYCLE_STATES,
  LifecycleMachine,
} from '../../src/lifecycle/machine.js'
import type { LifecycleState, Transition } from '../../src/telemetry/types.js'

afterEach(() => {
  vi.restoreAllMocks()
})

/** Walks a fresh machine through a normal start-up to SERVING at t = 0..4. */
function serving(m = new LifecycleMachine()) {
  m.transition('INITIALIZING', 0, 'launched')
  m.transition('LOADING_MODEL', 1, 'loading weights')
  m.transition('READY', 2, '/health 200')
  m.transition('SERVING', 3, 'first request')
  return m
}

describe('LifecycleMachine', () => {
  it('starts in NOT_STARTED at t0', () => {
    const m = new LifecycleMachine({ t0: 50 })
    expect(m.state).toBe('NOT_STARTED')
    expect(m.since).toBe(50)
    expect(m.history()).toEqual([])
  })

  it('follows a normal start-up, recording when and why each state was entered', () => {
    const m = serving()
    expect(m.state).toBe('SERVING')
    expect(m.since).toBe(3)
    expect(m.reason).toBe('first request')
    expect(m.history().map((t) => `${t.from}->${t.to}`)).toEqual([
      'NOT_STARTED->INITIALIZING',
      'INITIALIZING->LOADING_MODEL',
      'LOADING_MODEL->READY',
      'READY->SERVING',
    ])
  })

  it('moves between SERVING and DEGRADED both ways', () => {
    const m = serving()
    expect(m.transition('DEGRADED', 10, 'preemption storm')).toBe(true)
    expect(m.transition('SERVING', 20, 'recovered')).toBe(true)
    expect(m.state).toBe('SERVING')
  })

  it('throws IllegalTransitionError naming from and to for a move vLLM cannot make', () => {
    const m = new LifecycleMachine({ name: 'r0' })
    expect(() => m.transition('SERVING', 1, 'looks up')).toThrow(IllegalTransitionError)
    expect(() => m.transition('SERVING', 1, 'looks up')).toThrow(/NOT_STARTED -> SERVING.*r0/)
    expect(m.state).toBe('NOT_STARTED')
    expect(m.history()).toEqual([])
  })

  it.each<[LifecycleState, LifecycleState]>([
    ['NOT_STARTED', 'ERROR'],
    ['NOT_STARTED', 'SHUTTING_DOWN'],
    ['INITIALIZING', 'READY'],
    ['READY', 'LOADING_MODEL'],
    ['SERVING', 'READY'],
    ['ERROR', 'SERVING'],
    ['SHUTTING_DOWN', 'ERROR'],
  ])('refuses %s -> %s', (from, to) => {
    expect(isLegalTransition(from, to)).toBe(false)
  })

  it('lets every running state fail, and every state but NOT_STARTED shut down', () => {
    for (const from of ['INITIALIZING', 'LOADING_MODEL', 'READY', 'SERVING', 'DEGRADED'] as const)
      expect(isLegalTransition(from, 'ERROR')).toBe(true)
    for (const from of LIFECYCLE_STATES)
      if (from !== 'NOT_STARTED' && from !== 'SHUTTING_DOWN')
        expect(isLegalTransition(from, 'SHUTTING_DOWN')).toBe(true)
    expect(isLegalTransition('NOT_STARTED', 'SHUTTING_DOWN')).toBe(false)
  })

  it('restarts from ERROR or after a shutdown, and ends in NOT_STARTED when the process is gone', () => {
    const m = serving()
    m.transition('ERROR', 5, 'EngineDeadError')
    m.transition('INITIALIZING', 6, 'restarted by supervisor')
    m.transition('SHUTTING_DOWN', 7, 'SIGTERM')
    m.transition('INITIALIZING', 8, 'restart')
    m.transition('SHUTTING_DOWN', 9, 'SIGTERM')
    m.transition('NOT_STARTED', 10, 'exited 0')
    expect(m.state).toBe('NOT_STARTED')
  })

  it('keeps its legal-transition table complete: every state has an entry, and no self-moves', () => {
    expect(Object.keys(LEGAL_TRANSITIONS).sort()).toEqual([...LIFECYCLE_STATES].sort())
    for (const [from, tos] of Object.entries(LEGAL_TRANSITIONS)) expect(tos).not.toContain(from)
  })

  it('treats a move to the current state as a no-op returning false', () => {
    const m = serving()
    const listener = vi.fn()
    m.on('transition', listener)
    expect(m.transition('SERVING', 9, 'again')).toBe(false)
    expect(m.since).toBe(3)
    expect(listener).not.toHaveBeenCalled()
    expect(m.history()).toHaveLength(4)
  })

  it('tryTransition returns false for an illegal move instead of throwing', () => {
    const m = new LifecycleMachine()
    expect(m.tryTransition('READY', 1, 'x')).toBe(false)
    expect(m.state).toBe('NOT_STARTED')
    expect(m.tryTransition('INITIALIZING', 1, 'launched')).toBe(true)
    expect(m.canTransition('LOADING_MODEL')).toBe(true)
    expect(m.canTransition('SERVING')).toBe(false)
  })

  it('refuses a time that is not finite or goes back', () => {
    const m = new LifecycleMachine()
    m.transition('INITIALIZING', 100, 'launched')
    expect(() => m.transition('LOADING_MODEL', 99, 'x')).toThrow(InvalidArgumentError)
    expect(() => m.transition('LOADING_MODEL', Number.NaN, 'x')).toThrow(InvalidArgumentError)
    expect(() => m.tryTransition('LOADING_MODEL', 50, 'x')).toThrow(InvalidArgumentError)
    expect(m.transition('LOADING_MODEL', 100, 'same instant is fine')).toBe(true)
  })

  it('attaches to a server found already running, but only from NOT_STARTED', () => {
    const m = new LifecycleMachine()
    expect(m.attach('SERVING', 5, 'found serving on first scrape')).toBe(true)
    expect(m.state).toBe('SERVING')
    expect(m.history()).toEqual([
      { t: 5, from: 'NOT_STARTED', to: 'SERVING', reason: 'found serving on first scrape' },
    ])
    expect(() => m.attach('ERROR', 6, 'x')).toThrow(IllegalTransitionError)
    expect(new LifecycleMachine().attach('NOT_STARTED', 0, 'nothing there')).toBe(false)
    const e = new LifecycleMachine()
    e.attach('ERROR', 1, '/health 500 on first contact')
    expect(e.state).toBe('ERROR')
  })

  it('tells listeners about each transition, in order, and stops after off', () => {
    const m = new LifecycleMachine()
    const seen: Transition[] = []
    const fn = (t: Transition) => seen.push(t)
    m.on('transition', fn)
    m.transition('INITIALIZING', 1, 'launched')
    m.off('transition', fn)
    m.transition('LOADING_MODEL', 2, 'loading')
    expect(seen).toEqual([{ t: 1, from: 'NOT_STARTED', to: 'INITIALIZING', reason: 'launched' }])
  })

  it('survives a listener that throws: the state changes, other listeners run, a warning is emitted', () => {
    const warn = vi.spyOn(process, 'emitWarning').mockImplementation(() => {})
    const m = new LifecycleMachine()
    const after = vi.fn()
    m.on('transition', () => {
      throw new Error('listener bug')
    })
    m.on('transition', after)
    expect(m.transition('INITIALIZING', 1, 'launched')).toBe(true)
    expect(m.state).toBe('INITIALIZING')
    expect(after).toHaveBeenCalledTimes(1)
    expect(warn).toHaveBeenCalledTimes(1)
    expect(warn.mock.calls[0]![0]).toMatch(/listener bug/)
    expect(warn.mock.calls[0]![1]).toMatchObject({ code: 'VLLM_MONITOR_CALLBACK_THREW' })
  })

  it('delivers a transition made by a listener after the current one, to every listener', () => {
    const m = serving()
    const order: string[] = []
    m.on('transition', (t) => {
      order.push(`a:${t.to}`)
      if (t.to === 'ERROR') m.transition('SHUTTING_DOWN', t.t, 'tearing down after error')
    })
    m.on('transition', (t) => order.push(`b:${t.to}`))
    m.transition('ERROR', 5, 'EngineDeadError')
    expect(m.state).toBe('SHUTTING_DOWN')
    expect(order).toEqual(['a:ERROR', 'b:ERROR', 'a:SHUTTING_DOWN', 'b:SHUTTING_DOWN'])
  })

  it('keeps a bounded history, oldest dropped first', () => {
    const m = serving(new LifecycleMachine({ historyLimit: 3 }))
    m.transition('DEGRADED', 4, 'd1')
    m.transition('SERVING', 5, 's1')
    const h = m.history()
    expect(h.map((t) => t.reason)).toEqual(['first request', 'd1', 's1'])
    for (let k = 0; k < 100; k++) m.transition(k % 2 === 0 ? 'DEGRADED' : 'SERVING', 6 + k, `flap ${k}`)
    expect(m.history().map((t) => t.reason)).toEqual(['flap 97', 'flap 98', 'flap 99'])
  })

  it('hands out transition records that cannot be altered', () => {
    const m = new LifecycleMachine()
    m.transition('INITIALIZING', 1, 'launched')
    expect(Object.isFrozen(m.history()[0])).toBe(true)
  })

  it('replays the same way from the same inputs (time comes from the caller)', () => {
    const run = () => {
      const m = serving()
      m.transition('DEGRADED', 10, 'kv pressure')
      m.transition('ERROR', 11, 'dead')
      return m.history()
    }
    expect(run()).toEqual(run())
  })

  it.each([
    [{ historyLimit: 0 }, 'historyLimit'],
    [{ historyLimit: 2.5 }, 'historyLimit'],
    [{ t0: Number.POSITIVE_INFINITY }, 't0'],
  ])('rejects option %o, naming %s', (options, name) => {
    expect(() => new LifecycleMachine(options)).toThrow(InvalidOptionError)
    expect(() => new LifecycleMachine(options)).toThrow(name)
  })
})
