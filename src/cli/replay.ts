/**
 * `vllm-monitor replay FILE`: runs a recorded (or simulated) trace through a fresh monitor and
 * prints what it concludes: lifecycle transitions, events, ground-truth labels, and with `--json`
 * every checkpoint as one JSON line. `--speed N` paces it at N× the recorded time.
 */
import { replayCheckpoints } from '../monitor/replay.js'
import type { Checkpoint } from '../telemetry/types.js'
import { formatEvent } from './demo-view.js'

export interface ReplayCliOptions {
  file: string
  speed?: number
  json: boolean
  lenient: boolean
}

export async function runReplay(o: ReplayCliOptions): Promise<number> {
  let count = 0
  let skipped = 0
  let lastEventT = Number.NEGATIVE_INFINITY
  const wall0 = performance.now()
  let last: Checkpoint | null = null
  const gen = replayCheckpoints(o.file, {
    lenient: o.lenient,
    onError: (err) => {
      skipped++
      console.error(`skipped: ${err.message}`)
    },
  })
  for await (const cp of gen) {
    count++
    last = cp
    if (o.speed !== undefined) {
      const due = cp.t / o.speed - (performance.now() - wall0)
      if (due > 1) await new Promise((r) => setTimeout(r, due))
    }
    if (o.json) {
      process.stdout.write(`${JSON.stringify(cp)}\n`)
      continue
    }
    for (const e of cp.events) {
      if (e.t <= lastEventT) continue
      lastEventT = e.t
      process.stdout.write(`${formatEvent(e, false)}\n`)
    }
  }
  if (!o.json) {
    const states = last?.engines.map((e) => `${e.replica} ${e.lifecycleState}`).join(', ') ?? 'no replicas'
    console.error(
      `replayed ${count} checkpoints (${((last?.t ?? 0) / 1000).toFixed(1)} s) in ${((performance.now() - wall0) / 1000).toFixed(2)} s; final: ${states}` +
        (skipped > 0 ? `; ${skipped} bad lines skipped` : ''),
    )
  }
  return 0
}
