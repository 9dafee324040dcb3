/**
 * Where the offline queue lives between page loads: IndexedDB in browsers, a file in Node
 * (`fileStorage` from `@livebase/client/node`), or memory. Every queued mutation is stored
 * with its idempotency key, so a replay after a reload can never apply it twice.
 */
import type { QueuedMutation } from './queue.js';

export interface QueueStorage {
  /** Every stored mutation, in any order (the queue sorts by `order`). */
  load(): Promise<QueuedMutation[]>;
  /** Inserts or replaces the mutation with this `qid`. */
  put(m: QueuedMutation): Promise<void>;
  remove(qid: string): Promise<void>;
  /** Releases resources (database connections, file handles). */
  close?(): Promise<void> | void;
}

/** Keeps the queue in memory only: it survives reconnects, not reloads. */
export function memoryStorage(): QueueStorage {
  const items = new Map<string, QueuedMutation>();
  return {
    async load() {
      return [...items.values()].map(clone);
    },
    async put(m) {
      items.set(m.qid, clone(m));
    },
    async remove(qid) {
      items.delete(qid);
    },
  };
}

function clone<T>(v: T): T {
  return JSON.parse(JSON.stringify(v)) as T;
}

interface IDBLike {
  open(name: string, version?: number): IDBOpenDBRequest;
}

function promisify<T>(req: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error ?? new Error('IndexedDB request failed'));
  });
}

function done(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error ?? new Error('IndexedDB transaction failed'));
    tx.onabort = () => reject(tx.error ?? new Error('IndexedDB transaction aborted'));
  });
}

/**
 * The queue in IndexedDB: database `name` (default `livebase-queue`), one object store
 * keyed by `qid`. Each put or remove is its own transaction; transactions on one store
 * commit in the order they were made, so the stored queue follows the in-memory one.
 */
export function indexedDBStorage(name = 'livebase-queue', factory?: IDBLike): QueueStorage {
  const idb = factory ?? (globalThis as { indexedDB?: IDBLike }).indexedDB;
  if (!idb) throw new Error('indexedDBStorage: no IndexedDB in this environment');
  const STORE = 'mutations';
  let dbp: Promise<IDBDatabase> | null = null;
  const db = () => {
    dbp ??= new Promise<IDBDatabase>((resolve, reject) => {
      const req = idb.open(name, 1);
      req.onupgradeneeded = () => {
        if (!req.result.objectStoreNames.contains(STORE)) req.result.createObjectStore(STORE, { keyPath: 'qid' });
      };
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error ?? new Error('cannot open IndexedDB'));
      req.onblocked = () => reject(new Error(`IndexedDB '${name}' is blocked by another connection`));
    });
    return dbp;
  };
  return {
    async load() {
      const d = await db();
      const tx = d.transaction(STORE, 'readonly');
      const all = await promisify(tx.objectStore(STORE).getAll() as IDBRequest<QueuedMutation[]>);
      return all;
    },
    async put(m) {
      const d = await db();
      const tx = d.transaction(STORE, 'readwrite');
      tx.objectStore(STORE).put(clone(m));
      await done(tx);
    },
    async remove(qid) {
      const d = await db();
      const tx = d.transaction(STORE, 'readwrite');
      tx.objectStore(STORE).delete(qid);
      await done(tx);
    },
    async close() {
      if (dbp) (await dbp).close();
      dbp = null;
    },
  };
}

/** IndexedDB when the environment has it, memory otherwise. */
export function defaultStorage(name: string): QueueStorage {
  return (globalThis as { indexedDB?: unknown }).indexedDB ? indexedDBStorage(name) : memoryStorage();
}
