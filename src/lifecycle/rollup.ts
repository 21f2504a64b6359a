/**
 * The fleet's lifecycle state from its replicas' states: one word for a dashboard or an exporter
 * that says whether the fleet can take traffic, and if not, how far it has got.
 */
import type { LifecycleState } from '../telemetry/types.js'

/**
 * How far along start-up each state is, for the "least advanced" rule. SHUTTING_DOWN ranks
 * below NOT_STARTED because a replica shutting down is on its way back to NOT_STARTED: a fleet
 * with one replica stopping and the rest not started is shutting down, not "not started".
 */
const kStartupRank: Partial<Record<LifecycleState, number>> = {
  SHUTTING_DOWN: 0,
  NOT_STARTED: 1,
  INITIALIZING: 2,
  LOADING_MODEL: 3,
  READY: 4,
}

/**
 * The rule, first match wins:
 * 1. no replicas: NOT_STARTED;
 * 2. every replica SERVING: SERVING;
 * 3. some replica can take traffic (SERVING or DEGRADED) but not all are SERVING: DEGRADED, as
 *    the fleet serves with less than its full capacity (a READY replica not yet serving counts
 *    against it too);
 * 4. none can take traffic and one is in ERROR: ERROR;
 * 5. otherwise (all in start-up or shutdown states): the least advanced of them, by the order
 *    SHUTTING_DOWN < NOT_STARTED < INITIALIZING < LOADING_MODEL < READY, since the fleet is only
 *    as far along as its slowest replica.
 */
export function rollUpStates(states: readonly LifecycleState[]): LifecycleState {
  if (states.length === 0) return 'NOT_STARTED'
  let serving = 0
  let degraded = 0
  let error = false
  let least: LifecycleState = 'NOT_STARTED'
  let leastRank = Number.POSITIVE_INFINITY
  for (const s of states) {
    if (s === 'SERVING') serving++
    else if (s === 'DEGRADED') degraded++
    else if (s === 'ERROR') error = true
    else {
      const rank = kStartupRank[s] ?? Number.POSITIVE_INFINITY
      if (rank < leastRank) {
        leastRank = rank
        least = s
      }
    }
  }
  if (serving === states.length) return 'SERVING'
  if (serving + degraded > 0) return 'DEGRADED'
  if (error) return 'ERROR'
  return least
}
