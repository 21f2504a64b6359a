import { EventEmitter } from 'node:events'
import { errorForCode, InvalidArgumentError, type NvidiaSmiError, type VllmMonitorError } from '../errors.js'
import { addonAvailable, probeNvml } from './native.js'
import { NvidiaSmiPoller } from './nvidia-smi.js'
import { SampleBuffer } from './sample-buffer.js'
import { createGpuSampler, type GpuSampler, type GpuSamplerOptions } from './sampler.js'
import type { GpuDeviceInfo, GpuEvent, GpuSnapshot } from './types.js'
import { debug, reportCallbackError } from './util.js'

export type GpuSourceMode = 'nvml' | 'nvidia-smi' | 'none'

export interface GpuSourceOptions extends GpuSamplerOptions {
  /** 'auto' (default) tries the native sampler, then nvidia-smi, then runs without GPU data. */
  mode?: 'auto' | GpuSourceMode
  /** How often the native sampler is drained into `snapshot()`. Default 100 ms. */
  drainIntervalMs?: number
  /** nvidia-smi binary for the fallback. Default 'nvidia-smi' on PATH. */
  nvidiaSmiPath?: string
  /** Fallback polling interval. Default 1000 ms (each query spawns a process, ~23 ms). */
  nvidiaSmiIntervalMs?: number
}

export interface GpuSourceStatus {
  mode: GpuSourceMode
  /** True on the nvidia-smi fallback: readings are seconds apart and no watch or Xid path exists. */
  slowPath: boolean
  /** Why a faster mode was not used, with the stable code of the error that ruled it out. */
  reasons: Array<{ mode: GpuSourceMode; code: string; message: string }>
}

/**
 * GPU telemetry with graceful degradation: the native NVML sampler where the addon and the
 * driver are present, `nvidia-smi` polling (flagged as the slow path) where only the tool is,
 * and an empty source elsewhere, so a host without a GPU runs the rest of the monitor unchanged.
 *
 * Emits `'samples'` after each drain or poll and re-emits the sampler's `'event'` stream.
 */
export class GpuSource extends EventEmitter {
  readonly status: GpuSourceStatus
  readonly sampler: GpuSampler | null
  #poller: NvidiaSmiPoller | null
  #timer: NodeJS.Timeout | null = null
  #buffer: SampleBuffer | null = null
  #drainIntervalMs: number

  constructor(
    status: GpuSourceStatus,
    sampler: GpuSampler | null,
    poller: NvidiaSmiPoller | null,
    drainMs: number,
  ) {
    super()
    this.status = status
    this.sampler = sampler
    this.#poller = poller
    this.#drainIntervalMs = drainMs
    sampler?.on('event', (e: GpuEvent) => this.#safeEmit('event', e))
    poller?.on('snapshot', (s: GpuSnapshot[]) => this.#safeEmit('samples', s))
    poller?.on('pollError', (e: NvidiaSmiError) => this.#onPollError(e))
  }

  start(): this {
    if (this.sampler && this.#timer === null) {
      this.sampler.start()
      this.#buffer ??= new SampleBuffer(65_536)
      this.#timer = setInterval(() => this.#drain(), this.#drainIntervalMs)
      this.#timer.unref()
    }
    this.#poller?.start()
    return this
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer)
    this.#timer = null
    this.sampler?.stop()
    this.#poller?.stop()
  }

  close(): void {
    this.stop()
    this.sampler?.close()
  }

  devices(): GpuDeviceInfo[] {
    return this.sampler?.devices() ?? this.#poller?.devices() ?? []
  }

  snapshot(): GpuSnapshot[] {
    return this.sampler?.snapshot() ?? this.#poller?.snapshot() ?? []
  }

  #drain() {
    const sampler = this.sampler!
    const buffer = this.#buffer!
    try {
      sampler.drainInto(buffer)
    } catch (err) {
      debug('drain failed: %o', err)
      return
    }
    if (this.listenerCount('samples') > 0) this.#safeEmit('samples', sampler.snapshot())
  }

  #onPollError(e: NvidiaSmiError) {
    debug('nvidia-smi poll failed: %s', e.message)
    // No nvidia-smi at all: this host has no NVIDIA tooling, so stop polling for it.
    if ((e.cause as NodeJS.ErrnoException | undefined)?.code !== 'ENOENT') return
    this.#poller?.stop()
    this.#poller = null
    this.status.mode = 'none'
    this.status.slowPath = false
    this.status.reasons.push({ mode: 'nvidia-smi', code: e.code, message: e.message })
  }

  #safeEmit(name: string, value: unknown) {
    try {
      this.emit(name, value)
    } catch (err) {
      reportCallbackError(`'${name}' listener`, err)
    }
  }
}

/** Picks the best GPU source this host supports; never throws for a missing GPU. */
export function openGpuSource(options: GpuSourceOptions = {}): GpuSource {
  const {
    mode = 'auto',
    drainIntervalMs = 100,
    nvidiaSmiPath,
    nvidiaSmiIntervalMs = 1_000,
    ...rest
  } = options
  if (!['auto', 'nvml', 'nvidia-smi', 'none'].includes(mode))
    throw new InvalidArgumentError("options.mode must be 'auto', 'nvml', 'nvidia-smi' or 'none'")
  if (!Number.isInteger(drainIntervalMs) || drainIntervalMs < 1)
    throw new InvalidArgumentError('options.drainIntervalMs must be a positive integer')
  const reasons: GpuSourceStatus['reasons'] = []
  const refuse = (m: GpuSourceMode, e: VllmMonitorError) => {
    reasons.push({ mode: m, code: e.code, message: e.message })
    if (mode === m) throw e
  }

  if (mode === 'auto' || mode === 'nvml') {
    const probe = addonAvailable() ? probeNvml(rest.libraryPath) : probeNvml()
    if (probe.available) {
      const sampler = createGpuSampler(rest)
      return new GpuSource({ mode: 'nvml', slowPath: false, reasons }, sampler, null, drainIntervalMs)
    }
    refuse('nvml', errorForCode(probe.code ?? 'VLLM_MONITOR_NVML_ERROR', probe.message ?? 'NVML unavailable'))
  }
  if (mode === 'auto' || mode === 'nvidia-smi') {
    const poller = new NvidiaSmiPoller({ path: nvidiaSmiPath, intervalMs: nvidiaSmiIntervalMs })
    return new GpuSource({ mode: 'nvidia-smi', slowPath: true, reasons }, null, poller, drainIntervalMs)
  }
  return new GpuSource({ mode: 'none', slowPath: false, reasons }, null, null, drainIntervalMs)
}
