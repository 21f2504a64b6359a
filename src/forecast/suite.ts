import { SCENARIO_NAMES } from '../sim/scenarios.js'

/**
 * The standard scenario suite: every named scenario (each fault once, a steady fleet, the step
 * surge and the two-replica demo), in their order.
 */
export const SUITE: readonly string[] = SCENARIO_NAMES
