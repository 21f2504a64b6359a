/**
 * Fastify 5 embedding: sheds in `onRequest` (before the body is parsed, the cheapest place),
 * records the status in `onResponse`, releases on `onRequestAbort`, and lets `onError` tell a
 * transport failure (connection refused, timeout) from any other error (gateways.md §11).
 *
 * The plugin carries the marks fastify-plugin would set (`skip-override`, display name, meta) so
 * its hooks reach every route of the instance it is registered on, without depending on either.
 */

import type { IncomingMessage, ServerResponse } from 'node:http'
import { InvalidArgumentError } from '../../errors.js'
import type { Gateway, RequestHandle } from '../gateway.js'
import type { Priority, Rejection } from '../types.js'
import {
  checkGateway,
  checkPriorityOption,
  classifyError,
  contextOf,
  errorMessage,
  errorStatus,
  isHandle,
  kJsonContentType,
  PRIORITY_HEADER,
  parsePriority,
  queue,
  rejectionBody,
  type VllmContext,
} from './common.js'
import { trackWrites } from './node.js'

/** The members of a Fastify request the plugin uses. Declare `vllm: VllmContext | null` on FastifyRequest. */
export interface FastifyRequestLike {
  headers: IncomingMessage['headers']
  raw: IncomingMessage
  vllm?: VllmContext | null
}

/** The members of a Fastify reply the plugin uses. */
export interface FastifyReplyLike {
  raw: ServerResponse
  statusCode: number
  code(statusCode: number): unknown
  header(name: string, value: string): unknown
  send(payload?: unknown): unknown
}

type HookDone = (err?: Error) => void

/** The members of a Fastify instance the plugin uses (methods, so Fastify's overloads fit). */
export interface FastifyInstanceLike {
  decorateRequest(name: string, value: unknown): unknown
  addHook(name: string, hook: (...args: never[]) => unknown): unknown
}

export interface FastifyAdapterOptions {
  /** A request's priority (default: the integer in its `x-priority` header, else 0). */
  priority?: (request: FastifyRequestLike) => Priority
  /** Count every write to `reply.raw` as a streamed chunk (default true). */
  trackWrites?: boolean
}

/** A Fastify plugin (callback style) with fastify-plugin's marks. */
export interface VllmFastifyPlugin {
  (instance: FastifyInstanceLike, opts: unknown, done: (err?: Error) => void): void
  [key: symbol]: unknown
}

export const FASTIFY_PLUGIN_NAME = 'vllm-monitor-gateway'

function headerPriority(request: FastifyRequestLike): Priority {
  return parsePriority(request.headers[PRIORITY_HEADER])
}

function shed(reply: FastifyReplyLike, r: Rejection): void {
  reply.code(r.status)
  reply.header('retry-after', String(r.retryAfterS))
  reply.header('content-type', kJsonContentType)
  reply.send(rejectionBody(r))
}

/**
 * `app.register(fastifyPlugin(gateway))`: admits every request of the instance in `onRequest`,
 * sets `request.vllm` (null when not admitted), answers 429/503 with `Retry-After` before any
 * route code runs, and ends the handle in `onResponse` / `onRequestAbort` / `onError`.
 */
export function fastifyPlugin(gateway: Gateway, options?: FastifyAdapterOptions): VllmFastifyPlugin {
  checkGateway(gateway, 'fastifyPlugin')
  if (options !== undefined && (options === null || typeof options !== 'object'))
    throw new InvalidArgumentError('fastifyPlugin: options must be an object')
  checkPriorityOption(options?.priority, 'fastifyPlugin')
  const priorityOf = options?.priority ?? headerPriority
  const writes = options?.trackWrites ?? true
  // Only requests waiting in the admission queue are here, so an abort can take them out of it.
  const waiting = new WeakMap<FastifyRequestLike, AbortController>()

  const admitted = (request: FastifyRequestLike, reply: FastifyReplyLike, handle: RequestHandle): void => {
    request.vllm = contextOf(handle)
    if (writes) trackWrites(reply.raw, handle)
  }

  // Callback-style hooks: an async hook costs a promise per request. Answering from onRequest
  // means calling reply.send() and never `done` (Hooks.md, "Respond to a request from a hook").
  const onRequest = (request: FastifyRequestLike, reply: FastifyReplyLike, done: HookDone): void => {
    let priority: Priority
    try {
      priority = priorityOf(request)
    } catch (err) {
      done(err as Error)
      return
    }
    const first = gateway.tryBegin(priority)
    if (isHandle(first)) {
      admitted(request, reply, first)
      done()
      return
    }
    if (first !== null) {
      shed(reply, first)
      return
    }
    const ac = new AbortController()
    waiting.set(request, ac)
    queue(gateway, priority, ac.signal).then(
      (r) => {
        waiting.delete(request)
        if (!isHandle(r)) {
          if (!ac.signal.aborted) shed(reply, r)
        } else if (ac.signal.aborted) r.abort()
        else {
          admitted(request, reply, r)
          done()
        }
      },
      (err: unknown) => {
        waiting.delete(request)
        // A client gone while queued: nothing is left to answer.
        if (!ac.signal.aborted) done(err as Error)
      },
    )
  }

  const onResponse = (request: FastifyRequestLike, reply: FastifyReplyLike, done: HookDone): void => {
    request.vllm?.handle.end(reply.statusCode)
    done()
  }

  const onRequestAbort = (request: FastifyRequestLike, done: HookDone): void => {
    if (request.vllm) request.vllm.handle.abort()
    else waiting.get(request)?.abort()
    done()
  }

  // Fastify answers the error next and onResponse records that status; a transport failure is
  // recorded here instead, so the replica's breaker learns what kind of failure it was.
  const onError = (
    request: FastifyRequestLike,
    _reply: FastifyReplyLike,
    error: Error,
    done: HookDone,
  ): void => {
    const kind = classifyError(error)
    if (request.vllm && (kind === 'connect-error' || kind === 'timeout')) {
      const status = errorStatus(error)
      request.vllm.handle.fail(kind, errorMessage(error), status !== null && status >= 400 ? status : 500)
    }
    done()
  }

  const plugin = ((instance: FastifyInstanceLike, _opts: unknown, done: HookDone) => {
    instance.decorateRequest('vllm', null)
    instance.addHook('onRequest', onRequest)
    instance.addHook('onResponse', onResponse)
    instance.addHook('onRequestAbort', onRequestAbort)
    instance.addHook('onError', onError)
    done()
  }) as VllmFastifyPlugin
  plugin[Symbol.for('skip-override')] = true
  plugin[Symbol.for('fastify.display-name')] = FASTIFY_PLUGIN_NAME
  plugin[Symbol.for('plugin-meta')] = { name: FASTIFY_PLUGIN_NAME, fastify: '5.x' }
  return plugin
}
