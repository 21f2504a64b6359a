/**
 * What `CUDA_VISIBLE_DEVICES` leaves vLLM: entries are NVML-style indices, `GPU-…` UUIDs (a
 * unique prefix is enough) or `MIG-…` instances; CUDA stops at the first entry it cannot use
 * and ignores everything after it.
 */
import type { GpuDeviceInfo } from '../gpu/types.js'

export interface VisibleDevices {
  /** The variable is set (possibly empty). */
  set: boolean
  /** NVML indices of the GPUs CUDA will show, in CUDA order. */
  indices: number[]
  /** MIG instances listed; their memory cannot be mapped to a GPU here. */
  mig: number
  errors: string[]
  warnings: string[]
}

export function parseVisibleDevices(
  value: string | undefined,
  devices: GpuDeviceInfo[],
  deviceOrder?: string,
): VisibleDevices {
  const all = devices.map((d) => d.index)
  if (value === undefined) return { set: false, indices: all, mig: 0, errors: [], warnings: [] }
  const out: VisibleDevices = { set: true, indices: [], mig: 0, errors: [], warnings: [] }
  const tokens = value.split(',').map((t) => t.trim())
  if (value.trim() === '') {
    out.errors.push('it is set but empty: CUDA shows no GPU')
    return out
  }
  const stop = (msg: string, i: number) => {
    const rest = tokens.length - i - 1
    out.errors.push(
      rest > 0 ? `${msg}; CUDA ignores it and the ${rest} entr${rest > 1 ? 'ies' : 'y'} after it` : msg,
    )
  }
  for (const [i, t] of tokens.entries()) {
    if (/^-?\d+$/.test(t)) {
      const n = Number(t)
      if (n < 0 || n >= devices.length) {
        stop(
          n < 0
            ? `entry ${t} hides every GPU after it`
            : `GPU ${t} does not exist (${devices.length} GPU${devices.length === 1 ? '' : 's'}: ${devices.length > 0 ? `0-${devices.length - 1}` : 'none'})`,
          i,
        )
        break
      }
      if (out.indices.includes(n)) {
        stop(`GPU ${t} is listed twice`, i)
        break
      }
      out.indices.push(n)
    } else if (/^GPU-/i.test(t)) {
      const hits = devices.filter((d) => d.uuid?.toLowerCase().startsWith(t.toLowerCase()))
      if (hits.length !== 1) {
        stop(hits.length === 0 ? `no GPU has UUID ${t}` : `${t} matches ${hits.length} GPUs`, i)
        break
      }
      const n = hits[0]!.index
      if (out.indices.includes(n)) {
        stop(`GPU ${n} (${t}) is listed twice`, i)
        break
      }
      out.indices.push(n)
    } else if (/^MIG-/i.test(t)) {
      if (!devices.some((d) => d.migEnabled === true)) {
        stop(`${t} is a MIG instance but no GPU has MIG enabled`, i)
        break
      }
      out.mig++
    } else {
      stop(`${JSON.stringify(t)} is neither an index nor a GPU-/MIG- UUID`, i)
      break
    }
  }
  const usesIndices = tokens.some((t) => /^\d+$/.test(t))
  const models = new Set(devices.map((d) => d.name))
  if (usesIndices && models.size > 1 && deviceOrder !== 'PCI_BUS_ID')
    out.warnings.push(
      'with different GPU models CUDA numbers the fastest first, unlike nvidia-smi: set CUDA_DEVICE_ORDER=PCI_BUS_ID or use UUIDs',
    )
  return out
}
