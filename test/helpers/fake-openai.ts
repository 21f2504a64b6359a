/**
 * A minimal OpenAI-compatible upstream for the gateway's failure tests: deterministic bytes (fixed
 * ids and timestamps, so a response through the proxy can be compared byte for byte with a direct
 * one), a fixed latency before the response, SSE streaming of N chunks at an interval, and failure
 * modes: `ok`, `hang-after-first-chunk`, `die-mid-stream` (destroys the socket, and with
 * `killOnDie` closes the listener too, as a crashed process would), `500`; `refuse` is a closed port.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { freePort } from './net.js'

export type FakeMode = 'ok' | 'hang-after-first-chunk' | 'die-mid-stream' | '500' | 'refuse'

export interface FakeOpenAIOptions {
  /** Appears in every completion's text and in the `x-fake-upstream` header. */
  name?: string
  mode?: FakeMode
  /** ms before the response starts (default 0). */
  latencyMs?: number
  /** SSE chunks per streamed response, unless the request sets max_tokens (default 5). */
  chunks?: number
  /** ms between SSE chunks (default 5). */
  intervalMs?: number
  /** In `die-mid-stream`, also stop listening (the process is gone). */
  killOnDie?: boolean
}

export interface ReceivedRequest {
  method: string
  url: string
  headers: IncomingMessage['headers']
  body: Buffer
}

export interface FakeOpenAI {
  readonly name: string
  readonly url: string
  mode: FakeMode
  /** Every request received, in order. */
  readonly received: ReceivedRequest[]
  /** Requests whose response is still open. */
  open(): number
  /** Stops listening and destroys every connection (a crash). */
  kill(): Promise<void>
  close(): Promise<void>
}

const CREATED = 1_700_000_000

function sseChunk(chat: boolean, name: string, i: number, finish: string | null): string {
  const data = chat
    ? {
        id: 'chatcmpl-fake',
        object: 'chat.completion.chunk',
        created: CREATED,
        model: 'fake-model',
        choices: [
          {
            index: 0,
            delta: finish === null ? { content: ` ${name}-tok${i}` } : {},
            finish_reason: finish,
          },
        ],
      }
    : {
        id: 'cmpl-fake',
        object: 'text_completion',
        created: CREATED,
        model: 'fake-model',
        choices: [{ index: 0, text: finish === null ? ` ${name}-tok${i}` : '', finish_reason: finish }],
      }
  return `data: ${JSON.stringify(data)}\n\n`
}

function fullBody(chat: boolean, name: string, n: number): string {
  let text = ''
  for (let i = 0; i < n; i++) text += ` ${name}-tok${i}`
  const usage = { prompt_tokens: 3, completion_tokens: n, total_tokens: 3 + n }
  return JSON.stringify(
    chat
      ? {
          id: 'chatcmpl-fake',
          object: 'chat.completion',
          created: CREATED,
          model: 'fake-model',
          choices: [{ index: 0, message: { role: 'assistant', content: text }, finish_reason: 'length' }],
          usage,
        }
      : {
          id: 'cmpl-fake',
          object: 'text_completion',
          created: CREATED,
          model: 'fake-model',
          choices: [{ index: 0, text, logprobs: null, finish_reason: 'length' }],
          usage,
        },
  )
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

export async function startFakeOpenAI(options: FakeOpenAIOptions = {}): Promise<FakeOpenAI> {
  const name = options.name ?? 'fake'
  const latencyMs = options.latencyMs ?? 0
  const defaultChunks = options.chunks ?? 5
  const intervalMs = options.intervalMs ?? 5
  const received: ReceivedRequest[] = []
  const sockets = new Set<Socket>()
  const responses = new Set<ServerResponse>()
  let listening = false

  const state = { mode: options.mode ?? ('ok' as FakeMode) }

  const handle = async (req: IncomingMessage, res: ServerResponse, body: Buffer): Promise<void> => {
    received.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body })
    const path = (req.url ?? '/').split('?')[0]
    if (req.method === 'GET' && path === '/v1/models') {
      const text = JSON.stringify({ object: 'list', data: [{ id: 'fake-model', object: 'model' }] })
      res.writeHead(200, { 'content-type': 'application/json', 'x-fake-upstream': name })
      res.end(text)
      return
    }
    const chat = path === '/v1/chat/completions'
    if (req.method !== 'POST' || (!chat && path !== '/v1/completions')) {
      res.writeHead(404, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ detail: 'Not Found' }))
      return
    }
    let parsed: { stream?: unknown; max_tokens?: unknown } = {}
    try {
      parsed = JSON.parse(body.toString('utf8')) as typeof parsed
    } catch {
      res.writeHead(400, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ error: { message: 'bad json', type: 'BadRequestError', code: 400 } }))
      return
    }
    if (latencyMs > 0) await sleep(latencyMs)
    if (res.destroyed) return
    const mode = state.mode
    if (mode === '500') {
      res.writeHead(500, { 'content-type': 'application/json', 'x-fake-upstream': name })
      res.end(
        JSON.stringify({ error: { message: 'internal error', type: 'InternalServerError', code: 500 } }),
      )
      return
    }
    const n =
      typeof parsed.max_tokens === 'number' && Number.isInteger(parsed.max_tokens) && parsed.max_tokens > 0
        ? parsed.max_tokens
        : defaultChunks
    if (parsed.stream !== true) {
      if (mode === 'die-mid-stream') {
        await die(res)
        return
      }
      if (mode === 'hang-after-first-chunk') return // never answers
      const text = fullBody(chat, name, n)
      res.writeHead(200, {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(text),
        'x-fake-upstream': name,
      })
      res.end(text)
      return
    }
    res.writeHead(200, {
      'content-type': 'text/event-stream',
      'cache-control': 'no-cache',
      'x-fake-upstream': name,
    })
    res.flushHeaders()
    for (let i = 0; i < n; i++) {
      if (res.destroyed) return
      res.write(sseChunk(chat, name, i, null))
      if (i === 0 && mode === 'hang-after-first-chunk') return // the connection stays open, silent
      if (mode === 'die-mid-stream' && i + 1 >= Math.max(1, Math.floor(n / 2))) {
        await sleep(intervalMs)
        await die(res)
        return
      }
      await sleep(intervalMs)
    }
    if (res.destroyed) return
    res.write(sseChunk(chat, name, n, 'length'))
    res.end('data: [DONE]\n\n')
  }

  const die = async (res: ServerResponse): Promise<void> => {
    res.socket?.destroy()
    if (options.killOnDie === true) await kill()
  }

  const server: Server = createServer((req, res) => {
    responses.add(res)
    res.on('close', () => responses.delete(res))
    const parts: Buffer[] = []
    req.on('data', (c: Buffer) => parts.push(c))
    req.on('end', () => {
      handle(req, res, Buffer.concat(parts)).catch(() => res.destroy())
    })
  })
  server.on('connection', (s) => {
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
  })

  let url: string
  if (state.mode === 'refuse') {
    url = `http://127.0.0.1:${await freePort()}`
  } else {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(0, '127.0.0.1', () => resolve())
    })
    listening = true
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  }

  const kill = async (): Promise<void> => {
    if (!listening) return
    listening = false
    const closed = new Promise<void>((r) => server.close(() => r()))
    for (const s of sockets) s.destroy()
    await closed
  }

  return {
    name,
    url,
    get mode() {
      return state.mode
    },
    set mode(m: FakeMode) {
      state.mode = m
    },
    received,
    open: () => responses.size,
    kill,
    close: kill,
  }
}
