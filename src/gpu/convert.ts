// Conversions from the addon's objects (optional fields) to the public types (null fields).
import type { NativeSlowSample, NativeWatchAlert } from './native.js'
import type { GpuEvent, SlowSample, WatchAlert } from './types.js'
import { reportCallbackError } from './util.js'

/**
 * Built outside the class on purpose: the addon holds this function as a strong root, and a
 * closure created inside a method would keep the method's `this` (the sampler) reachable,
 * so a sampler dropped without close() could never be collected.
 */
export function guardWatchCallback(callback: (alert: WatchAlert) => void) {
  return (a: NativeWatchAlert) => {
    try {
      callback({ ...a, growthBytesPerSec: a.growthBytesPerSec ?? null })
    } catch (err) {
      reportCallbackError('watch callback', err)
    }
  }
}

export function normalizeEvent(e: {
  kind: GpuEvent['kind']
  device: number
  timestampNs: number
  xid?: number | null
  message: string
}): GpuEvent {
  return {
    kind: e.kind,
    device: e.device,
    timestampNs: e.timestampNs,
    xid: e.xid ?? null,
    message: e.message,
  }
}

export function normalizeSlow(s: NativeSlowSample): SlowSample {
  return {
    device: s.device,
    timestampNs: s.timestampNs,
    pcieTxBytesPerSec: s.pcieTxBytesPerSec ?? null,
    pcieRxBytesPerSec: s.pcieRxBytesPerSec ?? null,
    eccCorrectedVolatile: s.eccCorrectedVolatile ?? null,
    eccUncorrectedVolatile: s.eccUncorrectedVolatile ?? null,
    remappedRowsCorrectable: s.remappedRowsCorrectable ?? null,
    remappedRowsUncorrectable: s.remappedRowsUncorrectable ?? null,
    remappedRowsPending: s.remappedRowsPending ?? null,
    remappedRowsFailure: s.remappedRowsFailure ?? null,
    retiredPagesSingleBit: s.retiredPagesSingleBit ?? null,
    retiredPagesDoubleBit: s.retiredPagesDoubleBit ?? null,
    energyMillijoules: s.energyMillijoules ?? null,
    processes: s.processes?.map((p) => ({ pid: p.pid, usedMemoryBytes: p.usedMemoryBytes ?? null })) ?? null,
  }
}
