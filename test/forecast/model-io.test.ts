// Model directories (src/forecast/model-io.ts): the shipped model, round trips, and the damaged or
// foreign copies that must be refused. Each test works on its own copy in a temporary directory.
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ModelLoadError, ModelMismatchError } from '../../src/errors.js'
import { FEATURE_COUNT, FEATURE_NAMES, FEATURE_SCHEMA_VERSION } from '../../src/forecast/features.js'
import {
  buildModel,
  initBackend,
  loadModel,
  loadModelArtifacts,
  type ModelArtifacts,
  type ModelMeta,
  newMeta,
  saveModel,
  tfl,
  toArtifacts,
} from '../../src/forecast/model.js'
import { MODEL_OUTPUTS } from '../../src/forecast/spec.js'

const shipped = fileURLToPath(new URL('../../models/forecaster', import.meta.url))

let root: string
let artifacts: ModelArtifacts
let n = 0

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'vllm-monitor-model-io-'))
  await initBackend('auto')
  const m = buildModel({ hidden: [4], seed: 5 })
  const zeros = new Array<number>(FEATURE_COUNT).fill(0)
  artifacts = await toArtifacts(m, newMeta('model-io-test', { mean: zeros, std: zeros.map(() => 1) }))
  m.dispose()
  m.optimizer?.dispose()
})

afterAll(async () => {
  await rm(root, { recursive: true, force: true })
})

/** A fresh, valid model directory under the temporary root. */
async function modelDir(a: ModelArtifacts = artifacts): Promise<string> {
  const dir = join(root, `m${n++}`)
  await saveModel(dir, a)
  return dir
}

async function editMeta(dir: string, edit: (meta: Record<string, unknown>) => void): Promise<void> {
  const meta = JSON.parse(await readFile(join(dir, 'meta.json'), 'utf8')) as Record<string, unknown>
  edit(meta)
  await writeFile(join(dir, 'meta.json'), JSON.stringify(meta))
}

/** Awaits `p` and returns what it rejected with. */
async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p
  } catch (err) {
    return err as Error
  }
  throw new Error('expected a rejection')
}

describe('the shipped model (models/forecaster)', () => {
  // A training run may be rewriting the directory: meta.json goes last, so a read in between
  // sees old checksums for new files. Such a read is refused (never half-loaded); retry it.
  async function withRetry<T>(f: () => Promise<T>): Promise<T> {
    for (let i = 0; ; i++) {
      try {
        return await f()
      } catch (err) {
        if (i >= 4 || !(err instanceof ModelLoadError)) throw err
        await new Promise((r) => setTimeout(r, 1000))
      }
    }
  }

  it('passes the file checks and describes this monitor’s features and outputs', async () => {
    const a = await withRetry(() => loadModelArtifacts(shipped))
    expect(a.meta.featureSchemaVersion).toBe(FEATURE_SCHEMA_VERSION)
    expect(a.meta.features).toEqual(FEATURE_NAMES)
    expect(a.meta.outputs).toEqual(MODEL_OUTPUTS)
    expect(a.meta.sha256).toBeDefined()
    expect(a.weights.byteLength).toBeGreaterThan(0)
  })

  it('builds in TensorFlow.js (loadModel with verify)', async () => {
    const a = await withRetry(() => loadModel(shipped))
    expect(a.meta.name).toBe('forecaster')
  })
})

describe('saveModel and loadModelArtifacts', () => {
  it('round-trip a model: the same metadata, topology and weights, with checksums added', async () => {
    const dir = await modelDir()
    const back = await loadModelArtifacts(dir)
    const { sha256, ...meta } = back.meta
    expect(meta).toEqual(artifacts.meta)
    expect(sha256).toEqual({
      'model.json': expect.stringMatching(/^[0-9a-f]{64}$/),
      'weights.bin': expect.stringMatching(/^[0-9a-f]{64}$/),
    })
    expect(back.modelJSON).toEqual(artifacts.modelJSON)
    expect(new Uint8Array(back.weights)).toEqual(new Uint8Array(artifacts.weights))
  })

  it('leave no temporary files behind', async () => {
    const dir = await modelDir()
    expect((await readdir(dir)).sort()).toEqual(['meta.json', 'model.json', 'weights.bin'])
  })

  it('load a saved model with verify', async () => {
    const a = await loadModel(await modelDir())
    expect(a.meta.name).toBe('model-io-test')
  })
})

describe('loadModelArtifacts refuses', () => {
  it('a weights.bin with one byte flipped, naming the checksum', async () => {
    const dir = await modelDir()
    const w = await readFile(join(dir, 'weights.bin'))
    const i = w.length >> 1
    w[i] = w[i]! ^ 0x01
    await writeFile(join(dir, 'weights.bin'), w)
    const err = await rejection(loadModelArtifacts(dir))
    expect(err).toBeInstanceOf(ModelLoadError)
    expect(err.message).toBe(
      `model ${dir}: weights.bin does not match the checksum in meta.json (corrupt or half-written)`,
    )
  })

  it('a model.json changed after meta.json was written, naming the checksum', async () => {
    const dir = await modelDir()
    await writeFile(join(dir, 'model.json'), `${await readFile(join(dir, 'model.json'), 'utf8')} `)
    const err = await rejection(loadModelArtifacts(dir))
    expect(err).toBeInstanceOf(ModelLoadError)
    expect(err.message).toContain('model.json does not match the checksum in meta.json')
  })

  it('a truncated weights.bin without checksums in meta.json, by its byte count', async () => {
    const dir = await modelDir()
    await editMeta(dir, (m) => {
      delete m.sha256
    })
    const w = await readFile(join(dir, 'weights.bin'))
    await writeFile(join(dir, 'weights.bin'), w.subarray(0, w.length - 8))
    const err = await rejection(loadModelArtifacts(dir))
    expect(err).toBeInstanceOf(ModelLoadError)
    expect(err.message).toBe(
      `model ${dir}: weights.bin holds ${w.length - 8} bytes but model.json describes ${w.length}`,
    )
  })

  it('a meta.json that is not JSON', async () => {
    const dir = await modelDir()
    await writeFile(join(dir, 'meta.json'), '{"format": "vllm-monitor-forecaster",')
    const err = await rejection(loadModelArtifacts(dir))
    expect(err).toBeInstanceOf(ModelLoadError)
    expect(err.message).toMatch(new RegExp(`^model ${dir}: meta\\.json is not valid JSON \\(`))
    expect(err.cause).toBeInstanceOf(SyntaxError)
  })

  it('a directory that does not exist, saying there is no such file', async () => {
    const dir = join(root, 'missing')
    const err = await rejection(loadModelArtifacts(dir))
    expect(err).toBeInstanceOf(ModelLoadError)
    expect(err.message).toBe(`model ${dir}: cannot read meta.json (no such file)`)
    expect((err.cause as NodeJS.ErrnoException).code).toBe('ENOENT')
  })

  it('a directory without weights.bin', async () => {
    const dir = await modelDir()
    await rm(join(dir, 'weights.bin'))
    const err = await rejection(loadModelArtifacts(dir))
    expect(err).toBeInstanceOf(ModelLoadError)
    expect(err.message).toBe(`model ${dir}: cannot read weights.bin (no such file)`)
  })

  it('a model.json without a weights manifest', async () => {
    const dir = await modelDir({
      ...artifacts,
      modelJSON: { modelTopology: {} } as unknown as ModelArtifacts['modelJSON'],
    })
    const err = await rejection(loadModelArtifacts(dir))
    expect(err).toBeInstanceOf(ModelLoadError)
    expect(err.message).toContain('model.json has no weightsManifest')
  })

  // Bug: a manifest entry without a numeric shape (or a group without `weights`) throws a raw
  // TypeError from the byte count instead of the ModelLoadError the function promises.
  it.each([
    ['a group without weights', [{ paths: ['weights.bin'] }]],
    ['an entry without a shape', [{ paths: ['weights.bin'], weights: [{ name: 'w', dtype: 'float32' }] }]],
  ])('a weights manifest with %s, with ModelLoadError', async (_, weightsManifest) => {
    const dir = await modelDir({
      ...artifacts,
      modelJSON: { ...artifacts.modelJSON, weightsManifest } as unknown as ModelArtifacts['modelJSON'],
    })
    const err = await rejection(loadModelArtifacts(dir))
    expect(err).toBeInstanceOf(ModelLoadError)
  })

  it('normalisation of the wrong length', async () => {
    const dir = await modelDir()
    await editMeta(dir, (m) => {
      ;(m.normalization as ModelMeta['normalization']).std.pop()
    })
    const err = await rejection(loadModelArtifacts(dir))
    expect(err).toBeInstanceOf(ModelLoadError)
    expect(err.message).toContain(`normalization must hold ${FEATURE_COUNT} finite means and stds`)
  })
})

describe('loadModelArtifacts refuses a model made for another monitor with ModelMismatchError', () => {
  it.each<[string, (m: Record<string, unknown>) => void, string]>([
    [
      'a feature renamed',
      (m) => {
        ;(m.features as string[])[3] = 'kv.d45'
      },
      'feature 3 is "kv.d45", expected "kv.d30"',
    ],
    [
      'a feature missing',
      (m) => {
        ;(m.features as string[]).pop()
      },
      `${FEATURE_COUNT - 1} features, this monitor computes ${FEATURE_COUNT}`,
    ],
    [
      'another feature schema',
      (m) => {
        m.featureSchemaVersion = FEATURE_SCHEMA_VERSION + 1
      },
      `trained on feature schema ${FEATURE_SCHEMA_VERSION + 1}, this monitor computes schema ${FEATURE_SCHEMA_VERSION}`,
    ],
    [
      'another format',
      (m) => {
        m.format = 'keras'
      },
      'format "keras", expected "vllm-monitor-forecaster"',
    ],
    [
      'another format version',
      (m) => {
        m.formatVersion = 2
      },
      'format version 2, this monitor reads version 1',
    ],
    [
      'other outputs',
      (m) => {
        ;(m.outputs as { horizonS: number }[])[0]!.horizonS = 10
      },
      `its outputs are not the ${MODEL_OUTPUTS.length} this monitor reads`,
    ],
  ])('%s', async (_, edit, says) => {
    const dir = await modelDir()
    await editMeta(dir, edit)
    const err = await rejection(loadModelArtifacts(dir))
    expect(err).toBeInstanceOf(ModelMismatchError)
    expect(err.message).toContain(`model ${dir}: ${says}`)
  })
})

describe('loadModel with verify', () => {
  it('refuses a model.json that is valid JSON with checksums but a topology that does not load', async () => {
    const broken = {
      ...artifacts.modelJSON,
      modelTopology: {
        class_name: 'Sequential',
        config: { name: 's', layers: [{ class_name: 'NoSuchLayer', config: {} }] },
      },
    }
    const dir = await modelDir({ ...artifacts, modelJSON: broken })
    await expect(loadModelArtifacts(dir)).resolves.toMatchObject({ meta: { name: 'model-io-test' } })
    const err = await rejection(loadModel(dir))
    expect(err).toBeInstanceOf(ModelLoadError)
    expect(err.message).toMatch(/^model "model-io-test": the topology or weights do not load: /)
    // Without verify, only the file checks run.
    await expect(loadModel(dir, { verify: false })).resolves.toBeDefined()
  })

  it('refuses layers whose shapes are not those meta.json lists', async () => {
    const m = tfl.sequential({ layers: [tfl.layers.dense({ inputShape: [3], units: MODEL_OUTPUTS.length })] })
    const zeros = new Array<number>(FEATURE_COUNT).fill(0)
    const a = await toArtifacts(m, newMeta('narrow', { mean: zeros, std: zeros.map(() => 1) }))
    m.dispose()
    const dir = await modelDir(a)
    const err = await rejection(loadModel(dir))
    expect(err).toBeInstanceOf(ModelMismatchError)
    expect(err.message).toBe(
      `model "narrow": its layers take 3 features and give ${MODEL_OUTPUTS.length} outputs, but its meta.json lists ${FEATURE_COUNT} and ${MODEL_OUTPUTS.length}`,
    )
  })
})
