/**
 * Makes writes to stdout / stderr safe for a long-running command: when the reader goes away
 * (`| head`, a log shipper or `tee` that died, journald restarting) Node emits EPIPE on the stream,
 * which would be an uncaught error and take the command (and the vLLM it supervises) down.
 * Instead the stream is marked closed and later writes to it are dropped.
 */
const closed = new Set<NodeJS.WriteStream>()
let guarded = false

export function guardOutput(): void {
  if (guarded) return
  guarded = true
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', () => {
      closed.add(stream)
    })
  }
}

/** Writes unless the stream's reader has gone; never throws. */
export function safeWrite(stream: NodeJS.WriteStream, chunk: string | Uint8Array): void {
  if (closed.has(stream) || stream.destroyed) return
  try {
    stream.write(chunk)
  } catch {
    closed.add(stream)
  }
}
