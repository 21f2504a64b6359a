/**
 * Splits a child process's output into the lines a terminal would show. Chunks end anywhere (in a
 * line, in a UTF-8 sequence, between the CR and the LF of a CRLF), tqdm progress bars rewrite their
 * line with a lone CR, and vLLM colours its output on a TTY or with `VLLM_LOGGING_COLOR=1`
 * (vllm.md §3): a line is emitted at LF, with the text after its last lone CR and without ANSI
 * escapes, so a progress bar yields only its final frame instead of hundreds of lines.
 */
import { StringDecoder } from 'node:string_decoder'

/** CSI (`ESC [ ... final`), OSC (`ESC ] ... BEL|ST`) and two-byte escapes. */
// biome-ignore lint/suspicious/noControlCharactersInRegex: matching escape sequences is the point
const ANSI = /\u001b(?:\[[0-?]*[ -/]*[@-~]|\][^\u0007\u001b]*(?:\u0007|\u001b\\)?|[@-Z\\-_])/g

export function stripAnsi(s: string): string {
  return s.includes('\u001b') ? s.replace(ANSI, '') : s
}

/** A line longer than this (a runaway repr, binary output) is cut into pieces of this size. */
export const MAX_LINE_CHARS = 64 * 1024

export class LineSplitter {
  #buf = ''
  /** The previous chunk ended with CR: a CRLF split across chunks, or a lone CR. */
  #pendingCr = false
  readonly #decoder = new StringDecoder('utf8')
  readonly #emit: (line: string) => void

  constructor(emit: (line: string) => void) {
    this.#emit = emit
  }

  write(chunk: Buffer | string): void {
    this.#feed(typeof chunk === 'string' ? chunk : this.#decoder.write(chunk))
  }

  /** The stream ended: emits what is left of an unterminated last line. */
  end(): void {
    this.#feed(this.#decoder.end())
    this.#pendingCr = false
    if (this.#buf !== '') this.#flush()
  }

  #feed(s: string): void {
    const n = s.length
    let from = 0
    if (this.#pendingCr && n > 0) {
      this.#pendingCr = false
      if (s.charCodeAt(0) === 10) {
        this.#flush()
        from = 1
      } else this.#buf = ''
    }
    while (from < n) {
      const nl = s.indexOf('\n', from)
      const end = nl === -1 ? n : nl
      const lastCr = end > from ? s.lastIndexOf('\r', end - 1) : -1
      if (lastCr < from) this.#buf += s.slice(from, end)
      else if (lastCr === end - 1) {
        // CR at the end of the segment: CRLF when an LF follows, else undecided until the next chunk.
        // lastIndexOf(_, -1) searches from 0: guard it, or a chunk opening with CR loses the buffer.
        const before = lastCr > from ? s.lastIndexOf('\r', lastCr - 1) : -1
        if (before >= from) this.#buf = s.slice(before + 1, lastCr)
        else this.#buf += s.slice(from, lastCr)
        if (nl === -1) this.#pendingCr = true
      } else this.#buf = s.slice(lastCr + 1, end)
      while (this.#buf.length > MAX_LINE_CHARS) {
        const head = this.#buf.slice(0, MAX_LINE_CHARS)
        this.#buf = this.#buf.slice(MAX_LINE_CHARS)
        this.#emit(stripAnsi(head))
      }
      if (nl === -1) break
      this.#flush()
      from = nl + 1
    }
  }

  #flush(): void {
    const line = this.#buf
    this.#buf = ''
    this.#emit(stripAnsi(line))
  }
}
