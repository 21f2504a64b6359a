/**
 * Why a vLLM process ended, from what it printed rather than its exit status: vLLM exits 0 after
 * engine death (vllm.md §0 #4, #48966) and a worker killed by the kernel leaves only log lines.
 * The supervisor collects the fatal signatures its log classifier reports while the process runs
 * (both streams) and, at exit, names the root cause: the most specific signature, since vLLM
 * prints the death notice first and the reason after it, in the traceback (§4.1, §4.4).
 */

/** A fatal signature seen in the process's output. */
export interface FatalEvidence {
  type: string
  message: string
  data?: Record<string, unknown>
}

/**
 * Root causes first, generic death notices last. Hardware and memory errors come before the NCCL
 * timeout they often trigger (a rank that died of an ECC error leaves its peers in a collective).
 */
export const ROOT_CAUSE_RANK: readonly string[] = [
  'load-oom',
  'kv-too-small',
  'cuda-oom',
  'uncorrectable-ecc',
  'illegal-memory-access',
  'launch-failure',
  'nccl-timeout',
  'nccl-error',
  'rpc-timeout',
  'worker-died',
  'engine-dead',
]

/** The types the supervisor keeps as evidence (the log classifier's fatal events, and its own). */
export const FATAL_TYPES: ReadonlySet<string> = new Set(ROOT_CAUSE_RANK)

export function pickRootCause(evidence: Iterable<FatalEvidence>): FatalEvidence | null {
  let best: FatalEvidence | null = null
  let bestRank = Number.POSITIVE_INFINITY
  for (const e of evidence) {
    const rank = ROOT_CAUSE_RANK.indexOf(e.type)
    if (rank >= 0 && rank < bestRank) {
      best = e
      bestRank = rank
    }
  }
  return best
}

const OOM_AMOUNT = /Tried to allocate ([\d.]+ ?[KMGT]?i?B)/

/** A short human name for a root cause, with its key detail. */
export function describeCause(e: FatalEvidence): string {
  const d = e.data ?? {}
  switch (e.type) {
    case 'cuda-oom': {
      const m = OOM_AMOUNT.exec(e.message)
      return m ? `CUDA out of memory (Tried to allocate ${m[1]})` : 'CUDA out of memory'
    }
    case 'load-oom':
      return 'not enough GPU memory to load the model'
    case 'kv-too-small':
      return 'KV cache too small'
    case 'nccl-timeout': {
      const op = typeof d.opType === 'string' ? d.opType : null
      const ms = typeof d.ranForMs === 'number' ? d.ranForMs : null
      return op !== null && ms !== null
        ? `NCCL watchdog timeout (${op} ran for ${ms} ms)`
        : 'NCCL watchdog timeout'
    }
    case 'nccl-error':
      return typeof d.error === 'string' ? `NCCL error: ${d.error}` : e.message
    case 'illegal-memory-access':
      return 'CUDA illegal memory access'
    case 'uncorrectable-ecc':
      return 'uncorrectable ECC error'
    case 'launch-failure':
      return 'CUDA unspecified launch failure'
    case 'rpc-timeout':
      return `RPC call to ${typeof d.method === 'string' ? d.method : 'the workers'} timed out`
    case 'worker-died':
      return `worker ${typeof d.worker === 'string' ? `${d.worker} ` : ''}died unexpectedly`
    case 'engine-dead':
      return d.phase === 'startup' ? 'EngineCore failed to start' : 'EngineCore died'
    default:
      return e.message
  }
}

export interface ExitFacts {
  code: number | null
  signal: string | null
  /** The supervisor asked for it (shutdown, restart). */
  requested: boolean
  /** SIGKILL after the grace period. */
  forced: boolean
  gracePeriodMs: number
  evidence: Iterable<FatalEvidence>
  /** A start-up phase line was seen, and whether the server got as far as serving. */
  sawStartup: boolean
  sawServing: boolean
}

export interface ExitVerdict {
  /** The root cause's type, `signal` / `exit-code` for an unexplained crash, null for a clean exit. */
  cause: string | null
  message: string
  /** The root-cause line as printed (capped), when there is one. */
  detail: string | null
}

/**
 * The verdict on one exit, e.g. `vLLM exited with code 0 after engine death: CUDA out of memory
 * (Tried to allocate 1.74 GiB)`, `vLLM exited with code 1 during start-up: KV cache too small`,
 * `vLLM was killed by SIGKILL`, `vLLM exited with code 0 (shutdown)`.
 */
export function judgeExit(f: ExitFacts): ExitVerdict {
  const evidence = [...f.evidence]
  const root = pickRootCause(evidence)
  const head = f.signal !== null ? `vLLM was killed by ${f.signal}` : `vLLM exited with code ${f.code}`
  const tail = f.forced
    ? ` after the ${formatSeconds(f.gracePeriodMs)} grace period (shutdown)`
    : f.requested
      ? ' (shutdown)'
      : ''
  if (root !== null) {
    const startupFailed = evidence.some((e) => e.type === 'engine-dead' && e.data?.phase === 'startup')
    const died = evidence.some((e) => e.type === 'engine-dead' || e.type === 'worker-died')
    const when =
      startupFailed || (f.sawStartup && !f.sawServing)
        ? ' during start-up'
        : died
          ? ' after engine death'
          : ''
    return {
      cause: root.type,
      message: `${head}${when}: ${describeCause(root)}${tail}`,
      detail: root.message.length > 300 ? `${root.message.slice(0, 300)}…` : root.message,
    }
  }
  if (f.requested) return { cause: null, message: `${head}${tail}`, detail: null }
  if (f.signal !== null) return { cause: 'signal', message: head, detail: null }
  if (f.code !== 0) {
    const when = f.sawStartup && !f.sawServing ? ' during start-up' : ''
    return { cause: 'exit-code', message: `${head}${when}`, detail: null }
  }
  return { cause: null, message: head, detail: null }
}

function formatSeconds(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${(ms / 1000).toFixed(1)} s`
}
