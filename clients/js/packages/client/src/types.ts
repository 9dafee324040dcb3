/** Fields every Livebase record has. */
export interface SystemFields {
  id: string;
  version: number;
  created_at: string;
  updated_at: string;
}

/** A record as the server returns it: the system fields plus the collection's own. */
export type Row<T extends object = Record<string, unknown>> = T & SystemFields;

/** Any record, untyped. */
export type AnyRow = Row<Record<string, unknown>>;

/** The fields a write may set (system fields are the server's). */
export type Patch<T extends object> = Partial<Omit<T, keyof SystemFields>>;

/** A change event as the realtime socket delivers it (docs/protocol.md, `change`). */
export interface ChangeEvent<T extends object = Record<string, unknown>> {
  type: 'change';
  sub_id: number;
  seq: number;
  op: 'insert' | 'update' | 'delete';
  view: 'add' | 'update' | 'remove';
  id: string;
  version: number;
  actor: string | null;
  committed_at: string;
  new: Row<T> | null;
  old: Row<T> | null;
}

/** Events delivered to `collection(...).subscribe(handler)`. */
export type SubscriptionEvent<T extends object = Record<string, unknown>> =
  | ChangeEvent<T>
  /** The subscription (re)started at `seq`: changes after it follow. */
  | { type: 'subscribed'; seq: number; resumed: boolean }
  /**
   * Changes were missed and cannot be replayed (the server's log no longer holds them, or
   * the subscription had to restart): refetch what you derived from the events.
   */
  | { type: 'resync'; reason: string }
  | { type: 'error'; error: import('./errors.js').LivebaseError };

export interface ListResult<T extends object = Record<string, unknown>> {
  items: Row<T>[];
  next_cursor: string | null;
  total?: number;
}
