/**
 * Scores predictors against what happened, per failure type, the way forecasting.md §6.2 asks
 * (Salfner et al.'s time model: an alarm raised at time a claims that the failure starts within
 * [a + Δt_w, a + Δt_p], Δt_w the warning time the mitigation needs, Δt_p the horizon):
 *
 * - Alarming seconds on one replica merge into an episode (gaps up to 5 s), and an episode is cut
 *   into claims of at most Δt_p each: an alarm held for ten minutes makes five claims, not one, so
 *   holding an alarm long before a failure is not rewarded. (A detection episode is one claim:
 *   it says "broken now", and holding it while broken is right.)
 * - A claim [s, e] is true when a failure of its type starts on its replica within
 *   [s + Δt_w, e + Δt_p]; otherwise it is a false alarm. A late alarm (less lead than Δt_w) is a
 *   false alarm too.
 * - A failure counts as predicted when an alarm was raised within [onset - Δt_p, onset - Δt_w]
 *   (or was already on at onset - Δt_p). Lead = onset - the start of that alarm's episode, capped
 *   at Δt_p. Failures without a precursor (hardware, network) are scored as detection: Δt_w is
 *   negative, and the lead is minus the detection delay.
 * - Alarms while the failure is already under way are not counted (detections excepted).
 * - False alarms per hour are per monitored replica-hour (one dataset row = one second).
 */
import type { TraceDataset } from './dataset.js'
import { FAILURE_TYPES, type FailureType, SCORING } from './spec.js'

/** A predictor as the scorer sees it: does it alarm for `type` at dataset row `row`? */
export interface AlarmSource {
  name: string
  alarm(ds: TraceDataset, row: number, typeIndex: number): boolean
}

export interface TypeScore {
  failureType: FailureType
  predictor: string
  failures: number
  predicted: number
  recall: number | null
  alarms: number
  trueAlarms: number
  precision: number | null
  /** Lead of each predicted failure, seconds (negative: detected after the onset). */
  leadsS: number[]
  medianLeadS: number | null
  falseAlarms: number
  replicaHours: number
  falseAlarmsPerHour: number
}

const MERGE_GAP_MS = 5000

export function scoreDatasets(
  datasets: readonly TraceDataset[],
  predictors: readonly AlarmSource[],
): TypeScore[] {
  const out: TypeScore[] = []
  let rows = 0
  for (const ds of datasets) for (let r = 0; r < ds.rows; r++) rows += ds.serving[r]!
  const hours = rows / 3600
  for (const p of predictors) {
    for (let ti = 0; ti < FAILURE_TYPES.length; ti++) {
      const type = FAILURE_TYPES[ti]!
      const s: TypeScore = {
        failureType: type,
        predictor: p.name,
        failures: 0,
        predicted: 0,
        recall: null,
        alarms: 0,
        trueAlarms: 0,
        precision: null,
        leadsS: [],
        medianLeadS: null,
        falseAlarms: 0,
        replicaHours: hours,
        falseAlarmsPerHour: 0,
      }
      for (const ds of datasets) scoreOne(ds, p, ti, s)
      s.recall = s.failures === 0 ? null : s.predicted / s.failures
      s.precision = s.alarms === 0 ? null : s.trueAlarms / s.alarms
      s.medianLeadS = median(s.leadsS)
      s.falseAlarmsPerHour = hours > 0 ? s.falseAlarms / hours : 0
      out.push(s)
    }
  }
  return out
}

interface Episode {
  start: number
  end: number
}

/** The alarm episodes of one replica for one type. */
export function episodes(ds: TraceDataset, p: AlarmSource, ti: number, replica: number): Episode[] {
  const eps: Episode[] = []
  const NT = FAILURE_TYPES.length
  const detect = SCORING[FAILURE_TYPES[ti]!].minLeadS < 0
  let cur: Episode | null = null
  for (let r = 0; r < ds.rows; r++) {
    if (ds.replica[r] !== replica) continue
    const t = ds.t[r]!
    // Forecasts count while the replica serves; detections also after it failed.
    if (!detect && ds.serving[r] === 0) continue
    // A forecast raised while its failure is under way says nothing new; a detection is the point.
    const on = (detect || ds.ongoing[r * NT + ti] === 0) && p.alarm(ds, r, ti)
    if (!on) continue
    if (cur !== null && t - cur.end <= MERGE_GAP_MS) cur.end = t
    else {
      cur = { start: t, end: t }
      eps.push(cur)
    }
  }
  return eps
}

function scoreOne(ds: TraceDataset, p: AlarmSource, ti: number, s: TypeScore): void {
  const type = FAILURE_TYPES[ti]!
  const { horizonS, minLeadS } = SCORING[type]
  const hp = horizonS * 1000
  const wl = minLeadS * 1000
  for (let rep = 0; rep < ds.replicas.length; rep++) {
    const name = ds.replicas[rep]!
    const onsets = ds.onsets.filter((o) => o.failureType === type && o.replica === name).map((o) => o.t)
    const eps = episodes(ds, p, ti, rep)
    s.failures += onsets.length
    for (const f of onsets) {
      let best: number | null = null
      for (const e of eps) {
        // Alarming at some instant of [f - Δt_p, f - Δt_w]?
        if (e.start <= f - wl && e.end >= f - hp) {
          const lead = Math.min(f - e.start, hp)
          if (best === null || lead > best) best = lead
        }
      }
      if (best !== null) {
        s.predicted++
        s.leadsS.push(best / 1000)
      }
    }
    for (const e of eps) {
      // A detection says "broken now", and holding it while broken is right: one claim per episode.
      const claim = wl < 0 ? Number.POSITIVE_INFINITY : hp
      for (let cs = e.start; cs <= e.end; cs += claim) {
        const ce = Math.min(e.end, cs + claim - 1000)
        s.alarms++
        if (onsets.some((f) => f >= cs + wl && f <= ce + hp)) s.trueAlarms++
        else s.falseAlarms++
      }
    }
  }
}

export function median(v: readonly number[]): number | null {
  if (v.length === 0) return null
  const s = [...v].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}

/** The scores as a fixed-width table, one block per failure type. */
export function formatScores(scores: readonly TypeScore[]): string {
  const lines: string[] = []
  const f = (v: number | null, d = 2) => (v === null ? '-' : v.toFixed(d))
  const header = `${'failure type'.padEnd(18)}${'predictor'.padEnd(19)}${'failures'.padStart(9)}${'recall'.padStart(8)}${'precision'.padStart(11)}${'median lead s'.padStart(15)}${'false/h'.padStart(9)}`
  lines.push(header)
  lines.push('-'.repeat(header.length))
  for (const type of FAILURE_TYPES) {
    for (const s of scores.filter((x) => x.failureType === type)) {
      lines.push(
        `${type.padEnd(18)}${s.predictor.padEnd(19)}${String(s.failures).padStart(9)}${f(s.recall).padStart(8)}` +
          `${f(s.precision).padStart(11)}${f(s.medianLeadS, 1).padStart(15)}${f(s.falseAlarmsPerHour).padStart(9)}`,
      )
    }
  }
  const h = scores[0]?.replicaHours ?? 0
  lines.push('')
  lines.push(
    `${h.toFixed(2)} monitored replica-hours. Lead: seconds of warning before the onset (negative: detected after it).`,
  )
  return lines.join('\n')
}
