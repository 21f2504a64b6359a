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
    if (durationSec !== undefined) timer = setTimeout(() => finish('timeout'), durationSec * 1000)
    process.once('SIGINT', onSignal)
    process.once('SIGTERM', onSignal)
  })
}
