/**
 * @livebase/react — React bindings for @livebase/client.
 *
 * Every hook reads through `useSyncExternalStore`, so a render never mixes two states of
 * one store (no tearing under concurrent rendering), and every store hands out immutable
 * snapshots that change identity only when their content changes.
 */
import {
  createContext,
  createElement,
  useCallback,
  useContext,
  useEffect,
  useMemo,
  useRef,
  useState,
  useSyncExternalStore,
  type ReactNode,
} from 'react';
import {
  filterToString,
  type AggregateQuery,
  type AggregateRow,
  type AggregateSnapshot,
  type BatchOp,
  type BatchResult,
  type BroadcastMessage,
  type ConnectionStatus,
  type LiveQueryOptions,
  type LiveSnapshot,
  type LivebaseClient,
  type LivebaseError,
  type Patch,
  type PresenceMember,
  type QueueStatus,
  type Row,
  type SendOptions,
  type UpdateOptions,
  type WriteOptions,
} from '@livebase/client';

const LivebaseContext = createContext<LivebaseClient | null>(null);

export interface LivebaseProviderProps {
  client: LivebaseClient;
  children?: ReactNode;
}

/** Makes a client available to the hooks below it. */
export function LivebaseProvider({ client, children }: LivebaseProviderProps) {
  return createElement(LivebaseContext.Provider, { value: client }, children);
}

/** The client of the nearest LivebaseProvider. */
export function useLivebase(): LivebaseClient {
  const c = useContext(LivebaseContext);
  if (!c) throw new Error('useLivebase: no <LivebaseProvider client={...}> above this component');
  return c;
}

const noSubscribe = () => () => {};
const EMPTY: LiveSnapshot<never> = Object.freeze({
  rows: Object.freeze([]) as readonly never[],
  status: 'loading' as const,
  error: null,
  stale: true,
  pendingIds: new Set<string>(),
});

export interface UseLiveQueryOptions {
  /** False: no subscription, an empty loading result (e.g. while an id is unknown). */
  enabled?: boolean;
}

/**
 * The rows of a live query, kept equal to the server's result, with this client's pending
 * writes shown at once. Re-renders only when the rows (or status) change. Components using
 * the same (collection, filter) share one server subscription.
 */
export function useLiveQuery<T extends object = Record<string, unknown>>(
  collection: string,
  query: LiveQueryOptions = {},
  opts: UseLiveQueryOptions = {},
): LiveSnapshot<T> {
  const client = useLivebase();
  const enabled = opts.enabled !== false;
  const key = `${collection}\u0000${filterToString(query.filter)}\u0000${query.order ?? ''}`;
  const store = useMemo(
    () => (enabled ? client.collection<T>(collection).live(query, { lazy: true }) : null),
    // `query` is captured by value through `key`.
    // eslint-disable-next-line react-hooks/exhaustive-deps
    [client, key, enabled],
  );
  const getEmpty = useCallback(() => EMPTY as LiveSnapshot<T>, []);
  return useSyncExternalStore(store ? store.subscribe : noSubscribe, store ? store.getSnapshot : getEmpty, store ? store.getSnapshot : getEmpty);
}

const EMPTY_AGGREGATE: AggregateSnapshot<never> = Object.freeze({
  groups: Object.freeze([]) as readonly never[],
  seq: null,
  status: 'loading' as const,
  error: null,
  stale: true,
});

/**
 * A live aggregate (KPI numbers): `fn` over the rows matching `filter`, grouped by `group`,
 * kept current by the server and re-subscribed after reconnects. Returns
 * `{ groups, seq, status, error, stale }`; re-renders only when they change. Components
 * asking for the same aggregate share one server subscription.
 *
 * ```tsx
 * const { groups } = useLiveAggregate('shipments', { group: ['status'], fn: ['count', 'sum(weight_kg)'] });
 * const late = groups.find((g) => g.status === 'late');
 * ```
 */
export function useLiveAggregate<T extends object = Record<string, unknown>, const G extends string = string, const F extends string = string>(
  collection: string,
  query: AggregateQuery<G, F>,
  opts: UseLiveQueryOptions = {},
): AggregateSnapshot<AggregateRow<T, G, F>> {
  const client = useLivebase();
  const enabled = opts.enabled !== false;
  const key = JSON.stringify([collection, filterToString(query.filter), query.group ?? [], query.fn]);
  const store = useMemo(
    () => (enabled ? client.collection<T>(collection).aggregate<G, F>(query, { lazy: true }) : null),
    // `query` is captured by value through `key`.
    // eslint-disable-next-line react-hooks/exhaustive-deps
    [client, key, enabled],
  );
  const getEmpty = useCallback(() => EMPTY_AGGREGATE as AggregateSnapshot<AggregateRow<T, G, F>>, []);
  return useSyncExternalStore(store ? store.subscribe : noSubscribe, store ? store.getSnapshot : getEmpty, store ? store.getSnapshot : getEmpty);
}

export interface RecordState<T extends object> {
  record: Row<T> | null;
  status: LiveSnapshot<T>['status'];
  error: LivebaseError | null;
  stale: boolean;
  /** A write to this record is not yet confirmed. */
  pending: boolean;
}

/** One record, live (null while loading, or when it does not exist or was deleted). */
export function useRecord<T extends object = Record<string, unknown>>(collection: string, id: string | null | undefined): RecordState<T> {
  const snap = useLiveQuery<T>(collection, { filter: id ? `id=eq.${encodeURIComponent(id)}` : undefined }, { enabled: !!id });
  return useMemo(() => {
    const record = snap.rows[0] ?? null;
    return { record, status: snap.status, error: snap.error, stale: snap.stale, pending: !!record && snap.pendingIds.has(record.id) };
  }, [snap]);
}

export interface MutationApi<T extends object> {
  create: (data: Patch<T> & { id?: string }, opts?: WriteOptions) => Promise<Row<T>>;
  update: (id: string, patch: Patch<T>, opts?: UpdateOptions) => Promise<Row<T>>;
  remove: (id: string, opts?: UpdateOptions) => Promise<Row<T> | null>;
  batch: (ops: BatchOp<T>[], opts?: WriteOptions) => Promise<BatchResult<T>[]>;
  /** Writes started here and not yet settled. */
  pending: number;
  /** The last failure of a write started here (cleared by `reset`). */
  error: LivebaseError | null;
  reset: () => void;
}

/**
 * Writes to a collection. They apply optimistically to every live query at once; the
 * returned promises settle when the server answers (possibly after an offline period).
 */
export function useMutation<T extends object = Record<string, unknown>>(collection: string): MutationApi<T> {
  const client = useLivebase();
  const [pending, setPending] = useState(0);
  const [error, setError] = useState<LivebaseError | null>(null);
  const mounted = useRef(true);
  useEffect(() => {
    mounted.current = true;
    return () => {
      mounted.current = false;
    };
  }, []);
  const track = useCallback(<R,>(p: Promise<R>): Promise<R> => {
    setPending((n) => n + 1);
    p.then(
      () => {
        if (mounted.current) setPending((n) => n - 1);
      },
      (e: LivebaseError) => {
        if (!mounted.current) return;
        setPending((n) => n - 1);
        setError(e);
      },
    );
    return p;
  }, []);
  const api = useMemo(() => {
    const c = client.collection<T>(collection);
    return {
      create: (data: Patch<T> & { id?: string }, opts?: WriteOptions) => track(c.create(data, opts)),
      update: (id: string, patch: Patch<T>, opts?: UpdateOptions) => track(c.update(id, patch, opts)),
      remove: (id: string, opts?: UpdateOptions) => track(c.delete(id, opts)),
      batch: (ops: BatchOp<T>[], opts?: WriteOptions) => track(c.batch(ops, opts)),
    };
  }, [client, collection, track]);
  const reset = useCallback(() => setError(null), []);
  return { ...api, pending, error, reset };
}

export interface PresenceState<M> {
  members: readonly PresenceMember<M>[];
  /** Publishes (or replaces) this client's meta. */
  track: (meta: M) => Promise<void>;
  untrack: () => Promise<void>;
}

/**
 * Who is on a channel. Joins while mounted. With `meta`, this client is tracked with it
 * (re-tracked when it changes, by value) and untracked on unmount.
 */
export function usePresence<M = Record<string, unknown>>(channel: string, meta?: M, opts: { key?: string } = {}): PresenceState<M> {
  const client = useLivebase();
  const ch = useMemo(() => client.channel<M>(channel), [client, channel]);
  useEffect(() => ch.onMembers(() => {}), [ch]);
  const metaJson = meta === undefined ? undefined : JSON.stringify(meta);
  const metaRef = useRef(meta);
  metaRef.current = meta;
  const tracking = metaJson !== undefined;
  useEffect(() => {
    if (!tracking) return;
    void ch.track(metaRef.current as M, opts.key !== undefined ? { key: opts.key } : {}).catch(() => {});
    return () => {
      void ch.untrack();
    };
  }, [ch, tracking, opts.key]);
  const first = useRef(true);
  useEffect(() => {
    if (first.current) {
      first.current = false;
      return;
    }
    if (metaJson === undefined) return;
    void ch.track(JSON.parse(metaJson) as M, opts.key !== undefined ? { key: opts.key } : {}).catch(() => {});
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [metaJson]);
  const members = useSyncExternalStore(ch.subscribeMembers, ch.getMembers, ch.getMembers);
  const track = useCallback((m: M) => ch.track(m, opts.key !== undefined ? { key: opts.key } : {}), [ch, opts.key]);
  const untrack = useCallback(() => ch.untrack(), [ch]);
  return { members, track, untrack };
}

/**
 * Broadcast on a channel: `handler` receives `event` messages from others (joins while
 * mounted); returns a `send(payload)` for the same event.
 */
export function useBroadcast<P = unknown>(
  channel: string,
  event: string,
  handler?: (payload: P, message: BroadcastMessage<P>) => void,
): (payload: P, opts?: SendOptions) => Promise<void> {
  const client = useLivebase();
  const ch = useMemo(() => client.channel(channel), [client, channel]);
  const handlerRef = useRef(handler);
  handlerRef.current = handler;
  useEffect(() => ch.on<P>(event, (p, m) => handlerRef.current?.(p, m)), [ch, event]);
  return useCallback((payload: P, opts?: SendOptions) => ch.send(event, payload, opts), [ch, event]);
}

/** The realtime connection: state, latency, quality, retry schedule, last error. */
export function useConnectionStatus(): ConnectionStatus {
  const client = useLivebase();
  return useSyncExternalStore(client.subscribeStatus, client.getStatus, client.getStatus);
}

/** The write queue: size, progress of the current sync, whether it is paused. */
export function useQueueStatus(): QueueStatus {
  const client = useLivebase();
  return useSyncExternalStore(client.subscribeQueue, client.getQueueStatus, client.getQueueStatus);
}

export type { LiveSnapshot, AggregateSnapshot, ConnectionStatus, QueueStatus, PresenceMember, BroadcastMessage };
