import { describe, expect, it } from 'vitest'
import { renderDemoView } from '../../src/cli/demo-view.js'
import { MonitorCore } from '../../src/monitor/core.js'
import { statusOf } from '../../src/monitor/monitor.js'
import { runSimulation } from '../../src/sim/run.js'

function checkpointOf(scenarioName: string, durationMs: number) {
  const core = new MonitorCore()
  let next = 0
  runSimulation({
    scenario: scenarioName,
    seed: 1,
    durationMs,
    onRecord: (r) => {
      while (next < r.t) {
        core.tick(next)
        next += 100
      }
      core.push(r)
    },
  })
  const cp = core.tick(next)
  const status = statusOf(core, cp, {
    monitorActive: true,
    predictive: true,
    learning: false,
    autoMitigate: false,
    uptimeMs: next,
    urls: new Map(),
  })
  return { cp, status }
}

describe('the demo view', () => {
  it('shows each replica with its state and reason, its GPU, and the newest events', () => {
    const { cp, status } = checkpointOf('kv-surge', 70_000)
    const text = renderDemoView(cp, status, {
      color: false,
      title: 'demo',
      clockLabel: 't=70s',
      groundTruth: [],
    })
    expect(text).toMatch(/fleet DEGRADED/)
    expect(text).toMatch(/r0\s+DEGRADED/)
    expect(text).toMatch(/KV cache exhausted/)
    expect(text).toMatch(/0\s+r0\s+\[#+\.*\] 7\d\.\d\/79 GiB/)
    expect(text).toMatch(/no fault injected yet/)
    expect(text).not.toContain('\u001b[')
  })

  it('marks a lost GPU and colours states only when asked', () => {
    const { cp, status } = checkpointOf('xid-79', 60_000)
    const plain = renderDemoView(cp, status, { color: false, title: 'demo', clockLabel: '' })
    expect(plain).toMatch(/LOST \(fell off the bus\)/)
    expect(plain).toMatch(/r0\s+ERROR/)
    const coloured = renderDemoView(cp, status, { color: true, title: 'demo', clockLabel: '' })
    expect(coloured).toContain('\u001b[31mERROR')
  })
})
