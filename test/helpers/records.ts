/** Telemetry records for tests: a serving engine with every counter at 0, a healthy GPU. */
import { nullDerived } from '../../src/telemetry/store.js'
import type { EngineDerived, EngineReading, GpuReading, TelemetryRecord } from '../../src/telemetry/types.js'

export function engineReading(replica = 'r0', over: Partial<EngineReading> = {}): EngineReading {
  return {
    replica,
    engine: '0',
    modelName: 'm',
    reachable: true,
    healthStatus: 200,
    error: null,
    requestsRunning: 0,
    requestsWaiting: 0,
    kvCacheUsage: 0.1,
    preemptionsTotal: 0,
    promptTokensTotal: 0,
    generationTokensTotal: 0,
    stepsTotal: 0,
    requestsFinishedTotal: 0,
    requestsErroredTotal: 0,
    numGpuBlocks: 1000,
    ttftSecondsSum: 0,
    ttftCount: 0,
    itlSecondsSum: 0,
    itlCount: 0,
    e2eSecondsSum: 0,
    e2eCount: 0,
    queueTimeSecondsSum: 0,
    queueTimeCount: 0,
    ttftP50Ms: null,
    ttftP90Ms: null,
    ttftP99Ms: null,
    itlP50Ms: null,
    itlP99Ms: null,
    e2eP50Ms: null,
    e2eP99Ms: null,
    queueTimeP99Ms: null,
    ...over,
  }
}

export function gpuReading(over: Partial<GpuReading> = {}): GpuReading {
  return {
    gpu: 0,
    replica: 'r0',
    uuid: 'GPU-0',
    name: 'NVIDIA H100',
    lost: false,
    memoryUsedBytes: 70e9,
    memoryTotalBytes: 80e9,
    gpuUtilizationPercent: 50,
    powerWatts: 300,
    powerLimitWatts: 700,
    temperatureCelsius: 60,
    smClockMhz: 1980,
    clockEventReasons: 0,
    eccCorrectedVolatile: 0,
    eccUncorrectedVolatile: 0,
    ...over,
  }
}

export function engineRecord(
  t: number,
  replica = 'r0',
  over: Partial<EngineReading> = {},
): TelemetryRecord & { kind: 'engine' } {
  return { t, kind: 'engine', ...engineReading(replica, over) }
}

export function gpuRecord(t: number, over: Partial<GpuReading> = {}): TelemetryRecord & { kind: 'gpu' } {
  return { t, kind: 'gpu', ...gpuReading(over) }
}

/** An engine's derived rates, all unknown unless given. */
export function derived(over: Partial<EngineDerived> = {}): EngineDerived {
  return { ...nullDerived(), ...over }
}
