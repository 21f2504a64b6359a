import type { GpuSourceStatus } from '../gpu/source.js'
import type { GpuDeviceInfo, GpuSamplerStats, GpuSnapshot } from '../gpu/types.js'
import { describeClockEventReasons } from '../gpu/types.js'

const GiB = 1024 ** 3
const fmt = (v: number | null, scale = 1, digits = 0, unit = '') =>
  v === null ? 'n/a' : `${(v / scale).toFixed(digits)}${unit}`

/** One line per GPU, nvidia-smi style, plus the source and sampler figures. */
export function renderGpuTable(
  status: GpuSourceStatus,
  devices: GpuDeviceInfo[],
  snapshot: GpuSnapshot[],
  stats: GpuSamplerStats | null,
): string {
  const lines: string[] = []
  const head = `source: ${status.mode}${status.slowPath ? ' (slow path: nvidia-smi polling)' : ''}`
  lines.push(head)
  for (const r of status.reasons) lines.push(`  ${r.mode} unavailable: ${r.message} (${r.code})`)
  if (stats) {
    lines.push(
      `sampler: ${stats.achievedHz.toFixed(0)} Hz of ${stats.requestedHz?.toFixed(0) ?? 'max'}, ` +
        `${stats.samplesDropped} dropped, cpu ${(100 * stats.samplerCpuFraction).toFixed(2)} %, ` +
        `nvml p50 ${fmt(stats.nvmlLatencyP50Ns, 1e3, 1, ' us')} p99 ${fmt(stats.nvmlLatencyP99Ns, 1e3, 1, ' us')}`,
    )
  }
  if (snapshot.length === 0) lines.push('no GPU data')
  for (const s of snapshot) {
    const d = devices.find((x) => x.index === s.index)
    const used = s.memoryUsedBytes === null ? null : s.memoryUsedBytes + (s.memoryReservedBytes ?? 0)
    const reasons = describeClockEventReasons(s.clockEventReasons).filter((r) => r !== 'gpuIdle')
    lines.push(
      [
        `GPU ${s.index}`,
        (d?.name ?? 'unknown').padEnd(24),
        `mem ${fmt(used, GiB, 1)}/${fmt(s.memoryTotalBytes, GiB, 1, ' GiB')}`,
        `util ${fmt(s.gpuUtilizationPercent, 1, 0, '%')}`,
        `${fmt(s.temperatureCelsius, 1, 0, 'C')}`,
        `${fmt(s.powerMilliwatts, 1000, 0, 'W')}`,
        `sm ${fmt(s.smClockMhz, 1, 0, 'MHz')}`,
        s.lost ? 'LOST' : reasons.length ? `throttle: ${reasons.join(',')}` : '',
      ].join('  '),
    )
  }
  return lines.join('\n')
}
