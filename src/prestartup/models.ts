/**
 * What a model weighs and how much KV cache a token costs, from the model's `config.json` in the
 * local Hugging Face cache (or a local directory), else from a built-in table of common models.
 * Parameters are counted the way sim-calibration §1 does: embeddings + untied LM head + per layer
 * q, k, v, o, a gated MLP (×3, per expert for MoE), two norms; Qwen2 adds q/k/v biases.
 */
import { readdir, readFile, stat } from 'node:fs/promises'
import { homedir } from 'node:os'
import { basename, isAbsolute, join, resolve } from 'node:path'
import type { ModelProfile } from '../sim/hardware.js'

export interface ResolvedModel extends ModelProfile {
  source: 'hf-cache' | 'local-dir' | 'built-in'
  /** The config.json read, or null for the built-in table. */
  configPath: string | null
  /** Directory holding the model files (a cache snapshot or the local directory), if any. */
  modelDir: string | null
  dtype: string
  bytesPerParam: number
  attentionHeads: number
  kvHeads: number
  headDim: number
  experts: number | null
  /** Weight bytes already on disk (0 when nothing is downloaded). */
  downloadedBytes: number
  /** True when every weight file the model lists is present. */
  complete: boolean
  /** True when the weight size came from the checkpoint's own index rather than the estimate. */
  weightsExact: boolean
}

export type ModelLookup =
  | { found: true; model: ResolvedModel }
  | { found: false; reason: string; searched: string[] }

type Config = Record<string, unknown>

const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null)

/** `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else ~/.cache/…. */
export function hfCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  const hub = env.HF_HUB_CACHE || env.HUGGINGFACE_HUB_CACHE
  if (hub) return hub
  if (env.HF_HOME) return join(env.HF_HOME, 'hub')
  const xdg = env.XDG_CACHE_HOME || join(env.HOME || homedir(), '.cache')
  return join(xdg, 'huggingface', 'hub')
}

const llama = (L: number, h: number, heads: number, kv: number, ffn: number, vocab: number, ctx: number) => ({
  model_type: 'llama',
  num_hidden_layers: L,
  hidden_size: h,
  num_attention_heads: heads,
  num_key_value_heads: kv,
  intermediate_size: ffn,
  vocab_size: vocab,
  max_position_embeddings: ctx,
  tie_word_embeddings: false,
  torch_dtype: 'bfloat16',
})
const qwen25 = (L: number, h: number, heads: number, kv: number, ffn: number) => ({
  ...llama(L, h, heads, kv, ffn, 152064, 32768),
  model_type: 'qwen2',
})

// Minimal copies of each model's HF config.json (sim-calibration §1 and the public configs).
// Keys are lower-case names without org, "meta-" prefix, or -instruct / -chat / -hf suffixes.
const kBuiltIn: Record<string, Config> = {
  'llama-2-7b': { ...llama(32, 4096, 32, 32, 11008, 32000, 4096), torch_dtype: 'float16' },
  'llama-2-13b': { ...llama(40, 5120, 40, 40, 13824, 32000, 4096), torch_dtype: 'float16' },
  'llama-2-70b': { ...llama(80, 8192, 64, 8, 28672, 32000, 4096), torch_dtype: 'float16' },
  'llama-3-8b': llama(32, 4096, 32, 8, 14336, 128256, 8192),
  'llama-3-70b': llama(80, 8192, 64, 8, 28672, 128256, 8192),
  'llama-3.1-8b': llama(32, 4096, 32, 8, 14336, 128256, 131072),
  'llama-3.1-70b': llama(80, 8192, 64, 8, 28672, 128256, 131072),
  'llama-3.2-1b': {
    ...llama(16, 2048, 32, 8, 8192, 128256, 131072),
    head_dim: 64,
    tie_word_embeddings: true,
  },
  'llama-3.2-3b': { ...llama(28, 3072, 24, 8, 8192, 128256, 131072), tie_word_embeddings: true },
  'llama-3.3-70b': llama(80, 8192, 64, 8, 28672, 128256, 131072),
  'mistral-7b-v0.1': { ...llama(32, 4096, 32, 8, 14336, 32000, 32768), model_type: 'mistral' },
  'mistral-7b-v0.2': { ...llama(32, 4096, 32, 8, 14336, 32000, 32768), model_type: 'mistral' },
  'mistral-7b-v0.3': { ...llama(32, 4096, 32, 8, 14336, 32768, 32768), model_type: 'mistral' },
  'mixtral-8x7b-v0.1': {
    ...llama(32, 4096, 32, 8, 14336, 32000, 32768),
    model_type: 'mixtral',
    num_local_experts: 8,
  },
  'qwen2.5-7b': qwen25(28, 3584, 28, 4, 18944),
  'qwen2.5-14b': qwen25(48, 5120, 40, 8, 13824),
  'qwen2.5-32b': qwen25(64, 5120, 40, 8, 27648),
  'qwen2.5-72b': qwen25(80, 8192, 64, 8, 29568),
}

/** The built-in table's keys, e.g. for help text. */
export const BUILT_IN_MODELS: readonly string[] = Object.keys(kBuiltIn)

/** `meta-llama/Meta-Llama-3-8B-Instruct` → `llama-3-8b`. */
export function builtInKey(name: string): string {
  return (name.split('/').at(-1) ?? name)
    .toLowerCase()
    .replace(/^meta-/, '')
    .replace(/-(instruct|chat|hf)(?=-|$)/g, '')
}

export interface ArchStats {
  params: number
  layers: number
  hidden: number
  attentionHeads: number
  kvHeads: number
  headDim: number
  experts: number | null
  kvBytesPerToken: number
  maxModelLen: number
}

/** Parameter count and KV bytes per token from a config.json; throws naming a missing field. */
export function estimateFromConfig(raw: Config): ArchStats {
  const c: Config =
    raw.text_config && typeof raw.text_config === 'object' ? { ...raw, ...(raw.text_config as Config) } : raw
  const need = (...keys: string[]): number => {
    for (const k of keys) {
      const v = num(c[k])
      if (v !== null && v > 0) return v
    }
    throw new Error(`config.json has no ${keys[0]}`)
  }
  const hidden = need('hidden_size', 'd_model', 'n_embd')
  const layers = need('num_hidden_layers', 'n_layer', 'num_layers')
  const heads = need('num_attention_heads', 'n_head')
  const vocab = need('vocab_size')
  const kvHeads = num(c.num_key_value_heads) ?? (c.multi_query === true ? 1 : heads)
  const headDim = num(c.head_dim) ?? hidden / heads
  const inter = num(c.intermediate_size) ?? num(c.ffn_dim) ?? 4 * hidden
  const experts = num(c.num_local_experts) ?? num(c.num_experts) ?? num(c.n_routed_experts)
  const attn = 2 * hidden * heads * headDim + 2 * hidden * kvHeads * headDim
  const qwen = typeof c.model_type === 'string' && c.model_type.startsWith('qwen2')
  const bias = c.attention_bias === true || qwen ? heads * headDim + 2 * kvHeads * headDim : 0
  const dense = 3 * hidden * inter
  let mlpTotal = layers * dense
  if (experts !== null && experts > 0) {
    const moeInter = num(c.moe_intermediate_size) ?? inter
    const shared =
      num(c.shared_expert_intermediate_size) ??
      (num(c.n_shared_experts) ?? 0) * (num(c.moe_intermediate_size) ?? 0)
    const moe = experts * 3 * hidden * moeInter + hidden * experts + 3 * hidden * shared
    const denseLayers = Math.min(layers, num(c.first_k_dense_replace) ?? 0)
    mlpTotal = denseLayers * dense + (layers - denseLayers) * moe
  }
  const embeddings = vocab * hidden * (c.tie_word_embeddings === true ? 1 : 2)
  const params = embeddings + layers * (attn + bias + 2 * hidden) + mlpTotal + hidden
  // MLA (DeepSeek-V2/V3) caches one compressed latent + rope key per layer instead of K and V.
  const latent = num(c.kv_lora_rank)
  const kvBytesPerToken =
    latent !== null
      ? layers * (latent + (num(c.qk_rope_head_dim) ?? 0)) * 2
      : 2 * layers * kvHeads * headDim * 2
  const maxModelLen =
    num(c.max_position_embeddings) ?? num(c.max_sequence_length) ?? num(c.seq_length) ?? num(c.n_positions)
  return {
    params,
    layers,
    hidden,
    attentionHeads: heads,
    kvHeads,
    headDim,
    experts: experts !== null && experts > 0 ? experts : null,
    kvBytesPerToken,
    maxModelLen: maxModelLen ?? 4096,
  }
}

/**
 * Bytes per weight as vLLM loads it with `--dtype auto`: 16-bit for bf16/fp16 and also for fp32
 * checkpoints (vLLM casts them down), the quantized width for fp8 / AWQ / GPTQ checkpoints.
 */
export function weightDtype(raw: Config): { dtype: string; bytesPerParam: number } {
  const tc = (raw.text_config ?? {}) as Config
  const q = raw.quantization_config as Config | undefined
  if (q && typeof q === 'object') {
    const method = String(q.quant_method ?? 'quantized')
    let bits = num(q.bits) ?? num(q.w_bit) ?? num(q.weight_bits)
    if (bits === null && /fp8/i.test(method)) bits = 8
    if (bits === null && q.load_in_4bit === true) bits = 4
    if (bits === null && q.config_groups && typeof q.config_groups === 'object') {
      const group = Object.values(q.config_groups as Record<string, Config>)[0]
      bits = num((group?.weights as Config | undefined)?.num_bits)
    }
    if (bits !== null) return { dtype: `${method} ${bits}-bit`, bytesPerParam: bits / 8 }
  }
  const dt = String(raw.torch_dtype ?? raw.dtype ?? tc.torch_dtype ?? tc.dtype ?? 'bfloat16')
  if (dt === 'float32') return { dtype: 'float32 (loaded as 16-bit)', bytesPerParam: 2 }
  return { dtype: dt, bytesPerParam: 2 }
}

function profile(
  name: string,
  cfg: Config,
  where: Pick<ResolvedModel, 'source' | 'configPath' | 'modelDir'>,
): ResolvedModel {
  const arch = estimateFromConfig(cfg)
  const { dtype, bytesPerParam } = weightDtype(cfg)
  return {
    name,
    ...where,
    ...arch,
    dtype,
    bytesPerParam,
    weightsBytes: arch.params * bytesPerParam,
    downloadedBytes: 0,
    complete: false,
    weightsExact: false,
  }
}

const kWeightFile = /\.(safetensors|bin|pt|pth|gguf)$/

/** Fills in what is on disk: weight bytes present and, from the safetensors index, the exact size. */
async function inspectWeights(m: ResolvedModel, dir: string): Promise<void> {
  const names = await readdir(dir).catch(() => [] as string[])
  const sizes = new Map<string, number>()
  for (const n of names) {
    if (!kWeightFile.test(n)) continue
    // Cache entries are symlinks to blobs; a dangling one is a file still to download.
    const s = await stat(join(dir, n)).catch(() => null)
    if (s?.isFile()) sizes.set(n, s.size)
  }
  m.downloadedBytes = [...sizes.values()].reduce((a, b) => a + b, 0)
  const index = await readFile(join(dir, 'model.safetensors.index.json'), 'utf8')
    .then(
      (t) => JSON.parse(t) as { metadata?: { total_size?: unknown }; weight_map?: Record<string, string> },
    )
    .catch(() => null)
  if (index) {
    const total = num(index.metadata?.total_size)
    // An fp32 checkpoint is twice what vLLM loads; every other index gives the loaded size.
    if (total !== null && total > 0 && !m.dtype.startsWith('float32')) {
      m.weightsBytes = total
      m.weightsExact = true
    }
    const shards = new Set(Object.values(index.weight_map ?? {}))
    m.complete = shards.size > 0 && [...shards].every((s) => sizes.has(s))
  } else {
    m.complete = sizes.has('model.safetensors') || sizes.has('pytorch_model.bin')
  }
}

async function readConfig(path: string): Promise<Config | null> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as Config
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
    throw new Error(`${path}: ${(err as Error).message}`)
  }
}

/** The snapshot `refs/main` points at, else the newest snapshot that has a config.json. */
async function cacheSnapshot(repoDir: string): Promise<string | null> {
  const ref = await readFile(join(repoDir, 'refs', 'main'), 'utf8').catch(() => null)
  if (ref) {
    const dir = join(repoDir, 'snapshots', ref.trim())
    if (await stat(join(dir, 'config.json')).catch(() => null)) return dir
  }
  const snaps = await readdir(join(repoDir, 'snapshots')).catch(() => [] as string[])
  let best: { dir: string; t: number } | null = null
  for (const s of snaps) {
    const dir = join(repoDir, 'snapshots', s)
    const st = await stat(join(dir, 'config.json')).catch(() => null)
    if (st && (best === null || st.mtimeMs > best.t)) best = { dir, t: st.mtimeMs }
  }
  return best?.dir ?? null
}

const looksLikePath = (m: string) =>
  isAbsolute(m) || m.startsWith('./') || m.startsWith('../') || m.startsWith('~')

/**
 * Finds a model: a local directory, the Hugging Face cache, then the built-in table. Never
 * throws for a model it cannot find (`found: false` says where it looked); a config.json that
 * is not JSON or lacks the fields the estimate needs is reported as the reason.
 */
export async function resolveModel(name: string, cacheDir: string): Promise<ModelLookup> {
  const searched: string[] = []
  try {
    const local = name.startsWith('~') ? join(homedir(), name.slice(1)) : resolve(name)
    if (looksLikePath(name) || (await stat(join(local, 'config.json')).catch(() => null))) {
      const path = join(local, 'config.json')
      searched.push(path)
      const cfg = await readConfig(path)
      if (cfg) {
        const m = profile(name, cfg, { source: 'local-dir', configPath: path, modelDir: local })
        await inspectWeights(m, local)
        return { found: true, model: m }
      }
      if (looksLikePath(name)) return { found: false, reason: `${path} does not exist`, searched }
    }
    const repoDir = join(cacheDir, `models--${name.replaceAll('/', '--')}`)
    searched.push(join(repoDir, 'snapshots', '*', 'config.json'))
    const snap = await cacheSnapshot(repoDir)
    if (snap) {
      const path = join(snap, 'config.json')
      const cfg = await readConfig(path)
      if (cfg) {
        const m = profile(name, cfg, { source: 'hf-cache', configPath: path, modelDir: snap })
        await inspectWeights(m, snap)
        return { found: true, model: m }
      }
    }
  } catch (err) {
    return { found: false, reason: (err as Error).message, searched }
  }
  const key = builtInKey(name)
  searched.push(`built-in table (${key})`)
  const cfg = kBuiltIn[key]
  if (cfg)
    return {
      found: true,
      model: profile(name, cfg, { source: 'built-in', configPath: null, modelDir: null }),
    }
  return {
    found: false,
    reason: `${basename(name)} is neither in the Hugging Face cache (${cacheDir}) nor in the built-in table`,
    searched,
  }
}
