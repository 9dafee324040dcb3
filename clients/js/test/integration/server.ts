/**
 * Starts the real `livebase` binary for a test: a free loopback port, a temporary data
 * directory, a known admin key. `LIVEBASE_BIN` names the binary (default
 * `../../target/debug/livebase` relative to clients/js).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const jsRoot = resolve(fileURLToPath(new URL('.', import.meta.url)), '../..');
export const LIVEBASE_BIN = resolve(jsRoot, process.env.LIVEBASE_BIN ?? '../../target/debug/livebase');

export interface ServerOptions {
  /** Enables HS256 user tokens (LIVEBASE_JWT_SECRET). */
  jwtSecret?: string;
  heartbeatMs?: number;
  heartbeatTimeoutMs?: number;
  retainEvents?: number;
}

function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.unref();
    s.on('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      s.close(() => res(port));
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class TestServer {
  readonly adminKey = `test-admin-${Math.random().toString(36).slice(2)}`;
  readonly dataDir = mkdtempSync(join(tmpdir(), 'livebase-js-'));
  url = '';
  private proc: ChildProcess | null = null;
  private port = 0;
  private stderr = '';

  private constructor(private readonly opts: ServerOptions) {}

  static async start(opts: ServerOptions = {}): Promise<TestServer> {
    if (!existsSync(LIVEBASE_BIN)) {
      throw new Error(`livebase binary not found at ${LIVEBASE_BIN}: run \`cargo build -p livebase-server\` or set LIVEBASE_BIN`);
    }
    const t = new TestServer(opts);
    await t.boot(true);
    return t;
  }

  private async boot(newPort: boolean): Promise<void> {
    for (let tries = 0; tries < 5; tries++) {
      if (newPort || !this.port) this.port = await freePort();
      this.url = `http://127.0.0.1:${this.port}`;
      const env: NodeJS.ProcessEnv = { ...process.env };
      if (this.opts.heartbeatMs) env.LIVEBASE_HEARTBEAT_MS = String(this.opts.heartbeatMs);
      if (this.opts.heartbeatTimeoutMs) env.LIVEBASE_HEARTBEAT_TIMEOUT_MS = String(this.opts.heartbeatTimeoutMs);
      if (this.opts.retainEvents) env.LIVEBASE_RETAIN_EVENTS = String(this.opts.retainEvents);
      if (this.opts.jwtSecret) env.LIVEBASE_JWT_SECRET = this.opts.jwtSecret;
      this.stderr = '';
      const proc = spawn(
        LIVEBASE_BIN,
        ['serve', '--addr', `127.0.0.1:${this.port}`, '--data', this.dataDir, '--admin-key', this.adminKey, '--log', 'warn'],
        { env, stdio: ['ignore', 'ignore', 'pipe'] },
      );
      this.proc = proc;
      proc.stderr?.on('data', (d: Buffer) => {
        this.stderr = (this.stderr + d.toString()).slice(-4000);
      });
      let exited = false;
      proc.once('exit', () => {
        exited = true;
      });
      const deadline = Date.now() + 15_000;
      while (Date.now() < deadline && !exited) {
        try {
          const r = await fetch(`${this.url}/health`);
          if (r.ok) return;
        } catch {
          // not listening yet
        }
        await sleep(25);
      }
      proc.kill('SIGKILL');
      if (!exited) throw new Error(`livebase did not become healthy in time: ${this.stderr}`);
      newPort = true; // probably the port was taken: try another
    }
    throw new Error(`livebase failed to start: ${this.stderr}`);
  }

  /** Stops the process (SIGKILL: like a crash) and starts it again on the same port and data. */
  async restart(): Promise<void> {
    await this.kill();
    await this.boot(false);
  }

  async kill(): Promise<void> {
    const p = this.proc;
    this.proc = null;
    if (!p || p.exitCode !== null) return;
    await new Promise<void>((res) => {
      p.once('exit', () => res());
      p.kill('SIGKILL');
    });
  }

  async stop(): Promise<void> {
    await this.kill();
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  async http<T = unknown>(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; data: T }> {
    const res = await fetch(`${this.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${this.adminKey}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, data: (text ? JSON.parse(text) : null) as T };
  }

  async createCollection(def: unknown): Promise<void> {
    const r = await this.http('POST', '/api/collections', def);
    if (r.status !== 201) throw new Error(`create collection failed: ${r.status} ${JSON.stringify(r.data)}`);
  }

  /** Every record of a collection (REST, following cursors). */
  async list<T = Record<string, unknown>>(collection: string, query = ''): Promise<T[]> {
    const out: T[] = [];
    let cursor: string | null = null;
    for (let page = 0; page < 1000; page++) {
      const q: string = [query, 'limit=1000', cursor ? `cursor=${encodeURIComponent(cursor)}` : ''].filter(Boolean).join('&');
      const r: { status: number; data: { items: T[]; next_cursor: string | null } } = await this.http<{ items: T[]; next_cursor: string | null }>('GET', `/api/collections/${collection}/records?${q}`);
      if (r.status !== 200) throw new Error(`list failed: ${r.status} ${JSON.stringify(r.data)}`);
      out.push(...r.data.items);
      cursor = r.data.next_cursor;
      if (!cursor) break;
    }
    return out;
  }

  /** The change log (admin). */
  async changes(query = ''): Promise<{ seq: number; op: string; id: string; collection: string; version: number }[]> {
    const out: { seq: number; op: string; id: string; collection: string; version: number }[] = [];
    let since = 0;
    for (let page = 0; page < 1000; page++) {
      const r = await this.http<{ events: { seq: number; op: string; id: string; collection: string; version: number }[]; next_since: number | null }>(
        'GET',
        `/api/changes?since=${since}&limit=10000${query ? `&${query}` : ''}`,
      );
      out.push(...r.data.events);
      if (!r.data.next_since || r.data.events.length === 0) break;
      since = r.data.next_since;
    }
    return out;
  }
}

/** An HS256 user token, as `livebase token` makes them. */
export function userToken(secret: string, sub: string, ttlSecs: number, role = 'authenticated'): string {
  const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, role, iat: now, exp: now + ttlSecs })}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}

export const itemsCollection = {
  name: 'items',
  fields: [
    { name: 'title', type: 'text', required: true, max: 100 },
    { name: 'qty', type: 'integer', min: 0 },
    { name: 'status', type: 'select', values: ['open', 'late', 'done'] },
    { name: 'done', type: 'boolean' },
    { name: 'note', type: 'text' },
  ],
  conflict: 'reject',
};
