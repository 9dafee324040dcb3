/**
 * Node-only helpers: `import { fileStorage } from '@livebase/client/node'`.
 */
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { QueuedMutation } from './queue.js';
import type { QueueStorage } from './storage.js';

/**
 * The offline queue in a JSON file. Each change rewrites the file atomically (a temporary
 * file, then rename), one write at a time, so a crash leaves either the old or the new
 * queue, never a torn one.
 */
export function fileStorage(path: string): QueueStorage {
  let items: Map<string, QueuedMutation> | null = null;
  let chain: Promise<void> = Promise.resolve();
  let counter = 0;
  const read = async (): Promise<Map<string, QueuedMutation>> => {
    if (items) return items;
    let list: QueuedMutation[] = [];
    try {
      const text = await readFile(path, 'utf8');
      const parsed = JSON.parse(text) as { mutations?: QueuedMutation[] };
      list = parsed.mutations ?? [];
    } catch (e) {
      if ((e as { code?: string }).code !== 'ENOENT') throw e;
    }
    items = new Map(list.map((m) => [m.qid, m]));
    return items;
  };
  const flush = (mutate: (m: Map<string, QueuedMutation>) => void): Promise<void> => {
    const next = chain.then(async () => {
      const m = await read();
      mutate(m);
      await mkdir(dirname(path), { recursive: true });
      const tmp = `${path}.${process.pid}.${++counter}.tmp`;
      await writeFile(tmp, JSON.stringify({ version: 1, mutations: [...m.values()] }));
      await rename(tmp, path);
    });
    chain = next.catch(() => {});
    return next;
  };
  return {
    async load() {
      await chain;
      return [...(await read()).values()].map((m) => JSON.parse(JSON.stringify(m)) as QueuedMutation);
    },
    put(m) {
      const copy = JSON.parse(JSON.stringify(m)) as QueuedMutation;
      return flush((all) => all.set(copy.qid, copy));
    },
    remove(qid) {
      return flush((all) => all.delete(qid));
    },
  };
}

export * from './index.js';
