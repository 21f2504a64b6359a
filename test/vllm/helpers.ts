import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

/** Real vLLM pastes (see README.md there) and the synthetic full exposition. */
export const fixtureDir = fileURLToPath(new URL('../fixtures/vllm/', import.meta.url))

export function fixture(name: string): string {
  return readFileSync(join(fixtureDir, name), 'utf8')
}

export function fixtureNames(prefix: string): string[] {
  return readdirSync(fixtureDir)
    .filter((f) => f.startsWith(prefix) && f.endsWith('.txt'))
    .sort()
}

/** A capture's log lines without its `# ` provenance header (and without excerpt-break markers). */
export function logLines(name: string): string[] {
  return fixture(name)
    .split('\n')
    .filter((l) => l !== '' && !l.startsWith('# '))
}
