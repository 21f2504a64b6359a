/**
 * One simulated GPU as NVML would report it: memory (vLLM's pre-reserved pool plus what moves
 * outside it), utilization, board power with the power cap, a first-order thermal model with NVML's
 * slowdown thresholds, SM clocks and the clock-event (throttle) reason bits, ECC counters.
 * Calibration: sim-calibration §5 (power limits, idle draw, decode 137-300 W on a 700 W part,
 * thresholds 87/89/92 °C, reason bits).
 */
import type { GpuReading } from '../telemetry/types.js'
import type { GpuProfile } from './hardware.js'

export const CLOCK_REASON_GPU_IDLE = 0x1
export const CLOCK_REASON_SW_POWER_CAP = 0x4
export const CLOCK_REASON_SW_THERMAL = 0x20
export const CLOCK_REASON_HW_THERMAL = 0x40

const GiB = 1024 ** 3

export class SimGpu {
  readonly index: number
  readonly profile: GpuProfile
  readonly uuid: string
  replica: string | null
  lost = false

  // Memory, bytes, by owner. NVML "used" is their sum plus the driver's own reservation.
  /** CUDA context of the vLLM worker (present while its process lives). */
  contextBytes = 0
  /** vLLM's pre-reserved pool: weights, profiled activations, KV cache, graphs. */
  reservedBytes = 0
  /** Non-torch memory that creeps up with uptime (VRAM leak, #17243). */
  leakBytes = 0
  /** Transient allocations outside the pool (sampler, large prefill activations). */
  transientBytes = 0
  /** Another process on the same GPU. */
  cotenantBytes = 0

  ambientCelsius = 30
  /** 1 = healthy cooling; > 1 = degraded (fan failure, blocked air flow). */
  coolingFactor = 1
  temperatureCelsius: number
  powerWatts: number
  smClockMhz: number
  utilizationPercent = 0
  clockEventReasons = CLOCK_REASON_GPU_IDLE
  /** max clock / current clock, handed to the step-time model. */
  clockFactor = 1
  eccCorrectedVolatile = 0
  eccUncorrectedVolatile = 0

  private busyEwma = 0
  private demandEwma = 0

  constructor(index: number, profile: GpuProfile, replica: string | null) {
    this.index = index
    this.profile = profile
    this.replica = replica
    this.uuid = `GPU-5e1a0000-0000-4000-8000-${index.toString(16).padStart(12, '0')}`
    this.powerWatts = profile.idleWatts
    this.temperatureCelsius = this.ambientCelsius + profile.idleWatts * profile.thermalResistance
    this.smClockMhz = profile.idleSmClockMhz
  }

  get memoryUsedBytes(): number {
    return (
      0.45 * GiB +
      this.contextBytes +
      this.reservedBytes +
      this.leakBytes +
      this.transientBytes +
      this.cotenantBytes
    )
  }

  get memoryFreeBytes(): number {
    return this.profile.memoryTotalBytes - this.memoryUsedBytes
  }

  /**
   * Advances the physical state by `dtMs` given how busy the engine was: `busyMs` of kernel time,
   * `computeBusyMs` of it compute-bound (prefill), the rest memory-bound (decode).
   */
  tick(dtMs: number, busyMs: number, computeBusyMs: number): void {
    if (this.lost) return
    const p = this.profile
    const dt = dtMs / 1e3
    const busy = Math.min(1, busyMs / dtMs)
    const intensity = busyMs > 0 ? computeBusyMs / busyMs : 0
    // NVML utilization is the busy share over the driver's last period (1/6-1 s): an EWMA over ~0.5 s.
    const aUtil = 1 - Math.exp(-dt / 0.5)
    this.busyEwma += (busy - this.busyEwma) * aUtil
    this.utilizationPercent = Math.round(this.busyEwma * 100)
    // Demand: memory-bound decode draws ≈35 % of the dynamic range, compute-bound prefill > 100 %.
    const demand = p.idleWatts + (p.powerLimitWatts - p.idleWatts) * busy * (0.3 + 0.85 * intensity)
    this.demandEwma += (demand - this.demandEwma) * aUtil
    let reasons = 0
    let clock = p.maxSmClockMhz
    let power = this.demandEwma
    if (power > p.powerLimitWatts) {
      // The driver lowers SM clocks until board power fits the cap.
      clock *= (p.powerLimitWatts - p.idleWatts) / (power - p.idleWatts)
      power = p.powerLimitWatts
      reasons |= CLOCK_REASON_SW_POWER_CAP
    }
    const t = this.temperatureCelsius
    if (t >= p.slowdownTempCelsius) {
      clock *= 0.5
      reasons |= CLOCK_REASON_HW_THERMAL
    } else if (t > p.maxOperatingTempCelsius) {
      clock *= Math.max(0.6, 1 - 0.12 * (t - p.maxOperatingTempCelsius))
      reasons |= CLOCK_REASON_SW_THERMAL
    }
    if (this.busyEwma < 0.05) {
      clock = p.idleSmClockMhz
      reasons |= CLOCK_REASON_GPU_IDLE
    }
    // Dynamic power follows the clock down when throttled.
    const clockShare = clock / p.maxSmClockMhz
    if (reasons & (CLOCK_REASON_SW_THERMAL | CLOCK_REASON_HW_THERMAL)) {
      power = p.idleWatts + (power - p.idleWatts) * clockShare
    }
    this.powerWatts = power
    this.smClockMhz = Math.round(clock)
    this.clockEventReasons = reasons
    this.clockFactor = reasons & CLOCK_REASON_GPU_IDLE ? 1 : p.maxSmClockMhz / Math.max(1, clock)
    const equilibrium = this.ambientCelsius + power * p.thermalResistance * this.coolingFactor
    this.temperatureCelsius += (equilibrium - t) * (1 - Math.exp(-dt / p.thermalTauSec))
  }

  reading(): GpuReading {
    const p = this.profile
    if (this.lost) {
      return {
        gpu: this.index,
        replica: this.replica,
        uuid: this.uuid,
        name: p.name,
        lost: true,
        memoryUsedBytes: null,
        memoryTotalBytes: null,
        gpuUtilizationPercent: null,
        powerWatts: null,
        powerLimitWatts: null,
        temperatureCelsius: null,
        smClockMhz: null,
        clockEventReasons: null,
        eccCorrectedVolatile: null,
        eccUncorrectedVolatile: null,
      }
    }
    return {
      gpu: this.index,
      replica: this.replica,
      uuid: this.uuid,
      name: p.name,
      lost: false,
      memoryUsedBytes: Math.round(this.memoryUsedBytes),
      memoryTotalBytes: Math.round(p.memoryTotalBytes),
      gpuUtilizationPercent: this.utilizationPercent,
      powerWatts: Math.round(this.powerWatts * 10) / 10,
      powerLimitWatts: p.powerLimitWatts,
      temperatureCelsius: Math.round(this.temperatureCelsius),
      smClockMhz: this.smClockMhz,
      clockEventReasons: this.clockEventReasons,
      eccCorrectedVolatile: this.eccCorrectedVolatile,
      eccUncorrectedVolatile: this.eccUncorrectedVolatile,
    }
  }
}
