/**
 * Optimistic projection: what each record touched by pending writes looks like once they
 * apply, in queue order. A live query shows its server rows with these applied on top, so
 * a write appears at once and disappears (rolls back) the moment it is dropped.
 */
import type { QueuedMutation } from './queue.js';
import type { AnyRow } from './types.js';

/** id → projected row, or null when a pending write deletes it. */
export type Projection = Map<string, AnyRow | null>;

export function project(pending: readonly QueuedMutation[], base: (id: string) => AnyRow | undefined): Projection {
  const out: Projection = new Map();
  for (const m of pending) {
    const at = new Date(m.createdAt).toISOString().replace('Z', '000Z');
    for (const op of m.ops) {
      if (op.op === 'create') {
        out.set(op.id, { ...(op.data ?? {}), id: op.id, version: 0, created_at: at, updated_at: at } as AnyRow);
      } else if (op.op === 'delete') {
        out.set(op.id, null);
      } else {
        const cur = out.has(op.id) ? out.get(op.id) : base(op.id);
        if (!cur) continue; // deleted, or never seen: nothing to show
        out.set(op.id, { ...cur, ...(op.data ?? {}), id: cur.id, version: cur.version, created_at: cur.created_at } as AnyRow);
      }
    }
  }
  return out;
}
