/**
 * The audit log: every mitigation decision, action and outcome as one JSON line, appended and
 * (by default) flushed to disk before `append()` resolves, so that an operator can reconstruct what
 * the monitor did even after the monitor itself crashed.
 *
 * Crash safety rests on three things: each entry is one `write()` of one complete line on an
 * O_APPEND handle; a file that does not end with '\n' when opened (the previous process died
 * mid-write) gets a '\n' first, so the torn line stays alone on its line; and `readAuditLog` skips
 * and counts lines that do not parse instead of failing on them.
 */

import type { FileHandle } from 'node:fs/promises'
import { mkdir, open, readFile, rename, stat } from 'node:fs/promises'
import { dirname } from 'node:path'
import { AuditLogError, InvalidArgumentError, InvalidOptionError } from '../errors.js'

export type AuditKind = 'decision' | 'action' | 'outcome' | 'skipped' | 'approval' | 'rollback'

export const AUDIT_KINDS: readonly AuditKind[] = [
  'decision',
  'action',
  'outcome',
  'skipped',
  'approval',
  'rollback',
]

export interface AuditEntry {
  /** Monitor clock, ms. */
  t: number
  /** Wall time, ISO 8601. */
  at: string
  kind: AuditKind
  /** The action id that ties a decision, its action and its outcome together. */
  id: string
  replica: string | null
  failureType: string | null
  strategy: string | null
  /** Anything else worth keeping (probability, outcome, detail); must survive JSON.stringify. */
  [k: string]: unknown
}

/**
 * What `append()` takes: an entry whose `at` defaults to now. `Omit` over an index signature keeps
 * only the signature, so the compiler checks little here; `append()` checks `t`, `kind` and `id`.
 */
export type AuditEntryInit = Omit<AuditEntry, 'at'> & { at?: string }

export interface AuditLogOptions {
  /** Size beyond which the log is renamed to `<path>.1` (replacing an older one) and restarted. Default 64 MiB. */
  maxBytes?: number
  /** fdatasync after every entry, so a resolved `append()` survives power loss. Default true. */
  fsync?: boolean
}

const kDefaultOptions = { maxBytes: 64 * 1024 * 1024, fsync: true } as const
const kKinds = new Set<string>(AUDIT_KINDS)
const kNewline = Buffer.from('\n')

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

/** An append-only JSON Lines audit log. Appends are serialized in call order. */
export class AuditLog {
  readonly path: string
  readonly #maxBytes: number
  readonly #fsync: boolean
  /** null after a failed reopen (rotation): the next append opens the path again. */
  #fh: FileHandle | null
  #sizeBytes: number
  /** The file may end mid-line (a failed or short write): the next entry starts with '\n'. */
  #torn = false
  #tail: Promise<void> = Promise.resolve()
  #closing: Promise<void> | null = null

  private constructor(path: string, fh: FileHandle, sizeBytes: number, o: Required<AuditLogOptions>) {
    this.path = path
    this.#fh = fh
    this.#sizeBytes = sizeBytes
    this.#maxBytes = o.maxBytes
    this.#fsync = o.fsync
  }

  /** Opens (creating it and its parent directories) the log at `path` for appending. */
  static async open(path: string, options: AuditLogOptions = {}): Promise<AuditLog> {
    if (typeof path !== 'string' || path.length === 0)
      throw new InvalidOptionError('AuditLog.open: the path must be a non-empty string')
    if (options === null || typeof options !== 'object')
      throw new InvalidOptionError('AuditLog.open: options must be an object')
    // An option given as undefined means the default (callers forward optional settings as they are).
    const given = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined))
    const o = { ...kDefaultOptions, ...given } as typeof kDefaultOptions & typeof options
    if (!Number.isInteger(o.maxBytes) || o.maxBytes < 1)
      throw new InvalidOptionError(
        `AuditLog.open: option "maxBytes" must be a positive integer, got ${String(o.maxBytes)}`,
      )
    if (typeof o.fsync !== 'boolean')
      throw new InvalidOptionError(`AuditLog.open: option "fsync" must be a boolean, got ${String(o.fsync)}`)
    let fh: FileHandle | undefined
    try {
      await mkdir(dirname(path), { recursive: true })
      fh = await open(path, 'a')
      const sizeBytes = (await fh.stat()).size
      const log = new AuditLog(path, fh, sizeBytes, o)
      if (sizeBytes > 0 && !(await endsWithNewline(path, sizeBytes))) {
        // The previous writer died mid-line; isolate that line now rather than glue an entry to it.
        await log.#writeRaw(kNewline)
      }
      return log
    } catch (err) {
      await fh?.close().catch(() => {})
      throw new AuditLogError(`audit log ${path} cannot be opened: ${describe(err)}`, { cause: err })
    }
  }

  /**
   * Appends one entry (`at` defaults to the wall time now). Resolves once it is written (and
   * flushed, with `fsync`); a failed write rejects with AuditLogError and later appends still work.
   */
  append(entry: AuditEntryInit): Promise<void> {
    if (this.#closing !== null)
      return Promise.reject(new AuditLogError(`audit log ${this.path}: append() after close()`))
    let line: Buffer
    try {
      // Serialized now, so that a caller mutating the entry after the call changes nothing.
      line = Buffer.from(`${encode(entry)}\n`)
    } catch (err) {
      return Promise.reject(err)
    }
    const done = this.#tail.then(() => this.#append(line))
    // The chain must survive a failed append; the caller sees the failure through `done`.
    this.#tail = done.catch(() => {})
    return done
  }

  /** Waits for pending appends, then closes the file. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= this.#tail.then(async () => {
      const fh = this.#fh
      this.#fh = null
      if (fh !== null) await fh.close()
    })
    return this.#closing
  }

  async #append(line: Buffer): Promise<void> {
    try {
      await this.#handle()
      const needed = line.length + (this.#torn ? 1 : 0)
      if (this.#sizeBytes > 0 && this.#sizeBytes + needed > this.#maxBytes) await this.#rotate()
      await this.#writeRaw(this.#torn ? Buffer.concat([kNewline, line]) : line)
    } catch (err) {
      if (err instanceof AuditLogError) throw err
      throw new AuditLogError(`audit log ${this.path}: cannot append: ${describe(err)}`, { cause: err })
    }
  }

  /** One write() of `bytes`, then fdatasync. */
  async #writeRaw(bytes: Buffer): Promise<void> {
    const fh = await this.#handle()
    // Until the write is known complete the file may end mid-line. A failed write() reports no
    // count, so assume the worst: a needless newline costs only an empty line, which readers skip.
    this.#torn = true
    const { bytesWritten } = await fh.write(bytes, 0, bytes.length)
    this.#sizeBytes += bytesWritten
    if (bytesWritten < bytes.length)
      throw new AuditLogError(
        `audit log ${this.path}: short write (${bytesWritten} of ${bytes.length} bytes)`,
      )
    this.#torn = false
    if (this.#fsync) await fh.datasync()
  }

  async #handle(): Promise<FileHandle> {
    if (this.#fh !== null) return this.#fh
    const fh = await open(this.path, 'a')
    try {
      this.#sizeBytes = (await fh.stat()).size
    } catch (err) {
      await fh.close().catch(() => {})
      throw err
    }
    // A reopened file is one we may not have written last; a stray '\n' only adds an empty line.
    this.#torn = this.#sizeBytes > 0
    this.#fh = fh
    return fh
  }

  async #rotate(): Promise<void> {
    // Renaming first keeps the old handle valid (it follows the inode) if the rename fails.
    await rename(this.path, `${this.path}.1`)
    const old = this.#fh
    this.#fh = null
    this.#sizeBytes = 0
    this.#torn = false
    await old?.close().catch(() => {})
    await this.#handle()
  }
}

function encode(entry: AuditEntryInit): string {
  if (entry === null || typeof entry !== 'object')
    throw new InvalidArgumentError('AuditLog.append: the entry must be an object')
  const { t, at, kind, id, replica, failureType, strategy, ...rest } = entry
  if (typeof t !== 'number' || !Number.isFinite(t))
    throw new InvalidArgumentError(`AuditLog.append: "t" must be a finite number, got ${String(t)}`)
  if (typeof kind !== 'string' || !kKinds.has(kind))
    throw new InvalidArgumentError(`AuditLog.append: unknown kind ${JSON.stringify(kind)}`)
  if (typeof id !== 'string' || id.length === 0)
    throw new InvalidArgumentError('AuditLog.append: "id" must be a non-empty string')
  if (at !== undefined && typeof at !== 'string')
    throw new InvalidArgumentError('AuditLog.append: "at" must be an ISO 8601 string')
  const full = {
    t,
    at: at ?? new Date().toISOString(),
    kind,
    id,
    replica: nullable('replica', replica),
    failureType: nullable('failureType', failureType),
    strategy: nullable('strategy', strategy),
    ...rest,
  }
  try {
    return JSON.stringify(full)
  } catch (err) {
    // BigInt or a cycle: the caller's bug, reported before anything reaches the file.
    throw new InvalidArgumentError(`AuditLog.append: the entry cannot be serialized: ${describe(err)}`, {
      cause: err,
    })
  }
}

function nullable(name: string, v: unknown): string | null {
  if (v === undefined || v === null) return null
  if (typeof v !== 'string')
    throw new InvalidArgumentError(`AuditLog.append: "${name}" must be a string or null`)
  return v
}

async function endsWithNewline(path: string, sizeBytes: number): Promise<boolean> {
  // The append handle is write-only; a short-lived read handle looks at the last byte.
  const fh = await open(path, 'r')
  try {
    const { bytesRead, buffer } = await fh.read(Buffer.alloc(1), 0, 1, sizeBytes - 1)
    return bytesRead === 1 && buffer[0] === 0x0a
  } finally {
    await fh.close()
  }
}

function isEntry(v: unknown): v is AuditEntry {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return false
  const e = v as Record<string, unknown>
  return typeof e.t === 'number' && typeof e.id === 'string' && typeof e.kind === 'string'
}

/**
 * Reads every entry of the log at `path`, oldest first. Lines that do not parse as an entry (a
 * write cut short by a crash) are skipped and counted in `torn`; empty lines are ignored.
 */
export async function readAuditLog(path: string): Promise<{ entries: AuditEntry[]; torn: number }> {
  let text: string
  try {
    if (!(await stat(path)).isFile()) throw new Error('not a regular file')
    text = await readFile(path, 'utf8')
  } catch (err) {
    throw new AuditLogError(`audit log ${path} cannot be read: ${describe(err)}`, { cause: err })
  }
  const entries: AuditEntry[] = []
  let torn = 0
  for (const line of text.split('\n')) {
    if (line.length === 0) continue
    let v: unknown
    try {
      v = JSON.parse(line)
    } catch {
      torn++
      continue
    }
    if (isEntry(v)) entries.push(v)
    else torn++
  }
  return { entries, torn }
}
