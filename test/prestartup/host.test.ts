import { createServer, type Server } from 'node:net'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import {
  assessDisk,
  assessShm,
  assessUlimit,
  checkDisk,
  checkPort,
  checkShm,
  checkUlimit,
  checkVllm,
  parseOpenFiles,
} from '../../src/prestartup/host.js'
import { fakeBin, freePort, GiB, tempDir } from './helpers.js'

const servers: Server[] = []
afterEach(() => {
  for (const s of servers.splice(0)) s.close()
})

describe('port', () => {
  it('passes a free port and fails one something listens on', async () => {
    const port = await freePort()
    expect(await checkPort('127.0.0.1', port)).toMatchObject({
      status: 'pass',
      detail: `127.0.0.1:${port} is free`,
    })
    const srv = createServer()
    servers.push(srv)
    await new Promise<void>((r) => srv.listen(port, '127.0.0.1', r))
    const r = await checkPort('127.0.0.1', port)
    expect(r.status).toBe('fail')
    expect(r.detail).toContain('already in use')
    expect(r.fix).toContain(`ss -ltnp 'sport = :${port}'`)
  })

  it('fails an address that is not this host', async () => {
    const r = await checkPort('203.0.113.77', 8000) // TEST-NET-3
    expect(r).toMatchObject({ status: 'fail', detail: '203.0.113.77 is not an address of this host' })
  })
})

describe('/dev/shm', () => {
  it('warns below 1 GiB with TP > 1 (Docker gives 64 MiB)', () => {
    const r = assessShm(64 * 2 ** 20, 2)
    expect(r.status).toBe('warn')
    expect(r.detail).toMatch(/^64 MiB: too small for TP 2/)
    expect(r.fix).toContain('--ipc=host')
    expect(assessShm(16 * GiB, 4).status).toBe('pass')
    expect(assessShm(64 * 2 ** 20, 1).status).toBe('pass')
  })

  it('fails a missing /dev/shm only when TP > 1', async () => {
    expect((await checkShm('/nonexistent/shm', 2)).status).toBe('fail')
    expect((await checkShm('/nonexistent/shm', 1)).status).toBe('pass')
    expect((await checkShm(await tempDir(), 2)).status).toMatch(/pass|warn/)
  })
})

describe('disk', () => {
  it('compares the free space with what is left to download', () => {
    expect(assessDisk(100 * GiB, 0, '/c').status).toBe('pass')
    expect(assessDisk(100 * GiB, 15 * GiB, '/c').status).toBe('pass')
    expect(assessDisk(17 * GiB, 15 * GiB, '/c').status).toBe('warn')
    const r = assessDisk(10 * GiB, 15 * GiB, '/c')
    expect(r).toMatchObject({ status: 'fail', detail: 'the download needs ≈15.0 GiB; 10.0 GiB free in /c' })
    expect(r.fix).toContain('HF_HOME')
  })

  it('measures the nearest existing parent of a cache directory not created yet', async () => {
    const dir = await tempDir()
    const r = await checkDisk(join(dir, 'hf', 'hub'), null, 'no --model given')
    expect(r.status).toBe('skip')
    expect(r.detail).toMatch(new RegExp(`^no --model given; \\d+\\.\\d GiB free in ${dir}$`))
  })
})

describe('ulimit -n', () => {
  const limits = [
    'Limit                     Soft Limit           Hard Limit           Units     ',
    'Max open files            1024                 1048576              files     ',
  ].join('\n')

  it('reads /proc/self/limits', async () => {
    expect(parseOpenFiles(limits)).toEqual({ soft: 1024, hard: 1048576 })
    expect(parseOpenFiles('Max open files unlimited unlimited files')).toEqual({
      soft: Number.POSITIVE_INFINITY,
      hard: Number.POSITIVE_INFINITY,
    })
    expect((await checkUlimit()).status).toMatch(/pass|warn/)
    expect((await checkUlimit('/nonexistent/limits')).status).toBe('skip')
  })

  it('passes when vLLM can raise the soft limit itself, warns when the hard limit is low', () => {
    expect(assessUlimit(1024, 1048576)).toMatchObject({
      status: 'pass',
      detail: 'soft 1024, hard 1048576: vLLM raises the soft limit to 65535 itself',
    })
    const r = assessUlimit(1024, 4096)
    expect(r.status).toBe('warn')
    expect(r.fix).toContain('nofile=65535:65535')
    expect(assessUlimit(65536, 65536).status).toBe('pass')
  })
})

describe('vllm installed', () => {
  it('passes with `vllm --version` on PATH', async () => {
    const bin = await fakeBin({ vllm: 'echo "INFO some log line"\necho 0.11.0' })
    expect(await checkVllm({ PATH: bin })).toMatchObject({
      status: 'pass',
      detail: 'vllm 0.11.0 (vllm on PATH)',
    })
  })

  it('passes when python3 imports it though there is no vllm on PATH', async () => {
    const bin = await fakeBin({ python3: 'echo 0.10.2' })
    const r = await checkVllm({ PATH: bin })
    expect(r.status).toBe('pass')
    expect(r.detail).toMatch(/^vllm 0\.10\.2 \(python3 imports it; no vllm on PATH/)
  })

  it('fails with the install hint when neither works', async () => {
    const bin = await fakeBin({ python3: 'echo "ModuleNotFoundError: No module named \'vllm\'" >&2; exit 1' })
    const r = await checkVllm({ PATH: bin })
    expect(r).toMatchObject({
      status: 'fail',
      detail: 'vllm is not installed: no vllm on PATH; python3 cannot import vllm',
    })
    expect(r.fix).toMatch(/^pip install vllm/)
  })
})
