import { chmod, mkdir, mkdtemp, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export { freePort } from '../helpers/net.js'

export const GiB = 1024 ** 3

export const tempDir = (prefix = 'vllm-monitor-prestartup-') => mkdtemp(join(tmpdir(), prefix))

/** Qwen/Qwen2.5-0.5B-Instruct's config.json (the fields the estimate reads): 0.49 B params. */
export const QWEN_05B_CONFIG = {
  architectures: ['Qwen2ForCausalLM'],
  model_type: 'qwen2',
  hidden_size: 896,
  intermediate_size: 4864,
  num_hidden_layers: 24,
  num_attention_heads: 14,
  num_key_value_heads: 2,
  vocab_size: 151936,
  max_position_embeddings: 32768,
  tie_word_embeddings: true,
  torch_dtype: 'bfloat16',
}

/** Writes a Hugging Face cache entry (`models--ORG--NAME`) under `hfHome/hub`; returns the snapshot dir. */
export async function writeHfModel(
  hfHome: string,
  repo: string,
  config: object,
  files: Record<string, string> = {},
): Promise<string> {
  const repoDir = join(hfHome, 'hub', `models--${repo.replaceAll('/', '--')}`)
  const snap = join(repoDir, 'snapshots', '0123abcd')
  await mkdir(snap, { recursive: true })
  await mkdir(join(repoDir, 'refs'), { recursive: true })
  await writeFile(join(repoDir, 'refs', 'main'), '0123abcd')
  await writeFile(join(snap, 'config.json'), JSON.stringify(config))
  for (const [name, text] of Object.entries(files)) await writeFile(join(snap, name), text)
  return snap
}

/** A directory holding executables that print fixed text (a fake `vllm`, `python3`). */
export async function fakeBin(scripts: Record<string, string>): Promise<string> {
  const dir = await tempDir('vllm-monitor-bin-')
  for (const [name, body] of Object.entries(scripts)) {
    await writeFile(join(dir, name), `#!/bin/sh\n${body}\n`)
    await chmod(join(dir, name), 0o755)
  }
  return dir
}
