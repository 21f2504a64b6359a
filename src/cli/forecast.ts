/**
 * `vllm-monitor train` and `vllm-monitor eval`: train a forecaster on simulated runs of the
 * scenario suite (driven by a request trace), and score a model and the two baselines on traces.
 */
import cliProgress from 'cli-progress'
import type { Command } from 'commander'
import { InvalidArgumentError as CliArgError } from 'commander'
import type { TraceDataset } from '../forecast/dataset.js'
import type { ModelArtifacts } from '../forecast/model-io.js'
import { DEFAULT_MODEL_DIR } from '../forecast/predictive.js'
import type { TrainProgress } from '../forecast/train.js'
import { loadTraceCsv } from '../sim/arrivals.js'
import { SCENARIO_NAMES } from '../sim/scenarios.js'

const seedList = (name: string) => (v: string) => {
  const seeds = v.split(',').map((s) => Number(s.trim()))
  if (seeds.length === 0 || seeds.some((n) => !Number.isInteger(n) || n < 0))
    throw new CliArgError(`${name} must be a comma-separated list of non-negative integers`)
  return seeds
}

export function registerForecast(program: Command): void {
  program
    .command('train')
    .description(
      'train a forecaster on simulated runs of the scenario suite; resumable (rerun the same command)',
    )
    .requiredOption(
      '--out <dir>',
      'model directory to write (model.json, weights.bin, meta.json, MODEL_CARD.md)',
    )
    .option('--scenarios <list>', 'comma-separated scenarios (default: the standard suite)', (v: string) => {
      const list = v.split(',').map((s) => s.trim())
      const bad = list.find((s) => !SCENARIO_NAMES.includes(s))
      if (bad !== undefined)
        throw new CliArgError(`unknown scenario "${bad}"; expected some of ${SCENARIO_NAMES.join(', ')}`)
      return list
    })
    .option(
      '--arrivals <csv>',
      'request arrivals in the Azure LLM trace format (default: the bundled code trace)',
    )
    .option('--train-seeds <list>', 'seeds of the training runs', seedList('--train-seeds'))
    .option(
      '--validation-seeds <list>',
      'seeds of the runs that choose alarm thresholds',
      seedList('--validation-seeds'),
    )
    .option(
      '--test-seeds <list>',
      'seeds of the held-out runs the model card reports',
      seedList('--test-seeds'),
    )
    .option('--epochs <n>', 'training epochs', (v: string) => {
      const n = Number(v)
      if (!Number.isInteger(n) || n < 1) throw new CliArgError('--epochs must be a positive integer')
      return n
    })
    .option('--name <name>', 'model name', 'forecaster')
    .option('--fresh', 'start over instead of resuming from <out>/.cache and <out>/.checkpoint')
    .action(async (o) => {
      const arrivals = o.arrivals === undefined ? undefined : loadTraceCsv(o.arrivals)
      // TensorFlow.js loads only for the commands that need it.
      const { train } = await import('../forecast/train.js')
      const bar = progressBar()
      try {
        const r = await train({
          outDir: o.out,
          name: o.name,
          ...(o.scenarios === undefined ? {} : { scenarios: o.scenarios }),
          ...(arrivals === undefined ? {} : { arrivals, arrivalsName: o.arrivals }),
          ...(o.trainSeeds === undefined ? {} : { trainSeeds: o.trainSeeds }),
          ...(o.validationSeeds === undefined ? {} : { validationSeeds: o.validationSeeds }),
          ...(o.testSeeds === undefined ? {} : { testSeeds: o.testSeeds }),
          ...(o.epochs === undefined ? {} : { epochs: o.epochs }),
          fresh: o.fresh === true,
          onProgress: bar.update,
        })
        bar.stop()
        if (r.resumedFromEpoch > 0) console.error(`resumed from epoch ${r.resumedFromEpoch}`)
        console.log(`wrote ${o.out} (${r.backend} backend); held-out runs:\n`)
        console.log(r.table)
      } finally {
        bar.stop()
      }
    })

  program
    .command('eval')
    .description('replay labelled traces and score the model and the baselines, per failure type')
    .argument('<traces...>', 'traces written by `vllm-monitor sim --record` or `vllm-monitor record`')
    .option('--model <dir>', 'model directory', DEFAULT_MODEL_DIR)
    .option('--no-model', 'score the baselines only')
    .option('--json', 'print the scores as JSON')
    .option('--runs', 'also list each run: every failure with its lead, every false alarm')
    .action(async (files: string[], o) => {
      const { datasetFromTrace } = await import('../forecast/dataset.js')
      const { fromArtifacts, initBackend, loadModelArtifacts } = await import('../forecast/model.js')
      const { evaluateRuns } = await import('../forecast/report.js')
      let artifacts: ModelArtifacts | null = null
      if (o.model !== false) artifacts = await loadModelArtifacts(o.model)
      // Failures are judged by the SLO the model was trained for.
      const sets: TraceDataset[] = []
      for (const f of files)
        sets.push(await datasetFromTrace(f, artifacts === null ? {} : { slo: artifacts.meta.slo }))
      let model = null
      if (artifacts !== null) {
        await initBackend()
        model = await fromArtifacts(artifacts)
      }
      const report = evaluateRuns(sets, model, artifacts?.meta ?? null)
      model?.dispose()
      if (o.json === true) {
        console.log(
          JSON.stringify({
            traces: files,
            model: artifacts === null ? null : `${artifacts.meta.name}-v${artifacts.meta.version}`,
            scores: report.scores,
          }),
        )
        return
      }
      console.log(report.table)
      if (o.runs === true && report.perRun !== '') console.log(`\n${report.perRun}`)
    })
}

/** A progress bar on a terminal; one line per phase change otherwise (logs, CI). */
function progressBar(): { update: (p: TrainProgress) => void; stop: () => void } {
  let phase = ''
  let stopped = false
  if (process.stderr.isTTY) {
    const bar = new cliProgress.SingleBar(
      { format: '{phase} [{bar}] {value}/{total} {detail}', stream: process.stderr, hideCursor: true },
      cliProgress.Presets.shades_classic,
    )
    return {
      update: (p) => {
        if (p.phase !== phase) {
          if (phase !== '') bar.stop()
          phase = p.phase
          bar.start(p.total, p.done, { phase: p.phase.padEnd(8), detail: p.detail })
        } else bar.update(p.done, { detail: p.detail })
      },
      stop: () => {
        if (!stopped && phase !== '') bar.stop()
        stopped = true
      },
    }
  }
  let lastPct = -1
  return {
    update: (p) => {
      const pct = Math.floor((p.done / Math.max(p.total, 1)) * 10)
      if (p.phase !== phase || pct !== lastPct) console.error(`${p.phase}: ${p.done}/${p.total} ${p.detail}`)
      phase = p.phase
      lastPct = pct
    },
    stop: () => {},
  }
}
