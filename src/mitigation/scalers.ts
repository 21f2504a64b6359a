/**
 * Scale actuators: ask the platform for capacity through a webhook (POST, JSON body) or the
 * Kubernetes scale subresource over its HTTP API.
 */
import { readFile } from 'node:fs/promises'
import { Agent, type Dispatcher, request } from 'undici'
import { MitigationError } from '../errors.js'
import { checkObject, httpUrl, nonEmpty, optionError, positiveMs } from './actuator-options.js'
import type { ScaleActuator, ScaleRequest } from './types.js'

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
