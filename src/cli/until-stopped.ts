/** Resolves after `durationSec` (if given) or on SIGINT / SIGTERM, whichever comes first, and
 * leaves no timer or signal handler behind, so the process exits as soon as the work is closed. */
export function untilStopped(durationSec?: number): Promise<'timeout' | 'signal'> {
  return new Promise((resolve) => {
    let timer: NodeJS.Timeout | null = null
    const finish = (why: 'timeout' | 'signal') => {
      if (timer !== null) clearTimeout(timer)
      process.off('SIGINT', onSignal)
      process.off('SIGTERM', onSignal)
      resolve(why)
    }
    const onSignal = () => finish('signal')
    // Timers hold 2^31-1 ms (about 24.8 days); a longer duration re-arms until it is reached.
    const end = durationSec === undefined ? null : Date.now() + durationSec * 1000
    const arm = () => {
      if (end === null) return
      const left = end - Date.now()
      if (left <= 0) finish('timeout')
      else timer = setTimeout(arm, Math.min(left, 2_147_483_647))
    }
    arm()
    process.once('SIGINT', onSignal)
    process.once('SIGTERM', onSignal)
  })
}
