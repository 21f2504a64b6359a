import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import {
  BUILT_IN_MODELS,
  builtInKey,
  estimateFromConfig,
  hfCacheDir,
  resolveModel,
  weightDtype,
} from '../../src/prestartup/models.js'
import { MODELS } from '../../src/sim/hardware.js'
import { GiB, QWEN_05B_CONFIG, tempDir, writeHfModel } from './helpers.js'

const empty = join('/nonexistent', 'hf-hub')

async function builtIn(name: string) {
  const r = await resolveModel(name, empty)
  if (!r.found) throw new Error(r.reason)
  expect(r.model.source).toBe('built-in')
  return r.model
}

describe('the built-in model table', () => {
  // sim-calibration §1: parameters and KV bytes per token derived from each model's config.json.
  it.each([
    ['meta-llama/Llama-2-7b-hf', 6.74e9, 512],
    ['meta-llama/Llama-2-13b-hf', 13.0e9, 800],
    ['meta-llama/Llama-2-70b-hf', 69.0e9, 320],
    ['meta-llama/Meta-Llama-3-8B', 8.03e9, 128],
    ['meta-llama/Meta-Llama-3-70B-Instruct', 70.6e9, 320],
    ['meta-llama/Llama-3.1-8B-Instruct', 8.03e9, 128],
    ['meta-llama/Llama-3.3-70B-Instruct', 70.6e9, 320],
    ['mistralai/Mistral-7B-v0.1', 7.24e9, 128],
    ['Qwen/Qwen2.5-7B-Instruct', 7.62e9, 56],
    ['Qwen/Qwen2.5-72B-Instruct', 72.7e9, 320],
    ['mistralai/Mixtral-8x7B-Instruct-v0.1', 46.7e9, 128],
  ])('%s: %d params, %d KiB KV per token', async (name, params, kvKiB) => {
    const m = await builtIn(name)
    expect(Math.abs(m.params / params - 1)).toBeLessThan(0.01)
    expect(m.kvBytesPerToken).toBe(kvKiB * 1024)
    expect(m.bytesPerParam).toBe(2)
    expect(m.weightsBytes).toBe(m.params * 2)
  })

  it('weighs Llama-3-8B as vLLM logs it ("model weights take 14.96GiB", #10511)', async () => {
    expect((await builtIn('meta-llama/Meta-Llama-3-8B')).weightsBytes / GiB).toBeCloseTo(14.96, 1)
  })

  it('agrees with the simulator calibration table in src/sim/hardware.ts', async () => {
    for (const p of Object.values(MODELS)) {
      const m = await builtIn(p.name)
      expect(m.kvBytesPerToken, p.name).toBe(p.kvBytesPerToken)
      expect(m.layers, p.name).toBe(p.layers)
      expect(m.hidden, p.name).toBe(p.hidden)
      expect(Math.abs(m.params / p.params - 1), p.name).toBeLessThan(0.01)
    }
  })

  it('finds Instruct, chat and older "Meta-" names by suffix', () => {
    expect(builtInKey('meta-llama/Llama-2-7b-chat-hf')).toBe('llama-2-7b')
    expect(builtInKey('meta-llama/Meta-Llama-3.1-70B-Instruct')).toBe('llama-3.1-70b')
    expect(builtInKey('mistralai/Mistral-7B-Instruct-v0.2')).toBe('mistral-7b-v0.2')
    expect(builtInKey('Qwen/Qwen2.5-32B-Instruct')).toBe('qwen2.5-32b')
    for (const k of ['llama-3.2-1b', 'llama-3.2-3b', 'qwen2.5-14b', 'qwen2.5-32b', 'mistral-7b-v0.3'])
      expect(BUILT_IN_MODELS).toContain(k)
  })

  it('uses the model context length as max_model_len', async () => {
    expect((await builtIn('meta-llama/Llama-2-7b-hf')).maxModelLen).toBe(4096)
    expect((await builtIn('meta-llama/Meta-Llama-3-8B-Instruct')).maxModelLen).toBe(8192)
    expect((await builtIn('meta-llama/Llama-3.1-8B-Instruct')).maxModelLen).toBe(131072)
  })
})

describe('resolveModel from the Hugging Face cache', () => {
  it('reads config.json from $HF_HOME/hub/models--ORG--NAME/snapshots/*', async () => {
    const home = await tempDir()
    await writeHfModel(home, 'Qwen/Qwen2.5-0.5B-Instruct', QWEN_05B_CONFIG)
    const r = await resolveModel('Qwen/Qwen2.5-0.5B-Instruct', hfCacheDir({ HF_HOME: home }))
    expect(r.found).toBe(true)
    if (!r.found) return
    expect(r.model.source).toBe('hf-cache')
    expect(r.model.configPath).toBe(
      join(home, 'hub/models--Qwen--Qwen2.5-0.5B-Instruct/snapshots/0123abcd/config.json'),
    )
    expect(r.model.params / 1e9).toBeCloseTo(0.494, 2)
    expect(r.model.kvBytesPerToken).toBe(2 * 24 * 2 * 64 * 2)
    expect(r.model.maxModelLen).toBe(32768)
    expect(r.model.complete).toBe(false)
    expect(r.model.downloadedBytes).toBe(0)
  })

  it('prefers the cached config over the built-in table', async () => {
    const home = await tempDir()
    await writeHfModel(home, 'meta-llama/Llama-2-7b-hf', { ...QWEN_05B_CONFIG, num_hidden_layers: 2 })
    const r = await resolveModel('meta-llama/Llama-2-7b-hf', join(home, 'hub'))
    expect(r.found && r.model.source).toBe('hf-cache')
    expect(r.found && r.model.layers).toBe(2)
  })

  it('takes the exact weight size from the safetensors index and sees whether every shard is there', async () => {
    const home = await tempDir()
    const index = {
      metadata: { total_size: 988_097_536 },
      weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00002-of-00002.safetensors' },
    }
    const snap = await writeHfModel(home, 'org/m', QWEN_05B_CONFIG, {
      'model.safetensors.index.json': JSON.stringify(index),
      'model-00001-of-00002.safetensors': 'x'.repeat(100),
    })
    let r = await resolveModel('org/m', join(home, 'hub'))
    expect(r.found && r.model).toMatchObject({
      weightsBytes: 988_097_536,
      weightsExact: true,
      complete: false,
    })
    expect(r.found && r.model.downloadedBytes).toBe(100)
    await writeFile(join(snap, 'model-00002-of-00002.safetensors'), 'y'.repeat(50))
    r = await resolveModel('org/m', join(home, 'hub'))
    expect(r.found && r.model).toMatchObject({ complete: true, downloadedBytes: 150 })
  })

  it('estimates MoE models from their experts (Mixtral config)', async () => {
    const home = await tempDir()
    await writeHfModel(home, 'mistralai/Mixtral-8x7B-v0.1', {
      model_type: 'mixtral',
      hidden_size: 4096,
      intermediate_size: 14336,
      num_hidden_layers: 32,
      num_attention_heads: 32,
      num_key_value_heads: 8,
      num_local_experts: 8,
      num_experts_per_tok: 2,
      vocab_size: 32000,
      max_position_embeddings: 32768,
      torch_dtype: 'bfloat16',
    })
    const r = await resolveModel('mistralai/Mixtral-8x7B-v0.1', join(home, 'hub'))
    expect(r.found && r.model.experts).toBe(8)
    expect(r.found && r.model.params / 1e9).toBeCloseTo(46.7, 1)
  })

  it('reads a local model directory given as a path', async () => {
    const dir = await tempDir()
    await writeFile(join(dir, 'config.json'), JSON.stringify(QWEN_05B_CONFIG))
    const r = await resolveModel(dir, empty)
    expect(r.found && r.model.source).toBe('local-dir')
    expect(r.found && r.model.modelDir).toBe(dir)
  })

  it('says an unknown model is unknown, and where it looked', async () => {
    const home = await tempDir()
    const r = await resolveModel('someone/secret-model-13b', join(home, 'hub'))
    expect(r.found).toBe(false)
    if (r.found) return
    expect(r.reason).toContain('neither in the Hugging Face cache')
    expect(r.searched.join(' ')).toContain('models--someone--secret-model-13b')
  })

  it('reports a local path without config.json and a config.json that is not JSON', async () => {
    const dir = await tempDir()
    let r = await resolveModel(dir, empty)
    expect(!r.found && r.reason).toBe(`${join(dir, 'config.json')} does not exist`)
    await mkdir(join(dir, 'hub/models--o--bad/snapshots/s'), { recursive: true })
    await writeFile(join(dir, 'hub/models--o--bad/snapshots/s/config.json'), '{ not json')
    r = await resolveModel('o/bad', join(dir, 'hub'))
    expect(!r.found && r.reason).toContain('config.json')
  })
})

describe('config parsing', () => {
  it('names the missing field', () => {
    expect(() => estimateFromConfig({ hidden_size: 10 })).toThrow('config.json has no num_hidden_layers')
  })

  it('reads dtypes as vLLM loads them', () => {
    expect(weightDtype({ torch_dtype: 'float16' })).toEqual({ dtype: 'float16', bytesPerParam: 2 })
    expect(weightDtype({ dtype: 'bfloat16' })).toEqual({ dtype: 'bfloat16', bytesPerParam: 2 })
    expect(weightDtype({ torch_dtype: 'float32' }).bytesPerParam).toBe(2)
    expect(weightDtype({ quantization_config: { quant_method: 'fp8' } }).bytesPerParam).toBe(1)
    expect(weightDtype({ quantization_config: { quant_method: 'awq', bits: 4 } }).bytesPerParam).toBe(0.5)
  })

  it('uses the nested text_config of multimodal configs', () => {
    const a = estimateFromConfig({ model_type: 'llava', text_config: QWEN_05B_CONFIG })
    expect(a.layers).toBe(24)
  })

  it('picks the cache directory as huggingface_hub does', () => {
    expect(hfCacheDir({ HF_HUB_CACHE: '/c', HF_HOME: '/h' })).toBe('/c')
    expect(hfCacheDir({ HF_HOME: '/h' })).toBe('/h/hub')
    expect(hfCacheDir({ XDG_CACHE_HOME: '/x' })).toBe('/x/huggingface/hub')
    expect(hfCacheDir({ HOME: '/home/u' })).toBe('/home/u/.cache/huggingface/hub')
  })
})
