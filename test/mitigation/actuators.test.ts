/**
 * The production actuators: load shedding on the real AdmissionController, the picker as routing,
 * `--max-num-seqs` rewriting with a real VllmSupervisor running a harmless node process, co-tenants
 * from a fake nvidia-smi over real processes, and the webhook and Kubernetes scalers against
 * node:http servers.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, expect, it, vi } from 'vitest'
import {
  InvalidArgumentError,
  InvalidOptionError,
  MitigationError,
  NvidiaSmiError,
} from '../../src/errors.js'
import { AdmissionController, AdmissionRejectedError } from '../../src/gateway/admission.js'
import { ReplicaPicker } from '../../src/gateway/picker.js'
import {
  kubernetesScaler,
  maxNumSeqsOf,
  processesFromNvidiaSmi,
  restartFromSupervisor,
  routingFromPicker,
  webhookScaler,
  withMaxNumSeqs,
} from '../../src/mitigation/actuators.js'
import type { ScaleRequest } from '../../src/mitigation/types.js'
import { isRunning } from '../../src/prestartup/processes.js'
import { VllmSupervisor } from '../../src/vllm/supervisor.js'
import { freePort } from '../helpers/net.js'

const cleanups: Array<() => unknown> = []
afterEach(async () => {
  vi.unstubAllEnvs()
  for (const c of cleanups.splice(0).reverse()) await c()
})

async function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 5_000): Promise<void> {
  const end = Date.now() + timeoutMs
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

interface Received {
  method: string
  url: string
  headers: http.IncomingHttpHeaders
  body: string
}

/** A node:http server answering with `answer`; every request is recorded. */
async function server(
  answer: (req: Received) => { status: number; body?: unknown } | null,
): Promise<{ url: string; got: Received[] }> {
  const got: Received[] = []
  const s = http.createServer((req, res) => {
    let body = ''
    req.setEncoding('utf8')
    req.on('data', (c: string) => {
      body += c
    })
    req.on('end', () => {
      const r: Received = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body }
      got.push(r)
      const a = answer(r)
      if (a === null) return // never answers
      const text = a.body === undefined ? '' : typeof a.body === 'string' ? a.body : JSON.stringify(a.body)
      res.writeHead(a.status, { 'content-type': 'application/json' })
      res.end(text)
    })
  })
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()))
  cleanups.push(
    () =>
      new Promise<void>((r) => {
        s.closeAllConnections()
        s.close(() => r())
      }),
  )
  return { url: `http://127.0.0.1:${(s.address() as AddressInfo).port}`, got }
}

const request: ScaleRequest = {
  replica: 'r0',
  failureType: 'queue-overflow',
  desiredReplicas: 3,
  reason: 'ScaleResources: queue-overflow p=0.9 in 30 s',
  probability: 0.9,
  timeToFailureS: 30,
}

describe('AdmissionController.shed (the ShedActuator)', () => {
  it('rejects requests below the priority at once with 429 and Retry-After, saturated or not', async () => {
    const ctl = new AdmissionController({ initialLimit: 10 })
    ctl.shed('r0', 0, 'ShedLoad: slo-violation')
    expect(ctl.shedBelow('r0')).toBe(0)
    expect(ctl.tryAcquire('r0', -1)).toBeNull()
    expect(ctl.tryAcquire('r0')).not.toBeNull()
    const err = await ctl.acquire('r0', -5).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(AdmissionRejectedError)
    expect((err as AdmissionRejectedError).rejection).toEqual({
      reason: 'overloaded',
      status: 429,
      retryAfterS: 1,
      message: 'replica r0 is shedding requests with priority < 0 (ShedLoad: slo-violation)',
    })
    await expect(ctl.acquire('r0', 0)).resolves.toMatchObject({ replica: 'r0' })
    expect(ctl.shedBelow('r1')).toBeNull()
    expect(ctl.tryAcquire('r1', -1)).not.toBeNull()
  })

  it('leaves requests already queued alone and admits everyone again after unshed', async () => {
    const ctl = new AdmissionController({ initialLimit: 4, minLimit: 1 })
    ctl.cap('r0', 1, 'test')
    const first = ctl.tryAcquire('r0')!
    const queued = ctl.acquire('r0', 1)
    ctl.shed('r0', 5, 'ShedLoad')
    await expect(ctl.acquire('r0', 1)).rejects.toBeInstanceOf(AdmissionRejectedError)
    first.success()
    await expect(queued).resolves.toMatchObject({ replica: 'r0' })
    ctl.release('r0')
    ctl.unshed('r0')
    expect(ctl.shedBelow('r0')).toBeNull()
    expect(ctl.tryAcquire('r0', 1)).not.toBeNull()
  })

  it('rejects a priority that is not a number', () => {
    const ctl = new AdmissionController()
    expect(() => ctl.shed('r0', Number.NaN, 'x')).toThrow(InvalidArgumentError)
    expect(() => ctl.shed('r0', Number.NaN, 'x')).toThrow('shed: belowPriority must be a number')
  })
})

describe('routingFromPicker', () => {
  it('sets the picker weight and reads it back (1 before any change)', () => {
    const picker = new ReplicaPicker()
    picker.update([
      {
        name: 'r0',
        url: 'http://r0',
        kvCacheUsage: 0,
        requestsWaiting: 0,
        requestsRunning: 0,
        stale: false,
        serving: true,
        risk: 0,
      },
    ])
    const routing = routingFromPicker(picker)
    expect(routing.weight('r0')).toBe(1)
    routing.setWeight('r0', 0.25)
    expect(picker.snapshot()[0]?.weight).toBe(0.25)
    expect(routing.weight('r0')).toBe(0.25)
    routing.setWeight('r9', 0)
    expect(routing.weight('r9')).toBe(0)
    expect(() => routing.setWeight('r0', -1)).toThrow(InvalidArgumentError)
  })
})

describe('--max-num-seqs in vLLM arguments', () => {
  const model = ['serve', 'meta-llama/Llama-3.1-8B-Instruct']
  it.each([
    [
      [...model, '--max-num-seqs', '128', '--port', '8000'],
      128,
      [...model, '--max-num-seqs', '64', '--port', '8000'],
    ],
    [[...model, '--max-num-seqs=128'], 128, [...model, '--max-num-seqs=64']],
    [[...model, '--max_num_seqs', '32'], 32, [...model, '--max_num_seqs', '64']],
    [[...model, '--port', '8000'], null, [...model, '--port', '8000', '--max-num-seqs', '64']],
    [
      [...model, '--max-num-seqs', '256', '--max-num-seqs=128'],
      128,
      [...model, '--max-num-seqs', '64', '--max-num-seqs=64'],
    ],
    [[...model, '--max-num-seqs', 'lots'], null, [...model, '--max-num-seqs', '64']],
  ])('reads %j as %s and rewrites it for 64', (args, current, rewritten) => {
    expect(maxNumSeqsOf(args)).toBe(current)
    expect(withMaxNumSeqs(args, 64)).toEqual(rewritten)
  })

  it('rejects a value that is not a positive integer', () => {
    expect(() => withMaxNumSeqs([], 0)).toThrow('withMaxNumSeqs: n must be a positive integer')
  })
})

describe('restartFromSupervisor', () => {
  // A harmless stand-in for vLLM: prints its arguments, then idles until SIGTERM.
  const script = 'console.log(JSON.stringify(process.argv.slice(1))); setInterval(() => {}, 1000)'

  function supervised() {
    const lines: string[] = []
    const sup = new VllmSupervisor({
      replica: 'r0',
      command: process.execPath,
      args: ['-e', script, '--', '--max-num-seqs', '128'],
      now: () => performance.now(),
      gracePeriodMs: 2_000,
      onOutput: (_stream, line) => lines.push(line),
    })
    cleanups.push(() => sup.stop())
    return { sup, lines }
  }

  it('restarts vLLM with --max-num-seqs rewritten, for this start and the later ones', async () => {
    const { sup, lines } = supervised()
    const restart = restartFromSupervisor(sup)
    expect(restart.maxNumSeqs()).toBe(128)
    sup.start(() => {})
    await until('the first start', () => lines.length === 1)
    const firstPid = sup.pid
    await restart.restart('RestartWithSmallerBatch: kv-exhaustion', { maxNumSeqs: 64 })
    expect(sup.pid).not.toBeNull()
    expect(sup.pid).not.toBe(firstPid)
    expect(sup.args).toEqual(['-e', script, '--', '--max-num-seqs', '64'])
    expect(restart.maxNumSeqs()).toBe(64)
    await until('the second start', () => lines.length === 2)
    expect(JSON.parse(lines[1]!)).toEqual(['--max-num-seqs', '64'])
    await restart.restart('RestartNCCL: network-failure')
    await until('the third start', () => lines.length === 3)
    expect(JSON.parse(lines[2]!)).toEqual(['--max-num-seqs', '64'])
  })

  it('rejects when no vLLM runs after the restart, and for a bad maxNumSeqs', async () => {
    const { sup } = supervised()
    const restart = restartFromSupervisor(sup)
    await expect(restart.restart('x')).rejects.toBeInstanceOf(MitigationError)
    await expect(restart.restart('x')).rejects.toThrow(/vLLM is not running after the restart/)
    await expect(restart.restart('x', { maxNumSeqs: 0.5 })).rejects.toThrow(
      'restart: overrides.maxNumSeqs must be a positive integer',
    )
  })
})

describe('processesFromNvidiaSmi', () => {
  const gpu0 = 'GPU-5e5d0a3c-9d4b-7f21-8c1e-2b3a4c5d6e7f'
  const gpu1 = 'GPU-0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9'

  function run(command: string, args: string[]): ChildProcess {
    const child = spawn(command, args, { stdio: 'ignore', detached: true })
    cleanups.push(() => {
      try {
        process.kill(-child.pid!, 'SIGKILL')
      } catch {}
    })
    return child
  }

  /** A fake nvidia-smi that checks its arguments and prints `rows`. */
  async function fakeNvidiaSmi(rows: string[], exitCode = 0): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), 'vllm-monitor-smi-'))
    cleanups.push(() => rm(dir, { recursive: true, force: true }))
    const path = join(dir, 'nvidia-smi')
    const q = '--query-compute-apps=pid,process_name,used_memory,gpu_uuid'
    await writeFile(
      path,
      [
        '#!/bin/sh',
        `if [ "$1" != "${q}" ] || [ "$2" != "--format=csv,noheader,nounits" ]; then echo "bad args: $*" >&2; exit 3; fi`,
        ...rows.map((r) => `echo '${r}'`),
        `exit ${exitCode}`,
      ].join('\n'),
    )
    await chmod(path, 0o755)
    return path
  }

  it("lists the other processes on the replica's GPUs, not its vLLM's, largest first, and ends one", async () => {
    const vllm = run('sh', ['-c', 'sleep 30 & wait']) // a vLLM with a worker of its own
    const small = run('sleep', ['31'])
    const big = run('sleep', ['32'])
    const elsewhere = run('sleep', ['33'])
    let worker = 0
    await until('the vLLM worker', async () => {
      const { readFile } = await import('node:fs/promises')
      const kids = await readFile(`/proc/${vllm.pid}/task/${vllm.pid}/children`, 'utf8').catch(() => '')
      worker = Number(kids.trim().split(' ')[0] || 0)
      return worker > 0
    })
    const path = await fakeNvidiaSmi([
      `${vllm.pid}, /usr/bin/python3, 70000, ${gpu0}`,
      `${worker}, /usr/bin/python3, 60000, ${gpu0}`,
      `${small.pid}, sleep, 512, ${gpu0}`,
      `${big.pid}, sleep, 4096, ${gpu0}`,
      `${big.pid}, sleep, 1024, ${gpu1}`,
      `${elsewhere.pid}, sleep, 9000, ${gpu1}`,
    ])
    const processes = processesFromNvidiaSmi({
      nvidiaSmiPath: path,
      gpuUuids: (r) => (r === 'r0' ? [gpu0] : [gpu1]),
      ownPids: (r) => (r === 'r0' ? [vllm.pid!] : []),
      graceMs: 1_000,
    })
    const list = await processes.cotenants('r0')
    expect(list).toEqual([
      { pid: big.pid, name: 'sleep', memoryUsedBytes: 4096 * 1_048_576 },
      { pid: small.pid, name: 'sleep', memoryUsedBytes: 512 * 1_048_576 },
    ])
    await expect(processes.terminate(big.pid!)).resolves.toBe(true)
    expect(await isRunning(big.pid!)).toBe(false)
    expect(await isRunning(vllm.pid!)).toBe(true)
    await expect(processes.terminate(elsewhere.pid!)).rejects.toThrow(
      `refusing to end pid ${elsewhere.pid}: the last co-tenant listing did not name it`,
    )
  })

  it('refuses to end a listed pid that does not run what nvidia-smi named (another PID namespace)', async () => {
    const stranger = run('sleep', ['34'])
    const path = await fakeNvidiaSmi([`${stranger.pid}, /opt/conda/bin/python, [N/A], ${gpu0}`])
    const processes = processesFromNvidiaSmi({
      nvidiaSmiPath: path,
      gpuUuids: () => [gpu0],
      ownPids: () => [],
    })
    expect(await processes.cotenants('r0')).toEqual([
      { pid: stranger.pid, name: '/opt/conda/bin/python', memoryUsedBytes: null },
    ])
    await expect(processes.terminate(stranger.pid!)).rejects.toBeInstanceOf(MitigationError)
    expect(await isRunning(stranger.pid!)).toBe(true)
  })

  it('refuses to end a pid that only an older listing named (it may have exited and been reused)', async () => {
    const earlier = run('sleep', ['35'])
    const dir = await mkdtemp(join(tmpdir(), 'vllm-monitor-smi-'))
    cleanups.push(() => rm(dir, { recursive: true, force: true }))
    const rows = join(dir, 'rows.csv')
    const path = join(dir, 'nvidia-smi')
    await writeFile(path, `#!/bin/sh\ncat '${rows}'\n`)
    await chmod(path, 0o755)
    const processes = processesFromNvidiaSmi({
      nvidiaSmiPath: path,
      gpuUuids: () => [gpu0],
      ownPids: () => [],
    })
    await writeFile(rows, `${earlier.pid}, sleep, 512, ${gpu0}\n`)
    expect(await processes.cotenants('r0')).toHaveLength(1)
    await writeFile(rows, '')
    expect(await processes.cotenants('r0')).toEqual([])
    await expect(processes.terminate(earlier.pid!)).rejects.toThrow(
      `refusing to end pid ${earlier.pid}: the last co-tenant listing did not name it`,
    )
    expect(await isRunning(earlier.pid!)).toBe(true)
  })

  it('rejects with NvidiaSmiError when nvidia-smi fails', async () => {
    const path = await fakeNvidiaSmi([], 9)
    const processes = processesFromNvidiaSmi({
      nvidiaSmiPath: path,
      gpuUuids: () => [gpu0],
      ownPids: () => [],
    })
    await expect(processes.cotenants('r0')).rejects.toBeInstanceOf(NvidiaSmiError)
  })

  it('validates its options', () => {
    expect(() => processesFromNvidiaSmi({ ownPids: () => [] } as never)).toThrow(
      'processesFromNvidiaSmi: option "gpuUuids" must be a function (replica) => GPU UUIDs',
    )
  })
})

describe('webhookScaler', () => {
  it('POSTs the scale request as JSON with its headers; a 2xx answer is ok', async () => {
    const hook = await server(() => ({ status: 202, body: { accepted: true } }))
    const s = webhookScaler({
      url: `${hook.url}/scale?token=secret`,
      headers: { authorization: 'Bearer abc' },
    })
    expect(s.name).toBe('webhook')
    expect(await s.scale(request)).toEqual({ ok: true, detail: `POST ${hook.url}/scale: HTTP 202` })
    expect(hook.got).toHaveLength(1)
    const got = hook.got[0]!
    expect(got.method).toBe('POST')
    expect(got.url).toBe('/scale?token=secret')
    expect(got.headers['content-type']).toBe('application/json')
    expect(got.headers.authorization).toBe('Bearer abc')
    expect(JSON.parse(got.body)).toEqual({ ...request, source: 'vllm-monitor' })
  })

  it('is not ok on a non-2xx answer, a refused connection or a timeout', async () => {
    const busy = await server(() => ({ status: 503, body: 'no capacity left' }))
    expect(await webhookScaler({ url: busy.url }).scale(request)).toEqual({
      ok: false,
      detail: `POST ${busy.url}/: HTTP 503 no capacity left`,
    })
    const port = await freePort()
    const refused = await webhookScaler({ url: `http://127.0.0.1:${port}/` }).scale(request)
    expect(refused).toEqual({ ok: false, detail: `POST http://127.0.0.1:${port}/: ECONNREFUSED` })
    const silent = await server(() => null)
    const slow = await webhookScaler({ url: silent.url, timeoutMs: 100 }).scale(request)
    expect(slow).toEqual({ ok: false, detail: `POST ${silent.url}/: timed out` })
  })

  it('validates its options', () => {
    expect(() => webhookScaler({ url: 'ftp://example.com' })).toThrow(InvalidOptionError)
    expect(() => webhookScaler({ url: 'ftp://example.com' })).toThrow(
      'webhookScaler: option "url" must be an http:// or https:// URL',
    )
    expect(() => webhookScaler({ url: 'http://x', timeoutMs: 0 })).toThrow(
      'webhookScaler: option "timeoutMs" must be a positive number of milliseconds',
    )
  })
})

describe('kubernetesScaler', () => {
  const scalePath = '/apis/apps/v1/namespaces/inference/deployments/vllm-llama/scale'

  /** An API server holding one scale subresource. */
  async function apiServer(replicas: number, status = 200) {
    let current = replicas
    const api = await server((r) => {
      if (r.url !== scalePath) return { status: 404, body: { kind: 'Status', reason: 'NotFound' } }
      if (status !== 200) return { status, body: { kind: 'Status', reason: 'Forbidden' } }
      if (r.method === 'PATCH') current = (JSON.parse(r.body) as { spec: { replicas: number } }).spec.replicas
      return {
        status: 200,
        body: { kind: 'Scale', spec: { replicas: current }, status: { replicas: current } },
      }
    })
    return api
  }

  const base = { namespace: 'inference', kind: 'deployments', name: 'vllm-llama', token: 't0k3n' } as const

  it('reads the scale subresource, then patches one replica more with a bearer token', async () => {
    const api = await apiServer(2)
    const s = kubernetesScaler({ ...base, apiServer: api.url, maxReplicas: 8 })
    expect(s.name).toBe('kubernetes:deployments/vllm-llama')
    expect(await s.scale(request)).toEqual({
      ok: true,
      detail: 'deployments/inference/vllm-llama: 2 → 3 replicas',
    })
    expect(api.got.map((g) => [g.method, g.url])).toEqual([
      ['GET', scalePath],
      ['PATCH', scalePath],
    ])
    for (const g of api.got) expect(g.headers.authorization).toBe('Bearer t0k3n')
    const patch = api.got[1]!
    expect(patch.headers['content-type']).toBe('application/merge-patch+json')
    expect(JSON.parse(patch.body)).toEqual({ spec: { replicas: 3 } })
  })

  it('asks for the desired count, but never more than maxReplicas', async () => {
    const api = await apiServer(2)
    const s = kubernetesScaler({ ...base, apiServer: api.url, maxReplicas: 5 })
    expect((await s.scale({ ...request, desiredReplicas: 9 })).detail).toBe(
      'deployments/inference/vllm-llama: 2 → 5 replicas',
    )
    const again = await s.scale(request)
    expect(again).toEqual({
      ok: false,
      detail: 'deployments/inference/vllm-llama has 5 replicas already (maxReplicas 5)',
    })
    expect(api.got.map((g) => g.method)).toEqual(['GET', 'PATCH', 'GET'])
  })

  it('is not ok when the API server refuses', async () => {
    const api = await apiServer(2, 403)
    const r = await kubernetesScaler({ ...base, apiServer: api.url, maxReplicas: 5 }).scale(request)
    expect(r.ok).toBe(false)
    expect(r.detail).toMatch(/^GET deployments\/inference\/vllm-llama\/scale: HTTP 403 /)
  })

  it('reads a token file at each call (tokens rotate)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vllm-monitor-k8s-'))
    cleanups.push(() => rm(dir, { recursive: true, force: true }))
    const tokenFile = join(dir, 'token')
    await writeFile(tokenFile, 'first\n')
    const api = await apiServer(1)
    const s = kubernetesScaler({ ...base, token: undefined, tokenFile, apiServer: api.url, maxReplicas: 9 })
    await s.scale(request)
    await writeFile(tokenFile, 'second\n')
    await s.scale(request)
    expect(api.got.map((g) => g.headers.authorization)).toEqual([
      'Bearer first',
      'Bearer first',
      'Bearer second',
      'Bearer second',
    ])
  })

  it('defaults to the in-cluster API server, reading nothing until it is used', async () => {
    vi.stubEnv('KUBERNETES_SERVICE_HOST', '')
    vi.stubEnv('KUBERNETES_SERVICE_PORT', '')
    const s = kubernetesScaler({ namespace: 'inference', kind: 'statefulsets', name: 'vllm', maxReplicas: 3 })
    expect(await s.scale(request)).toEqual({
      ok: false,
      detail:
        'statefulsets/inference/vllm: not in a cluster: KUBERNETES_SERVICE_HOST/PORT are not set and no apiServer was given',
    })
  })

  it('validates its options', () => {
    expect(() => kubernetesScaler({ ...base, kind: 'pods' as never, maxReplicas: 3 })).toThrow(
      `kubernetesScaler: option "kind" must be 'deployments' or 'statefulsets'`,
    )
    expect(() => kubernetesScaler({ ...base, maxReplicas: 0 })).toThrow(
      'kubernetesScaler: option "maxReplicas" must be a positive integer',
    )
    expect(() => kubernetesScaler({ ...base, namespace: '', maxReplicas: 3 })).toThrow(
      'kubernetesScaler: option "namespace" must be a non-empty string',
    )
  })
})
