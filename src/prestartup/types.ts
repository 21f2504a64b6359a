/** Shapes shared by the pre-start-up checks, the report and the CLI. */

export type CheckStatus = 'pass' | 'warn' | 'fail' | 'skip'

export interface AutoFix {
  /** Safe fixes are applied by `--auto-fix`; the others (ending a process) also need `--yes`. */
  safe: boolean
  description: string
  apply(): Promise<void>
}

export interface CheckResult {
  id: string
  title: string
  status: CheckStatus
  detail: string
  /** What to do about a warn or fail, in words a person can act on. */
  fix?: string
  autoFix?: AutoFix
}

export const CHECK_IDS = [
  'gpus',
  'cuda-visible-devices',
  'model',
  'memory-plan',
  'gpu-memory',
  'leftover-processes',
  'port',
  'shm',
  'disk',
  'ulimit',
  'vllm',
] as const

export type CheckId = (typeof CHECK_IDS)[number]

export type ProgressEvent =
  | { type: 'start'; id: CheckId; title: string; step: number; steps: number }
  | { type: 'done'; id: CheckId; title: string; step: number; steps: number; results: CheckResult[] }

export interface PrestartupOptions {
  /** Hugging Face model id (`meta-llama/Llama-3.1-8B-Instruct`) or a local directory with config.json. */
  model?: string
  /** Default 1. */
  tensorParallelSize?: number
  /** Default 0.9. */
  gpuMemoryUtilization?: number
  /** Default: the model's `max_position_embeddings`. */
  maxModelLen?: number
  /** Tokens in vLLM's profile run. Default: vLLM's default for the GPU (8192; 2048 on A100). */
  maxNumBatchedTokens?: number
  /** Port vLLM will listen on. Default 8000. */
  port?: number
  /** Address vLLM will bind. Default 0.0.0.0 (vLLM's default: every interface). */
  host?: string
  /** libnvidia-ml to load instead of libnvidia-ml.so.1. */
  libraryPath?: string
  /** Hugging Face hub cache. Default: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub. */
  hfCacheDir?: string
  /** Default /dev/shm. */
  shmPath?: string
  /** Where the safe fix writes the computed settings. Default ./vllm-monitor.env. */
  envFile?: string
  /** Environment to read (CUDA_VISIBLE_DEVICES, HF_HOME, PATH); default process.env. */
  env?: NodeJS.ProcessEnv
  /** Run only these checks (the others are left out of the report). */
  only?: CheckId[]
  onProgress?: (event: ProgressEvent) => void
}

export interface ResolvedPrestartupOptions {
  model: string | null
  tensorParallelSize: number
  gpuMemoryUtilization: number
  maxModelLen: number | null
  maxNumBatchedTokens: number | null
  port: number
  host: string
  libraryPath: string | null
  hfCacheDir: string
  shmPath: string
  envFile: string
  env: NodeJS.ProcessEnv
  only: CheckId[] | null
  onProgress: ((event: ProgressEvent) => void) | null
}
