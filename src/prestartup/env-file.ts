/**
 * The safe fix: computed vLLM settings written to an env file (KEY=value lines a shell, Docker
 * `--env-file` or systemd `EnvironmentFile=` can read). Keys already there are replaced, other
 * lines are kept; the comment carries the `vllm serve` flags, since vLLM itself reads flags.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { dirname } from 'node:path'

const kMarker = '# vllm-monitor:'

export interface ServeSettings {
  model: string | null
  tensorParallelSize: number
  gpuMemoryUtilization: number
  maxModelLen: number | null
  port: number
}

export function serveFlags(s: ServeSettings): string {
  const parts = ['vllm serve']
  if (s.model !== null) parts.push(s.model)
  parts.push(`--tensor-parallel-size ${s.tensorParallelSize}`)
  parts.push(`--gpu-memory-utilization ${s.gpuMemoryUtilization}`)
  if (s.maxModelLen !== null) parts.push(`--max-model-len ${s.maxModelLen}`)
  parts.push(`--port ${s.port}`)
  return parts.join(' ')
}

export function envValues(s: ServeSettings): Record<string, string> {
  const v: Record<string, string> = {
    VLLM_GPU_MEMORY_UTILIZATION: String(s.gpuMemoryUtilization),
    VLLM_TENSOR_PARALLEL_SIZE: String(s.tensorParallelSize),
  }
  if (s.maxModelLen !== null) v.VLLM_MAX_MODEL_LEN = String(s.maxModelLen)
  return v
}

/** Merges `values` into the file at `path` (created if missing) with a comment naming the flags. */
export async function writeEnvFile(path: string, s: ServeSettings): Promise<Record<string, string>> {
  const values = envValues(s)
  const old = await readFile(path, 'utf8').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return ''
    throw err
  })
  const kept = old
    .split('\n')
    .filter(
      (l) => l !== '' && !l.startsWith(kMarker) && !Object.keys(values).some((k) => l.startsWith(`${k}=`)),
    )
  const lines = [
    ...kept,
    `${kMarker} written by prestartup-check --auto-fix at ${new Date().toISOString()}`,
    `${kMarker} ${serveFlags(s)}`,
    ...Object.entries(values).map(([k, v]) => `${k}=${v}`),
  ]
  await mkdir(dirname(path), { recursive: true })
  await writeFile(path, `${lines.join('\n')}\n`)
  return values
}
