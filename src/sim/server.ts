/**
 * Serves a simulated fleet over real HTTP on loopback, one port per replica, so the scraper, the
 * supervisor and the gateway meet it exactly as they would meet vLLM:
 * - a replica's port refuses connections until vLLM would have bound it ("Application startup
 *   complete") and again after the process exits, as vLLM's pre-bound socket does (vllm.md §0 #8);
 * - `/metrics` (V1 names, or V0 with `metricsGeneration: 'v0'`), `/health` (200, even while the
 *   engine hangs; 503 once it died), `/version`, `/v1/models`, `/v1/completions` and
 *   `/v1/chat/completions` with SSE streaming; errors use vLLM's status codes and bodies (400 for a
 *   too-long prompt, 404 for another model, 500 after engine death; never 429).
 * - with `devMode` (vLLM's `VLLM_SERVER_DEV_MODE=1`), the development endpoints with vLLM's
 *   semantics (vllm.md §2): `/pause?mode=abort|wait|keep`, `/resume`, `/is_paused`,
 *   `/sleep?level=`, `/wake_up?tags=`, `/is_sleeping` (`/sleep` needs `enableSleepMode`, else 500),
 *   `/reset_prefix_cache` (always 200; logs the failure while blocks are in use), `/server_info`;
 *   without it they answer 404 as vLLM does.
 * A separate control port serves what NVML and the test harness would see: `/sim/gpus`,
 * `/sim/events`, `/sim/labels`, `/sim/state`, `POST /sim/faults`, `POST /sim/restart`.
 *
 * Simulated time runs at `speed` × wall time, advanced every few ms.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { InvalidOptionError } from '../errors.js'
import type { FaultLabel, MonitorEvent } from '../telemetry/types.js'
import type { FinishReason, PauseMode, RequestSink, SimEngine, SimRequest } from './engine.js'
import { type MetricsGeneration, renderExposition } from './exposition.js'
import type { FaultSpecInput } from './faults.js'
import type { SimFleet } from './fleet.js'
import { BLOCK_SIZE_TOKENS } from './hardware.js'
import type { LogStream } from './logs.js'
import { type SimReplica, VLLM_VERSION } from './replica.js'

export interface SimServerOptions {
  fleet: SimFleet
  host?: string
  /** First replica's port; the others follow. 0 = any free ports. */
  basePort?: number
  /** Control port (0 = any free port). */
  controlPort?: number
  /** Simulated ms per wall ms. Default 1. */
  speed?: number
  metricsGeneration?: MetricsGeneration
  /** Serve vLLM's development endpoints. Default: `VLLM_SERVER_DEV_MODE=1` in the environment. */
  devMode?: boolean
  /** As `vllm serve --enable-sleep-mode`: `/sleep` frees GPU memory (without it, 500). Default false. */
  enableSleepMode?: boolean
  /** Every log line of every replica, as it is printed. */
  onLog?: (replica: string, stream: LogStream, text: string, t: number) => void
}

export interface TimedGpuEvent extends MonitorEvent {
  seq: number
  t: number
}

const WORDS = ['the', 'model', 'returns', 'a', 'token', 'for', 'each', 'step', 'of', 'decode', 'and', 'then']

function tokenText(i: number): string {
  return ` ${WORDS[i % WORDS.length]}`
}

function estimateTokens(text: string): number {
  return Math.max(1, Math.ceil(text.length / 4))
}

interface ReplicaEndpoint {
  replica: SimReplica
  server: Server
  port: number
  sockets: Set<Socket>
}

export class SimServer {
  readonly fleet: SimFleet
  readonly host: string
  readonly speed: number
  readonly generation: MetricsGeneration
  readonly devMode: boolean
  readonly enableSleepMode: boolean
  private readonly endpoints: ReplicaEndpoint[] = []
  private control: Server | null = null
  private controlSockets = new Set<Socket>()
  controlUrl = ''
  private timer: NodeJS.Timeout | null = null
  private wallStart = 0
  private simStart = 0
  private readonly events: TimedGpuEvent[] = []
  private readonly labels: Array<FaultLabel & { t: number }> = []
  private seq = 0
  private requestSeq = 0
  private closed = false
  private readonly unsubscribe: () => void
  private readonly startedAtSeconds = Date.now() / 1e3

  private constructor(options: SimServerOptions) {
    this.fleet = options.fleet
    this.host = options.host ?? '127.0.0.1'
    this.speed = options.speed ?? 1
    if (!(this.speed > 0 && this.speed <= 100_000)) {
      throw new InvalidOptionError(
        `options.speed must be a number in (0, 100000] (got ${String(options.speed)})`,
      )
    }
    this.generation = options.metricsGeneration ?? 'v1'
    if (this.generation !== 'v1' && this.generation !== 'v0') {
      throw new InvalidOptionError(
        `options.metricsGeneration must be 'v1' or 'v0' (got ${String(this.generation)})`,
      )
    }
    const dev = process.env.VLLM_SERVER_DEV_MODE?.trim().toLowerCase()
    this.devMode = options.devMode ?? (dev === '1' || dev === 'true')
    this.enableSleepMode = options.enableSleepMode ?? false
    const onLog = options.onLog
    this.unsubscribe = this.fleet.on({
      log: onLog,
      gpuEvent: (event, t) => {
        this.events.push({ ...event, seq: ++this.seq, t })
        if (this.events.length > 1000) this.events.splice(0, this.events.length - 1000)
      },
      label: (label, t) => {
        this.labels.push({ ...label, t })
        if (this.labels.length > 1000) this.labels.splice(0, this.labels.length - 1000)
      },
      listening: (r, open) => {
        const ep = this.endpoints.find((e) => e.replica === r)
        if (ep !== undefined) this.setListening(ep, open)
      },
    })
  }

  /** Starts the servers and the clock, then boots every replica. */
  static async start(options: SimServerOptions): Promise<SimServer> {
    const s = new SimServer(options)
    try {
      await s.open(options.basePort ?? 0, options.controlPort ?? 0)
    } catch (err) {
      await s.close()
      throw err
    }
    return s
  }

  /** `http://host:port` of each replica, by name. */
  get urls(): Record<string, string> {
    const out: Record<string, string> = {}
    for (const e of this.endpoints) out[e.replica.name] = `http://${this.host}:${e.port}`
    return out
  }

  /** The simulated time that corresponds to now. */
  simNow(): number {
    return this.simStart + (performance.now() - this.wallStart) * this.speed
  }

  private async open(basePort: number, controlPort: number): Promise<void> {
    for (let i = 0; i < this.fleet.replicas.length; i++) {
      const replica = this.fleet.replicas[i] as SimReplica
      const ep: ReplicaEndpoint = {
        replica,
        server: this.makeReplicaServer(replica),
        port: 0,
        sockets: new Set(),
      }
      ep.server.on('connection', (sock: Socket) => {
        ep.sockets.add(sock)
        sock.on('close', () => ep.sockets.delete(sock))
      })
      // Reserve the port now so it stays the replica's across restarts; it opens when vLLM would.
      ep.port = await listen(ep.server, this.host, basePort === 0 ? 0 : basePort + i)
      await closeServer(ep.server, ep.sockets)
      this.endpoints.push(ep)
    }
    this.control = createServer((req, res) => this.handleControl(req, res))
    this.control.on('connection', (sock: Socket) => {
      this.controlSockets.add(sock)
      sock.on('close', () => this.controlSockets.delete(sock))
    })
    const port = await listen(this.control, this.host, controlPort)
    this.controlUrl = `http://${this.host}:${port}`
    this.wallStart = performance.now()
    this.simStart = this.fleet.now
    this.fleet.start()
    this.timer = setInterval(() => this.advance(), 5)
  }

  private advance(): void {
    if (this.closed) return
    try {
      this.fleet.advanceTo(this.simNow())
    } catch (err) {
      process.emitWarning(`simulator step failed: ${(err as Error).stack ?? String(err)}`, {
        code: 'VLLM_MONITOR_SIM_FAILED',
      })
    }
  }

  private setListening(ep: ReplicaEndpoint, open: boolean): void {
    if (this.closed) return
    if (open) {
      if (!ep.server.listening) {
        const onError = (err: Error) => {
          process.emitWarning(
            `simulated replica ${ep.replica.name} could not reopen port ${ep.port} (another process took it?): ${err.message}`,
            { code: 'VLLM_MONITOR_SIM_PORT_LOST' },
          )
        }
        ep.server.once('error', onError)
        ep.server.listen(ep.port, this.host, () => ep.server.off('error', onError))
      }
    } else if (ep.server.listening) {
      void closeServer(ep.server, ep.sockets)
    }
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    if (this.timer !== null) clearInterval(this.timer)
    this.unsubscribe()
    await Promise.all([
      ...this.endpoints.map((e) => closeServer(e.server, e.sockets)),
      this.control ? closeServer(this.control, this.controlSockets) : Promise.resolve(),
    ])
  }

  // --- vLLM's API -----------------------------------------------------------------------------

  private makeReplicaServer(replica: SimReplica): Server {
    return createServer((req, res) => {
      this.handleReplica(replica, req, res).catch((err: unknown) => {
        sendJson(res, 500, { object: 'error', message: String(err), type: 'InternalServerError', code: 500 })
      })
    })
  }

  private async handleReplica(replica: SimReplica, req: IncomingMessage, res: ServerResponse): Promise<void> {
    this.advance()
    const url = new URL(req.url ?? '/', 'http://x')
    const path = url.pathname
    if (req.method === 'GET' || req.method === 'HEAD') {
      switch (path) {
        case '/health':
        case '/ping': {
          res.writeHead(replica.healthStatus ?? 503, { 'content-length': '0' })
          res.end()
          return
        }
        case '/metrics': {
          const engine = replica.engine
          const body =
            engine === null
              ? ''
              : renderExposition({
                  modelName: replica.config.model.name,
                  engine,
                  generation: this.generation,
                  blockSize: BLOCK_SIZE_TOKENS,
                  gpuMemoryUtilization: replica.config.gpuMemoryUtilization,
                  startTimeSeconds: this.startedAtSeconds,
                  sleepLevel: replica.sleepLevel,
                })
          res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' })
          res.end(body)
          return
        }
        case '/version':
          sendJson(res, 200, { version: VLLM_VERSION })
          return
        case '/v1/models':
          sendJson(res, 200, {
            object: 'list',
            data: [
              {
                id: replica.config.model.name,
                object: 'model',
                created: Math.floor(this.startedAtSeconds),
                owned_by: 'vllm',
                root: replica.config.model.name,
                parent: null,
                max_model_len: replica.config.maxModelLen,
              },
            ],
          })
          return
      }
    }
    if (this.devMode && DEV_ROUTES[path] !== undefined) {
      await this.handleDev(replica, req, res, url)
      return
    }
    if (req.method === 'POST' && (path === '/v1/completions' || path === '/v1/chat/completions')) {
      await this.handleCompletion(replica, path === '/v1/chat/completions', req, res)
      return
    }
    sendJson(res, 404, { detail: 'Not Found' })
  }

  private async handleCompletion(
    replica: SimReplica,
    chat: boolean,
    req: IncomingMessage,
    res: ServerResponse,
  ): Promise<void> {
    let body: Record<string, unknown>
    try {
      body = JSON.parse(await readBody(req)) as Record<string, unknown>
      if (body === null || typeof body !== 'object') throw new Error('body must be a JSON object')
    } catch (err) {
      sendError(res, 400, `Invalid request body: ${(err as Error).message}`, 'BadRequestError')
      return
    }
    const model = replica.config.model.name
    if (body.model !== undefined && body.model !== model) {
      sendError(res, 404, `The model \`${String(body.model)}\` does not exist.`, 'NotFoundError')
      return
    }
    let promptTokens: number
    if (chat) {
      const messages = Array.isArray(body.messages) ? (body.messages as Array<{ content?: unknown }>) : null
      if (messages === null) {
        sendError(res, 400, 'messages must be a list', 'BadRequestError')
        return
      }
      promptTokens = messages.reduce((n, m) => n + 4 + estimateTokens(String(m?.content ?? '')), 3)
    } else {
      const prompt = body.prompt
      if (typeof prompt !== 'string' && !Array.isArray(prompt)) {
        sendError(res, 400, 'prompt must be a string or a list of token ids', 'BadRequestError')
        return
      }
      promptTokens = typeof prompt === 'string' ? estimateTokens(prompt) : prompt.length
    }
    const maxLen = replica.config.maxModelLen
    const requested = body.max_tokens ?? body.max_completion_tokens
    const maxTokens =
      typeof requested === 'number' && Number.isInteger(requested) && requested > 0
        ? requested
        : chat
          ? Math.max(1, maxLen - promptTokens)
          : 16
    if (promptTokens + maxTokens > maxLen) {
      sendError(
        res,
        400,
        `This model's maximum context length is ${maxLen} tokens. However, you requested ${promptTokens + maxTokens} tokens (${promptTokens} in the messages, ${maxTokens} in the completion). Please reduce the length of the messages or completion.`,
        'BadRequestError',
      )
      return
    }
    // Without a tokenizer the simulated model "stops" at max_tokens, as with ignore_eos.
    const stream = body.stream === true
    const includeUsage =
      (body.stream_options as { include_usage?: unknown } | undefined)?.include_usage === true
    const id = `${chat ? 'chatcmpl' : 'cmpl'}-${(++this.requestSeq).toString(16).padStart(16, '0')}`
    const created = Math.floor(Date.now() / 1e3)
    const object = chat ? 'chat.completion' : 'text_completion'
    let text = ''
    let headersSent = false
    let first = true
    const send = (data: unknown) => res.write(`data: ${JSON.stringify(data)}\n\n`)
    const choice = (piece: string, finish: string | null) =>
      chat
        ? {
            index: 0,
            // Like vLLM: the role only in the first delta, then content alone.
            delta: piece === '' ? {} : first ? { role: 'assistant', content: piece } : { content: piece },
            finish_reason: finish,
          }
        : { index: 0, text: piece, logprobs: null, finish_reason: finish }
    const sendChunk = (choices: unknown[], usage?: unknown) => {
      if (!headersSent) {
        headersSent = true
        res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
      }
      send({
        id,
        object: `${object}${chat ? '.chunk' : ''}`,
        created,
        model,
        choices,
        ...(usage ? { usage } : {}),
      })
    }
    let request: SimRequest | null = null
    const done = new Promise<void>((resolve) => {
      const sink: RequestSink = {
        onToken: (r) => {
          const piece = tokenText(r.generated)
          first = r.generated === 1
          if (stream) sendChunk([choice(piece, null)])
          else text += piece
        },
        onFinish: (r, reason: FinishReason) => {
          resolve()
          if (res.writableEnded || res.destroyed) return
          if (reason === 'error') {
            if (headersSent) {
              send({
                error: {
                  message: 'EngineCore encountered an issue. See stack trace (above) for the root cause.',
                },
              })
              res.end()
            } else
              sendError(
                res,
                500,
                'EngineCore encountered an issue. See stack trace (above) for the root cause.',
                'EngineDeadError',
              )
            return
          }
          // An abort the client did not cause (`/pause?mode=abort`, sleep) still gets an answer,
          // with finish_reason "abort"; a client that went away was caught above.
          const usage = {
            prompt_tokens: r.promptTokens,
            completion_tokens: r.generated,
            total_tokens: r.promptTokens + r.generated,
          }
          if (stream) {
            sendChunk([choice('', reason)])
            if (includeUsage) sendChunk([], usage)
            res.write('data: [DONE]\n\n')
            res.end()
          } else {
            const c = chat
              ? { index: 0, message: { role: 'assistant', content: text }, finish_reason: reason }
              : { index: 0, text, logprobs: null, finish_reason: reason }
            sendJson(res, 200, { id, object, created, model, choices: [c], usage })
          }
        },
      }
      request = replica.submit(promptTokens, maxTokens, maxTokens, sink)
      if (request === null) {
        resolve()
        sendError(
          res,
          500,
          'EngineCore encountered an issue. See stack trace (above) for the root cause.',
          'EngineDeadError',
        )
      }
    })
    // A client that goes away aborts its request, as vLLM does.
    res.on('close', () => {
      const r = request as SimRequest | null
      if (r !== null && !r.finished) replica.engine?.abort(r)
    })
    await done
  }

  // --- vLLM's development endpoints (VLLM_SERVER_DEV_MODE=1) -----------------------------------

  private async handleDev(
    replica: SimReplica,
    req: IncomingMessage,
    res: ServerResponse,
    url: URL,
  ): Promise<void> {
    const path = url.pathname
    const q = url.searchParams
    const method = req.method === 'HEAD' ? 'GET' : req.method
    if (DEV_ROUTES[path] !== method) {
      sendJson(res, 405, { detail: 'Method Not Allowed' })
      return
    }
    // The body (if any) is not used, but must be read for the connection to be reused.
    if (method === 'POST') await readBody(req).catch(() => '')
    if (path === '/server_info') {
      this.sendServerInfo(replica, q.get('config_format') === 'json', res)
      return
    }
    if (replica.phase === 'hung') {
      // Each of these is a utility call into EngineCore, whose busy loop is wedged in a
      // collective: the API server never answers (the caller's timeout is all there is).
      await new Promise<void>((resolve) => res.once('close', resolve))
      return
    }
    const e = replica.engine
    if (e === null || e.dead) {
      // Every call into a dead EngineCore raises EngineDeadError.
      if (path === '/pause' || path === '/resume' || path === '/is_paused')
        sendJson(res, 500, { error: `Failed to ${DEV_VERBS[path]}: ${DEAD_MESSAGE}` })
      else sendText(res, 500, 'Internal Server Error')
      return
    }
    switch (path) {
      case '/is_paused':
        sendJson(res, 200, { is_paused: e.paused })
        return
      case '/is_sleeping':
        // EngineCore.is_sleeping(): a paused scheduler counts as asleep too.
        sendJson(res, 200, { is_sleeping: e.paused || replica.sleepLevel !== null })
        return
      case '/resume':
        e.resume()
        sendJson(res, 200, { status: 'resumed' })
        return
      case '/pause': {
        const legacyWait = truthy(q.get('wait_for_inflight_requests'))
        const mode = q.get('mode') ?? (legacyWait ? 'wait' : 'abort')
        if (!isPauseMode(mode)) {
          sendJson(res, 422, {
            detail: [
              {
                type: 'literal_error',
                loc: ['query', 'mode'],
                msg: "Input should be 'abort', 'wait' or 'keep'",
                input: mode,
              },
            ],
          })
          return
        }
        await this.pauseEngine(replica, e, mode)
        sendJson(res, 200, { status: 'paused' })
        return
      }
      case '/sleep': {
        const level = Number(q.get('level') ?? '1')
        const mode = q.get('mode') ?? 'abort'
        // vLLM: int(level) raises, pause_scheduler refuses a bad mode, and without
        // --enable-sleep-mode the worker cannot release memory: unhandled, so a bare 500.
        if (!this.enableSleepMode || !Number.isInteger(level) || level < 0 || !isPauseMode(mode)) {
          sendText(res, 500, 'Internal Server Error')
          return
        }
        await this.pauseEngine(replica, e, mode)
        if (replica.engine === e && !e.dead) replica.sleep(level)
        res.writeHead(200, { 'content-length': '0' })
        res.end()
        return
      }
      case '/wake_up': {
        const tags = q.getAll('tags')
        if (replica.wakeUp(tags.length === 0 ? null : tags)) e.resume()
        res.writeHead(200, { 'content-length': '0' })
        res.end()
        return
      }
      case '/reset_prefix_cache':
        replica.resetPrefixCache(truthy(q.get('reset_running_requests')))
        // vLLM does not check whether the reset worked (vllm.md §1.7).
        res.writeHead(200, { 'content-length': '0' })
        res.end()
        return
    }
  }

  /** Pauses the scheduler; `wait` returns once the running requests finished (or the engine died). */
  private async pauseEngine(replica: SimReplica, e: SimEngine, mode: PauseMode): Promise<void> {
    e.pause(mode)
    if (mode !== 'wait') return
    while (!this.closed && replica.engine === e && !e.dead && !e.drained) {
      await new Promise((r) => setTimeout(r, 5))
      this.advance()
    }
  }

  private sendServerInfo(replica: SimReplica, json: boolean, res: ServerResponse): void {
    const c = replica.config
    const config = {
      model_config: {
        model: c.model.name,
        served_model_name: c.model.name,
        max_model_len: c.maxModelLen,
        enable_sleep_mode: this.enableSleepMode,
      },
      cache_config: {
        block_size: BLOCK_SIZE_TOKENS,
        gpu_memory_utilization: c.gpuMemoryUtilization,
        num_gpu_blocks: replica.sizing.numGpuBlocks,
      },
      parallel_config: { tensor_parallel_size: c.tensorParallelSize },
      scheduler_config: { max_num_seqs: c.maxNumSeqs, max_num_batched_tokens: c.maxNumBatchedTokens },
    }
    const text = `model='${c.model.name}', max_seq_len=${c.maxModelLen}, tensor_parallel_size=${c.tensorParallelSize}, enable_sleep_mode=${this.enableSleepMode ? 'True' : 'False'}, gpu_memory_utilization=${c.gpuMemoryUtilization}`
    sendJson(res, 200, {
      vllm_config: json ? config : text,
      vllm_env: { VLLM_SERVER_DEV_MODE: true },
      system_env: { gpu_models: c.gpu.name },
    })
  }

  // --- control API ----------------------------------------------------------------------------

  private handleControl(req: IncomingMessage, res: ServerResponse): void {
    try {
      this.routeControl(req, res)
    } catch (err) {
      sendJson(res, 400, { error: `bad request: ${(err as Error).message}` })
    }
  }

  private routeControl(req: IncomingMessage, res: ServerResponse): void {
    this.advance()
    const url = new URL(req.url ?? '/', 'http://x')
    const q = url.searchParams
    if (req.method === 'GET') {
      switch (url.pathname) {
        case '/sim/gpus':
          sendJson(res, 200, { t: this.fleet.now, gpus: this.fleet.gpuReadings() })
          return
        case '/sim/events': {
          const after = Number(q.get('after') ?? 0)
          sendJson(res, 200, { seq: this.seq, events: this.events.filter((e) => e.seq > after) })
          return
        }
        case '/sim/labels':
          sendJson(res, 200, { labels: this.labels })
          return
        case '/sim/state':
          sendJson(res, 200, {
            t: this.fleet.now,
            speed: this.speed,
            replicas: this.fleet.replicas.map((r) => ({
              name: r.name,
              url: this.urls[r.name],
              phase: r.phase,
              exitCode: r.exitCode,
              restarts: r.restarts,
            })),
          })
          return
      }
    }
    if (req.method === 'POST' && (url.pathname === '/sim/faults' || url.pathname === '/sim/restart')) {
      readBody(req)
        .then((text) => {
          const body = text.trim() === '' ? {} : (JSON.parse(text) as Record<string, unknown>)
          if (url.pathname === '/sim/faults') {
            const spec = this.fleet.inject({ atMs: this.fleet.now, ...body } as FaultSpecInput)
            sendJson(res, 200, { injected: spec })
          } else {
            const name = String(body.replica ?? q.get('replica') ?? 'r0')
            this.fleet.replica(name).restart(this.fleet.now)
            sendJson(res, 200, { restarted: name })
          }
        })
        .catch((err: unknown) => sendJson(res, 400, { error: (err as Error).message }))
      return
    }
    sendJson(res, 404, { error: `no such endpoint: ${req.method} ${url.pathname}` })
  }
}

/** The development endpoints and their methods (vllm.md §2). */
const DEV_ROUTES: Record<string, string> = {
  '/pause': 'POST',
  '/resume': 'POST',
  '/is_paused': 'GET',
  '/sleep': 'POST',
  '/wake_up': 'POST',
  '/is_sleeping': 'GET',
  '/reset_prefix_cache': 'POST',
  '/server_info': 'GET',
}
const DEV_VERBS: Record<string, string> = {
  '/pause': 'pause generation',
  '/resume': 'resume generation',
  '/is_paused': 'fetch pause status',
}
const DEAD_MESSAGE = 'EngineCore encountered an issue. See stack trace (above) for the root cause.'

function isPauseMode(v: string): v is PauseMode {
  return v === 'abort' || v === 'wait' || v === 'keep'
}

/** FastAPI's bool query parsing. */
function truthy(v: string | null): boolean {
  return v !== null && ['1', 'true', 'on', 'yes', 't', 'y'].includes(v.toLowerCase())
}

function sendText(res: ServerResponse, status: number, text: string): void {
  if (res.headersSent) {
    res.end()
    return
  }
  res.writeHead(status, {
    'content-type': 'text/plain; charset=utf-8',
    'content-length': Buffer.byteLength(text),
  })
  res.end(text)
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  if (res.headersSent) {
    res.end()
    return
  }
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
  res.end(text)
}

function sendError(res: ServerResponse, status: number, message: string, type: string): void {
  sendJson(res, status, { object: 'error', message, type, param: null, code: status })
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    let size = 0
    req.on('data', (c: Buffer) => {
      size += c.length
      if (size > 8 * 1024 * 1024) {
        reject(new Error('request body over 8 MiB'))
        req.destroy()
        return
      }
      chunks.push(c)
    })
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')))
    req.on('error', reject)
  })
}

function listen(server: Server, host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) =>
      reject(new InvalidOptionError(`cannot listen on ${host}:${port}: ${err.message}`))
    server.once('error', onError)
    server.listen(port, host, () => {
      server.off('error', onError)
      resolve((server.address() as AddressInfo).port)
    })
  })
}

function closeServer(server: Server, sockets: Set<Socket>): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) {
      resolve()
      return
    }
    server.close(() => resolve())
    for (const s of sockets) s.destroy()
    sockets.clear()
  })
}
