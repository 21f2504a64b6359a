/**
 * `vllm-monitor record --url URL... --out FILE`: watches real vLLM servers (or simulated ones) and
 * writes everything the monitor receives to a trace, replayable with `vllm-monitor replay`.
 */
import { createMonitor } from '../monitor/monitor.js'
import type { GpuMode } from '../monitor/options.js'
import { untilStopped } from './until-stopped.js'

export interface RecordCliOptions {
  urls: string[]
  out: string
  durationSec?: number
  gpu: GpuMode | string
  scrapeIntervalMs: number
}

export async function runRecord(o: RecordCliOptions): Promise<number> {
  const gpu = o.gpu.startsWith('http') ? { simUrl: o.gpu } : (o.gpu as GpuMode)
  const monitor = createMonitor({
    replicas: o.urls.map((url, i) => ({ name: `r${i}`, url })),
    record: o.out,
    gpu,
    http: false,
    scrapeIntervalMs: o.scrapeIntervalMs,
  })
  monitor.on('transition', (replica, tr) =>
    console.error(`[${(tr.t / 1000).toFixed(1)}s] ${replica}: ${tr.from} -> ${tr.to}  (${tr.reason})`),
  )
  console.error(
    `recording ${o.urls.join(', ')} to ${o.out}${o.durationSec ? ` for ${o.durationSec} s` : ' (Ctrl-C to stop)'}`,
  )
  await untilStopped(o.durationSec)
  await monitor.close()
  const st = monitor.getStatus()
  console.error(`done: ${st.replicas.map((r) => `${r.replica} ${r.lifecycleState}`).join(', ')}`)
  return 0
}
