import { chmod, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/errors.js'
import { MonitorMetrics } from '../../src/export/registry.js'
import { writePrometheusTextfile } from '../../src/export/textfile.js'
import { makeCheckpoint, makeStatus, promtoolCheckMetrics } from './fixture.js'

let dir: string
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vllm-monitor-textfile-'))
})
afterEach(async () => {
  await rm(dir, { recursive: true, force: true })
})

describe('writePrometheusTextfile', () => {
  it('writes the exposition where node_exporter reads it, leaving no temporary file behind', async () => {
    const m = new MonitorMetrics()
    m.update(makeCheckpoint(), makeStatus())
    const text = await m.metrics()
    const path = join(dir, 'vllm_monitor.prom')
    await writePrometheusTextfile(path, text)
    expect(await readFile(path, 'utf8')).toBe(text)
    expect(await readdir(dir)).toEqual(['vllm_monitor.prom'])
    const { status, problems } = promtoolCheckMetrics(await readFile(path, 'utf8'))
    expect(status, problems.join('\n')).not.toBe(1)
  })

  it('replaces the previous file whole, by renaming a temporary file over it', async () => {
    const path = join(dir, 'vllm_monitor.prom')
    await writePrometheusTextfile(path, 'a 1\n')
    // A temporary file of this process that is left over from a crash is simply overwritten.
    await writeFile(`${path}.tmp.${process.pid}`, 'half a fi')
    await writePrometheusTextfile(path, 'a 2\n')
    expect(await readFile(path, 'utf8')).toBe('a 2\n')
    expect(await readdir(dir)).toEqual(['vllm_monitor.prom'])
  })

  it('ends the file with a line feed, as the text format requires', async () => {
    const path = join(dir, 'x.prom')
    await writePrometheusTextfile(path, '# TYPE a gauge\na 1')
    expect(await readFile(path, 'utf8')).toBe('# TYPE a gauge\na 1\n')
  })

  it('lets concurrent writes of one path finish in call order, each file whole', async () => {
    const path = join(dir, 'x.prom')
    const big = (n: number) => `${'# padding\n'.repeat(20_000)}a ${n}\n`
    await Promise.all([1, 2, 3, 4].map((n) => writePrometheusTextfile(path, big(n))))
    expect(await readFile(path, 'utf8')).toBe(big(4))
    expect(await readdir(dir)).toEqual(['x.prom'])
  })

  it('refuses a path that does not end in .prom, since node_exporter would never read it', async () => {
    const write = writePrometheusTextfile(join(dir, 'vllm_monitor.txt'), 'a 1\n')
    await expect(write).rejects.toThrow(InvalidOptionError)
    await expect(write).rejects.toThrow(/only reads \*\.prom files/)
    expect(await readdir(dir)).toEqual([])
  })

  it('does not create a missing directory, and says which one is missing', async () => {
    const missing = join(dir, 'textfile_collector')
    const write = writePrometheusTextfile(join(missing, 'vllm_monitor.prom'), 'a 1\n')
    await expect(write).rejects.toMatchObject({ code: 'ENOENT' })
    await expect(write).rejects.toThrow(`directory ${missing} does not exist`)
    expect(await readdir(dir)).toEqual([])
  })

  it('reports an unwritable directory and cleans up after a failed rename', async () => {
    const target = join(dir, 'taken.prom')
    await mkdir(target)
    await expect(writePrometheusTextfile(target, 'a 1\n')).rejects.toThrow(`${target} is a directory`)
    expect(await readdir(dir)).toEqual(['taken.prom'])
    if (process.getuid?.() === 0) return // root writes anywhere
    const ro = join(dir, 'ro')
    await mkdir(ro)
    await chmod(ro, 0o555)
    await expect(writePrometheusTextfile(join(ro, 'x.prom'), 'a 1\n')).rejects.toThrow(
      `no permission to write in ${ro}`,
    )
  })
})
