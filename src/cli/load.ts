/** The load options `demo` and `sim` share: rate, shape, and a custom arrivals trace. */
import type { Command } from 'commander'
import { InvalidArgumentError as CliArgError, Option } from 'commander'
import { loadTraceCsv } from '../sim/arrivals.js'
import type { ScenarioOptions } from '../sim/scenarios.js'

export interface LoadCliOptions {
  rate?: number
  load?: 'mixed' | 'trace' | 'poisson'
  traceCsv?: string
}

export function addLoadOptions(cmd: Command): Command {
  return cmd
    .option('--rate <req/s>', "requests per second per replica (default: the scenario's)", (v: string) => {
      const n = Number(v)
      if (!Number.isFinite(n) || n <= 0) throw new CliArgError('--rate must be a positive number')
      return n
    })
    .addOption(
      new Option(
        '--load <shape>',
        'arrivals: mixed (the real trace + a Poisson background), the trace alone, or Poisson alone',
      ).choices(['mixed', 'trace', 'poisson']),
    )
    .option(
      '--trace-csv <file>',
      'arrivals from a CSV in the Azure LLM trace format instead of the bundled one',
    )
    .option('--arrivals <csv>', 'same as --trace-csv')
}

export function loadFromCli(o: {
  rate?: number
  load?: 'trace' | 'poisson'
  traceCsv?: string
  arrivals?: string
}): LoadCliOptions {
  const csv = o.arrivals ?? o.traceCsv
  return {
    ...(o.rate === undefined ? {} : { rate: o.rate }),
    ...(o.load === undefined ? {} : { load: o.load }),
    ...(csv === undefined ? {} : { traceCsv: csv }),
  }
}

/** Scenario options for the load flags; a bad CSV throws a TraceParseError naming its line. */
export function scenarioLoad(l: LoadCliOptions): ScenarioOptions {
  return {
    ...(l.rate === undefined ? {} : { ratePerReplica: l.rate }),
    ...(l.load === undefined ? {} : { load: l.load }),
    ...(l.traceCsv === undefined ? {} : { traceRows: loadTraceCsv(l.traceCsv) }),
  }
}
