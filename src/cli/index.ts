#!/usr/bin/env node
import { InvalidArgumentError as CliArgError, Command } from 'commander'
import { VllmMonitorError } from '../errors.js'
import { openGpuSource } from '../gpu/source.js'
import { renderGpuTable } from './render.js'

const int = (name: string) => (v: string) => {
  const n = Number(v)
  if (!Number.isInteger(n) || n < 0) throw new CliArgError(`${name} must be a non-negative integer`)
  return n
}

const program = new Command()
  .name('vllm-monitor')
  .description('Watches vLLM servers and their GPUs; predicts and mitigates failures.')

program
  .command('gpu', { isDefault: true })
  .description('show the GPUs through the fastest source available (native NVML, else nvidia-smi)')
  .option('--once', 'print one reading and exit')
  .option('--json', 'print JSON instead of a table')
  .option('--interval-us <us>', 'memory sampling interval in microseconds', int('--interval-us'), 1000)
  .option('--refresh-ms <ms>', 'screen refresh interval', int('--refresh-ms'), 1000)
  .option('--library-path <path>', 'libnvidia-ml to load instead of libnvidia-ml.so.1')
  .option('--mode <mode>', "'auto', 'nvml', 'nvidia-smi' or 'none'", 'auto')
  .action(async (o) => {
    const source = openGpuSource({ mode: o.mode, intervalUs: o.intervalUs, libraryPath: o.libraryPath })
    source.on('event', (e) => console.error(`[${e.kind}] ${e.message}`))
    source.start()
    const print = () => {
      const snapshot = source.snapshot()
      const stats = source.sampler?.stats() ?? null
      if (o.json)
        console.log(JSON.stringify({ status: source.status, devices: source.devices(), snapshot, stats }))
      else console.log(renderGpuTable(source.status, source.devices(), snapshot, stats))
    }
    const firstMs = source.status.mode === 'nvidia-smi' ? 1_500 : 300
    await new Promise((r) => setTimeout(r, firstMs))
    print()
    if (o.once) {
      source.close()
      return
    }
    const timer = setInterval(print, o.refreshMs)
    const stop = () => {
      clearInterval(timer)
      source.close()
    }
    process.once('SIGINT', stop)
    process.once('SIGTERM', stop)
  })

program.parseAsync().catch((err: unknown) => {
  if (err instanceof VllmMonitorError) {
    console.error(`vllm-monitor: ${err.message} (${err.code})`)
    process.exitCode = 1
    return
  }
  throw err
})
