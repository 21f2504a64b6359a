import { describe, expect, it } from 'vitest'
import {
  ErrorCodes,
  errorForCode,
  fromNative,
  GpuLostError,
  NvmlNotFoundError,
  VllmMonitorError,
} from '../src/errors.js'

describe('errors', () => {
  it('carry a stable code and a name', () => {
    const e = new NvmlNotFoundError('no lib')
    expect(e.code).toBe('VLLM_MONITOR_NVML_NOT_FOUND')
    expect(e.name).toBe('NvmlNotFoundError')
    expect(e.message).toBe('no lib')
  })

  it('keep instanceof working through the brand, for the base class and each code', () => {
    const e = new GpuLostError('gone')
    expect(e).toBeInstanceOf(VllmMonitorError)
    expect(e).toBeInstanceOf(GpuLostError)
    expect(e).not.toBeInstanceOf(NvmlNotFoundError)
    expect(new Error('plain')).not.toBeInstanceOf(VllmMonitorError)
  })

  it('turn an addon error into the class its code names, keeping the original as cause', () => {
    const raw = Object.assign(new Error('GPU 3 has fallen off the bus'), { code: ErrorCodes.NVML_GPU_LOST })
    const e = fromNative(raw)
    expect(e).toBeInstanceOf(GpuLostError)
    expect((e as GpuLostError).cause).toBe(raw)
    const other = new TypeError('x')
    expect(fromNative(other)).toBe(other)
  })

  it('build an error from a code reported as data', () => {
    expect(errorForCode('VLLM_MONITOR_NVML_NOT_FOUND', 'm')).toBeInstanceOf(NvmlNotFoundError)
    expect(errorForCode('SOMETHING_ELSE', 'm').code).toBe('VLLM_MONITOR_NVML_ERROR')
  })
})
