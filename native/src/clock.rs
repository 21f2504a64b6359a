//! CLOCK_MONOTONIC helpers. Node's `process.hrtime.bigint()` reads the same clock on Linux, so a
//! timestamp taken here can be compared with one taken in JS.

pub fn monotonic_ns() -> i64 {
  let mut ts = libc::timespec {
    tv_sec: 0,
    tv_nsec: 0,
  };
  // SAFETY: `ts` is a valid out-pointer for the duration of the call.
  unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
  ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// CPU time consumed by the calling thread.
pub fn thread_cpu_ns() -> i64 {
  let mut ts = libc::timespec {
    tv_sec: 0,
    tv_nsec: 0,
  };
  // SAFETY: as above.
  unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
  ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// Sleeps until an absolute CLOCK_MONOTONIC deadline, so that sleep overshoot does not
/// accumulate into rate drift the way `thread::sleep(interval)` would.
pub fn sleep_until_ns(deadline_ns: i64) {
  let ts = libc::timespec {
    tv_sec: deadline_ns / 1_000_000_000,
    tv_nsec: deadline_ns % 1_000_000_000,
  };
  // SAFETY: `ts` outlives the call; a null remainder is allowed with TIMER_ABSTIME.
  unsafe {
    while libc::clock_nanosleep(
      libc::CLOCK_MONOTONIC,
      libc::TIMER_ABSTIME,
      &ts,
      std::ptr::null_mut(),
    ) == libc::EINTR
    {}
  }
}

/// Linux rounds timed sleeps up by the thread's timer slack (50 µs by default), which alone
/// would eat half of a 10 kHz tick. Ask for a slack proportional to the interval instead.
pub fn set_timer_slack_ns(slack_ns: u64) {
  // SAFETY: PR_SET_TIMERSLACK only reads its integer argument.
  unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, slack_ns.max(1) as libc::c_ulong, 0, 0, 0) };
}
