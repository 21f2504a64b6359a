export {
  classifyError,
  PRIORITY_HEADER,
  parsePriority,
  rejectionBody,
  settleError,
  settleThrown,
  type VllmContext,
} from './common.js'
export { expressMiddleware, type NextFunction } from './express.js'
export {
  FASTIFY_PLUGIN_NAME,
  type FastifyAdapterOptions,
  type FastifyInstanceLike,
  type FastifyReplyLike,
  type FastifyRequestLike,
  fastifyPlugin,
  type VllmFastifyPlugin,
} from './fastify.js'
export { type HonoAdapterOptions, type HonoContextLike, honoMiddleware, type VllmVariables } from './hono.js'
export {
  createHttpHandler,
  type NodeAdapterOptions,
  sendRejection,
  trackResponse,
  trackWrites,
  type VllmIncomingMessage,
} from './node.js'
