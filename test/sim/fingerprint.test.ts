/**
 * The pretrained forecasting model and its figures were trained on the simulator's readings, so a
 * fleet without a gateway must keep producing them bit for bit. Each case hashes every record of a
 * run (JSON, in order) and every log line; the hashes were recorded before the gateway levers were
 * added (src/sim/gateway.ts). A change here means the training data changed: retrain, then update.
 */
import { createHash } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { runSimulation } from '../../src/sim/run.js'
import type { ScenarioOptions } from '../../src/sim/scenarios.js'

interface Fingerprint {
  scenario: string
  options: ScenarioOptions
  records: number
  droppedArrivals: number
  sha256: string
}

const kFingerprints: readonly Fingerprint[] = [
  {
    scenario: 'kv-exhaustion',
    options: {},
    records: 6013,
    droppedArrivals: 26,
    sha256: '4712cf19f04f4b3c46c728c1ac33fe24e783992c4899041ee51db5e2c88c7fbe',
  },
  {
    scenario: 'kv-exhaustion',
    options: { replicas: 2, seed: 7 },
    records: 12024,
    droppedArrivals: 82,
    sha256: 'aa40b3875696f2190a46eea33ecc6fe74689b1703568400a1073e7d35d4dabce',
  },
  {
    scenario: 'kv-surge',
    options: {},
    records: 4813,
    droppedArrivals: 26,
    sha256: '49933ed49a11f691552f268e3c7e497788be4929832cb32e2c35090cedb90af6',
  },
  {
    scenario: 'gpu-oom-spike',
    options: {},
    records: 3017,
    droppedArrivals: 391,
    sha256: '35b0cdfb6c0f558b2364059d3486d645f6da036bcda15fdd8eeafbb1fcd69ca8',
  },
  {
    scenario: 'gpu-oom-cotenant',
    options: {},
    records: 4017,
    droppedArrivals: 815,
    sha256: 'fd5f72e271e8850e6e8dcc1474148f6227946a7ef5776579a44071fb5bff7aed',
  },
  {
    scenario: 'thermal-throttle',
    options: {},
    records: 7213,
    droppedArrivals: 146,
    sha256: 'a3c2d896cf6165f405ac8fd7b51e5522b1af579a5372dc0787960efc3ef1b86c',
  },
  {
    scenario: 'nccl-hang',
    options: {},
    records: 14427,
    droppedArrivals: 127,
    sha256: '3f5a93bbe4fae05a30a2c4ab7b5f7cc580a87b66de2e4d7f5238cd6534e0b446',
  },
  {
    scenario: 'demo',
    options: {},
    records: 9630,
    droppedArrivals: 31,
    sha256: 'a3d1add59800dd37053a7f03aaea73875a7e3f0f905406a037694d31cd73d7dd',
  },
  {
    scenario: 'xid-48',
    options: { seed: 3 },
    records: 3020,
    droppedArrivals: 333,
    sha256: '9e00e1862e17f325e222b8522aefa0f8a53ee5744367d4615a2881f9e6f57996',
  },
  {
    scenario: 'memory-leak',
    options: {},
    records: 8017,
    droppedArrivals: 666,
    sha256: 'bd176e6d261c3373353522473ed50ae4643f71fb078f437931cf0fd69133c0c0',
  },
]

function fingerprint(scenario: string, options: ScenarioOptions): Omit<Fingerprint, 'scenario' | 'options'> {
  const h = createHash('sha256')
  const result = runSimulation({
    scenario,
    ...options,
    onRecord: (record) => h.update(`${JSON.stringify(record)}\n`),
    onLog: (replica, stream, text, t) => h.update(`${t} ${replica} ${stream} ${text}\n`),
  })
  return {
    records: result.records,
    droppedArrivals: result.fleet.droppedArrivals,
    sha256: h.digest('hex'),
  }
}

describe('simulator fingerprints (a fleet without a gateway)', () => {
  for (const fp of kFingerprints) {
    it(`${fp.scenario} ${JSON.stringify(fp.options)} reads exactly as when the model was trained`, () => {
      expect(fingerprint(fp.scenario, fp.options)).toEqual({
        records: fp.records,
        droppedArrivals: fp.droppedArrivals,
        sha256: fp.sha256,
      })
    })
  }
})
