/**
 * What a write does when the server answers 409 `version_conflict` (someone else changed
 * the record since the version this client based its write on).
 *
 * - `server-wins`: drop the local write; the record stays as the server has it.
 * - `client-wins`: write the local change again on top of the server's new version.
 * - `merge` (default): field by field with base (what the write was based on), local (base
 *   plus the write) and server (the current record): a field the server did not change since
 *   base takes the local value; a field the server changed keeps the server's value. Only
 *   the surviving local fields are written again. A delete under `merge` keeps the record
 *   (it changed since the delete was decided), as `server-wins` does.
 * - `onConflict(base, local, server, info)`: your function decides, possibly after asking
 *   the user (it may return a promise); it returns one of the strategies above or
 *   `{ data }`: the fields to write on top of the server's version.
 */
import type { AnyRow } from './types.js';

export type ConflictStrategy = 'server-wins' | 'client-wins' | 'merge';

export type ConflictResolution<T extends object = Record<string, unknown>> =
  | ConflictStrategy
  /** Write these fields on top of the server's current version. */
  | { data: Partial<T> };

export interface ConflictInfo {
  collection: string;
  id: string;
  op: 'update' | 'delete';
  /** Fields the server reported as changed on both sides (`details.fields`), if any. */
  fields: string[];
  /** How many times this write has already been resolved and retried. */
  attempt: number;
}

export type ConflictHandler = (
  base: AnyRow | null,
  local: AnyRow | null,
  server: AnyRow,
  info: ConflictInfo,
) => ConflictResolution | Promise<ConflictResolution>;

/** What the queue does next with the conflicting write. */
export type ConflictOutcome =
  /** Give up the local write: the server's record stands. */
  | { kind: 'drop' }
  /** Write `data` with `If-Match: ifVersion`. */
  | { kind: 'update'; data: Record<string, unknown>; ifVersion: number }
  /** Delete with `If-Match: ifVersion`. */
  | { kind: 'delete'; ifVersion: number };

export function jsonEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (a === null || b === null || typeof a !== 'object' || typeof b !== 'object') {
    // Absent and null read the same in a record.
    return (a ?? null) === (b ?? null);
  }
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a) && Array.isArray(b)) {
    return a.length === b.length && a.every((x, i) => jsonEqual(x, b[i]));
  }
  const ka = Object.keys(a as object);
  const kb = Object.keys(b as object);
  if (ka.length !== kb.length) return false;
  return ka.every((k) => jsonEqual((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]));
}

/**
 * Three-way merge of a patch. Returns the fields of `patch` still worth writing on top of
 * `server`: those the server did not change since `base` (and does not already hold).
 * Without a base, the server's reported conflicting `fields` decide; failing that, every
 * field that differs on the server counts as changed there.
 */
export function mergePatch(
  base: Record<string, unknown> | null,
  patch: Record<string, unknown>,
  server: Record<string, unknown>,
  fields: string[] = [],
): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [f, v] of Object.entries(patch)) {
    if (jsonEqual(server[f], v)) continue; // already so
    const serverChanged = base ? !jsonEqual(server[f], base[f]) : fields.length > 0 ? fields.includes(f) : true;
    if (!serverChanged) out[f] = v;
  }
  return out;
}

/** Applies a resolution to one conflicting write. */
export function resolveConflict(
  resolution: ConflictResolution,
  op: 'update' | 'delete',
  base: Record<string, unknown> | null,
  patch: Record<string, unknown> | null,
  server: AnyRow,
  fields: string[],
): ConflictOutcome {
  if (typeof resolution === 'object' && resolution !== null && 'data' in resolution) {
    const data = { ...(resolution.data as Record<string, unknown>) };
    for (const k of ['id', 'version', 'created_at', 'updated_at']) delete data[k];
    return Object.keys(data).length === 0 ? { kind: 'drop' } : { kind: 'update', data, ifVersion: server.version };
  }
  switch (resolution) {
    case 'server-wins':
      return { kind: 'drop' };
    case 'client-wins':
      if (op === 'delete') return { kind: 'delete', ifVersion: server.version };
      return { kind: 'update', data: { ...(patch ?? {}) }, ifVersion: server.version };
    case 'merge': {
      if (op === 'delete') return { kind: 'drop' };
      const data = mergePatch(base, patch ?? {}, server, fields);
      return Object.keys(data).length === 0 ? { kind: 'drop' } : { kind: 'update', data, ifVersion: server.version };
    }
    default:
      throw new Error(`unknown conflict resolution ${JSON.stringify(resolution)}`);
  }
}
