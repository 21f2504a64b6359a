/**
 * Follows a log file by name, as `tail -F` does: starts at its end, emits each line appended, and
 * survives truncation (copytruncate: reads again from the start) and rotation (the name now points
 * at a new file: the old one is read to its end, then the new one from its start; a missing file is
 * waited for). Polls with `stat` rather than `fs.watch`, which misses events on network and overlay
 * file systems and across renames. Lines go through LineSplitter (ANSI colour and tqdm's CR
 * rewrites removed), so a vLLM log written to a TTY-style file reads like its plain form.
 */
import { type FileHandle, open, stat } from 'node:fs/promises'
import { InvalidOptionError } from '../errors.js'
import { LineSplitter } from './line-splitter.js'

export interface LogTailOptions {
  path: string
  onLine: (line: string) => void
  /** Poll period. Default 200 ms. */
  pollMs?: number
  /** Start at the end of a file that exists when started (default true; false: read it whole). */
  fromEnd?: boolean
  /** A read that failed (not a missing file): reported once per distinct message. */
  onError?: (err: Error) => void
}

export interface LogTailStats {
  lines: number
  bytes: number
  truncations: number
  rotations: number
}

const CHUNK = 64 * 1024

export class LogTail {
  readonly path: string
  readonly pollMs: number
  readonly stats: LogTailStats = { lines: 0, bytes: 0, truncations: 0, rotations: 0 }
  readonly #onLine: (line: string) => void
  readonly #onError: ((err: Error) => void) | undefined
  readonly #fromEnd: boolean
  #fh: FileHandle | null = null
  #ino = -1
  #dev = -1
  #pos = 0
  #splitter: LineSplitter
  #timer: NodeJS.Timeout | null = null
  #running = false
  #polling: Promise<void> | null = null
  #lastError = ''
  readonly #buf = Buffer.allocUnsafe(CHUNK)

  constructor(options: LogTailOptions) {
    if (options === null || typeof options !== 'object')
      throw new InvalidOptionError('options must be an object')
    if (typeof options.path !== 'string' || options.path === '') {
      throw new InvalidOptionError('options.path must be a non-empty string')
    }
    if (typeof options.onLine !== 'function')
      throw new InvalidOptionError('options.onLine must be a function')
    const pollMs = options.pollMs ?? 200
    if (typeof pollMs !== 'number' || !Number.isFinite(pollMs) || pollMs < 1) {
      throw new InvalidOptionError('options.pollMs must be a number >= 1')
    }
    this.path = options.path
    this.pollMs = pollMs
    this.#onLine = options.onLine
    this.#onError = options.onError
    this.#fromEnd = options.fromEnd ?? true
    this.#splitter = this.#newSplitter()
  }

  /** Opens the file (if it exists) at its end and starts following. Resolves once positioned. */
  async start(): Promise<void> {
    if (this.#running) return
    this.#running = true
    await this.#open(this.#fromEnd)
    this.#schedule()
  }

  /** Stops following; emits nothing after it resolves. A partial last line is dropped. */
  async stop(): Promise<void> {
    this.#running = false
    if (this.#timer !== null) clearTimeout(this.#timer)
    this.#timer = null
    await this.#polling
    await this.#close()
  }

  #newSplitter(): LineSplitter {
    return new LineSplitter((line) => {
      if (!this.#running) return
      this.stats.lines++
      try {
        this.#onLine(line)
      } catch (err) {
        this.#report(err as Error)
      }
    })
  }

  #schedule(): void {
    if (!this.#running) return
    this.#timer = setTimeout(() => {
      this.#polling = this.#poll()
        // #poll handles its own errors; this keeps a throwing callback from going unhandled.
        .catch((err: unknown) => this.#report(err as Error))
        .finally(() => {
          this.#polling = null
          this.#schedule()
        })
    }, this.pollMs)
    // The caller decides what keeps the process alive.
    this.#timer.unref()
  }

  async #open(atEnd: boolean): Promise<void> {
    try {
      const fh = await open(this.path, 'r')
      const st = await fh.stat()
      if (!this.#running) {
        // stop() ran while the file was opening: it could not close what it did not have yet.
        await fh.close()
        return
      }
      this.#fh = fh
      this.#ino = st.ino
      this.#dev = st.dev
      this.#pos = atEnd ? st.size : 0
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') this.#report(err as Error)
      this.#fh = null
    }
  }

  async #close(): Promise<void> {
    const fh = this.#fh
    this.#fh = null
    await fh?.close().catch(() => {})
  }

  async #poll(): Promise<void> {
    try {
      if (this.#fh === null) {
        // Missing so far (or gone after a rotation): a file that appears is new, read it whole.
        await this.#open(false)
        if (this.#fh === null) return
      }
      await this.#drain()
      const fh = this.#fh as FileHandle
      const size = (await fh.stat()).size
      if (size < this.#pos) {
        // Truncated in place (logrotate copytruncate, `: > file`): start over from its beginning.
        this.stats.truncations++
        this.#splitter.end()
        this.#splitter = this.#newSplitter()
        this.#pos = 0
        await this.#drain()
      }
      let byName: { ino: number; dev: number } | null = null
      try {
        byName = await stat(this.path)
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
      }
      if (byName !== null && (byName.ino !== this.#ino || byName.dev !== this.#dev)) {
        // Rotated: the name points at a new file. Finish the old one, then follow the new one.
        this.stats.rotations++
        await this.#drain()
        this.#splitter.end()
        this.#splitter = this.#newSplitter()
        await this.#close()
        await this.#open(false)
        if (this.#fh !== null) await this.#drain()
      }
      this.#lastError = ''
    } catch (err) {
      this.#report(err as Error)
    }
  }

  /** Reads from the position to the end of the open file, feeding the splitter. */
  async #drain(): Promise<void> {
    const fh = this.#fh
    if (fh === null) return
    for (;;) {
      if (!this.#running) return
      const { bytesRead } = await fh.read(this.#buf, 0, CHUNK, this.#pos)
      if (bytesRead === 0) return
      this.#pos += bytesRead
      this.stats.bytes += bytesRead
      // LineSplitter decodes UTF-8 across chunk boundaries; it keeps no reference to the buffer.
      this.#splitter.write(this.#buf.subarray(0, bytesRead))
    }
  }

  #report(err: Error): void {
    const msg = err?.message ?? String(err)
    if (msg === this.#lastError) return
    this.#lastError = msg
    try {
      this.#onError?.(err)
    } catch {
      // The caller's error handler failing is not ours to escalate.
    }
  }
}
