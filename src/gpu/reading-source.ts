/**
 * Adapts the host's GPU source (NVML addon, or nvidia-smi) to the telemetry model: every
 * `intervalMs` it turns the latest snapshots into `gpu` records, and NVML events (Xid, ECC, GPU lost)
 * into `event` records as they arrive.
 */
import type { GpuReading, TelemetryRecord, TelemetrySource } from '../telemetry/types.js'
import { type GpuSource, type GpuSourceOptions, openGpuSource } from './source.js'
import type { GpuEvent, GpuSnapshot } from './types.js'

export interface GpuReadingSourceOptions {
  mode?: GpuSourceOptions['mode']
  libraryPath?: string
  intervalMs?: number
  /** ms since the monitor started. */
  now: () => number
  /** Which replica runs on which GPU, when the caller knows it. */
  replicaOfGpu?: (gpu: number) => string | null
  /** An already opened source (tests); otherwise one is opened with `mode`. */
  source?: GpuSource
}

export function snapshotToReading(s: GpuSnapshot, name: string | null, replica: string | null): GpuReading {
  return {
    gpu: s.index,
    replica,
    uuid: null,
    name,
    lost: s.lost,
    memoryUsedBytes: s.memoryUsedBytes,
    memoryTotalBytes: s.memoryTotalBytes,
    gpuUtilizationPercent: s.gpuUtilizationPercent,
    powerWatts: s.powerMilliwatts === null ? null : s.powerMilliwatts / 1000,
    powerLimitWatts: null,
    temperatureCelsius: s.temperatureCelsius,
    smClockMhz: s.smClockMhz,
    clockEventReasons: s.clockEventReasons,
    eccCorrectedVolatile: s.eccCorrectedVolatile,
    eccUncorrectedVolatile: s.eccUncorrectedVolatile,
  }
}

export class GpuReadingSource implements TelemetrySource {
  readonly name = 'gpu'
  readonly gpu: GpuSource
  private timer: NodeJS.Timeout | null = null
  private readonly options: GpuReadingSourceOptions
  private onEvent: ((e: GpuEvent) => void) | null = null

  constructor(options: GpuReadingSourceOptions) {
    this.options = options
    this.gpu =
      options.source ??
      openGpuSource({
        mode: options.mode ?? 'auto',
        ...(options.libraryPath === undefined ? {} : { libraryPath: options.libraryPath }),
      })
  }

  start(push: (record: TelemetryRecord) => void): void {
    const { now, replicaOfGpu } = this.options
    let devices = new Map(this.gpu.devices().map((d) => [d.index, d]))
    this.gpu.start()
    this.onEvent = (e: GpuEvent) => {
      const replica = replicaOfGpu?.(e.device) ?? null
      const fatal =
        e.kind === 'gpuLost' ||
        e.kind === 'eccDoubleBit' ||
        (e.kind === 'xid' && e.xid !== 92 && e.xid !== 63)
      push({
        t: now(),
        kind: 'event',
        type:
          e.kind === 'xid'
            ? 'xid'
            : e.kind === 'gpuLost'
              ? 'gpu-lost'
              : e.kind === 'eccDoubleBit'
                ? 'ecc-double-bit'
                : e.kind === 'eccSingleBit'
                  ? 'ecc-single-bit'
                  : 'gpu-event-error',
        severity: fatal ? 'critical' : 'warning',
        replica,
        gpu: e.device,
        message: e.message,
        data: e.xid === null ? {} : { xid: e.xid },
      })
    }
    this.gpu.on('event', this.onEvent)
    this.timer = setInterval(() => {
      const t = now()
      const snapshot = this.gpu.snapshot()
      // nvidia-smi learns its devices on its first poll, after start(): look again until known.
      if (devices.size < snapshot.length) devices = new Map(this.gpu.devices().map((d) => [d.index, d]))
      for (const s of snapshot) {
        const d = devices.get(s.index)
        const reading = snapshotToReading(s, d?.name ?? null, replicaOfGpu?.(s.index) ?? null)
        if (d !== undefined) {
          reading.uuid = d.uuid
          reading.powerLimitWatts = d.powerLimitMilliwatts === null ? null : d.powerLimitMilliwatts / 1000
        }
        push({ t, kind: 'gpu', ...reading })
      }
    }, this.options.intervalMs ?? 100)
    this.timer.unref()
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
    if (this.onEvent !== null) this.gpu.off('event', this.onEvent)
    this.gpu.close()
  }
}
