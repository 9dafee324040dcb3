/**
 * The newest version of every record this client has seen (from live queries, change
 * events, reads and its own confirmed writes), with tombstones for deletions.
 *
 * Versions only grow, so it decides whether a piece of news is stale: a change event or a
 * snapshot row older than what a confirmed write already showed is ignored, and a row
 * deleted at version v never comes back through an event of version <= v. It is also where
 * a write finds its base version (`If-Match`) and base record (for conflict merges).
 */
import type { AnyRow } from './types.js';

export interface CacheEntry {
  row: AnyRow | null;
  version: number;
  deleted: boolean;
}

export class RecordCache {
  private cols = new Map<string, Map<string, CacheEntry>>();
  private size = 0;

  constructor(private readonly maxEntries = 50_000) {}

  private col(c: string): Map<string, CacheEntry> {
    let m = this.cols.get(c);
    if (!m) {
      m = new Map();
      this.cols.set(c, m);
    }
    return m;
  }

  entry(c: string, id: string): CacheEntry | undefined {
    return this.cols.get(c)?.get(id);
  }

  /** The newest known row, undefined when unknown or deleted. */
  row(c: string, id: string): AnyRow | undefined {
    const e = this.entry(c, id);
    return e && !e.deleted && e.row ? e.row : undefined;
  }

  private set(c: string, id: string, e: CacheEntry): void {
    const m = this.col(c);
    if (m.has(id)) m.delete(id);
    else this.size++;
    m.set(id, e);
    if (this.size > this.maxEntries) this.evict();
  }

  private evict(): void {
    // Oldest-touched first (Map keeps insertion order; set() re-inserts on every touch).
    for (const m of this.cols.values()) {
      for (const id of m.keys()) {
        m.delete(id);
        this.size--;
        if (this.size <= this.maxEntries * 0.9) return;
      }
    }
  }

  /** Would a row of this version be news? (Not older than the known row, not deleted since.) */
  isCurrent(c: string, id: string, version: number, insert = false): boolean {
    const e = this.entry(c, id);
    if (!e) return true;
    if (e.deleted) return insert || version > e.version;
    return version >= e.version;
  }

  /** Records a row; returns false (and changes nothing) when it is older than what is known. */
  acceptRow(c: string, row: AnyRow, insert = false): boolean {
    if (!row || typeof row.id !== 'string') return false;
    const v = typeof row.version === 'number' ? row.version : 0;
    if (!this.isCurrent(c, row.id, v, insert)) return false;
    this.set(c, row.id, { row, version: v, deleted: false });
    return true;
  }

  /** Records a deletion of the record at `version`; false when the known row is newer. */
  acceptDelete(c: string, id: string, version: number): boolean {
    const e = this.entry(c, id);
    if (e && !e.deleted && e.version > version) return false;
    if (e && e.deleted && e.version >= version) return true;
    this.set(c, id, { row: null, version, deleted: true });
    return true;
  }
}
