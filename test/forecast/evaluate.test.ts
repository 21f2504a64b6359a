// Scoring alarms against onsets (src/forecast/evaluate.ts), on small datasets built by hand.
import { describe, expect, it } from 'vitest'
import type { TraceDataset } from '../../src/forecast/dataset.js'
import {
  type AlarmSource,
  episodes,
  median,
  scoreDatasets,
  type TypeScore,
} from '../../src/forecast/evaluate.js'
import { FEATURE_COUNT } from '../../src/forecast/features.js'
import type { FailureOnset } from '../../src/forecast/onsets.js'
import { FAILURE_TYPES, type FailureType } from '../../src/forecast/spec.js'

const NT = FAILURE_TYPES.length
const K = (t: FailureType) => FAILURE_TYPES.indexOf(t)

interface Run {
  /** One row per replica per second, t = 0..seconds-1 s, replicas interleaved as the dataset builder does. */
  seconds: number
  replicas?: string[]
  /** Onsets as [type, replica, second]. */
  onsets?: [FailureType, string, number][]
  /** Seconds at which each replica is not serving. */
  down?: (replica: string, s: number) => boolean
  /** Seconds at which a failure type is under way on a replica. */
  ongoing?: (type: FailureType, replica: string, s: number) => boolean
}

/** Each dataset's alarms (rows x FAILURE_TYPES), as the predictor under test raises them. */
const alarmsOf = new WeakMap<TraceDataset, Uint8Array>()
const hand: AlarmSource = { name: 'hand', alarm: (ds, row, k) => alarmsOf.get(ds)?.[row * NT + k] === 1 }

/** A dataset, and `raise` to set the alarms the predictor `hand` reads from it. */
function build(run: Run) {
  const replicas = run.replicas ?? ['r0']
  const rows = run.seconds * replicas.length
  const ds: TraceDataset = {
    name: 'hand-made',
    rows,
    t: new Float64Array(rows),
    replica: new Uint16Array(rows),
    replicas,
    features: new Float32Array(rows * FEATURE_COUNT),
    threshold: new Float32Array(rows * NT),
    linear: new Float32Array(rows * NT),
    hardware: new Float32Array(rows * 4),
    network: new Float32Array(rows * 4),
    serving: new Uint8Array(rows),
    ongoing: new Uint8Array(rows * NT),
    onsets: (run.onsets ?? []).map(
      ([failureType, replica, s]): FailureOnset => ({ failureType, replica, t: s * 1000, detail: '' }),
    ),
    injections: [],
    durationMs: (run.seconds - 1) * 1000,
  }
  let r = 0
  for (let s = 0; s < run.seconds; s++) {
    for (let rep = 0; rep < replicas.length; rep++, r++) {
      const name = replicas[rep]!
      ds.t[r] = s * 1000
      ds.replica[r] = rep
      ds.serving[r] = run.down?.(name, s) === true ? 0 : 1
      for (let k = 0; k < NT; k++)
        ds.ongoing[r * NT + k] = run.ongoing?.(FAILURE_TYPES[k]!, name, s) === true ? 1 : 0
    }
  }
  const alarms = new Uint8Array(rows * NT)
  alarmsOf.set(ds, alarms)
  /** Raises `type` on `replica` at each of the seconds given. */
  const raise = (type: FailureType, seconds: Iterable<number>, replica = replicas[0]!) => {
    const rep = replicas.indexOf(replica)
    for (const s of seconds) alarms[(s * replicas.length + rep) * NT + K(type)] = 1
  }
  return { ds, source: hand, raise }
}

const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i)

function scoreOf(ds: TraceDataset | TraceDataset[], source: AlarmSource, type: FailureType): TypeScore {
  const s = scoreDatasets(Array.isArray(ds) ? ds : [ds], [source]).find((x) => x.failureType === type)
  if (s === undefined) throw new Error(`no score for ${type}`)
  return s
}

describe('scoreDatasets', () => {
  it('scores every failure type for every predictor, in FAILURE_TYPES order', () => {
    const { ds, source } = build({ seconds: 10 })
    const other: AlarmSource = { name: 'other', alarm: () => false }
    const scores = scoreDatasets([ds], [source, other])
    expect(scores.map((s) => [s.predictor, s.failureType])).toEqual([
      ...FAILURE_TYPES.map((t) => ['hand', t]),
      ...FAILURE_TYPES.map((t) => ['other', t]),
    ])
  })

  it('counts an alarm 40 s before an onset within the horizon as a prediction with 40 s of lead', () => {
    const { ds, source, raise } = build({ seconds: 400, onsets: [['kv-exhaustion', 'r0', 200]] })
    raise('kv-exhaustion', [160])
    expect(scoreOf(ds, source, 'kv-exhaustion')).toMatchObject({
      failures: 1,
      predicted: 1,
      recall: 1,
      alarms: 1,
      trueAlarms: 1,
      precision: 1,
      leadsS: [40],
      medianLeadS: 40,
      falseAlarms: 0,
      falseAlarmsPerHour: 0,
    })
  })

  it('caps the lead of an alarm held long before the onset at the horizon', () => {
    const { ds, source, raise } = build({ seconds: 400, onsets: [['kv-exhaustion', 'r0', 300]] })
    raise('kv-exhaustion', range(0, 299))
    const s = scoreOf(ds, source, 'kv-exhaustion')
    expect(s.predicted).toBe(1)
    expect(s.leadsS).toEqual([120])
  })

  it('takes the episode with the most lead when several cover the window', () => {
    const { ds, source, raise } = build({ seconds: 400, onsets: [['oom', 'r0', 200]] })
    raise('oom', [150, 190])
    const s = scoreOf(ds, source, 'oom')
    expect(s).toMatchObject({ predicted: 1, leadsS: [50], alarms: 2, trueAlarms: 2, falseAlarms: 0 })
  })

  it('counts an alarm with less than the minimal lead as neither a prediction nor a true alarm', () => {
    // kv-exhaustion needs 5 s of warning: an alarm 2 s ahead claimed [203, 320] and was wrong.
    const { ds, source, raise } = build({ seconds: 400, onsets: [['kv-exhaustion', 'r0', 200]] })
    raise('kv-exhaustion', [198])
    expect(scoreOf(ds, source, 'kv-exhaustion')).toMatchObject({
      failures: 1,
      predicted: 0,
      recall: 0,
      leadsS: [],
      medianLeadS: null,
      alarms: 1,
      trueAlarms: 0,
      falseAlarms: 1,
    })
  })

  it('counts an alarm exactly the minimal lead before the onset as a prediction', () => {
    const { ds, source, raise } = build({ seconds: 400, onsets: [['kv-exhaustion', 'r0', 200]] })
    raise('kv-exhaustion', [195])
    expect(scoreOf(ds, source, 'kv-exhaustion').leadsS).toEqual([5])
  })

  it('counts an alarm with no onset within the horizon after it as one false alarm', () => {
    // The onset is 121 s after the alarm: past kv-exhaustion's 120 s horizon.
    const { ds, source, raise } = build({ seconds: 400, onsets: [['kv-exhaustion', 'r0', 200]] })
    raise('kv-exhaustion', [79])
    expect(scoreOf(ds, source, 'kv-exhaustion')).toMatchObject({
      failures: 1,
      predicted: 0,
      alarms: 1,
      trueAlarms: 0,
      precision: 0,
      falseAlarms: 1,
    })
    const { ds: quiet, source: q, raise: raiseQ } = build({ seconds: 400 })
    raiseQ('slo-violation', [10])
    expect(scoreOf(quiet, q, 'slo-violation')).toMatchObject({
      failures: 0,
      recall: null,
      alarms: 1,
      falseAlarms: 1,
    })
  })

  it('counts a long alarm episode as one claim per horizon, so holding an alarm is not free', () => {
    // queue-overflow's horizon is 30 s: 10..300 s is ten claims.
    const { ds, source, raise } = build({ seconds: 400 })
    raise('queue-overflow', range(10, 300))
    expect(scoreOf(ds, source, 'queue-overflow')).toMatchObject({ alarms: 10, falseAlarms: 10 })
  })

  it('counts only the claims of a long episode that the failure falls in as true', () => {
    // kv-exhaustion (horizon 120 s), alarm on from 0 to 599 s, onset at 700 s: claims [0,119],
    // [120,239], ... [480,599]; only the last covers 700 (480 + 5 <= 700 <= 599 + 120).
    const { ds, source, raise } = build({ seconds: 800, onsets: [['kv-exhaustion', 'r0', 700]] })
    raise('kv-exhaustion', range(0, 599))
    expect(scoreOf(ds, source, 'kv-exhaustion')).toMatchObject({
      failures: 1,
      predicted: 1,
      leadsS: [120],
      alarms: 5,
      trueAlarms: 1,
      falseAlarms: 4,
    })
  })

  it('scores each failure type against its own onsets only', () => {
    const { ds, source, raise } = build({ seconds: 400, onsets: [['kv-exhaustion', 'r0', 200]] })
    raise('oom', [160])
    expect(scoreOf(ds, source, 'kv-exhaustion')).toMatchObject({ failures: 1, predicted: 0, alarms: 0 })
    expect(scoreOf(ds, source, 'oom')).toMatchObject({ failures: 0, alarms: 1, falseAlarms: 1 })
  })

  it("does not credit an alarm on one replica for another replica's failure", () => {
    const { ds, source, raise } = build({
      seconds: 400,
      replicas: ['a', 'b'],
      onsets: [['kv-exhaustion', 'b', 200]],
    })
    raise('kv-exhaustion', [160], 'a')
    expect(scoreOf(ds, source, 'kv-exhaustion')).toMatchObject({
      failures: 1,
      predicted: 0,
      alarms: 1,
      falseAlarms: 1,
    })
  })

  it('ignores forecast alarms raised while the failure is under way', () => {
    const { ds, source, raise } = build({
      seconds: 400,
      onsets: [['kv-exhaustion', 'r0', 200]],
      ongoing: (type, _, s) => type === 'kv-exhaustion' && s >= 200 && s < 260,
    })
    raise('kv-exhaustion', range(210, 220))
    expect(scoreOf(ds, source, 'kv-exhaustion')).toMatchObject({
      failures: 1,
      predicted: 0,
      alarms: 0,
      falseAlarms: 0,
    })
  })

  it('ignores forecast alarms raised while the replica is not serving', () => {
    const { ds, source, raise } = build({ seconds: 400, down: (_, s) => s >= 100 })
    raise('oom', [150])
    expect(scoreOf(ds, source, 'oom')).toMatchObject({ alarms: 0, falseAlarms: 0 })
  })

  it.each(['hardware-failure', 'network-failure'] as FailureType[])(
    'scores %s as detection: an alarm after the onset counts, with a negative lead',
    (type) => {
      // The replica failed at 200 s: not serving, and the failure under way, from then on.
      const { ds, source, raise } = build({
        seconds: 400,
        onsets: [[type, 'r0', 200]],
        down: (_, s) => s >= 200,
        ongoing: (t, _, s) => t === type && s >= 200,
      })
      raise(type, [203])
      expect(scoreOf(ds, source, type)).toMatchObject({
        failures: 1,
        predicted: 1,
        leadsS: [-3],
        alarms: 1,
        trueAlarms: 1,
        falseAlarms: 0,
      })
    },
  )

  it('does not count a detection later than its window (30 s) as one', () => {
    const { ds, source, raise } = build({ seconds: 400, onsets: [['hardware-failure', 'r0', 200]] })
    raise('hardware-failure', [231])
    expect(scoreOf(ds, source, 'hardware-failure')).toMatchObject({
      failures: 1,
      predicted: 0,
      falseAlarms: 1,
    })
  })

  it('gives false alarms per hour over the serving rows of all datasets (rows / 3600)', () => {
    // 1800 serving rows here, 900 more there (and 200 down): 0.75 replica-hours.
    const a = build({ seconds: 1800 })
    const b = build({ seconds: 1100, down: (_, s) => s >= 900 })
    a.raise('slo-violation', [10, 500])
    b.raise('slo-violation', [300, 950])
    const s = scoreOf([a.ds, b.ds], a.source, 'slo-violation')
    expect(s.replicaHours).toBeCloseTo(0.75, 12)
    expect(s.falseAlarms).toBe(3)
    expect(s.falseAlarmsPerHour).toBeCloseTo(4, 12)
  })

  it('reports no rates without failures or alarms', () => {
    const { ds, source } = build({ seconds: 100 })
    expect(scoreOf(ds, source, 'kv-exhaustion')).toMatchObject({
      failures: 0,
      recall: null,
      alarms: 0,
      precision: null,
      medianLeadS: null,
      falseAlarmsPerHour: 0,
    })
  })
})

describe('episodes', () => {
  it('merges alarm seconds with gaps of up to 5 s into one episode', () => {
    const { ds, source, raise } = build({ seconds: 100 })
    raise('kv-exhaustion', [10, 11, 12, 17, 19, 25, 40])
    expect(episodes(ds, source, K('kv-exhaustion'), 0)).toEqual([
      { start: 10_000, end: 19_000 },
      { start: 25_000, end: 25_000 },
      { start: 40_000, end: 40_000 },
    ])
  })

  it("reads only the replica's own rows", () => {
    const { ds, source, raise } = build({ seconds: 60, replicas: ['a', 'b'] })
    raise('oom', [5, 6], 'a')
    raise('oom', [30], 'b')
    expect(episodes(ds, source, K('oom'), 0)).toEqual([{ start: 5000, end: 6000 }])
    expect(episodes(ds, source, K('oom'), 1)).toEqual([{ start: 30_000, end: 30_000 }])
  })

  it('keeps detection alarms while the failure is under way and the replica is down', () => {
    const { ds, source, raise } = build({
      seconds: 60,
      down: (_, s) => s >= 20,
      ongoing: (_t, _r, s) => s >= 20,
    })
    raise('network-failure', [25, 26])
    raise('kv-exhaustion', [25, 26])
    expect(episodes(ds, source, K('network-failure'), 0)).toEqual([{ start: 25_000, end: 26_000 }])
    expect(episodes(ds, source, K('kv-exhaustion'), 0)).toEqual([])
  })
})

describe('median', () => {
  it('is null for no values, the middle one for an odd count and the mean of the two middle ones for an even count', () => {
    expect(median([])).toBeNull()
    expect(median([7])).toBe(7)
    expect(median([3, 1, 2])).toBe(2)
    expect(median([4, 1, 3, 2])).toBe(2.5)
    expect(median([-30, 10, 120])).toBe(10)
  })

  it('leaves its argument unsorted', () => {
    const v = [3, 1, 2]
    median(v)
    expect(v).toEqual([3, 1, 2])
  })
})
