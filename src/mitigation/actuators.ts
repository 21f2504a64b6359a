/**
 * Production actuators: adapters that turn the gateway's picker, the vLLM supervisor, nvidia-smi's
 * process list, a webhook and the Kubernetes scale subresource into the levers strategies pull.
 * (`AdmissionController` and `VllmControlClient` are actuators as they are; the admission
 * controller is also the `ShedActuator`.)
 */
import { execFile } from 'node:child_process'
import { readFile, readlink } from 'node:fs/promises'
import { basename } from 'node:path'
import { promisify } from 'node:util'
import { Agent, type Dispatcher, request } from 'undici'
import { InvalidArgumentError, InvalidOptionError, MitigationError, NvidiaSmiError } from '../errors.js'
import type { ReplicaPicker } from '../gateway/picker.js'
import { endProcess } from '../prestartup/processes.js'
import type { ExitInfo } from '../vllm/supervisor.js'
import type {
  ProcessActuator,
  RestartActuator,
  RoutingActuator,
  ScaleActuator,
  ScaleRequest,
} from './types.js'

export type { ShedActuator } from './types.js'

const execFileAsync = promisify(execFile)
const kMiB = 1_048_576

function optionError(owner: string, key: string, rule: string): InvalidOptionError {
  return new InvalidOptionError(`${owner}: option "${key}" must be ${rule}`)
}

function checkObject(owner: string, options: unknown): Record<string, unknown> {
  if (options === null || typeof options !== 'object')
    throw new InvalidOptionError(`${owner}: options must be an object`)
  return options as Record<string, unknown>
}

function positiveMs(owner: string, key: string, v: unknown, fallback: number): number {
  if (v === undefined) return fallback
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0)
    throw optionError(owner, key, 'a positive number of milliseconds')
  return v
}

function httpUrl(owner: string, key: string, v: unknown): URL {
  let url: URL | null = null
  try {
    url = typeof v === 'string' ? new URL(v) : null
  } catch {}
  if (url === null || (url.protocol !== 'http:' && url.protocol !== 'https:'))
    throw optionError(owner, key, 'an http:// or https:// URL')
  return url
}

function nonEmpty(owner: string, key: string, v: unknown): string {
  if (typeof v !== 'string' || v === '') throw optionError(owner, key, 'a non-empty string')
  return v
}

// ---- routing ------------------------------------------------------------------------------------

/** The picker's weights as a RoutingActuator. */
export function routingFromPicker(picker: Pick<ReplicaPicker, 'setWeight' | 'snapshot'>): RoutingActuator {
  const set = new Map<string, number>()
  return {
    setWeight(replica, multiplier) {
      picker.setWeight(replica, multiplier)
      set.set(replica, multiplier)
    },
    weight(replica) {
      const current = picker.snapshot().find((e) => e.name === replica)
      return current?.weight ?? set.get(replica) ?? 1
    },
  }
}

// ---- restart ------------------------------------------------------------------------------------

const kSeqFlags = ['--max-num-seqs', '--max_num_seqs']

/** The `--max-num-seqs` in vLLM arguments (the last one wins, as in argparse), null when absent. */
export function maxNumSeqsOf(args: readonly string[]): number | null {
  let value: string | null = null
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!
    if (kSeqFlags.includes(a)) value = args[i + 1] ?? null
    else {
      const eq = a.indexOf('=')
      if (eq > 0 && kSeqFlags.includes(a.slice(0, eq))) value = a.slice(eq + 1)
    }
  }
  if (value === null || !/^\d+$/.test(value)) return null
  return Number(value)
}

/** `args` with every `--max-num-seqs` (either form) set to `n`, or `--max-num-seqs n` appended. */
export function withMaxNumSeqs(args: readonly string[], n: number): string[] {
  if (!Number.isInteger(n) || n < 1)
    throw new InvalidArgumentError('withMaxNumSeqs: n must be a positive integer')
  const out = [...args]
  let found = false
  for (let i = 0; i < out.length; i++) {
    const a = out[i]!
    if (kSeqFlags.includes(a)) {
      found = true
      if (i + 1 < out.length) out[i + 1] = String(n)
      else out.push(String(n))
      i++
    } else {
      const eq = a.indexOf('=')
      if (eq > 0 && kSeqFlags.includes(a.slice(0, eq))) {
        found = true
        out[i] = `${a.slice(0, eq)}=${n}`
      }
    }
  }
  if (!found) out.push('--max-num-seqs', String(n))
  return out
}

/** What `restartFromSupervisor` needs of a `VllmSupervisor`. */
export interface RestartableSupervisor {
  readonly args: readonly string[]
  readonly pid: number | null
  readonly lastExit: ExitInfo | null
  restart(reason: string, options?: { args?: readonly string[] }): Promise<void>
}

/**
 * The supervisor as a RestartActuator: a restart with `maxNumSeqs` rewrites `--max-num-seqs` in
 * the arguments (for this and later starts). Rejects when no vLLM runs once the restart is through.
 */
export function restartFromSupervisor(sup: RestartableSupervisor): RestartActuator {
  return {
    async restart(reason, overrides) {
      const n = overrides?.maxNumSeqs
      if (n !== undefined && (!Number.isInteger(n) || n < 1))
        throw new InvalidArgumentError('restart: overrides.maxNumSeqs must be a positive integer')
      await sup.restart(reason, n === undefined ? undefined : { args: withMaxNumSeqs(sup.args, n) })
      if (sup.pid === null)
        throw new MitigationError(
          `vLLM is not running after the restart: ${sup.lastExit?.message ?? 'the supervisor is not started or stopped'}`,
        )
    },
    maxNumSeqs: () => maxNumSeqsOf(sup.args),
  }
}

// ---- co-tenant processes ------------------------------------------------------------------------

export interface NvidiaSmiProcessesOptions {
  /** UUIDs (`GPU-…`) of the GPUs the replica runs on. */
  gpuUuids(replica: string): readonly string[]
  /** The replica's vLLM pids (the supervisor's pid); their process groups and descendants are its own too. */
  ownPids(replica: string): readonly number[]
  /** The nvidia-smi binary (default `'nvidia-smi'`). */
  nvidiaSmiPath?: string
  /** Deadline of one nvidia-smi run (default 5 000 ms). */
  timeoutMs?: number
  /** SIGTERM → SIGKILL grace period of `terminate` (default 5 000 ms). */
  graceMs?: number
}

interface Listed {
  name: string
  replica: string
}

/** `ps`'s view of a pid from /proc: parent and process group, null when it is not visible. */
async function procStat(pid: number): Promise<{ ppid: number; pgrp: number } | null> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return { ppid: Number(f[1]), pgrp: Number(f[2]) }
  } catch {
    return null
  }
}

/** The pid is one of `own`, in the process group of one, or a descendant of one. */
async function isOwn(pid: number, own: ReadonlySet<number>): Promise<boolean> {
  if (own.has(pid) || pid === process.pid) return true
  let p = pid
  for (let depth = 0; depth < 64 && p > 1; depth++) {
    const s = await procStat(p)
    if (s === null) return false
    if (own.has(s.pgrp) || own.has(s.ppid)) return true
    p = s.ppid
  }
  return false
}

/**
 * The pid in this PID namespace runs what nvidia-smi named: its executable, argv[0] or comm match.
 * Guards against ending a stranger (a pid from another namespace, or reused since the listing).
 */
async function runsAs(pid: number, name: string): Promise<boolean> {
  const want = basename(name)
  if (want === '' || want.startsWith('[')) return false
  const exe = await readlink(`/proc/${pid}/exe`).catch(() => null)
  if (exe !== null && basename(exe) === want) return true
  const argv0 = await readFile(`/proc/${pid}/cmdline`, 'utf8').then(
    (c) => c.split('\0')[0] ?? '',
    () => '',
  )
  if (argv0 !== '' && basename(argv0) === want) return true
  const comm = (await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '')).trim()
  return comm !== '' && want.startsWith(comm)
}

function parseMiB(v: string): number | null {
  return /^\d+(\.\d+)?$/.test(v) ? Math.round(Number(v) * kMiB) : null
}

/**
 * Co-tenants from `nvidia-smi --query-compute-apps`: compute processes on the replica's GPUs that
 * are not its vLLM (nor this process), largest memory first. `terminate` ends only a pid the last
 * listing returned, and only while it still runs what nvidia-smi named.
 */
export function processesFromNvidiaSmi(options: NvidiaSmiProcessesOptions): ProcessActuator {
  const owner = 'processesFromNvidiaSmi'
  const o = checkObject(owner, options)
  if (typeof o.gpuUuids !== 'function')
    throw optionError(owner, 'gpuUuids', 'a function (replica) => GPU UUIDs')
  if (typeof o.ownPids !== 'function') throw optionError(owner, 'ownPids', 'a function (replica) => pids')
  const path =
    o.nvidiaSmiPath === undefined ? 'nvidia-smi' : nonEmpty(owner, 'nvidiaSmiPath', o.nvidiaSmiPath)
  const timeoutMs = positiveMs(owner, 'timeoutMs', o.timeoutMs, 5_000)
  const graceMs = positiveMs(owner, 'graceMs', o.graceMs, 5_000)
  const listed = new Map<number, Listed>()
  const own = (replica: string) => new Set(options.ownPids(replica))

  async function query(): Promise<string> {
    try {
      const { stdout } = await execFileAsync(
        path,
        ['--query-compute-apps=pid,process_name,used_memory,gpu_uuid', '--format=csv,noheader,nounits'],
        { timeout: timeoutMs, killSignal: 'SIGKILL', encoding: 'utf8' },
      )
      return stdout
    } catch (err) {
      throw new NvidiaSmiError(`nvidia-smi --query-compute-apps failed: ${(err as Error).message}`, {
        cause: err,
      })
    }
  }

  return {
    async cotenants(replica) {
      const gpus = new Set(options.gpuUuids(replica))
      const mine = own(replica)
      const byPid = new Map<number, { pid: number; name: string; memoryUsedBytes: number | null }>()
      for (const line of (await query()).split('\n')) {
        const cols = line.split(',').map((c) => c.trim())
        if (cols.length < 4 || !/^\d+$/.test(cols[0]!)) continue
        const pid = Number(cols[0])
        const uuid = cols[cols.length - 1]!
        if (!gpus.has(uuid) || (await isOwn(pid, mine))) continue
        const bytes = parseMiB(cols[cols.length - 2]!)
        const name = cols.slice(1, -2).join(',')
        const seen = byPid.get(pid)
        if (seen === undefined) byPid.set(pid, { pid, name, memoryUsedBytes: bytes })
        else if (bytes !== null) seen.memoryUsedBytes = (seen.memoryUsedBytes ?? 0) + bytes
      }
      const out = [...byPid.values()].sort((a, b) => (b.memoryUsedBytes ?? -1) - (a.memoryUsedBytes ?? -1))
      for (const p of out) listed.set(p.pid, { name: p.name, replica })
      return out
    },
    async terminate(pid) {
      const l = listed.get(pid)
      if (l === undefined)
        throw new MitigationError(`refusing to end pid ${pid}: the last co-tenant listing did not name it`)
      if (await isOwn(pid, own(l.replica)))
        throw new MitigationError(`refusing to end pid ${pid}: it belongs to ${l.replica}'s vLLM`)
      if (!(await runsAs(pid, l.name)))
        throw new MitigationError(
          `refusing to end pid ${pid}: it does not run "${l.name}" here (another PID namespace, or gone and reused)`,
        )
      listed.delete(pid)
      await endProcess(pid, graceMs)
      return true
    },
  }
}

/** The same as `processesFromNvidiaSmi` (the process list comes from NVML through nvidia-smi). */
export const processesFromNvml = processesFromNvidiaSmi

// ---- scalers ------------------------------------------------------------------------------------

export interface WebhookScalerOptions {
  /** Receives `POST` with the JSON scale request. */
  url: string
  /** Sent with every request (an `authorization` header...). */
  headers?: Record<string, string>
  /** Deadline of one call (default 10 000 ms). */
  timeoutMs?: number
  /** The scaler's name in results (default `'webhook'`). */
  name?: string
}

/** The body a webhook scaler posts. */
export interface WebhookScaleBody extends ScaleRequest {
  source: 'vllm-monitor'
}

function describeCallError(err: unknown): string {
  const e = err as { name?: string; code?: string; message?: string; cause?: { code?: string } }
  if (e?.name === 'TimeoutError' || e?.name === 'AbortError') return 'timed out'
  return e?.cause?.code ?? e?.code ?? e?.message ?? String(err)
}

async function snippet(body: Dispatcher.ResponseData['body']): Promise<string> {
  const text = await body.text().catch(() => '')
  const one = text.replace(/\s+/g, ' ').trim()
  return one.length > 200 ? `${one.slice(0, 199)}…` : one
}

/** A ScaleActuator that POSTs the request as JSON; a 2xx answer means it was accepted. */
export function webhookScaler(options: WebhookScalerOptions): ScaleActuator {
  const owner = 'webhookScaler'
  const o = checkObject(owner, options)
  const url = httpUrl(owner, 'url', o.url)
  const headers = o.headers ?? {}
  if (
    headers === null ||
    typeof headers !== 'object' ||
    Object.values(headers).some((v) => typeof v !== 'string')
  )
    throw optionError(owner, 'headers', 'an object of string values')
  const timeoutMs = positiveMs(owner, 'timeoutMs', o.timeoutMs, 10_000)
  const name = o.name === undefined ? 'webhook' : nonEmpty(owner, 'name', o.name)
  // Said in results: without credentials or query string.
  const where = `${url.origin}${url.pathname}`
  return {
    name,
    async scale(req) {
      const body: WebhookScaleBody = { ...req, source: 'vllm-monitor' }
      try {
        const res = await request(url, {
          method: 'POST',
          headers: { ...(headers as Record<string, string>), 'content-type': 'application/json' },
          body: JSON.stringify(body),
          signal: AbortSignal.timeout(timeoutMs),
        })
        const text = await snippet(res.body)
        const ok = res.statusCode >= 200 && res.statusCode <= 299
        return { ok, detail: `POST ${where}: HTTP ${res.statusCode}${ok || text === '' ? '' : ` ${text}`}` }
      } catch (err) {
        return { ok: false, detail: `POST ${where}: ${describeCallError(err)}` }
      }
    },
  }
}

export interface KubernetesScalerOptions {
  /** The API server; default in-cluster: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`. */
  apiServer?: string
  namespace: string
  kind: 'deployments' | 'statefulsets'
  name: string
  /** Bearer token; default in-cluster: read from the service account's token file at each call. */
  token?: string
  /** A token file read at each call (tokens rotate). */
  tokenFile?: string
  /** CA bundle of the API server; default in-cluster: the service account's `ca.crt`. */
  caFile?: string
  /** Never scale beyond this many replicas. */
  maxReplicas: number
  /** Deadline of each API call (default 10 000 ms). */
  timeoutMs?: number
}

const kServiceAccount = '/var/run/secrets/kubernetes.io/serviceaccount'

async function readSecret(file: string, what: string): Promise<string> {
  try {
    return await readFile(file, 'utf8')
  } catch (err) {
    throw new MitigationError(
      `cannot read the ${what} file ${file}: ${(err as NodeJS.ErrnoException).code ?? err}`,
    )
  }
}

/**
 * A ScaleActuator over the Kubernetes scale subresource: reads the replica count, then patches
 * it to min(maxReplicas, max(current + 1, desiredReplicas)).
 */
export function kubernetesScaler(options: KubernetesScalerOptions): ScaleActuator {
  const owner = 'kubernetesScaler'
  const o = checkObject(owner, options)
  const inCluster = o.apiServer === undefined
  const apiServer = inCluster ? null : httpUrl(owner, 'apiServer', o.apiServer)
  const namespace = nonEmpty(owner, 'namespace', o.namespace)
  const name = nonEmpty(owner, 'name', o.name)
  if (o.kind !== 'deployments' && o.kind !== 'statefulsets')
    throw optionError(owner, 'kind', "'deployments' or 'statefulsets'")
  const kind = o.kind
  if (!Number.isInteger(o.maxReplicas) || (o.maxReplicas as number) < 1)
    throw optionError(owner, 'maxReplicas', 'a positive integer')
  const maxReplicas = o.maxReplicas as number
  const token = o.token === undefined ? null : nonEmpty(owner, 'token', o.token)
  const tokenFile =
    o.tokenFile !== undefined
      ? nonEmpty(owner, 'tokenFile', o.tokenFile)
      : token === null && inCluster
        ? `${kServiceAccount}/token`
        : null
  const caFile =
    o.caFile !== undefined
      ? nonEmpty(owner, 'caFile', o.caFile)
      : inCluster
        ? `${kServiceAccount}/ca.crt`
        : null
  const timeoutMs = positiveMs(owner, 'timeoutMs', o.timeoutMs, 10_000)
  const target = `${kind}/${namespace}/${name}`
  const path = `/apis/apps/v1/namespaces/${encodeURIComponent(namespace)}/${kind}/${encodeURIComponent(name)}/scale`
  let dispatcher: Agent | null = null

  function base(): URL {
    if (apiServer !== null) return apiServer
    const host = process.env.KUBERNETES_SERVICE_HOST
    const port = process.env.KUBERNETES_SERVICE_PORT
    if (!host || !port)
      throw new MitigationError(
        'not in a cluster: KUBERNETES_SERVICE_HOST/PORT are not set and no apiServer was given',
      )
    return new URL(`https://${host.includes(':') ? `[${host}]` : host}:${port}`)
  }

  async function call(method: 'GET' | 'PATCH', body?: string) {
    const url = new URL(path, base())
    const headers: Record<string, string> = { accept: 'application/json' }
    const bearer = token ?? (tokenFile === null ? null : (await readSecret(tokenFile, 'token')).trim())
    if (bearer) headers.authorization = `Bearer ${bearer}`
    if (body !== undefined) headers['content-type'] = 'application/merge-patch+json'
    if (caFile !== null && url.protocol === 'https:' && dispatcher === null)
      dispatcher = new Agent({ connect: { ca: await readSecret(caFile, 'CA') } })
    const res = await request(url, {
      method,
      headers,
      ...(body === undefined ? {} : { body }),
      ...(dispatcher === null ? {} : { dispatcher }),
      signal: AbortSignal.timeout(timeoutMs),
    })
    const ok = res.statusCode >= 200 && res.statusCode <= 299
    if (!ok) return { ok, status: res.statusCode, json: null, text: await snippet(res.body) }
    return {
      ok,
      status: res.statusCode,
      json: (await res.body.json().catch(() => null)) as unknown,
      text: '',
    }
  }

  return {
    name: `kubernetes:${kind}/${name}`,
    async scale(req) {
      try {
        const got = await call('GET')
        if (!got.ok)
          return { ok: false, detail: `GET ${target}/scale: HTTP ${got.status} ${got.text}`.trim() }
        const replicas = (got.json as { spec?: { replicas?: unknown } } | null)?.spec?.replicas ?? 0
        if (typeof replicas !== 'number')
          return { ok: false, detail: `GET ${target}/scale: no spec.replicas in the answer` }
        const want = Math.min(maxReplicas, Math.max(replicas + 1, req.desiredReplicas))
        if (want <= replicas)
          return {
            ok: false,
            detail: `${target} has ${replicas} replicas already (maxReplicas ${maxReplicas})`,
          }
        const patched = await call('PATCH', JSON.stringify({ spec: { replicas: want } }))
        if (!patched.ok)
          return { ok: false, detail: `PATCH ${target}/scale: HTTP ${patched.status} ${patched.text}`.trim() }
        return { ok: true, detail: `${target}: ${replicas} → ${want} replicas` }
      } catch (err) {
        return {
          ok: false,
          detail: `${target}: ${err instanceof MitigationError ? err.message : describeCallError(err)}`,
        }
      }
    },
  }
}
