import { EventEmitter } from 'node:events'
import { fromNative, InvalidArgumentError } from '../errors.js'
import { guardWatchCallback, normalizeEvent, normalizeSlow } from './convert.js'
import { createNativeSampler, type NativeSampler, probeNvml } from './native.js'
import { kBuffers, type SampleBuffer } from './sample-buffer.js'
import type {
  GpuDeviceInfo,
  GpuEvent,
  GpuSamplerStats,
  GpuSamples,
  GpuSnapshot,
  SlowSample,
  WatchAlert,
  WatchOptions,
} from './types.js'
import { emptySnapshot, nanToNull, reportCallbackError } from './util.js'

export interface GpuSamplerOptions {
  /** Microseconds between memory reads; 0 = as fast as possible. Default 1000 (1 kHz). */
  intervalUs?: number
  /** NVML indices to sample. Default: all. */
  devices?: number[]
  /** libnvidia-ml to load instead of `libnvidia-ml.so.1`. */
  libraryPath?: string
  /** Rows kept between drains before the oldest are dropped. Default 65536. */
  ringCapacity?: number
  /** Default 50. */
  cachedIntervalMs?: number
  /** Default 1000. */
  slowIntervalMs?: number
  /** Wait for Xid and ECC events. Default true. */
  events?: boolean
}

const kDefaults = { intervalUs: 1_000, cachedIntervalMs: 50, slowIntervalMs: 1_000, ringCapacity: 65_536 }

function uint(name: string, v: unknown, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max)
    throw new InvalidArgumentError(`options.${name} must be an integer between ${min} and ${max}`)
  return v
}

function validate(o: GpuSamplerOptions) {
  if (o === null || typeof o !== 'object') throw new InvalidArgumentError('options must be an object')
  const r = { ...kDefaults, ...o }
  uint('intervalUs', r.intervalUs, 0, 10_000_000)
  uint('cachedIntervalMs', r.cachedIntervalMs, 1, 3_600_000)
  uint('slowIntervalMs', r.slowIntervalMs, 1, 3_600_000)
  uint('ringCapacity', r.ringCapacity, 16, 1 << 24)
  if (o.devices !== undefined) {
    if (!Array.isArray(o.devices) || o.devices.length === 0)
      throw new InvalidArgumentError('options.devices must be a non-empty array of GPU indices')
    for (const d of o.devices) uint('devices[]', d, 0, 1023)
  }
  if (o.libraryPath !== undefined && (typeof o.libraryPath !== 'string' || o.libraryPath === ''))
    throw new InvalidArgumentError('options.libraryPath must be a non-empty string')
  if (o.events !== undefined && typeof o.events !== 'boolean')
    throw new InvalidArgumentError('options.events must be a boolean')
  return r
}

function call<T>(f: () => T): T {
  try {
    return f()
  } catch (err) {
    throw fromNative(err)
  }
}

/**
 * NVML sampling on native threads. Memory is read every `intervalUs`, the driver-cached
 * counters every `cachedIntervalMs`, the slow ones every `slowIntervalMs`; `drain()` hands
 * everything since the last drain to JS as typed arrays.
 *
 * Events: `'event'` (every GpuEvent), and `'xid'`, `'gpuLost'`, `'ecc'`, `'eventError'` by kind.
 * Errors thrown by listeners are reported as process warnings, never rethrown into the host.
 */
export class GpuSampler extends EventEmitter {
  #native: NativeSampler
  #devices: GpuDeviceInfo[]
  #latest = new Map<number, GpuSnapshot>()
  #lost = new Set<number>()
  #closed = false

  constructor(options: GpuSamplerOptions = {}) {
    super()
    const o = validate(options)
    this.#native = createNativeSampler({
      intervalUs: o.intervalUs,
      devices: o.devices,
      libraryPath: o.libraryPath,
      ringCapacity: o.ringCapacity,
      cachedIntervalMs: o.cachedIntervalMs,
      slowIntervalMs: o.slowIntervalMs,
      events: o.events,
    })
    this.#devices = this.#native.devices().map((d) => ({
      index: d.index,
      uuid: d.uuid ?? null,
      name: d.name ?? null,
      memoryTotalBytes: d.memoryTotalBytes ?? null,
      driverVersion: d.driverVersion ?? null,
      cudaDriverVersion: d.cudaDriverVersion ?? null,
      pciBusId: d.pciBusId ?? null,
      computeCapability: d.computeCapability ?? null,
      migEnabled: d.migEnabled ?? null,
      eccEnabled: d.eccEnabled ?? null,
      powerLimitMilliwatts: d.powerLimitMilliwatts ?? null,
    }))
    for (const d of this.#devices)
      this.#latest.set(d.index, emptySnapshot(d.index, 'nvml', d.memoryTotalBytes))
    // The listener lives in native memory as a strong root; through a WeakRef it does not pin
    // this sampler, so one that is dropped without close() is still collected (and its threads
    // stopped by the addon's finalizer).
    const self = new WeakRef(this)
    this.#native.onEvent((e) => {
      const sampler = self.deref()
      if (sampler) sampler.#onEvent(normalizeEvent(e))
    })
  }

  /**
   * True when the addon is built for this platform and NVML loads and initialises (from
   * `libraryPath`, else libnvidia-ml.so.1). Never throws; `probeNvml` tells why not.
   */
  static available(libraryPath?: string): boolean {
    return probeNvml(libraryPath).available
  }

  /** CLOCK_MONOTONIC ns that every `timestampNs` counts from (same clock as `process.hrtime.bigint()`). */
  get epochNs(): bigint {
    return call(() => this.#native.epochNs)
  }

  get running(): boolean {
    return this.#native.running
  }

  start(): this {
    call(() => this.#native.start())
    return this
  }

  stop(): this {
    call(() => this.#native.stop())
    return this
  }

  /** Stops the threads and releases NVML; idempotent. */
  close(): void {
    if (this.#closed) return
    this.#closed = true
    this.#native.close()
    this.emit('close')
  }

  devices(): GpuDeviceInfo[] {
    return this.#devices.map((d) => ({ ...d }))
  }

  /** Everything sampled since the last drain. Rows are in time order; NaN = not readable. */
  drain(): GpuSamples {
    const d = call(() => this.#native.drain())
    const slow = d.slow.map(normalizeSlow)
    const events = d.events.map(normalizeEvent)
    this.#fold(d.fast, d.fast.device.length, d.cached, d.cached.device.length, slow)
    for (const e of events) if (e.kind === 'gpuLost') this.#markLost(e.device)
    return { fast: d.fast, cached: d.cached, slow, events }
  }

  /**
   * The allocation-free drain for hot paths: moves up to `buffer.capacity` of the oldest fast
   * and cached rows into the buffer's preallocated columns (rows that do not fit stay for the
   * next call) and returns the slow rows and events, usually none.
   */
  drainInto(buffer: SampleBuffer): { slow: SlowSample[]; events: GpuEvent[] } {
    const b = buffer[kBuffers]
    call(() => this.#native.drainInto(b.fastValues, b.fastDevices, b.cachedValues, b.cachedDevices, b.counts))
    buffer.fastRows = b.counts[0]!
    buffer.cachedRows = b.counts[1]!
    let slow: SlowSample[] = kNone
    let events: GpuEvent[] = kNone
    if (b.counts[2]! > 0) {
      const d = call(() => this.#native.drainSlow())
      slow = d.slow.map(normalizeSlow)
      events = d.events.map(normalizeEvent)
      for (const e of events) if (e.kind === 'gpuLost') this.#markLost(e.device)
    }
    this.#fold(buffer.fast, buffer.fastRows, buffer.cached, buffer.cachedRows, slow)
    return { slow, events }
  }

  /** The newest values per device as of the last `drain()`. */
  snapshot(): GpuSnapshot[] {
    return [...this.#latest.values()].map((s) => ({ ...s }))
  }

  stats(): GpuSamplerStats {
    const s = call(() => this.#native.stats())
    return {
      ...s,
      requestedHz: s.requestedHz ?? null,
      nvmlLatencyP50Ns: s.nvmlLatencyP50Ns ?? null,
      nvmlLatencyP99Ns: s.nvmlLatencyP99Ns ?? null,
      samplerCpuFraction: s.runSeconds > 0 ? s.samplerCpuSeconds / s.runSeconds : 0,
    }
  }

  /**
   * Calls `callback` as soon as the sampler thread sees the condition become true (it does not
   * wait for a drain). Returns a function that removes the watch.
   */
  watch(options: WatchOptions, callback: (alert: WatchAlert) => void): () => void {
    if (typeof callback !== 'function') throw new InvalidArgumentError('watch: callback must be a function')
    const native = this.#native
    const id = call(() => native.watch(options, guardWatchCallback(callback)))
    return () => {
      if (!this.#closed) this.#native.unwatch(id)
    }
  }

  /** Reads memory in a tight loop for `durationMs` on this thread: the NVML ceiling. */
  measureMemoryReadRate(device: number, durationMs: number) {
    return call(() => this.#native.measureMemoryReadRate(device, durationMs))
  }

  #onEvent(e: GpuEvent) {
    if (e.kind === 'gpuLost') this.#markLost(e.device)
    try {
      this.emit('event', e)
      const name = e.kind === 'eccSingleBit' || e.kind === 'eccDoubleBit' ? 'ecc' : e.kind
      this.emit(name, e)
    } catch (err) {
      reportCallbackError(`'${e.kind}' listener`, err)
    }
  }

  #markLost(device: number) {
    this.#lost.add(device)
    const s = this.#latest.get(device)
    if (s) s.lost = true
  }

  #fold(
    fast: GpuSamples['fast'],
    fastRows: number,
    cached: GpuSamples['cached'],
    cachedRows: number,
    slow: SlowSample[],
  ) {
    // Walk backwards so each device's newest row is found after a few steps, not a full pass.
    let remaining = this.#latest.size
    const seen = new Set<number>()
    for (let i = fastRows - 1; i >= 0 && remaining > 0; i--) {
      const dev = fast.device[i]!
      if (seen.has(dev)) continue
      seen.add(dev)
      remaining--
      const s = this.#latest.get(dev)
      if (!s) continue
      s.timestampNs = fast.timestampNs[i]!
      s.memoryUsedBytes = nanToNull(fast.memoryUsedBytes[i]!)
      s.memoryFreeBytes = nanToNull(fast.memoryFreeBytes[i]!)
      s.memoryReservedBytes = nanToNull(fast.memoryReservedBytes[i]!)
    }
    seen.clear()
    for (let i = cachedRows - 1; i >= 0 && seen.size < this.#latest.size; i--) {
      const dev = cached.device[i]!
      if (seen.has(dev)) continue
      seen.add(dev)
      const s = this.#latest.get(dev)
      if (!s) continue
      s.gpuUtilizationPercent = nanToNull(cached.gpuUtilizationPercent[i]!)
      s.memoryUtilizationPercent = nanToNull(cached.memoryUtilizationPercent[i]!)
      s.temperatureCelsius = nanToNull(cached.temperatureCelsius[i]!)
      s.powerMilliwatts = nanToNull(cached.powerMilliwatts[i]!)
      s.smClockMhz = nanToNull(cached.smClockMhz[i]!)
      s.memoryClockMhz = nanToNull(cached.memoryClockMhz[i]!)
      s.clockEventReasons = nanToNull(cached.clockEventReasons[i]!)
      s.performanceState = nanToNull(cached.performanceState[i]!)
    }
    for (const row of slow) {
      const s = this.#latest.get(row.device)
      if (!s) continue
      const { device: _d, timestampNs: _t, ...values } = row
      Object.assign(s, values)
    }
  }
}

const kNone: never[] = []

/** Opens NVML and the given devices; throws a typed error when NVML cannot be used. */
export function createGpuSampler(options: GpuSamplerOptions = {}): GpuSampler {
  return new GpuSampler(options)
}
