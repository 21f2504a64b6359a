import { debuglog } from 'node:util'
import type { GpuSnapshot } from './types.js'

export const debug = debuglog('vllm-monitor')

export function nanToNull(v: number): number | null {
  return Number.isNaN(v) ? null : v
}

export function emptySnapshot(
  index: number,
  source: GpuSnapshot['source'],
  memoryTotalBytes: number | null,
): GpuSnapshot {
  return {
    index,
    source,
    lost: false,
    timestampNs: null,
    memoryUsedBytes: null,
    memoryFreeBytes: null,
    memoryReservedBytes: null,
    memoryTotalBytes,
    gpuUtilizationPercent: null,
    memoryUtilizationPercent: null,
    temperatureCelsius: null,
    powerMilliwatts: null,
    smClockMhz: null,
    memoryClockMhz: null,
    clockEventReasons: null,
    performanceState: null,
    pcieTxBytesPerSec: null,
    pcieRxBytesPerSec: null,
    eccCorrectedVolatile: null,
    eccUncorrectedVolatile: null,
    remappedRowsCorrectable: null,
    remappedRowsUncorrectable: null,
    remappedRowsPending: null,
    remappedRowsFailure: null,
    retiredPagesSingleBit: null,
    retiredPagesDoubleBit: null,
    energyMillijoules: null,
    processes: null,
  }
}

/** A user callback threw: say so, once per call, without letting it reach the host's event loop. */
export function reportCallbackError(where: string, err: unknown) {
  debug('%s threw: %o', where, err)
  process.emitWarning(`vllm-monitor: a ${where} threw: ${(err as Error)?.stack ?? String(err)}`, {
    code: 'VLLM_MONITOR_CALLBACK_THREW',
  })
}
