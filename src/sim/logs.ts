/**
 * vLLM's log line format (`vllm/logger.py`): `(<Proc> pid=<pid>) LEVEL MM-DD HH:MM:SS [file.py:N] msg`,
 * no year and no time zone. Uvicorn's own lines (`INFO:     Started server process [N]`) go to
 * stderr without the prefix. The message texts below are vLLM's format strings (vllm.md §3, §4).
 */

export type LogStream = 'stdout' | 'stderr'
export type LogLevel = 'DEBUG' | 'INFO' | 'WARNING' | 'ERROR' | 'CRITICAL'

export interface LogLine {
  /** Simulated ms. */
  t: number
  stream: LogStream
  text: string
}

function pad2(n: number): string {
  return n < 10 ? `0${n}` : String(n)
}

/** `MM-DD HH:MM:SS` in UTC for an absolute epoch ms. */
export function formatLogTime(epochMs: number): string {
  const d = new Date(epochMs)
  return `${pad2(d.getUTCMonth() + 1)}-${pad2(d.getUTCDate())} ${pad2(d.getUTCHours())}:${pad2(
    d.getUTCMinutes(),
  )}:${pad2(d.getUTCSeconds())}`
}

export function formatVllmLine(
  proc: string,
  pid: number,
  level: LogLevel,
  epochMs: number,
  fileLine: string,
  msg: string,
): string {
  return `(${proc} pid=${pid}) ${level} ${formatLogTime(epochMs)} [${fileLine}] ${msg}`
}

export function gib(bytes: number, digits = 2): string {
  return (bytes / 1024 ** 3).toFixed(digits)
}

/** The Python traceback vLLM prints when EngineCore dies of `exception`. */
export function engineCoreTraceback(exception: string): string[] {
  return [
    'Traceback (most recent call last):',
    '  File "/usr/local/lib/python3.12/dist-packages/vllm/v1/engine/core.py", line 701, in run_engine_core',
    '    engine_core.run_busy_loop()',
    '  File "/usr/local/lib/python3.12/dist-packages/vllm/v1/engine/core.py", line 728, in run_busy_loop',
    '    self._process_engine_step()',
    '  File "/usr/local/lib/python3.12/dist-packages/vllm/v1/engine/core.py", line 754, in _process_engine_step',
    '    outputs, model_executed = self.step_fn()',
    '  File "/usr/local/lib/python3.12/dist-packages/vllm/v1/engine/core.py", line 284, in step',
    '    model_output = self.execute_model_with_error_logging(',
    '  File "/usr/local/lib/python3.12/dist-packages/vllm/v1/worker/gpu_model_runner.py", line 1511, in execute_model',
    '    model_output = self.model(',
    exception,
  ]
}
