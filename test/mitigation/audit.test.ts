import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { open } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest'
import { AuditLogError, InvalidArgumentError, InvalidOptionError } from '../../src/errors.js'
import { type AuditEntry, AuditLog, readAuditLog } from '../../src/mitigation/audit.js'

const dir = mkdtempSync(join(tmpdir(), 'vllm-monitor-audit-'))
let n = 0
const fresh = () => join(dir, `log-${++n}`, 'audit.jsonl')

afterAll(() => rmSync(dir, { recursive: true, force: true }))
afterEach(() => vi.restoreAllMocks())

/** A complete entry whose keys are in the order the log writes them, so its JSON is the line. */
function entry(id: string, extra: Record<string, unknown> = {}): AuditEntry {
  return {
    t: 1_000,
    at: '2026-01-01T00:00:00.000Z',
    kind: 'action',
    id,
    replica: 'r0',
    failureType: 'kv-exhaustion',
    strategy: 'cap-admission',
    ...extra,
  }
}

const lineBytes = (e: AuditEntry) => Buffer.byteLength(`${JSON.stringify(e)}\n`)

describe('AuditLog', () => {
  it('writes entries that read back as they were given, extra fields included', async () => {
    const path = fresh()
    const log = await AuditLog.open(path)
    const decision = entry('a1', { kind: 'decision', probability: 0.93, reason: 'kv 97 %\nrising' })
    const outcome = entry('a1', { kind: 'outcome', outcome: 'SUCCESS', actions: ['cap r0 at 12'] })
    await log.append(decision)
    await log.append(outcome)
    await log.close()
    expect(await readAuditLog(path)).toEqual({ entries: [decision, outcome], torn: 0 })
    expect(readFileSync(path, 'utf8').split('\n')).toHaveLength(3)
  })

  it('stamps the wall time and fills absent replica, failure type and strategy with null', async () => {
    const path = fresh()
    const log = await AuditLog.open(path, { fsync: false })
    const before = Date.now()
    await log.append({ t: 5, kind: 'skipped', id: 'a2' })
    await log.close()
    const [e] = (await readAuditLog(path)).entries
    expect(e).toMatchObject({
      t: 5,
      kind: 'skipped',
      id: 'a2',
      replica: null,
      failureType: null,
      strategy: null,
    })
    expect(Date.parse(e!.at)).toBeGreaterThanOrEqual(before - 1)
  })

  it('keeps call order when many appends are in flight at once', async () => {
    const path = fresh()
    const log = await AuditLog.open(path)
    const ids = Array.from({ length: 100 }, (_, i) => `a${i}`)
    await Promise.all(ids.map((id) => log.append(entry(id))))
    await log.close()
    expect((await readAuditLog(path)).entries.map((e) => e.id)).toEqual(ids)
  })

  it('records the entry as it was when append() was called, not as it is later', async () => {
    const path = fresh()
    const log = await AuditLog.open(path, { fsync: false })
    const e = entry('a3')
    const p = log.append(e)
    e.replica = 'changed'
    await p
    await log.close()
    expect((await readAuditLog(path)).entries[0]!.replica).toBe('r0')
  })

  it('rotates to <path>.1 once the next entry would pass maxBytes', async () => {
    const path = fresh()
    const size = lineBytes(entry('a0'))
    const log = await AuditLog.open(path, { maxBytes: 2 * size + 10, fsync: false })
    for (const id of ['a0', 'a1', 'a2', 'a3']) await log.append(entry(id))
    await log.close()
    expect((await readAuditLog(`${path}.1`)).entries.map((e) => e.id)).toEqual(['a0', 'a1'])
    expect((await readAuditLog(path)).entries.map((e) => e.id)).toEqual(['a2', 'a3'])
  })

  it('counts the bytes already in a reopened file toward maxBytes', async () => {
    const path = fresh()
    const size = lineBytes(entry('a0'))
    const first = await AuditLog.open(path, { fsync: false })
    await first.append(entry('a0'))
    await first.close()
    const second = await AuditLog.open(path, { maxBytes: size + 10, fsync: false })
    await second.append(entry('a1'))
    await second.close()
    expect((await readAuditLog(`${path}.1`)).entries.map((e) => e.id)).toEqual(['a0'])
    expect((await readAuditLog(path)).entries.map((e) => e.id)).toEqual(['a1'])
  })

  it('fails to open with an AuditLogError naming the path when a parent is a regular file', async () => {
    const file = join(dir, 'plain-file')
    writeFileSync(file, 'x')
    const path = join(file, 'sub', 'audit.jsonl')
    const err = await AuditLog.open(path).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(AuditLogError)
    expect((err as AuditLogError).code).toBe('VLLM_MONITOR_AUDIT_LOG')
    expect((err as Error).message).toContain(path)
  })

  it('rejects options it cannot honour, naming the option', async () => {
    await expect(AuditLog.open(fresh(), { maxBytes: 0 })).rejects.toThrow(
      new InvalidOptionError('AuditLog.open: option "maxBytes" must be a positive integer, got 0'),
    )
    await expect(AuditLog.open(fresh(), { fsync: 'yes' as never })).rejects.toThrow(
      new InvalidOptionError('AuditLog.open: option "fsync" must be a boolean, got yes'),
    )
  })

  it('rejects a malformed or unserializable entry before writing anything', async () => {
    const path = fresh()
    const log = await AuditLog.open(path, { fsync: false })
    await expect(log.append(entry('a0', { kind: 'whatever' }))).rejects.toBeInstanceOf(InvalidArgumentError)
    await expect(log.append(entry(''))).rejects.toBeInstanceOf(InvalidArgumentError)
    await expect(log.append(entry('a1', { big: 1n }))).rejects.toBeInstanceOf(InvalidArgumentError)
    await expect(log.append(entry('a2', { replica: 0 }))).rejects.toBeInstanceOf(InvalidArgumentError)
    await log.close()
    expect(statSync(path).size).toBe(0)
  })

  it('takes an option given as undefined for its default', async () => {
    const log = await AuditLog.open(fresh(), { maxBytes: undefined, fsync: undefined })
    await log.append(entry('a0'))
    await log.close()
  })

  it('refuses appends after close()', async () => {
    const log = await AuditLog.open(fresh())
    await log.close()
    await expect(log.append(entry('a0'))).rejects.toBeInstanceOf(AuditLogError)
    await expect(log.close()).resolves.toBeUndefined()
  })

  describe('when a write fails', () => {
    async function fileHandlePrototype() {
      const fh = await open(join(dir, 'proto'), 'w')
      const proto = Object.getPrototypeOf(fh) as { write: (...args: unknown[]) => Promise<unknown> }
      await fh.close()
      return proto
    }

    it('rejects that append with an AuditLogError and keeps appending afterwards', async () => {
      const path = fresh()
      const log = await AuditLog.open(path)
      const proto = await fileHandlePrototype()
      vi.spyOn(proto, 'write').mockRejectedValueOnce(
        Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' }),
      )
      const err = await log.append(entry('lost')).catch((e: unknown) => e)
      expect(err).toBeInstanceOf(AuditLogError)
      expect((err as Error).message).toContain('ENOSPC')
      await log.append(entry('kept'))
      await log.close()
      expect(await readAuditLog(path)).toEqual({ entries: [entry('kept')], torn: 0 })
    })

    it('isolates a line cut short by a short write, so the next entry still parses', async () => {
      const path = fresh()
      const log = await AuditLog.open(path)
      await log.append(entry('a0'))
      const proto = await fileHandlePrototype()
      const realWrite = proto.write
      vi.spyOn(proto, 'write').mockImplementationOnce(function (this: unknown, buf, offset, length) {
        return realWrite.call(this, buf, offset, Math.floor((length as number) / 2))
      })
      await expect(log.append(entry('cut'))).rejects.toThrow(/short write/)
      await log.append(entry('a2'))
      await log.close()
      const read = await readAuditLog(path)
      expect(read.entries.map((e) => e.id)).toEqual(['a0', 'a2'])
      expect(read.torn).toBe(1)
    })
  })

  it('starts on a fresh line when the file it opens ends mid-line', async () => {
    const path = fresh()
    const log0 = await AuditLog.open(path)
    await log0.close()
    writeFileSync(path, `${JSON.stringify(entry('a0'))}\n{"t":1,"at":"2026-`)
    const log = await AuditLog.open(path)
    await log.append(entry('a1'))
    await log.close()
    const read = await readAuditLog(path)
    expect(read.entries.map((e) => e.id)).toEqual(['a0', 'a1'])
    expect(read.torn).toBe(1)
  })

  it('survives a writer killed in the middle of a line', async () => {
    const path = fresh()
    const log0 = await AuditLog.open(path)
    await log0.close()
    // The child writes complete lines, then half a line, then waits to be killed: the torn line
    // is certain, unlike a kill timed against a write loop.
    const script = `
      import { openSync, writeSync } from 'node:fs'
      const [path, count] = process.argv.slice(-2)
      const fd = openSync(path, 'a')
      for (let i = 0; i < Number(count); i++) writeSync(fd, JSON.stringify(${JSON.stringify(entry('x'))}).replace('"x"', '"pre-' + i + '"') + '\\n')
      writeSync(fd, '{"t":99,"at":"2026-01-01T00:0')
      process.stdout.write('torn\\n')
      setInterval(() => {}, 60_000)
    `
    const child = spawn(process.execPath, ['--input-type=module', '-e', script, path, '5'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    })
    const [chunk] = (await once(child.stdout, 'data')) as [Buffer]
    expect(chunk.toString()).toBe('torn\n')
    child.kill('SIGKILL')
    const [, signal] = await once(child, 'exit')
    expect(signal).toBe('SIGKILL')

    const log = await AuditLog.open(path)
    await log.append(entry('post-0'))
    await log.append(entry('post-1'))
    await log.close()
    const read = await readAuditLog(path)
    expect(read.entries.map((e) => e.id)).toEqual([
      'pre-0',
      'pre-1',
      'pre-2',
      'pre-3',
      'pre-4',
      'post-0',
      'post-1',
    ])
    expect(read.torn).toBe(1)
  })
})

describe('readAuditLog', () => {
  it('skips and counts lines that are not entries, and ignores empty lines', async () => {
    const path = join(dir, 'mixed.jsonl')
    writeFileSync(
      path,
      ['', JSON.stringify(entry('a0')), '[1,2]', '{"t":', '', JSON.stringify(entry('a1')), ''].join('\n'),
    )
    expect(await readAuditLog(path)).toEqual({ entries: [entry('a0'), entry('a1')], torn: 2 })
  })

  it('fails with an AuditLogError naming the path when the file is missing', async () => {
    const path = join(dir, 'missing.jsonl')
    await expect(readAuditLog(path)).rejects.toThrow(AuditLogError)
    await expect(readAuditLog(path)).rejects.toThrow(path)
  })
})
