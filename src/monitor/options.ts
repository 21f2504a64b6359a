/**
 * The monitor's options: one schema, one defaults object, environment variables under it.
 * Precedence: explicit option > environment variable > default. A bad value is refused at the
 * boundary with an error naming the option (or variable) and what it accepts.
 */
import { z } from 'zod'
import { InvalidEnvError, InvalidOptionError } from '../errors.js'
import type { Detector, MonitorPlugin, TelemetrySource } from '../telemetry/types.js'

export type GpuMode = 'auto' | 'nvml' | 'nvidia-smi' | 'none'

const replicaSchema = z.union([
  z.string().url(),
  z.object({ name: z.string().min(1).optional(), url: z.string().url() }).strict(),
])

const httpSchema = z.union([
  z.literal(false),
  z
    .object({
      host: z.string().min(1).default('127.0.0.1'),
      port: z.number().int().min(0).max(65535).default(9490),
    })
    .strict(),
])

/** The end-to-end probe's options (`probes.e2e`). */
export const e2eProbeOptionsSchema = z
  .object({
    /** Pause between the end of one probe and the start of the next. */
    intervalMs: z.number().int().min(100).default(10_000),
    /** Deadline of one probe; generous: vLLM misses 10 s under spiky load without being dead. */
    timeoutMs: z.number().int().min(100).default(30_000),
    /** Failures in a row (with /health 200 and no tokens flowing) that make the replica ERROR. */
    failuresBeforeError: z.number().int().min(1).default(3),
  })
  .strict()

/** The probes' options (`probes`). */
export const probesOptionsSchema = z
  .object({
    /** `/health`, `/v1/models`, `/version` every this often. */
    intervalMs: z.number().int().min(100).default(5_000),
    timeoutMs: z.number().int().min(100).default(10_000),
    /** One summary event per replica this often (0: none). */
    summaryIntervalMs: z.number().int().min(0).default(60_000),
    /** The end-to-end probe (`POST /v1/completions`, `max_tokens: 1`); on unless false. */
    e2e: z.union([z.boolean(), e2eProbeOptionsSchema]).default(true),
    /** For vLLM's `--api-key` (it guards `/v1/*`). */
    apiKey: z.string().min(1).optional(),
  })
  .strict()

const isFunction = (v: unknown) => typeof v === 'function'

/** The mitigation side's options (`mitigation`). */
export const mitigationOptionsSchema = z
  .object({
    /** Decide and log, never act (`VLLM_MONITOR_MITIGATION_DRY_RUN`). */
    dryRun: z.boolean().default(false),
    /** Append every decision, action and outcome here (JSON Lines; `VLLM_MONITOR_AUDIT_LOG`). */
    auditLog: z.string().min(1).optional(),
    /** Persist the learner here, restored at start (`VLLM_MONITOR_LEARNER_STATE`). */
    learnerState: z.string().min(1).optional(),
    /** Share of decisions held out as the counterfactual (judged, not executed). 0 in production. */
    holdout: z.number().min(0).max(1).default(0),
    /** Let the learner try non-runbook strategies within its conservative budget. */
    explore: z.boolean().default(true),
    /** Asked before each disruptive action (restart, drain); false or a throw denies it. */
    approve: z
      .custom<(request: unknown) => boolean | Promise<boolean>>(isFunction, 'must be a function')
      .optional(),
    /** Ask `approve` for every action, not only disruptive ones. */
    approveAll: z.boolean().default(false),
    cooldownMs: z.number().int().min(0).default(120_000),
    maxConcurrentRestarts: z.number().int().min(1).default(1),
    maxActionsPerHour: z.number().int().min(1).default(30),
    /** Strategies registered beside the built-ins (same name replaces a built-in). */
    strategies: z
      .array(z.custom<object>((v) => typeof v === 'object' && v !== null, 'must be a strategy'))
      .default([]),
    /** Actuators to use instead of the ones the monitor builds (a simulator's, a custom gateway's). */
    actuators: z.custom<object>((v) => typeof v === 'object' && v !== null, 'must be an object').optional(),
    /** ScaleResources posts here (`VLLM_MONITOR_SCALE_WEBHOOK`). */
    webhookUrl: z.string().url().optional(),
    /** ScaleResources also scales this Deployment/StatefulSet through the Kubernetes scale subresource. */
    kubernetes: z
      .object({
        /** Default in-cluster: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`. */
        apiServer: z.string().url().optional(),
        namespace: z.string().min(1),
        kind: z.enum(['deployments', 'statefulsets']),
        name: z.string().min(1),
        /** Never scale beyond this many replicas. */
        maxReplicas: z.number().int().min(1),
        token: z.string().min(1).optional(),
        tokenFile: z.string().min(1).optional(),
        caFile: z.string().min(1).optional(),
        timeoutMs: z.number().int().min(1).optional(),
      })
      .strict()
      .optional(),
    /** The native reflex: cap a replica at once when one of its GPUs passes this memory fraction. */
    nativeMemoryFraction: z.number().gt(0).max(1).default(0.98),
  })
  .strict()

export const monitorOptionsSchema = z
  .object({
    /** Master switch (`VLLM_ENABLE_MONITORING`); a disabled monitor does nothing and reports inactive. */
    enabled: z.boolean().default(true),
    /** vLLM servers to watch (`VLLM_MONITOR_URLS`, comma-separated). */
    replicas: z.array(replicaSchema).default([]),
    scrapeIntervalMs: z.number().int().min(20).max(600_000).default(100),
    scrapeTimeoutMs: z.number().int().min(1).max(600_000).default(1000),
    /** Window of the TTFT / inter-token / e2e / queue-time quantiles computed from vLLM's histograms. */
    quantileWindowMs: z.number().int().min(20).max(3_600_000).default(60_000),
    checkpointIntervalMs: z.number().int().min(10).max(600_000).default(100),
    /** Requests running with no token or step progress this long is a hang. */
    hangAfterMs: z.number().int().min(100).default(30_000),
    /**
     * A replica whose newest reading is older than this is stale: its rules do not fire. Default
     * max(1000, 5 × scrapeIntervalMs, scrapeTimeoutMs + 2 × scrapeIntervalMs); with a custom
     * `now`, off unless set (in that clock's ms).
     */
    staleAfterMs: z.number().int().min(100).optional(),
    /**
     * Probes of `/health`, `/v1/models`, `/version` and an end-to-end completion (vllm.md §0 #3:
     * `/health` stays 200 while the engine hangs). Off by default: the end-to-end probe sends real
     * (one-token) requests. `true` = the defaults, end-to-end probe included.
     */
    probes: z.union([z.boolean(), probesOptionsSchema]).default(false),
    recoverAfterMs: z.number().int().min(0).default(5_000),
    kvPressureThreshold: z.number().gt(0).max(1).default(0.95),
    /** GPU source: the NVML addon, nvidia-smi, none, `auto`, or a simulator's control URL. */
    gpu: z
      .union([
        z.enum(['auto', 'nvml', 'nvidia-smi', 'none']),
        z.object({ simUrl: z.string().url() }).strict(),
      ])
      .default('auto'),
    gpuIntervalMs: z.number().int().min(10).default(100),
    /** libnvidia-ml to load instead of the system's `libnvidia-ml.so.1`. */
    nvmlLibraryPath: z.string().min(1).optional(),
    /** Which replica runs on which GPU (`{ "0": "a", "1": "b" }`); with one replica it owns them all. */
    gpuReplicas: z.record(z.string().regex(/^\d+$/), z.string().min(1)).optional(),
    /** The HTTP surface (`/metrics`, `/api/status`, `/api/export`); false turns it off. */
    http: httpSchema.default({ host: '127.0.0.1', port: 9490 }),
    predictive: z.boolean().default(true),
    /** The forecaster (used when `predictive`). */
    forecast: z
      .object({
        /** A model directory (default: the one shipped in models/forecaster); null: baselines only. */
        model: z.string().min(1).nullable().optional(),
        /** How often to forecast, ms. */
        intervalMs: z.number().int().min(100).default(1000),
        /** Forecast worker threads. */
        threads: z.number().int().min(1).max(16).default(1),
        /** A forecast task running longer is abandoned (its worker replaced); the baselines answer. */
        taskTimeoutMs: z.number().int().min(10).max(600_000).default(1000),
        /** 'auto' runs wasm (cpu if wasm cannot start); 'tensorflow' asks for @tensorflow/tfjs-node in the worker. */
        backend: z.enum(['auto', 'wasm', 'cpu', 'tensorflow']).default('auto'),
        /**
         * Ticks costing at most this many multiply-adds run the model's worker-checked Dense loops on
         * the main thread: no thread hop, and no more main-thread time than one; 0: always a worker.
         */
        inlineMaxMacs: z.number().int().min(0).max(10_000_000).default(250_000),
        /** The baseline that answers while the model cannot. */
        fallback: z.enum(['predict_linear', 'threshold']).default('threshold'),
        slo: z
          .object({
            ttftP99Ms: z.number().positive(),
            itlP99Ms: z.number().positive(),
            queueS: z.number().positive(),
          })
          .strict()
          .optional(),
        /** Online retraining schedule (with `learning`). */
        retrainIntervalMs: z.number().int().min(1000).default(600_000),
        retrainMinSamples: z.number().int().min(16).default(256),
      })
      .strict()
      .default({
        intervalMs: 1000,
        threads: 1,
        taskTimeoutMs: 1000,
        backend: 'auto',
        inlineMaxMacs: 250_000,
        fallback: 'threshold',
        retrainIntervalMs: 600_000,
        retrainMinSamples: 256,
      }),
    learning: z.boolean().default(false),
    /** Act on predictions: the orchestrator, the strategies and the learner (`VLLM_MONITOR_AUTO_MITIGATE`). */
    autoMitigate: z.boolean().default(false),
    /**
     * Act on predictions at or above this probability (`VLLM_MONITOR_MITIGATION_THRESHOLD`). Unset:
     * act on the forecaster's alarms, whose per-type thresholds were tuned to <= 0.5 false alarms
     * per replica-hour.
     */
    mitigationThreshold: z.number().min(0).max(1).optional(),
    /** How the monitor mitigates (with `autoMitigate`). */
    mitigation: mitigationOptionsSchema.default(() => mitigationOptionsSchema.parse({})),
    /** Write every record to this trace file (JSON Lines, `.gz` for gzip). */
    record: z.string().min(1).optional(),
    sources: z.array(z.custom<TelemetrySource>(isSource, 'must be a TelemetrySource')).default([]),
    detectors: z.array(z.custom<Detector>(isDetector, 'must be a Detector')).default([]),
    plugins: z.array(z.custom<MonitorPlugin>(isPlugin, 'must be a MonitorPlugin')).default([]),
    /** ms since the monitor started; injectable for tests. */
    now: z.custom<() => number>((v) => typeof v === 'function', 'must be a function').optional(),
  })
  .strict()

export type MonitorOptions = z.input<typeof monitorOptionsSchema>
export type ResolvedMonitorOptions = z.output<typeof monitorOptionsSchema>

function isSource(v: unknown): boolean {
  const s = v as TelemetrySource
  return typeof s?.name === 'string' && typeof s.start === 'function' && typeof s.stop === 'function'
}
function isDetector(v: unknown): boolean {
  const d = v as Detector
  return typeof d?.name === 'string' && typeof d.detect === 'function'
}
function isPlugin(v: unknown): boolean {
  return typeof (v as MonitorPlugin)?.name === 'string'
}

const TRUE = ['1', 'true', 'yes', 'on']
const FALSE = ['0', 'false', 'no', 'off']

/** The environment variables the monitor reads, with what each accepts. */
export const ENV_VARS = {
  VLLM_ENABLE_MONITORING: 'boolean',
  VLLM_MONITOR_PREDICTIVE: 'boolean',
  VLLM_MONITOR_LEARNING: 'boolean',
  VLLM_MONITOR_AUTO_MITIGATE: 'boolean',
  VLLM_MONITOR_MITIGATION_THRESHOLD: 'number in [0, 1]',
  VLLM_MONITOR_MITIGATION_DRY_RUN: 'boolean',
  VLLM_MONITOR_AUDIT_LOG: 'path of the audit log (JSON Lines)',
  VLLM_MONITOR_LEARNER_STATE: "path of the learner's state file",
  VLLM_MONITOR_SCALE_WEBHOOK: 'URL that ScaleResources posts to',
  VLLM_MONITOR_URLS: 'comma-separated URLs',
  VLLM_MONITOR_SCRAPE_INTERVAL_MS: 'integer >= 20',
  VLLM_MONITOR_HANG_AFTER_MS: 'integer >= 100',
  VLLM_MONITOR_GPU: 'auto | nvml | nvidia-smi | none',
  VLLM_MONITOR_HTTP_HOST: 'host name or address',
  VLLM_MONITOR_HTTP_PORT: 'integer 0-65535, or "off"',
  VLLM_MONITOR_RECORD: 'path of a trace file to write',
  VLLM_MONITOR_MODEL: 'a forecaster model directory, or "none" for the baselines only',
} as const

function envBool(env: NodeJS.ProcessEnv, name: string): boolean | undefined {
  const raw = env[name]
  if (raw === undefined || raw.trim() === '') return undefined
  const v = raw.trim().toLowerCase()
  if (TRUE.includes(v)) return true
  if (FALSE.includes(v)) return false
  throw new InvalidEnvError(
    `${name}=${JSON.stringify(raw)} is not a boolean; accepted: ${[...TRUE, ...FALSE].join(', ')}`,
  )
}

function envNumber(env: NodeJS.ProcessEnv, name: string, check: (n: number) => boolean, accepted: string) {
  const raw = env[name]
  if (raw === undefined || raw.trim() === '') return undefined
  const n = Number(raw.trim())
  if (!Number.isFinite(n) || !check(n))
    throw new InvalidEnvError(`${name}=${JSON.stringify(raw)} is invalid; accepted: ${accepted}`)
  return n
}

/** Options as the environment gives them (only the variables that are set). */
export function optionsFromEnv(env: NodeJS.ProcessEnv = process.env): MonitorOptions {
  const out: Record<string, unknown> = {}
  const set = (k: string, v: unknown) => {
    if (v !== undefined) out[k] = v
  }
  set('enabled', envBool(env, 'VLLM_ENABLE_MONITORING'))
  set('predictive', envBool(env, 'VLLM_MONITOR_PREDICTIVE'))
  set('learning', envBool(env, 'VLLM_MONITOR_LEARNING'))
  set('autoMitigate', envBool(env, 'VLLM_MONITOR_AUTO_MITIGATE'))
  set(
    'mitigationThreshold',
    envNumber(
      env,
      'VLLM_MONITOR_MITIGATION_THRESHOLD',
      (n) => n >= 0 && n <= 1,
      ENV_VARS.VLLM_MONITOR_MITIGATION_THRESHOLD,
    ),
  )
  set(
    'scrapeIntervalMs',
    envNumber(
      env,
      'VLLM_MONITOR_SCRAPE_INTERVAL_MS',
      (n) => Number.isInteger(n) && n >= 20,
      ENV_VARS.VLLM_MONITOR_SCRAPE_INTERVAL_MS,
    ),
  )
  set(
    'hangAfterMs',
    envNumber(
      env,
      'VLLM_MONITOR_HANG_AFTER_MS',
      (n) => Number.isInteger(n) && n >= 100,
      ENV_VARS.VLLM_MONITOR_HANG_AFTER_MS,
    ),
  )
  const urls = env.VLLM_MONITOR_URLS
  if (urls !== undefined && urls.trim() !== '') {
    const list = urls
      .split(',')
      .map((u) => u.trim())
      .filter((u) => u !== '')
    for (const u of list) {
      if (!URL.canParse(u))
        throw new InvalidEnvError(
          `VLLM_MONITOR_URLS holds ${JSON.stringify(u)}, which is not a URL; accepted: ${ENV_VARS.VLLM_MONITOR_URLS}`,
        )
    }
    out.replicas = list
  }
  const gpu = env.VLLM_MONITOR_GPU
  if (gpu !== undefined && gpu.trim() !== '') {
    const v = gpu.trim()
    if (!['auto', 'nvml', 'nvidia-smi', 'none'].includes(v)) {
      throw new InvalidEnvError(
        `VLLM_MONITOR_GPU=${JSON.stringify(gpu)} is invalid; accepted: ${ENV_VARS.VLLM_MONITOR_GPU}`,
      )
    }
    out.gpu = v
  }
  const host = env.VLLM_MONITOR_HTTP_HOST
  const port = env.VLLM_MONITOR_HTTP_PORT
  if (port !== undefined && port.trim().toLowerCase() === 'off') out.http = false
  else if ((host !== undefined && host.trim() !== '') || (port !== undefined && port.trim() !== '')) {
    const p = envNumber(
      env,
      'VLLM_MONITOR_HTTP_PORT',
      (n) => Number.isInteger(n) && n >= 0 && n <= 65535,
      ENV_VARS.VLLM_MONITOR_HTTP_PORT,
    )
    out.http = { host: host?.trim() || '127.0.0.1', port: p ?? 9490 }
  }
  const record = env.VLLM_MONITOR_RECORD
  if (record !== undefined && record.trim() !== '') out.record = record.trim()
  const mitigation: Record<string, unknown> = {}
  const dry = envBool(env, 'VLLM_MONITOR_MITIGATION_DRY_RUN')
  if (dry !== undefined) mitigation.dryRun = dry
  for (const [name, key] of [
    ['VLLM_MONITOR_AUDIT_LOG', 'auditLog'],
    ['VLLM_MONITOR_LEARNER_STATE', 'learnerState'],
  ] as const) {
    const v = env[name]
    if (v !== undefined && v.trim() !== '') mitigation[key] = v.trim()
  }
  const hook = env.VLLM_MONITOR_SCALE_WEBHOOK
  if (hook !== undefined && hook.trim() !== '') {
    if (!URL.canParse(hook.trim()))
      throw new InvalidEnvError(
        `VLLM_MONITOR_SCALE_WEBHOOK=${JSON.stringify(hook)} is not a URL; accepted: ${ENV_VARS.VLLM_MONITOR_SCALE_WEBHOOK}`,
      )
    mitigation.webhookUrl = hook.trim()
  }
  if (Object.keys(mitigation).length > 0) out.mitigation = mitigation
  const model = env.VLLM_MONITOR_MODEL
  if (model !== undefined && model.trim() !== '')
    out.forecast = { model: model.trim().toLowerCase() === 'none' ? null : model.trim() }
  return out as MonitorOptions
}

/** Validates options (explicit over environment over defaults); throws naming the bad option. */
export function resolveOptions(
  options: MonitorOptions = {},
  env: NodeJS.ProcessEnv = process.env,
): ResolvedMonitorOptions {
  if (options === null || typeof options !== 'object') {
    throw new InvalidOptionError(
      `options must be an object (got ${options === null ? 'null' : typeof options})`,
    )
  }
  const fromEnv = optionsFromEnv(env) as Record<string, unknown>
  const given = stripUndefined(options as Record<string, unknown>)
  const merged = { ...fromEnv, ...given }
  // The model may come from the environment and the rest of `forecast` from the code.
  if (isObject(fromEnv.forecast) && isObject(given.forecast))
    merged.forecast = { ...fromEnv.forecast, ...given.forecast }
  if (isObject(fromEnv.mitigation) && isObject(given.mitigation))
    merged.mitigation = { ...fromEnv.mitigation, ...given.mitigation }
  const r = monitorOptionsSchema.safeParse(merged)
  if (r.success) return r.data
  const issue = r.error.issues[0]
  const path = issue?.path.length ? issue.path.join('.') : ''
  if (issue?.code === 'unrecognized_keys') {
    const keys = (issue as { keys?: string[] }).keys ?? []
    throw new InvalidOptionError(
      `unknown option${keys.length > 1 ? 's' : ''} ${keys.map((k) => `options.${path ? `${path}.` : ''}${k}`).join(', ')}; known: ${Object.keys(monitorOptionsSchema.shape).join(', ')}`,
    )
  }
  throw new InvalidOptionError(`options.${path} ${issue?.message ?? 'is invalid'}`)
}

function stripUndefined(o: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(o)) if (v !== undefined) out[k] = v
  return out
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}
