/**
 * LogTail follows a file by name like `tail -F`: from its end, across partial writes, truncation
 * (copytruncate) and rotation (rename + new file), and waits for a file that does not exist yet.
 */
import { appendFileSync, mkdtempSync, renameSync, rmSync, truncateSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/errors.js'
import { LogTail } from '../../src/vllm/log-tail.js'
import { sleep } from '../helpers/fake-nvml.js'
import { until } from '../helpers/sim-http.js'

const tails: LogTail[] = []
const dirs: string[] = []
afterEach(async () => {
  await Promise.all(tails.splice(0).map((t) => t.stop()))
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true })
})

async function follow(path: string): Promise<{ tail: LogTail; lines: string[] }> {
  const lines: string[] = []
  const tail = new LogTail({ path, onLine: (l) => lines.push(l), pollMs: 10 })
  tails.push(tail)
  await tail.start()
  return { tail, lines }
}

function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'vllm-monitor-tail-'))
  dirs.push(d)
  return d
}

const linesAre = (lines: string[], want: string[]) => () =>
  lines.length >= want.length && JSON.stringify(lines) === JSON.stringify(want)

describe('LogTail', () => {
  it('starts at the end of an existing file and emits whole lines as they are appended', async () => {
    const path = join(tmp(), 'vllm.log')
    writeFileSync(path, 'old line\nold partial')
    const { lines } = await follow(path)
    appendFileSync(path, ' still old\nINFO a\n')
    appendFileSync(path, 'INFO b part')
    await sleep(50)
    appendFileSync(path, 'ial\n\u001b[32mINFO\u001b[0m coloured\n')
    await until('lines', linesAre(lines, [' still old', 'INFO a', 'INFO b partial', 'INFO coloured']), 3000)
  })

  it('starts over after truncation (copytruncate)', async () => {
    const path = join(tmp(), 'vllm.log')
    writeFileSync(path, '')
    const { tail, lines } = await follow(path)
    appendFileSync(path, 'one\ntwo\nthree\n')
    await until('3 lines', () => lines.length === 3, 3000)
    truncateSync(path, 0)
    await until('truncation seen', () => tail.stats.truncations === 1, 3000)
    appendFileSync(path, 'after\n')
    await until('after', linesAre(lines, ['one', 'two', 'three', 'after']), 3000)
  })

  it('reads the rotated file to its end, then follows the new one from its start', async () => {
    const dir = tmp()
    const path = join(dir, 'vllm.log')
    writeFileSync(path, '')
    const { tail, lines } = await follow(path)
    appendFileSync(path, 'before\n')
    await until('before', () => lines.length === 1, 3000)
    renameSync(path, join(dir, 'vllm.log.1'))
    // The writer still holds the old file for a moment.
    appendFileSync(join(dir, 'vllm.log.1'), 'last of old\n')
    writeFileSync(path, 'first of new\n')
    await until('rotation', linesAre(lines, ['before', 'last of old', 'first of new']), 3000)
    expect(tail.stats.rotations).toBe(1)
    appendFileSync(path, 'second of new\n')
    await until('more', () => lines.at(-1) === 'second of new', 3000)
  })

  it('waits for a file that does not exist yet and reads it from its start', async () => {
    const path = join(tmp(), 'later.log')
    const { lines } = await follow(path)
    await sleep(50)
    writeFileSync(path, 'INFO started\nINFO loading\n')
    await until('lines', linesAre(lines, ['INFO started', 'INFO loading']), 3000)
  })

  it('emits nothing after stop()', async () => {
    const path = join(tmp(), 'vllm.log')
    writeFileSync(path, '')
    const { tail, lines } = await follow(path)
    await tail.stop()
    appendFileSync(path, 'late\n')
    await sleep(100)
    expect(lines).toEqual([])
  })

  it('refuses invalid options', () => {
    expect(() => new LogTail({ path: '', onLine: () => {} })).toThrow(InvalidOptionError)
    expect(() => new LogTail({ path: 'x', onLine: 'no' as never })).toThrow(/onLine/)
    expect(() => new LogTail({ path: 'x', onLine: () => {}, pollMs: 0 })).toThrow(/pollMs/)
  })
})
