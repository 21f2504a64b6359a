// The overload part of bench/gateway.mjs on its own (see bench/lib/overload.mjs): a simulated
// two-replica vLLM fleet offered `--overload` (3) times its capacity, directly and through the
// gateway proxy with a TTFT SLO, in one run.
//   node bench/gateway-overload.mjs [--seconds 20] [--slo-ms 1000] [--overload 3] [--max-num-seqs 16] [--json]
import { formatOverload, runOverload } from './lib/overload.mjs'

const args = process.argv.slice(2)
const opt = (name, fallback) => {
  const i = args.indexOf(name)
  return i >= 0 ? Number(args[i + 1]) : fallback
}
const result = await runOverload({
  seconds: opt('--seconds', 20),
  sloMs: opt('--slo-ms', 1000),
  overload: opt('--overload', 3),
  maxNumSeqs: opt('--max-num-seqs', 16),
})
console.log(args.includes('--json') ? JSON.stringify(result) : formatOverload(result))
