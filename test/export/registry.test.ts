import { register as globalRegistry } from 'prom-client'
import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/errors.js'
import { MetricNames, MonitorMetrics } from '../../src/export/registry.js'
import { makeCheckpoint, makeStatus, parseSamples, promtoolCheckMetrics, sampleValue } from './fixture.js'

const kColonRule = /metric names should not contain ':'$/

async function exposition(m = new MonitorMetrics()): Promise<string> {
  m.update(makeCheckpoint(), makeStatus())
  return m.metrics()
}

describe('MonitorMetrics', () => {
  it('exports the four mandated metrics', async () => {
    const text = await exposition()
    for (const name of [
      'vllm:monitor_active_requests',
      'vllm:monitor_tokens_generated',
      'vllm:monitor_mitigation_triggered',
      'vllm:monitor_prediction_accuracy',
    ]) {
      expect(text).toContain(`# TYPE ${name}`)
    }
    // Counters carry Prometheus' _total suffix; the family names are the mandated ones.
    expect(text).toContain('# TYPE vllm:monitor_tokens_generated_total counter')
    expect(text).toContain('# TYPE vllm:monitor_mitigation_triggered_total counter')
    expect(
      sampleValue(text, 'vllm:monitor_mitigation_triggered_total', {
        strategy: 'ReduceBatchSize',
        outcome: 'SUCCESS',
      }),
    ).toBe(2)
    expect(
      sampleValue(text, 'vllm:monitor_mitigation_triggered_total', {
        strategy: 'RestartNCCL',
        outcome: 'SKIPPED',
      }),
    ).toBe(1)
    expect(sampleValue(text, 'vllm:monitor_prediction_accuracy')).toBe(0.875)
    expect(sampleValue(text, 'vllm:monitor_active_requests', { replica: 'r1' })).toBe(31)
    expect(sampleValue(text, 'vllm:monitor_tokens_generated_total', { replica: 'r1' })).toBe(2_310_775)
  })

  it("passes promtool check metrics, apart from the colon in vLLM's own vllm: namespace", async () => {
    const { status, problems } = promtoolCheckMetrics(await exposition())
    expect(status, problems.join('\n')).not.toBe(1)
    // promtool reserves ':' for recording rules, but vLLM names every metric vllm:*, and so do we.
    expect(problems.filter((p) => !kColonRule.test(p))).toEqual([])
  })

  it('owns a registry of its own and leaves the global one alone', async () => {
    const before = (await globalRegistry.metrics()).length
    const a = new MonitorMetrics()
    const b = new MonitorMetrics()
    a.update(makeCheckpoint(), makeStatus())
    expect(a.registry).not.toBe(b.registry)
    expect(a.registry).not.toBe(globalRegistry)
    expect((await globalRegistry.metrics()).length).toBe(before)
    expect(a.contentType).toBe('text/plain; version=0.0.4; charset=utf-8')
  })

  it('exports per-replica gauges from the status and the engine snapshots', async () => {
    const text = await exposition()
    expect(sampleValue(text, MetricNames.requestsWaiting, { replica: 'r1' })).toBe(17)
    expect(sampleValue(text, MetricNames.kvCacheUsage, { replica: 'r1' })).toBe(0.97)
    expect(sampleValue(text, MetricNames.preemptions, { replica: 'r1' })).toBe(3.5)
    expect(sampleValue(text, MetricNames.engineStalled, { replica: 'r1' })).toBe(0.25)
    expect(sampleValue(text, MetricNames.up)).toBe(1)
  })

  it('exports p99 TTFT and ITL in seconds, and no sample for a replica whose window is empty', async () => {
    const text = await exposition()
    expect(sampleValue(text, MetricNames.ttftP99, { replica: 'r1' })).toBe(2.48)
    expect(sampleValue(text, MetricNames.itlP99, { replica: 'r1' })).toBe(0.0965)
    expect(sampleValue(text, MetricNames.ttftP99, { replica: 'r0' })).toBeUndefined()
    expect(sampleValue(text, MetricNames.itlP99, { replica: 'r0' })).toBeUndefined()
  })

  it('marks the current lifecycle state 1 and the seven others 0, per replica and for the fleet', async () => {
    const samples = parseSamples(await exposition())
    const r1 = samples.filter((s) => s.name === MetricNames.lifecycleState && s.labels.replica === 'r1')
    expect(r1).toHaveLength(8)
    expect(r1.filter((s) => s.value === 1).map((s) => s.labels.state)).toEqual(['DEGRADED'])
    const fleet = samples.filter((s) => s.name === MetricNames.fleetLifecycleState)
    expect(fleet.filter((s) => s.value === 1).map((s) => s.labels.state)).toEqual(['DEGRADED'])
  })

  it('exports GPU readings in base units, and an info series joining each GPU to its replica', async () => {
    const text = await exposition()
    const gpu1 = { gpu: '1' }
    expect(sampleValue(text, MetricNames.gpuUtilization, gpu1)).toBe(0.99)
    expect(sampleValue(text, MetricNames.gpuSmClock, gpu1)).toBe(1_410_000_000)
    expect(sampleValue(text, MetricNames.gpuMemoryUsed, gpu1)).toBe(141_001_293_824)
    expect(sampleValue(text, MetricNames.gpuClockEventReasons, gpu1)).toBe(0x60)
    expect(sampleValue(text, MetricNames.gpuLost, gpu1)).toBe(0)
    expect(sampleValue(text, MetricNames.gpuInfo, { gpu: '1', replica: 'r1', name: 'NVIDIA H200' })).toBe(1)
  })

  it('exports the highest forecast probability per replica and fault', async () => {
    const text = await exposition()
    expect(sampleValue(text, MetricNames.failureProbability, { replica: 'r1', fault: 'kv-exhaustion' })).toBe(
      0.82,
    )
    expect(
      sampleValue(text, MetricNames.failureProbability, { replica: 'r1', fault: 'thermal-throttle' }),
    ).toBe(0.35)
  })

  it('removes a sample whose reading becomes null rather than exporting 0', async () => {
    const m = new MonitorMetrics()
    m.update(makeCheckpoint(), makeStatus())
    const status = makeStatus()
    status.replicas[1]!.kvCacheUsage = null
    const checkpoint = makeCheckpoint()
    checkpoint.gpus[1]!.temperatureCelsius = null
    checkpoint.engines[1]!.derived.stalledForMs = null
    m.update(checkpoint, status)
    const text = await m.metrics()
    expect(sampleValue(text, MetricNames.kvCacheUsage, { replica: 'r1' })).toBeUndefined()
    expect(sampleValue(text, MetricNames.kvCacheUsage, { replica: 'r0' })).toBe(0.41)
    expect(sampleValue(text, MetricNames.gpuTemperature, { gpu: '1' })).toBeUndefined()
    expect(sampleValue(text, MetricNames.engineStalled, { replica: 'r1' })).toBeUndefined()
  })

  it('removes every sample of a replica and of a GPU that are gone', async () => {
    const m = new MonitorMetrics()
    m.update(makeCheckpoint(), makeStatus())
    const status = makeStatus()
    status.replicas.pop()
    const checkpoint = makeCheckpoint({ predictions: [] })
    checkpoint.engines.pop()
    checkpoint.gpus.pop()
    m.update(checkpoint, status)
    const left = parseSamples(await m.metrics())
    expect(left.filter((s) => s.labels.replica === 'r1' || s.labels.gpu === '1')).toEqual([])
    expect(left.filter((s) => s.name === MetricNames.failureProbability)).toEqual([])
    expect(left.some((s) => s.labels.replica === 'r0')).toBe(true)
  })

  it('has no prediction-accuracy sample until a prediction has been scored', async () => {
    const m = new MonitorMetrics()
    expect(sampleValue(await m.metrics(), MetricNames.predictionAccuracy)).toBeUndefined()
    m.update(makeCheckpoint(), makeStatus({ predictionAccuracy: null }))
    const text = await m.metrics()
    expect(text).toContain('# TYPE vllm:monitor_prediction_accuracy gauge')
    expect(sampleValue(text, MetricNames.predictionAccuracy)).toBeUndefined()
  })

  it('keeps the generated-tokens counter rising across a vLLM restart, as rate() expects', async () => {
    const m = new MonitorMetrics()
    const at = (tokens: number | null) => {
      const status = makeStatus()
      status.replicas[0]!.tokensGenerated = tokens
      m.update(makeCheckpoint(), status)
      return m.metrics().then((t) => sampleValue(t, MetricNames.tokensGenerated, { replica: 'r0' }))
    }
    expect(await at(1_000)).toBe(1_000)
    expect(await at(1_500)).toBe(1_500)
    // A failed scrape counted nothing: the counter holds its value instead of vanishing.
    expect(await at(null)).toBe(1_500)
    // The engine restarted and has generated 200 tokens since.
    expect(await at(200)).toBe(1_700)
    expect(await at(260)).toBe(1_760)
  })

  it("counts each event once, although it stays in the checkpoint's window for many updates", async () => {
    const m = new MonitorMetrics()
    const checkpoint = makeCheckpoint()
    m.update(checkpoint, makeStatus())
    m.update(checkpoint, makeStatus())
    const last = checkpoint.events.at(-1)!
    checkpoint.events.push({ ...last, message: 'again, same millisecond' })
    checkpoint.events.push({ ...last, t: last.t + 100 })
    checkpoint.events.shift()
    m.update(checkpoint, makeStatus())
    m.update(checkpoint, makeStatus())
    const text = await m.metrics()
    expect(sampleValue(text, MetricNames.events, { type: 'thermal', severity: 'critical' })).toBe(3)
    expect(sampleValue(text, MetricNames.events, { type: 'kv-pressure', severity: 'warning' })).toBe(1)
    expect(sampleValue(text, MetricNames.events, { type: 'lifecycle', severity: 'warning' })).toBe(1)
  })

  it('exports process metrics, prefixed vllm_monitor_, only when asked to', async () => {
    expect(await exposition()).not.toContain('vllm_monitor_process_cpu')
    const text = await exposition(new MonitorMetrics({ defaultMetrics: true }))
    expect(text).toContain('# TYPE vllm_monitor_process_cpu_seconds_total counter')
    expect(text).not.toMatch(/^# TYPE (process|nodejs)_/m)
    const { status, problems } = promtoolCheckMetrics(text)
    expect(status, problems.join('\n')).not.toBe(1)
    // prom-client's own nodejs_active_{handles,requests,resources}_total are gauges named like counters.
    const promClientOwn = /^vllm_monitor_nodejs_active_\w+_total non-counter metrics/
    expect(problems.filter((p) => !kColonRule.test(p) && !promClientOwn.test(p))).toEqual([])
  })

  it('rejects options of the wrong type with a message naming the option', () => {
    expect(() => new MonitorMetrics({ defaultMetrics: 'yes' as unknown as boolean })).toThrow(
      InvalidOptionError,
    )
    expect(() => new MonitorMetrics({ defaultMetrics: 1 as unknown as boolean })).toThrow(
      'options.defaultMetrics must be a boolean, found number',
    )
  })

  it('exports the same samples when the same state is applied twice', async () => {
    const m = new MonitorMetrics()
    m.update(makeCheckpoint(), makeStatus())
    const first = await m.registry.getMetricsAsJSON()
    m.update(makeCheckpoint(), makeStatus())
    expect(await m.registry.getMetricsAsJSON()).toEqual(first)
  })
})
