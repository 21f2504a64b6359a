/**
 * `vllm-monitor prestartup-check`: will vLLM start on this host? Progress on stderr, a table of
 * pass / warn / fail / skip with the fix for each on stdout (`--json` for machines). Exit 0 when
 * nothing failed, 1 when something did, 2 for a usage error.
 */
import { InvalidArgumentError as CliArgError, type Command, type CommanderError, Option } from 'commander'
import { InvalidOptionError } from '../errors.js'
import {
  applyFixes,
  type CheckResult,
  type CheckStatus,
  type FixOutcome,
  type PrestartupReport,
  type ProgressEvent,
  prestartupCheck,
} from '../prestartup/index.js'

const kUsageExit = 2

function usage(message: string): CliArgError {
  const e = new CliArgError(message)
  e.exitCode = kUsageExit
  return e
}
const integer = (flag: string, min: number, max: number) => (v: string) => {
  const n = Number(v)
  if (!/^\d+$/.test(v.trim()) || n < min || n > max)
    throw usage(`${flag} must be an integer from ${min} to ${max}`)
  return n
}
const fraction = (flag: string) => (v: string) => {
  const n = Number(v)
  if (v.trim() === '' || !(n > 0 && n <= 1)) throw usage(`${flag} must be a number in (0, 1], e.g. 0.9`)
  return n
}

interface CliOptions {
  model?: string
  tensorParallelSize: number
  gpuMemoryUtilization: number
  maxModelLen?: number
  port: number
  host: string
  libraryPath?: string
  envFile: string
  envOut?: string
  autoFix?: boolean
  yes?: boolean
  json?: boolean
}

export function registerPrestartupCheck(program: Command): Command {
  return (
    program
      .command('prestartup-check')
      .description(
        'check that vLLM can start here: GPUs and driver, memory for the model, leftovers, port, shm, disk',
      )
      .option('--model <model>', 'Hugging Face model id or local directory (sizes weights and KV cache)')
      .option('--tensor-parallel-size <n>', 'GPUs per replica', integer('--tensor-parallel-size', 1, 1024), 1)
      .option(
        '--gpu-memory-utilization <f>',
        "vLLM's fraction of each GPU",
        fraction('--gpu-memory-utilization'),
        0.9,
      )
      .option(
        '--max-model-len <n>',
        "context length (default: the model's)",
        integer('--max-model-len', 1, 2 ** 30),
      )
      .option('--port <port>', 'port vLLM will listen on', integer('--port', 0, 65535), 8000)
      .option('--host <host>', 'address vLLM will bind', '0.0.0.0')
      .option('--library-path <path>', 'libnvidia-ml to load instead of libnvidia-ml.so.1')
      .option('--env-file <path>', 'where --auto-fix writes the computed settings', './vllm-monitor.env')
      // node itself treats a script's `--env-file X` as its own flag and exits 9 when X does not
      // exist yet (nodejs/node#54232), so a new file needs this spelling.
      .addOption(
        new Option(
          '--env-out <path>',
          'the same as --env-file, for a file that does not exist yet',
        ).conflicts('envFile'),
      )
      .option('--auto-fix', 'apply the safe fixes (and print each)')
      .option('--yes', 'with --auto-fix, also apply destructive fixes (ending leftover processes)')
      .option('--json', 'print the report as JSON')
      .exitOverride(exitForUsage)
      .action(async (o: CliOptions) => {
        process.exitCode = await runPrestartupCheck(o)
      })
  )
}

// Commander exits 1 for usage errors; this command promises 2 (help and --version stay 0).
function exitForUsage(err: CommanderError): never {
  process.exit(err.exitCode === 0 ? 0 : kUsageExit)
}

const kStatusLabel: Record<CheckStatus, string> = { pass: 'PASS', warn: 'WARN', fail: 'FAIL', skip: 'SKIP' }
const kRank: Record<CheckStatus, number> = { skip: 0, pass: 1, warn: 2, fail: 3 }

function progress(e: ProgressEvent): void {
  if (e.type === 'start') {
    process.stderr.write(`[${e.step}/${e.steps}] ${e.title}… `)
    return
  }
  const worst = e.results.reduce<CheckStatus>((w, r) => (kRank[r.status] > kRank[w] ? r.status : w), 'skip')
  process.stderr.write(`${worst}\n`)
}

export async function runPrestartupCheck(o: CliOptions): Promise<number> {
  if (o.yes && !o.autoFix) {
    console.error('vllm-monitor: --yes only applies together with --auto-fix')
    return kUsageExit
  }
  let report: PrestartupReport
  try {
    report = await prestartupCheck({
      model: o.model,
      tensorParallelSize: o.tensorParallelSize,
      gpuMemoryUtilization: o.gpuMemoryUtilization,
      maxModelLen: o.maxModelLen,
      port: o.port,
      host: o.host,
      libraryPath: o.libraryPath,
      envFile: o.envOut ?? o.envFile,
      onProgress: progress,
    })
  } catch (err) {
    if (err instanceof InvalidOptionError) {
      console.error(`vllm-monitor: ${err.message}`)
      return kUsageExit
    }
    throw err
  }
  const fixes = o.autoFix ? await applyFixes(report, { yes: o.yes === true }) : null
  if (o.json) {
    const checks = report.checks.map(({ autoFix, ...c }) =>
      autoFix ? { ...c, autoFix: { safe: autoFix.safe, description: autoFix.description } } : c,
    )
    process.stdout.write(`${JSON.stringify({ ...report, checks, fixes })}\n`)
  } else {
    process.stdout.write(`${renderReport(report, process.stdout.isTTY ? process.stdout.columns : 140)}\n`)
    if (fixes) process.stdout.write(renderFixes(fixes))
    else if (report.checks.some((c) => c.autoFix)) process.stdout.write(renderFixHint(report.checks))
  }
  return report.ok ? 0 : 1
}

function wrap(text: string, width: number): string[] {
  const lines: string[] = []
  let line = ''
  for (let word of text.split(/\s+/).filter(Boolean)) {
    while (word.length > width) {
      if (line) lines.push(line)
      lines.push(word.slice(0, width))
      word = word.slice(width)
      line = ''
    }
    if (!line) line = word
    else if (line.length + 1 + word.length <= width) line += ` ${word}`
    else {
      lines.push(line)
      line = word
    }
  }
  if (line || lines.length === 0) lines.push(line)
  return lines
}

/** The report as a table: status, check, detail, fix (long cells wrap inside their column). */
export function renderReport(report: PrestartupReport, columns = 140): string {
  const checkW = Math.min(28, Math.max(5, ...report.checks.map((c) => c.title.length)))
  const rest = Math.max(40, columns - 6 - checkW - 6)
  const detailW = Math.floor(rest * 0.58)
  const fixW = rest - detailW
  const row = (cells: string[][]) => {
    const out: string[] = []
    const n = Math.max(...cells.map((c) => c.length))
    for (let i = 0; i < n; i++) {
      const [s, c, d, f] = cells.map((col) => col[i] ?? '')
      out.push(`${s!.padEnd(6)}  ${c!.padEnd(checkW)}  ${d!.padEnd(detailW)}  ${f}`.trimEnd())
    }
    return out.join('\n')
  }
  const lines = [row([['STATUS'], ['CHECK'], ['DETAIL'], ['FIX']])]
  for (const c of report.checks)
    lines.push(
      row([
        [kStatusLabel[c.status]],
        wrap(c.title, checkW),
        wrap(c.detail, detailW),
        wrap(c.fix ?? '', fixW),
      ]),
    )
  lines.push('', summary(report))
  return lines.join('\n')
}

function summary(report: PrestartupReport): string {
  const k = report.counts
  const counts = `${k.pass} pass, ${k.warn} warn, ${k.fail} fail, ${k.skip} skip`
  if (report.gpuError?.code === 'VLLM_MONITOR_NVML_NOT_FOUND')
    return `NOT READY: no NVIDIA GPU or driver on this host, so vLLM cannot start here (${counts})`
  if (!report.ok) return `NOT READY: vLLM would not start as configured (${counts})`
  return `READY: nothing stops vLLM from starting (${counts})`
}

function renderFixes(fixes: FixOutcome[]): string {
  if (fixes.length === 0) return 'auto-fix: nothing to fix\n'
  const lines = fixes.map((f) => {
    if (f.status === 'applied') return `auto-fix: done: ${f.description}`
    if (f.status === 'needs-yes') return `auto-fix: NOT done (destructive, add --yes): ${f.description}`
    return `auto-fix: FAILED: ${f.description}: ${f.error}`
  })
  if (fixes.some((f) => f.status === 'applied'))
    lines.push('auto-fix: run prestartup-check again to see the result')
  return `${lines.join('\n')}\n`
}

function renderFixHint(checks: CheckResult[]): string {
  const safe = checks.filter((c) => c.autoFix?.safe).length
  const unsafe = checks.filter((c) => c.autoFix && !c.autoFix.safe).length
  const parts = [
    safe > 0 ? `--auto-fix applies ${safe} safe fix${safe > 1 ? 'es' : ''}` : null,
    unsafe > 0
      ? `--auto-fix --yes also ${unsafe > 1 ? `the ${unsafe} destructive ones` : 'the destructive one'}`
      : null,
  ].filter(Boolean)
  return `${parts.join('; ')}\n`
}
