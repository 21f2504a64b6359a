/** The standard scenario suite: every fault once, a steady fleet, and the two-replica demo. */
export const SUITE: readonly string[] = [
  'steady',
  'kv-exhaustion',
  'kv-surge',
  'gpu-oom-spike',
  'gpu-oom-cotenant',
  'memory-leak',
  'thermal-throttle',
  'xid-48',
  'xid-79',
  'nccl-hang',
  'engine-death',
  'perf-drift',
  'demo',
]
