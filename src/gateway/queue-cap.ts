/**
 * Queue-aware admission: while vLLM reports requests waiting in its own queue, more admitted
 * requests only wait there (their time to first token growing with every one), so the replica is
 * capped at what it is running. The adaptive limit reacts to latency, which an LLM request only
 * shows after its whole generation; this reacts at the next scrape.
 *
 * How the cap comes back up matters as much. Lifting it as soon as one scrape shows an empty
 * queue (under overload, often only the moment between a batch finishing and the next requests
 * reaching vLLM) let the adaptive limit (twice what vLLM ran) through at once, and the burst
 * waited a whole generation in vLLM's queue: admitted-request TTFT p99 1.96 s against a 1 s SLO
 * in bench/gateway-overload.mjs. Holding it at the running count instead starved the replica
 * when that count was a passing low (a scrape taken while a burst was still being scheduled).
 * So, somewhat as TCP recovers its window: a queue seen in one scrape only is a passing one, and
 * the next empty scrape restores the limit in force before the cut; a queue seen in two scrapes
 * in a row, or right after such a restore, is real, and the running count becomes the level to
 * restore. Above that level the cap probes for room one request per `kProbeIntervalMs` and is
 * lifted once it reaches the adaptive limit. A cap set by anything else (a mitigation) is left alone.
 */
import type { AdmissionController } from './admission.js'

const kReason = 'vLLM queue: '
/** Above the level to restore, the cap rises one request this often, ms. */
const kProbeIntervalMs = 1000

interface Followed {
  /** The level an empty queue restores. */
  restore: number
  /** The last raise restored `restore` (a queue now says it was too high). */
  restored: boolean
  /** Consecutive scrapes with a queue. */
  streak: number
  lastRaise: number
}

export class QueueAwareCap {
  readonly #admission: AdmissionController
  readonly #now: () => number
  /** Replicas whose cap this set (and may move or lift). */
  readonly #mine = new Map<string, Followed>()

  constructor(admission: AdmissionController, now: () => number) {
    this.#admission = admission
    this.#now = now
  }

  /** Follows one scrape of `replica` (`waiting`, `running` null: unknown or stale). */
  follow(replica: string, waiting: number | null, running: number | null): void {
    const st = this.#admission.state(replica)
    let f = this.#mine.get(replica)
    if (f !== undefined && (st.cap === null || !st.capReason?.startsWith(kReason))) {
      // Someone else lifted or replaced the cap since.
      this.#mine.delete(replica)
      f = undefined
    }
    if (f === undefined && st.cap !== null) return
    const t = this.#now()
    if (waiting !== null && waiting > 0 && running !== null && running > 0) {
      const limit = Math.max(1, Math.min(st.adaptiveLimit, running))
      if (f === undefined) {
        f = { restore: st.limit, restored: false, streak: 0, lastRaise: t }
        this.#mine.set(replica, f)
      } else if (f.restored || f.streak > 0) {
        f.restore = limit
      }
      f.restored = false
      f.streak++
      f.lastRaise = t
      if (st.cap !== limit) this.#admission.cap(replica, limit, `${kReason}${waiting} waiting`)
      return
    }
    if (f === undefined) return
    f.streak = 0
    const cap = st.cap ?? 0
    let next = f.restore
    f.restored = cap < next
    if (!f.restored) {
      if (t - f.lastRaise < kProbeIntervalMs) return
      next = cap + 1
    }
    f.lastRaise = t
    if (next >= st.adaptiveLimit) {
      this.#admission.release(replica)
      this.#mine.delete(replica)
    } else {
      this.#admission.cap(replica, next, `${kReason}empty, raising the cap`)
    }
  }
}
