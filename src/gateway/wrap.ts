/**
 * `wrap(gateway, client)`: admission and request telemetry around an in-process client (an OpenAI
 * client, an engine-like object) without changing what it does or its type. Each call to a method
 * in the allow-list takes a slot first (rejected: AdmissionRejectedError, and the method is not
 * called), then the gateway follows the result: a value ends the request at once; a promise when
 * it settles; an async iterable (a stream) chunk by chunk, ending when iteration does.
 *
 * Everything else passes through. Nested objects come back as proxies created on first access and
 * cached, so `w.chat.completions === w.chat.completions`. Methods and getters run with the wrapped
 * object itself as `this`, so private fields (`#x`, WeakMap-branded like OpenAI's) keep working.
 *
 * Results keep their shape: a promise subclass (OpenAI's APIPromise with `withResponse()`) comes
 * back as a proxy of itself that sees `then`; a stream as a proxy of itself whose iterator counts.
 * A call that has to wait in the admission queue cannot return the method's own result yet: it
 * returns a thenable that is also async-iterable and forwards other method calls once admitted.
 */

import { InvalidArgumentError } from '../errors.js'
import { settleError } from './adapters/common.js'
import { AdmissionRejectedError } from './admission.js'
import { type Gateway, RequestHandle } from './gateway.js'
import type { Priority } from './types.js'

/** The methods `wrap` admits unless told otherwise. */
export const DEFAULT_WRAPPED_METHODS: readonly string[] = Object.freeze([
  'create',
  'createStream',
  'generate',
  'stream',
  'complete',
])

export interface WrapOptions {
  /** Names of the methods that go through admission (default DEFAULT_WRAPPED_METHODS). */
  methods?: readonly string[]
  /** Priority of each call, or a function of the method's name and arguments (default 0). */
  priority?: Priority | ((method: string, args: readonly unknown[]) => Priority)
}

type Usage = { promptTokens: number | null; completionTokens: number | null }
type AnyFn = (...args: unknown[]) => unknown
type Bag = Record<PropertyKey, unknown>

function num(x: unknown): number | null {
  return typeof x === 'number' && Number.isFinite(x) ? x : null
}

/** Token counts from an OpenAI-style `usage` (snake or camel case), undefined when absent. */
export function usageOf(value: unknown): Usage | undefined {
  if (value === null || typeof value !== 'object') return undefined
  const u = (value as { usage?: unknown }).usage
  if (u === null || typeof u !== 'object') return undefined
  const b = u as Bag
  const completionTokens = num(b.completion_tokens) ?? num(b.completionTokens) ?? num(b.output_tokens)
  const promptTokens = num(b.prompt_tokens) ?? num(b.promptTokens) ?? num(b.input_tokens)
  if (completionTokens === null && promptTokens === null) return undefined
  return { promptTokens, completionTokens }
}

function isObject(x: unknown): x is object {
  return x !== null && (typeof x === 'object' || typeof x === 'function')
}

function isThenable(x: unknown): x is PromiseLike<unknown> {
  return isObject(x) && typeof (x as { then?: unknown }).then === 'function'
}

function isAsyncIterable(x: unknown): x is AsyncIterable<unknown> {
  return isObject(x) && typeof (x as Bag)[Symbol.asyncIterator] === 'function'
}

// Built-ins whose methods check internal slots or brands (a proxy of a Map, an AbortSignal or a
// Buffer fails them, and fetch rejects a proxied signal): handed out as they are, never proxied.
const kOpaque: readonly (abstract new (...args: never[]) => unknown)[] = [
  Promise,
  Map,
  Set,
  WeakMap,
  WeakSet,
  WeakRef,
  Date,
  RegExp,
  Error,
  ArrayBuffer,
  SharedArrayBuffer,
  EventTarget,
  AbortController,
  Headers,
  Request,
  Response,
  URL,
  URLSearchParams,
  Blob,
  ReadableStream,
  WritableStream,
  TransformStream,
  TextEncoder,
  TextDecoder,
]
const kOpaqueByProto = new WeakMap<object, boolean>()

function isOpaque(value: object): boolean {
  const proto = Object.getPrototypeOf(value) as object | null
  if (proto === null || proto === Object.prototype || proto === Array.prototype) return false
  let opaque = kOpaqueByProto.get(proto)
  if (opaque === undefined) {
    opaque = ArrayBuffer.isView(value) || kOpaque.some((C) => value instanceof C)
    kOpaqueByProto.set(proto, opaque)
  }
  return opaque
}

/** A non-configurable, non-writable own data property: a proxy must return it unchanged. */
function isFixed(target: object, prop: PropertyKey): boolean {
  const d = Reflect.getOwnPropertyDescriptor(target, prop)
  return d !== undefined && d.configurable === false && d.writable === false
}

/**
 * A result nobody consumes would hold its slot forever (an APIPromise never awaited, a stream
 * dropped unread): once the object that stands for it is collected, the request is aborted.
 * Each registration is withdrawn as soon as someone consumes the result, so a result that is
 * being awaited or iterated is never aborted this way; ending an ended handle is a no-op.
 */
const kUnconsumed = new FinalizationRegistry<RequestHandle>((handle) => handle.abort())

/** Counts an iterator's chunks into `handle`, which ends with the iteration. */
class TrackedIterator implements AsyncIterableIterator<unknown> {
  #handle: RequestHandle
  #it: AsyncIterator<unknown>
  #usage: Usage | undefined = undefined

  constructor(handle: RequestHandle, it: AsyncIterator<unknown>) {
    this.#handle = handle
    this.#it = it
    // Dropped mid-way without return(): nothing will end the request.
    kUnconsumed.register(this, handle)
  }

  // Arrow fields: one pair per stream, none per chunk.
  #onStep = (step: IteratorResult<unknown>): IteratorResult<unknown> => {
    if (step.done) {
      this.#handle.end(200, this.#usage)
    } else {
      this.#handle.chunk()
      const u = usageOf(step.value)
      if (u !== undefined) this.#usage = u
    }
    return step
  }

  #onError = (err: unknown): never => {
    settleError(this.#handle, err)
    throw err
  }

  next(...args: [] | [unknown]): Promise<IteratorResult<unknown>> {
    let p: Promise<IteratorResult<unknown>>
    try {
      p = Promise.resolve(this.#it.next(...args))
    } catch (err) {
      return Promise.reject(this.#onError(err))
    }
    return p.then(this.#onStep, this.#onError)
  }

  /** The consumer stopped early (`break`): says nothing about the replica. */
  return(value?: unknown): Promise<IteratorResult<unknown>> {
    this.#handle.abort()
    const it = this.#it
    return typeof it.return === 'function'
      ? Promise.resolve(it.return(value))
      : Promise.resolve({ done: true, value } as IteratorResult<unknown>)
  }

  throw(err?: unknown): Promise<IteratorResult<unknown>> {
    this.#handle.abort()
    const it = this.#it
    return typeof it.throw === 'function' ? Promise.resolve(it.throw(err)) : Promise.reject(err)
  }

  [Symbol.asyncIterator](): this {
    return this
  }
}

/**
 * A stream as a proxy of itself: iterating it (or calling its own next/return/throw when it is an
 * iterator) goes through a TrackedIterator. Any other method called before iteration hands the
 * stream to code the gateway cannot follow (OpenAI's `tee()`, `toReadableStream()`): the request
 * ends there (with what that method's promise resolves to, when it returns one), so no slot leaks.
 */
function trackStream<S extends object>(handle: RequestHandle, stream: S): S {
  let tracked: TrackedIterator | null = null
  const own = () => {
    if (tracked === null) {
      kUnconsumed.unregister(proxy)
      tracked = new TrackedIterator(handle, stream as unknown as AsyncIterator<unknown>)
    }
    return tracked
  }
  const isIterator = typeof (stream as Bag).next === 'function'
  const proxy: S = new Proxy(stream, {
    get(target, prop) {
      if (prop === Symbol.asyncIterator)
        return () => {
          const it = Reflect.apply(
            (target as Bag)[Symbol.asyncIterator] as AnyFn,
            target,
            [],
          ) as AsyncIterator<unknown>
          if (it === (target as unknown)) return own()
          kUnconsumed.unregister(proxy)
          tracked = new TrackedIterator(handle, it)
          return tracked
        }
      if (isIterator && (prop === 'next' || prop === 'return' || prop === 'throw')) {
        const t = own()
        return prop === 'next' ? t.next.bind(t) : prop === 'return' ? t.return.bind(t) : t.throw.bind(t)
      }
      const value = Reflect.get(target, prop, target)
      if (typeof value !== 'function' || isFixed(target, prop)) return value
      return function (this: unknown, ...args: unknown[]) {
        const out = Reflect.apply(value, this === proxy ? target : this, args)
        if (tracked === null && !handle.ended) {
          kUnconsumed.unregister(proxy)
          if (isThenable(out)) observe(handle, out)
          else handle.end(200)
        }
        return out
      }
    },
  })
  kUnconsumed.register(proxy, handle, proxy)
  return proxy
}

/** Ends `handle` when `p` settles, without changing `p` (its rejection stays the caller's to handle). */
function observe(handle: RequestHandle, p: PromiseLike<unknown>): void {
  Promise.resolve(p).then(
    (v) => {
      if (handle.ended) return
      const status = (v as { status?: unknown } | null)?.status
      // A fetch Response (OpenAI's asResponse()): its status; a { data, response } pair: data's usage.
      if (typeof status === 'number' && v instanceof Response) handle.end(status)
      else handle.end(200, usageOf(v) ?? usageOf((v as { data?: unknown } | null)?.data))
    },
    (err: unknown) => settleError(handle, err),
  )
}

/** The value a call produced, as the gateway follows it. */
function settled(handle: RequestHandle, value: unknown): unknown {
  if (isAsyncIterable(value)) return trackStream(handle, value)
  handle.end(200, usageOf(value))
  return value
}

function track(handle: RequestHandle, out: unknown): unknown {
  if (isThenable(out)) {
    if (Object.getPrototypeOf(out) === Promise.prototype)
      return (out as Promise<unknown>).then(
        (v) => settled(handle, v),
        (err: unknown) => {
          settleError(handle, err)
          throw err
        },
      )
    return trackThenable(handle, out)
  }
  return settled(handle, out)
}

/**
 * A promise-like that is not a plain Promise (OpenAI's APIPromise) as a proxy of itself: awaiting
 * it goes through the gateway; its other methods run on the original, and a promise they return
 * ends the request when it settles (`withResponse()`, `asResponse()`).
 */
function trackThenable<P extends PromiseLike<unknown>>(handle: RequestHandle, thenable: P): P {
  let result: Promise<unknown> | null = null
  const outcome = () => {
    if (result === null) {
      kUnconsumed.unregister(proxy)
      result = Promise.resolve(
        thenable.then(
          (v) => settled(handle, v),
          (err: unknown) => {
            settleError(handle, err)
            throw err
          },
        ),
      )
    }
    return result
  }
  const proxy: P = new Proxy(thenable, {
    get(target, prop) {
      if (prop === 'then')
        return (onFulfilled?: (v: unknown) => unknown, onRejected?: (e: unknown) => unknown) =>
          outcome().then(onFulfilled, onRejected)
      if (prop === 'catch') return (onRejected?: (e: unknown) => unknown) => outcome().catch(onRejected)
      if (prop === 'finally') return (onFinally?: () => void) => outcome().finally(onFinally)
      const value = Reflect.get(target, prop, target)
      if (typeof value !== 'function' || isFixed(target, prop)) return value
      return function (this: unknown, ...args: unknown[]) {
        const out = Reflect.apply(value, this === proxy ? target : this, args)
        if (isThenable(out) && !handle.ended) {
          kUnconsumed.unregister(proxy)
          observe(handle, out)
        }
        return out
      }
    },
  })
  kUnconsumed.register(proxy, handle, proxy)
  return proxy
}

/**
 * What a call that had to queue returns: a thenable of the call's result, async-iterable when
 * the result is, whose other methods wait for the result and call it (`.withResponse()`).
 */
function deferred(admitted: Promise<{ value: unknown }>): object {
  let result: Promise<unknown> | null = null
  // Boxed so that a thenable result is not adopted before a caller asks for it.
  const outcome = () => {
    if (result === null) result = admitted.then((box) => box.value)
    return result
  }
  return new Proxy(admitted, {
    get(target, prop) {
      if (prop === 'then')
        return (onFulfilled?: (v: unknown) => unknown, onRejected?: (e: unknown) => unknown) =>
          outcome().then(onFulfilled, onRejected)
      if (prop === 'catch') return (onRejected?: (e: unknown) => unknown) => outcome().catch(onRejected)
      if (prop === 'finally') return (onFinally?: () => void) => outcome().finally(onFinally)
      if (prop === Symbol.asyncIterator) return () => deferredIterator(admitted)
      if (prop in Promise.prototype) return Reflect.get(target, prop, target)
      return (...args: unknown[]) =>
        admitted.then((box) => Reflect.apply((box.value as Bag)[prop] as AnyFn, box.value, args))
    },
  })
}

function deferredIterator(admitted: Promise<{ value: unknown }>): AsyncIterableIterator<unknown> {
  let it: AsyncIterator<unknown> | null = null
  const open = async () => {
    if (it === null) {
      const { value } = await admitted
      it = Reflect.apply((value as Bag)[Symbol.asyncIterator] as AnyFn, value, []) as AsyncIterator<unknown>
    }
    return it
  }
  return {
    async next(...args: [] | [unknown]) {
      return (await open()).next(...args)
    },
    async return(value?: unknown) {
      const i = await open()
      return typeof i.return === 'function' ? i.return(value) : { done: true, value }
    },
    [Symbol.asyncIterator]() {
      return this
    },
  }
}

class Wrapper {
  readonly #gateway: Gateway
  readonly #methods: ReadonlySet<string>
  readonly #priority: WrapOptions['priority']
  /** target → its proxy */
  readonly #proxies = new WeakMap<object, object>()
  /** proxy (object, function or admitted method) → what it stands for */
  readonly #originals = new WeakMap<object, object>()
  readonly #passed = new WeakMap<AnyFn, AnyFn>()
  readonly #admitted = new WeakMap<AnyFn, AnyFn>()
  readonly #objectHandler: ProxyHandler<object>
  readonly #functionHandler: ProxyHandler<AnyFn>

  constructor(gateway: Gateway, methods: ReadonlySet<string>, priority: WrapOptions['priority']) {
    this.#gateway = gateway
    this.#methods = methods
    this.#priority = priority
    this.#objectHandler = {
      get: (target, prop) => {
        // The target is the receiver: getters see the real object.
        const value = Reflect.get(target, prop, target)
        if (value === null || (typeof value !== 'object' && typeof value !== 'function')) return value
        if (isFixed(target, prop)) return value
        if (typeof value === 'function')
          return typeof prop === 'string' && this.#methods.has(prop)
            ? this.#admittedFn(value as AnyFn, prop)
            : this.#passedFn(value as AnyFn)
        return isOpaque(value) ? value : this.proxy(value)
      },
      set: (target, prop, value) => Reflect.set(target, prop, this.#original(value), target),
    }
    this.#functionHandler = {
      apply: (fn, thisArg, args) => Reflect.apply(fn, this.#original(thisArg), args),
    }
  }

  proxy<T extends object>(target: T): T {
    let p = this.#proxies.get(target)
    if (p === undefined) {
      p = new Proxy(target, this.#objectHandler)
      this.#proxies.set(target, p)
      this.#originals.set(p, target)
    }
    return p as T
  }

  #original(x: unknown): unknown {
    return isObject(x) ? (this.#originals.get(x) ?? x) : x
  }

  /** A member function that is not admitted: the same function, called on the real object. */
  #passedFn(fn: AnyFn): AnyFn {
    let p = this.#passed.get(fn)
    if (p === undefined) {
      p = new Proxy(fn, this.#functionHandler)
      this.#passed.set(fn, p)
      this.#originals.set(p, fn)
    }
    return p
  }

  #admittedFn(fn: AnyFn, name: string): AnyFn {
    let p = this.#admitted.get(fn)
    if (p === undefined) {
      p = new Proxy(fn, {
        apply: (f, thisArg, args: unknown[]) => this.#call(f, name, this.#original(thisArg), args),
      })
      this.#admitted.set(fn, p)
      this.#originals.set(p, fn)
    }
    return p
  }

  #call(fn: AnyFn, name: string, self: unknown, args: unknown[]): unknown {
    const pr = this.#priority
    const priority = typeof pr === 'function' ? pr(name, args) : (pr ?? 0)
    const first = this.#gateway.tryBegin(priority)
    if (first instanceof RequestHandle) return this.#invoke(first, fn, self, args)
    if (first !== null) throw new AdmissionRejectedError(first)
    return deferred(this.#gateway.begin(priority).then((h) => ({ value: this.#invoke(h, fn, self, args) })))
  }

  #invoke(handle: RequestHandle, fn: AnyFn, self: unknown, args: unknown[]): unknown {
    let out: unknown
    try {
      out = Reflect.apply(fn, self, args)
    } catch (err) {
      settleError(handle, err)
      throw err
    }
    return track(handle, out)
  }
}

/**
 * Wraps `client` so that calls to its allow-listed methods (anywhere below it: `client.chat
 * .completions.create`) are admitted by `gateway` and followed to their end; its type and
 * behaviour are otherwise unchanged. The gateway's replica choice is not passed to the client: a
 * wrapped client talks to wherever it was pointed; the gateway only admits and observes.
 */
export function wrap<T extends object>(gateway: Gateway, client: T, options: WrapOptions = {}): T {
  if (gateway === null || typeof gateway !== 'object' || typeof gateway.tryBegin !== 'function')
    throw new InvalidArgumentError('wrap: gateway must be a Gateway')
  if (!isObject(client)) throw new InvalidArgumentError('wrap: client must be an object')
  if (options === null || typeof options !== 'object')
    throw new InvalidArgumentError('wrap: options must be an object')
  const methods = options.methods ?? DEFAULT_WRAPPED_METHODS
  if (!Array.isArray(methods) || !methods.every((m) => typeof m === 'string'))
    throw new InvalidArgumentError('wrap: options.methods must be an array of method names')
  const pr = options.priority
  if (pr !== undefined && typeof pr !== 'function' && !(typeof pr === 'number' && !Number.isNaN(pr)))
    throw new InvalidArgumentError('wrap: options.priority must be a number or a function')
  return new Wrapper(gateway, new Set(methods), pr).proxy(client)
}
