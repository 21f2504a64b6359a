/** Option checks shared by the production actuators' factories: one message shape for all. */
import { InvalidOptionError } from '../errors.js'

export function optionError(owner: string, key: string, rule: string): InvalidOptionError {
  return new InvalidOptionError(`${owner}: option "${key}" must be ${rule}`)
}

export function checkObject(owner: string, options: unknown): Record<string, unknown> {
  if (options === null || typeof options !== 'object')
    throw new InvalidOptionError(`${owner}: options must be an object`)
  return options as Record<string, unknown>
}

export function positiveMs(owner: string, key: string, v: unknown, fallback: number): number {
  if (v === undefined) return fallback
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0)
    throw optionError(owner, key, 'a positive number of milliseconds')
  return v
}

export function httpUrl(owner: string, key: string, v: unknown): URL {
  let url: URL | null = null
  try {
    url = typeof v === 'string' ? new URL(v) : null
  } catch {}
  if (url === null || (url.protocol !== 'http:' && url.protocol !== 'https:'))
    throw optionError(owner, key, 'an http:// or https:// URL')
  return url
}

export function nonEmpty(owner: string, key: string, v: unknown): string {
  if (typeof v !== 'string' || v === '') throw optionError(owner, key, 'a non-empty string')
  return v
}
