/** The host-side checks: the port, /dev/shm, disk for the model, open-file limit, vllm itself. */
import { spawn } from 'node:child_process'
import { readFile, statfs } from 'node:fs/promises'
import { createServer } from 'node:net'
import { dirname } from 'node:path'
import { gib } from './memory.js'
import type { ResolvedModel } from './models.js'
import type { CheckResult } from './types.js'

const GiB = 1024 ** 3

export async function checkPort(host: string, port: number): Promise<CheckResult> {
  const base = { id: 'port', title: `port ${port}` }
  if (port === 0) return { ...base, status: 'pass', detail: 'port 0: the OS picks a free one' }
  const err = await new Promise<NodeJS.ErrnoException | null>((done) => {
    const srv = createServer()
    srv.once('error', (e) => done(e))
    srv.listen({ host, port, exclusive: true }, () => srv.close(() => done(null)))
  })
  if (err === null) return { ...base, status: 'pass', detail: `${host}:${port} is free` }
  if (err.code === 'EADDRINUSE')
    return {
      ...base,
      status: 'fail',
      detail: `${host}:${port} is already in use: vLLM would exit with "Address already in use"`,
      fix: `stop what listens there (ss -ltnp 'sport = :${port}' shows it) or pass another --port`,
    }
  if (err.code === 'EACCES')
    return {
      ...base,
      status: 'fail',
      detail: `no permission to bind ${host}:${port}`,
      fix: 'use a port ≥ 1024, or grant CAP_NET_BIND_SERVICE',
    }
  if (err.code === 'EADDRNOTAVAIL' || err.code === 'ENOTFOUND')
    return {
      ...base,
      status: 'fail',
      detail: `${host} is not an address of this host`,
      fix: 'pass --host 0.0.0.0',
    }
  return { ...base, status: 'warn', detail: `could not test ${host}:${port}: ${err.message}` }
}

/** Size of the filesystem at `path` and the bytes free to unprivileged users; null if missing. */
async function fsSpace(path: string): Promise<{ size: number; free: number } | null> {
  try {
    const s = await statfs(path)
    return { size: s.blocks * s.bsize, free: s.bavail * s.bsize }
  } catch {
    return null
  }
}

/** NCCL and vLLM's shared-memory broadcast between TP workers live in /dev/shm. */
export function assessShm(sizeBytes: number | null, tp: number, path = '/dev/shm'): CheckResult {
  const base = { id: 'shm', title: path }
  const fix =
    'give the container more: docker run --ipc=host (or --shm-size=16g); Kubernetes: an emptyDir with medium: Memory'
  if (sizeBytes === null)
    return tp > 1
      ? {
          ...base,
          status: 'fail',
          detail: `${path} is missing: NCCL fails ("unhandled system error") with TP ${tp}`,
          fix,
        }
      : { ...base, status: 'pass', detail: `${path} is missing; not needed at TP 1` }
  const size = sizeBytes >= GiB ? gib(sizeBytes) : `${Math.round(sizeBytes / 2 ** 20)} MiB`
  if (tp > 1 && sizeBytes < GiB)
    return {
      ...base,
      status: 'warn',
      detail: `${size}: too small for TP ${tp} (NCCL and vLLM's shm broadcast; Docker's default is 64 MiB)`,
      fix,
    }
  return { ...base, status: 'pass', detail: tp > 1 ? `${size}` : `${size} (TP 1 barely uses it)` }
}

export async function checkShm(path: string, tp: number): Promise<CheckResult> {
  return assessShm((await fsSpace(path))?.size ?? null, tp, path)
}

/** Bytes still to download: none if every weight file is there, else the rest of the weights. */
export function bytesToDownload(m: ResolvedModel): number {
  return m.complete ? 0 : Math.max(0, m.weightsBytes - m.downloadedBytes)
}

export function assessDisk(freeBytes: number, neededBytes: number, dir: string): CheckResult {
  const base = { id: 'disk', title: 'disk for the model' }
  const fix = 'free space there, or point HF_HOME at a larger disk'
  if (neededBytes === 0)
    return { ...base, status: 'pass', detail: `the weights are on disk; ${gib(freeBytes)} free in ${dir}` }
  if (freeBytes < neededBytes)
    return {
      ...base,
      status: 'fail',
      detail: `the download needs ≈${gib(neededBytes)}; ${gib(freeBytes)} free in ${dir}`,
      fix,
    }
  if (freeBytes < neededBytes + 5 * GiB)
    return {
      ...base,
      status: 'warn',
      detail: `the download needs ≈${gib(neededBytes)}; only ${gib(freeBytes)} free in ${dir} (compile caches need room too)`,
      fix,
    }
  return {
    ...base,
    status: 'pass',
    detail: `the download needs ≈${gib(neededBytes)}; ${gib(freeBytes)} free in ${dir}`,
  }
}

export async function checkDisk(
  cacheDir: string,
  model: ResolvedModel | null,
  why: string | null,
): Promise<CheckResult> {
  // The cache directory may not exist yet: the download creates it on the nearest existing parent.
  let dir = model?.modelDir ?? cacheDir
  let space = await fsSpace(dir)
  while (space === null && dirname(dir) !== dir) {
    dir = dirname(dir)
    space = await fsSpace(dir)
  }
  if (space === null)
    return { id: 'disk', title: 'disk for the model', status: 'skip', detail: `cannot stat ${cacheDir}` }
  if (model === null)
    return {
      id: 'disk',
      title: 'disk for the model',
      status: 'skip',
      detail: `${why}; ${gib(space.free)} free in ${dir}`,
    }
  return assessDisk(space.free, bytesToDownload(model), dir)
}

/** Soft and hard `Max open files` from /proc/self/limits (Infinity for unlimited); null if absent. */
export function parseOpenFiles(limits: string): { soft: number; hard: number } | null {
  const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(limits)
  if (!m) return null
  const v = (s: string) => (s === 'unlimited' ? Number.POSITIVE_INFINITY : Number(s))
  return { soft: v(m[1]!), hard: v(m[2]!) }
}

/** vLLM's own `set_ulimit()` raises the soft limit to 65535 at start-up when the hard limit allows. */
export const VLLM_NOFILE_TARGET = 65535

export function assessUlimit(soft: number, hard: number): CheckResult {
  const base = { id: 'ulimit', title: 'open files (ulimit -n)' }
  const show = (n: number) => (n === Number.POSITIVE_INFINITY ? 'unlimited' : String(n))
  if (soft >= VLLM_NOFILE_TARGET)
    return { ...base, status: 'pass', detail: `soft ${show(soft)}, hard ${show(hard)}` }
  if (hard >= VLLM_NOFILE_TARGET)
    return {
      ...base,
      status: 'pass',
      detail: `soft ${show(soft)}, hard ${show(hard)}: vLLM raises the soft limit to ${VLLM_NOFILE_TARGET} itself`,
    }
  return {
    ...base,
    status: 'warn',
    detail: `soft ${show(soft)}, hard ${show(hard)}: under ${VLLM_NOFILE_TARGET}, many connections end in "Too many open files"`,
    fix: 'raise the hard limit: docker run --ulimit nofile=65535:65535, LimitNOFILE=65535 (systemd) or /etc/security/limits.conf',
  }
}

export async function checkUlimit(limitsPath = '/proc/self/limits'): Promise<CheckResult> {
  const text = await readFile(limitsPath, 'utf8').catch(() => null)
  const lim = text === null ? null : parseOpenFiles(text)
  if (lim === null)
    return {
      id: 'ulimit',
      title: 'open files (ulimit -n)',
      status: 'skip',
      detail: `cannot read ${limitsPath}`,
    }
  return assessUlimit(lim.soft, lim.hard)
}

/** Runs a command in its own process group with a deadline that kills the whole group. */
function runGroup(
  cmd: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  timeoutMs: number,
): Promise<{ stdout: string }> {
  return new Promise((resolve, reject) => {
    let timedOut = false
    let stdout = ''
    let stderr = ''
    const child = spawn(cmd, args, { env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] })
    const cap = (s: string, chunk: Buffer) => (s.length < 1 << 20 ? s + chunk.toString('utf8') : s)
    child.stdout.on('data', (c: Buffer) => {
      stdout = cap(stdout, c)
    })
    child.stderr.on('data', (c: Buffer) => {
      stderr = cap(stderr, c)
    })
    const timer = setTimeout(() => {
      timedOut = true
      try {
        if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL')
      } catch {
        child.kill('SIGKILL')
      }
    }, timeoutMs)
    child.on('error', (err) => {
      clearTimeout(timer)
      reject(Object.assign(err, { stderr, timedOut }))
    })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      if (code === 0) resolve({ stdout })
      else {
        const err = new Error(`Command failed: ${cmd} ${args.join(' ')} (${signal ?? `exit ${code}`})`)
        reject(Object.assign(err, { stderr, timedOut }))
      }
    })
  })
}

async function tryRun(
  cmd: string,
  args: string[],
  env: NodeJS.ProcessEnv,
): Promise<{ out: string } | { err: string; timedOut?: true }> {
  try {
    // Its own process group, killed whole on timeout: a `vllm` wrapper must not outlive the check.
    const { stdout } = await runGroup(cmd, args, env, 60_000)
    const last = stdout.trim().split('\n').at(-1)?.trim() ?? ''
    return { out: last }
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: string }
    if (err.code === 'ENOENT') return { err: `no ${cmd} on PATH` }
    if ((err as { timedOut?: boolean }).timedOut === true) {
      return { err: `${cmd} did not answer within 60 s`, timedOut: true }
    }
    const tail = err.stderr?.trim().split('\n').at(-1)
    return { err: `${cmd} failed: ${tail || err.message}` }
  }
}

export async function checkVllm(env: NodeJS.ProcessEnv): Promise<CheckResult> {
  const base = { id: 'vllm', title: 'vllm installed' }
  const cli = await tryRun('vllm', ['--version'], env)
  if ('out' in cli) return { ...base, status: 'pass', detail: `vllm ${cli.out} (vllm on PATH)` }
  if (cli.timedOut === true) {
    // Installed but slow (a cold torch import on slow storage): not the same as missing.
    return {
      ...base,
      status: 'warn',
      detail: `${cli.err} (installed, but starting it is slow: a cold import on slow storage?)`,
      fix: 'check that `vllm --version` answers; a slow import also slows every vLLM start',
    }
  }
  const py = await tryRun('python3', ['-c', 'import vllm; print(vllm.__version__)'], env)
  if ('out' in py)
    return {
      ...base,
      status: 'pass',
      detail: `vllm ${py.out} (python3 imports it; ${cli.err}: start it with python3 -m vllm.entrypoints.openai.api_server)`,
    }
  return {
    ...base,
    status: 'fail',
    detail: `vllm is not installed: ${cli.err}; ${py.err.includes('No module named') ? 'python3 cannot import vllm' : py.err}`,
    fix: 'pip install vllm (in the Python environment that will serve; uv pip install vllm works too)',
  }
}
