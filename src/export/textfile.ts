/**
 * Writes an exposition for node_exporter's textfile collector
 * (`--collector.textfile.directory`), for hosts where Prometheus scrapes node_exporter rather than
 * the monitor. node_exporter reads every `*.prom` file in the directory on each scrape, so the file
 * is written under another name and renamed over the old one: rename(2) within one directory is
 * atomic, and a scrape sees the old file or the new one, never half of one.
 */
import { rename, unlink, writeFile } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import { InvalidOptionError } from '../errors.js'

// Writes of one path from this process run one after another: they share one temporary name.
const inFlight = new Map<string, Promise<void>>()

/**
 * Replaces `path` with `text` (Prometheus text format, e.g. `await metrics.metrics()`). `path`
 * must end in `.prom` and its directory must exist: the collector's directory is node_exporter's
 * configuration, so a missing one is a mistake to report, not to paper over.
 */
export function writePrometheusTextfile(path: string, text: string): Promise<void> {
  if (typeof path !== 'string' || !path.endsWith('.prom')) {
    return Promise.reject(
      new InvalidOptionError(
        `textfile path must end in .prom, found ${JSON.stringify(path)}: node_exporter's textfile collector only reads *.prom files`,
      ),
    )
  }
  if (typeof text !== 'string') {
    return Promise.reject(new InvalidOptionError(`textfile text must be a string, found ${typeof text}`))
  }
  const key = resolve(path)
  const run = (inFlight.get(key) ?? Promise.resolve()).then(() => replace(path, text))
  const settled = run.then(noop, noop)
  inFlight.set(key, settled)
  void settled.then(() => {
    if (inFlight.get(key) === settled) inFlight.delete(key)
  })
  return run
}

function noop(): void {}

async function replace(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp.${process.pid}`
  // The format requires a line feed after the last line; node_exporter rejects the file without one.
  const body = text.endsWith('\n') ? text : `${text}\n`
  try {
    await writeFile(tmp, body, { mode: 0o644 })
    await rename(tmp, path)
  } catch (err) {
    await unlink(tmp).catch(() => {})
    throw describe(err as NodeJS.ErrnoException, path)
  }
}

function describe(err: NodeJS.ErrnoException, path: string): Error {
  const dir = dirname(path)
  const why =
    err.code === 'ENOENT'
      ? `directory ${dir} does not exist (create node_exporter's --collector.textfile.directory first)`
      : err.code === 'EACCES' || err.code === 'EPERM'
        ? `no permission to write in ${dir}`
        : err.code === 'EISDIR'
          ? `${path} is a directory`
          : err.message
  const e = new Error(`cannot write the textfile ${path}: ${why}`, { cause: err }) as NodeJS.ErrnoException
  if (err.code !== undefined) e.code = err.code
  return e
}
