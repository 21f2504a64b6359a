import { describe, expect, it } from 'vitest'
import { rollUpStates } from '../../src/lifecycle/rollup.js'

describe('rollUpStates', () => {
  it('calls an empty fleet NOT_STARTED', () => {
    expect(rollUpStates([])).toBe('NOT_STARTED')
  })

  it('calls the fleet SERVING only when every replica is', () => {
    expect(rollUpStates(['SERVING'])).toBe('SERVING')
    expect(rollUpStates(['SERVING', 'SERVING', 'SERVING'])).toBe('SERVING')
  })

  it('calls the fleet DEGRADED when some replica can serve but not all are SERVING', () => {
    expect(rollUpStates(['SERVING', 'DEGRADED'])).toBe('DEGRADED')
    expect(rollUpStates(['SERVING', 'ERROR'])).toBe('DEGRADED')
    expect(rollUpStates(['SERVING', 'LOADING_MODEL'])).toBe('DEGRADED')
    expect(rollUpStates(['SERVING', 'READY'])).toBe('DEGRADED')
    expect(rollUpStates(['DEGRADED', 'SHUTTING_DOWN'])).toBe('DEGRADED')
    expect(rollUpStates(['DEGRADED'])).toBe('DEGRADED')
  })

  it('calls the fleet ERROR when none can serve and one has failed', () => {
    expect(rollUpStates(['ERROR'])).toBe('ERROR')
    expect(rollUpStates(['ERROR', 'INITIALIZING', 'READY'])).toBe('ERROR')
  })

  it('otherwise reports the least advanced start-up state', () => {
    expect(rollUpStates(['READY', 'LOADING_MODEL', 'READY'])).toBe('LOADING_MODEL')
    expect(rollUpStates(['READY', 'INITIALIZING'])).toBe('INITIALIZING')
    expect(rollUpStates(['READY', 'NOT_STARTED'])).toBe('NOT_STARTED')
    expect(rollUpStates(['READY', 'READY'])).toBe('READY')
  })

  it('ranks SHUTTING_DOWN below NOT_STARTED, as a replica on its way back there', () => {
    expect(rollUpStates(['SHUTTING_DOWN'])).toBe('SHUTTING_DOWN')
    expect(rollUpStates(['NOT_STARTED', 'SHUTTING_DOWN'])).toBe('SHUTTING_DOWN')
    expect(rollUpStates(['READY', 'SHUTTING_DOWN'])).toBe('SHUTTING_DOWN')
  })
})
