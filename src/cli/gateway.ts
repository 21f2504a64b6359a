/**
 * `vllm-monitor gateway --upstream URL [--upstream URL ...] --port P`: the standalone gateway, an
 * OpenAI-compatible pass-through that picks a replica per request (with `--monitor`, the default,
 * from scraped KV-cache and queue readings), sheds overload with 429 + Retry-After, fails over
 * from replicas that refuse or time out, and reports stalled streams; with `--slo-ttft-ms`, a
 * queued request that can no longer reach its first token within the SLO is answered 429. SIGTERM or SIGINT drains:
 * new requests get 503, in-flight ones finish (up to `--drain-timeout-ms`), then it exits 0.
 */
import { InvalidArgumentError as CliArgError, type Command } from 'commander'
import { GatewayProxy } from '../gateway/proxy.js'
import { createMonitor, type VLLMEngineMonitor } from '../monitor/monitor.js'
import { untilStopped } from './until-stopped.js'

export interface GatewayCliOptions {
  upstreams: string[]
  port: number
  host: string
  monitor: boolean
  stallAfterMs?: number
  drainTimeoutMs?: number
  headersTimeoutMs?: number
  connections?: number
  sloTtftMs?: number
  maxBodyBytes?: number
  scrapeIntervalMs: number
}

export async function runGateway(o: GatewayCliOptions): Promise<number> {
  const err = (line: string) => process.stderr.write(`${line}\n`)
  const upstreams = o.upstreams.map((url, i) => ({ name: `r${i}`, url }))
  let monitor: VLLMEngineMonitor | null = null
  if (o.monitor) {
    monitor = createMonitor({
      replicas: upstreams,
      // The gateway runs beside the replicas, not necessarily on their GPU hosts.
      gpu: 'none',
      http: false,
      scrapeIntervalMs: o.scrapeIntervalMs,
      checkpointIntervalMs: Math.max(10, Math.min(100, o.scrapeIntervalMs)),
    })
    monitor.on('error', (e) => err(`monitor: ${e.message}`))
  }
  let proxy: GatewayProxy
  try {
    proxy = await GatewayProxy.start({
      upstreams,
      port: o.port,
      host: o.host,
      ...(monitor === null ? {} : { monitor }),
      ...(o.stallAfterMs === undefined ? {} : { stallAfterMs: o.stallAfterMs }),
      ...(o.drainTimeoutMs === undefined ? {} : { drainTimeoutMs: o.drainTimeoutMs }),
      ...(o.headersTimeoutMs === undefined ? {} : { headersTimeoutMs: o.headersTimeoutMs }),
      ...(o.connections === undefined ? {} : { connections: o.connections }),
      ...(o.sloTtftMs === undefined ? {} : { slo: { ttftMs: o.sloTtftMs } }),
      ...(o.maxBodyBytes === undefined ? {} : { maxBodyBytes: o.maxBodyBytes }),
    })
  } catch (e) {
    await monitor?.close()
    err(`vllm-monitor gateway: ${(e as Error).message}`)
    return 1
  }
  process.stdout.write(
    `gateway listening on ${proxy.url} -> ${upstreams.length} upstream${upstreams.length === 1 ? '' : 's'}\n`,
  )
  // Unlike the proxy's own timers, this one keeps the process alive until it is stopped.
  const keepAlive = setInterval(() => {}, 1 << 30)
  await untilStopped()
  clearInterval(keepAlive)
  err(`draining ${proxy.inFlight} in-flight request${proxy.inFlight === 1 ? '' : 's'}`)
  await proxy.drain()
  await monitor?.close()
  err('gateway closed')
  return 0
}

const int =
  (name: string, min = 0, max = Number.MAX_SAFE_INTEGER) =>
  (v: string) => {
    const n = Number(v)
    if (v.trim() === '' || !Number.isInteger(n) || n < min || n > max)
      throw new CliArgError(`${name} must be an integer in ${min}-${max}`)
    return n
  }

const upstream = (v: string, previous: string[] | undefined): string[] => {
  if (!URL.canParse(v) || !/^https?:$/.test(new URL(v).protocol))
    throw new CliArgError(`--upstream must be an http(s) URL (got ${JSON.stringify(v)})`)
  return [...(previous ?? []), v]
}

/** Adds `vllm-monitor gateway` to the program. */
export function registerGateway(program: Command): Command {
  return program
    .command('gateway')
    .description(
      'OpenAI-compatible gateway in front of vLLM replicas: KV/queue-aware picking, 429 + Retry-After, failover, drain',
    )
    .requiredOption('--upstream <url>', 'vLLM server base URL (repeat for several: r0, r1, ...)', upstream)
    .requiredOption('--port <port>', 'port to listen on (0 = any free port)', int('--port', 0, 65535))
    .option('--host <host>', 'address to bind', '127.0.0.1')
    .option('--monitor', 'scrape the upstreams so picking uses their KV cache and queue', true)
    .option('--no-monitor', 'pick on local in-flight counts only')
    .option(
      '--scrape-interval-ms <ms>',
      'with --monitor: scrape period',
      int('--scrape-interval-ms', 20, 600_000),
      100,
    )
    .option(
      '--stall-after-ms <ms>',
      'a stream silent this long counts as a stall (default 10000)',
      int('--stall-after-ms', 1),
    )
    .option(
      '--drain-timeout-ms <ms>',
      'on SIGTERM, wait this long for in-flight requests (default 30000)',
      int('--drain-timeout-ms', 0),
    )
    .option(
      '--headers-timeout-ms <ms>',
      'bound on the time to response headers before failing over (default 60000)',
      int('--headers-timeout-ms', 1),
    )
    .option('--connections <n>', 'keep-alive connections per upstream (default 128)', int('--connections', 1))
    .option(
      '--slo-ttft-ms <ms>',
      'time-to-first-token SLO: a queued request that can no longer make it gets 429 + Retry-After',
      int('--slo-ttft-ms', 1),
    )
    .option(
      '--max-body-bytes <n>',
      'largest request body accepted (default 32 MiB); larger ones get 413',
      int('--max-body-bytes', 1),
    )
    .action(async (o) => {
      process.exitCode = await runGateway({
        upstreams: o.upstream,
        port: o.port,
        host: o.host,
        monitor: o.monitor !== false,
        scrapeIntervalMs: o.scrapeIntervalMs,
        stallAfterMs: o.stallAfterMs,
        drainTimeoutMs: o.drainTimeoutMs,
        headersTimeoutMs: o.headersTimeoutMs,
        connections: o.connections,
        sloTtftMs: o.sloTtftMs,
        maxBodyBytes: o.maxBodyBytes,
      })
    })
}
