/**
 * Sample bookkeeping over prom-client for `MonitorMetrics`: each family remembers the label object
 * and the value it last exported per series, so that an update which changes nothing costs a map
 * lookup, and the series nobody put during an update can be swept.
 */
import { Counter, Gauge, type Registry } from 'prom-client'

export type Labels<L extends string> = Partial<Record<L, string>>

// Joins label values into one map key. Label values holding a NUL would be split wrongly; replica
// names, fault types and event types never do.
export const kSep = '\u0000'

interface Sample<L extends string> {
  labels: Labels<L>
  value: number
  epoch: number
}

/** The samples of one gauge family, keyed by their label values joined with `kSep`. */
export class GaugeFamily<L extends string> {
  readonly #gauge: Gauge<L>
  readonly #labelNames: readonly L[]
  readonly #samples = new Map<string, Sample<L>>()

  constructor(registry: Registry, name: string, help: string, labelNames: readonly L[]) {
    this.#gauge = new Gauge<L>({ name, help, labelNames, registers: [registry] })
    this.#labelNames = labelNames
    // prom-client starts an unlabelled gauge at 0; "no value yet" must export no sample instead.
    if (labelNames.length === 0) this.#gauge.remove({})
  }

  /** Exports `value` for this update; a null or non-finite value is treated as unknown (no sample). */
  put(key: string, value: number | null, epoch: number): void {
    if (value === null || !Number.isFinite(value)) return
    let s = this.#samples.get(key)
    if (s === undefined) {
      s = { labels: this.#toLabels(key), value: Number.NaN, epoch }
      this.#samples.set(key, s)
    }
    s.epoch = epoch
    if (s.value !== value) {
      s.value = value
      this.#gauge.set(s.labels, value)
    }
  }

  /** Removes every sample that was not put during update `epoch`. */
  sweep(epoch: number): void {
    for (const [key, s] of this.#samples) {
      if (s.epoch === epoch) continue
      this.#gauge.remove(s.labels)
      this.#samples.delete(key)
    }
  }

  #toLabels(key: string): Labels<L> {
    const labels: Labels<L> = {}
    if (this.#labelNames.length === 0) return labels
    const values = key.split(kSep)
    this.#labelNames.forEach((name, i) => {
      labels[name] = values[i] ?? ''
    })
    return labels
  }
}

/**
 * A Prometheus counter fed from a cumulative value someone else counts (vLLM's token counter, the
 * monitor's mitigation count). prom-client counters only go up by `inc()`, so this adds the increase
 * since the last reading; a reading below the previous one means the source restarted from 0, and
 * the whole new reading is the increase, as Prometheus' `rate()` assumes.
 */
export class MirroredCounter<L extends string> {
  readonly #counter: Counter<L>
  readonly #labelNames: readonly L[]
  readonly #last = new Map<string, { labels: Labels<L>; raw: number; epoch: number }>()

  constructor(registry: Registry, name: string, help: string, labelNames: readonly L[]) {
    this.#counter = new Counter<L>({ name, help, labelNames, registers: [registry] })
    this.#labelNames = labelNames
  }

  /**
   * `raw` null keeps the sample at what was counted so far (a failed scrape counted nothing), but
   * still marks the key as present so that `sweep` keeps it.
   */
  observe(key: string, raw: number | null, epoch: number, labelValues?: Labels<L>): void {
    let s = this.#last.get(key)
    if (s === undefined) {
      if (raw === null || !Number.isFinite(raw) || raw < 0) return
      const labels: Labels<L> = { ...labelValues }
      const first = this.#labelNames[0]
      if (first !== undefined && labelValues === undefined) labels[first] = key
      s = { labels, raw, epoch }
      this.#last.set(key, s)
      this.#counter.inc(labels, raw)
      return
    }
    s.epoch = epoch
    if (raw === null || !Number.isFinite(raw) || raw < 0 || raw === s.raw) return
    this.#counter.inc(s.labels, raw > s.raw ? raw - s.raw : raw)
    s.raw = raw
  }

  sweep(epoch: number): void {
    for (const [key, s] of this.#last) {
      if (s.epoch === epoch) continue
      this.#counter.remove(s.labels)
      this.#last.delete(key)
    }
  }
}
