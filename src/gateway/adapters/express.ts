/**
 * Express 5 embedding: a standard `(req, res, next)` middleware over the node:http one. Handler
 * errors need no hook here: Express answers them (500 by default) and 'finish' records the status.
 */

import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Gateway, RequestHandle } from '../gateway.js'
import { checkGateway, type VllmContext } from './common.js'
import { admitNode, attach, type NodeAdapterOptions, resolveNodeOptions, trackResponse } from './node.js'

/** Express's `next`, structurally. */
export type NextFunction = (err?: unknown) => void

/**
 * Express middleware: admits the request, sets `req.vllm` and calls `next()`; answers 429/503
 * with `Retry-After` itself (the route never runs). To type `req.vllm` in routes, declare
 * `declare global { namespace Express { interface Request { vllm?: VllmContext } } }`.
 */
export function expressMiddleware<Req extends IncomingMessage = IncomingMessage>(
  gateway: Gateway,
  options?: NodeAdapterOptions<Req>,
): (req: Req & { vllm?: VllmContext }, res: ServerResponse, next: NextFunction) => void {
  checkGateway(gateway, 'expressMiddleware')
  const o = resolveNodeOptions(options, 'expressMiddleware')
  const admitted = (req: Req, res: ServerResponse, handle: RequestHandle, next: NextFunction): void => {
    trackResponse(res, handle, o.trackWrites)
    attach(req, handle)
    next()
  }
  const failed = (_req: Req, _res: ServerResponse, err: unknown, next: NextFunction): void => next(err)
  return function vllmExpressMiddleware(req, res, next): void {
    admitNode(gateway, req, res, next, o, admitted, failed)
  }
}
