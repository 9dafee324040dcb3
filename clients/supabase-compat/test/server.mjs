// Starts the real `livebase` binary for a supabase-js test: a free loopback port, a temporary
// data directory, a known admin key and JWT secret, and Supabase-style keys minted with that
// secret (HS256, as `livebase token --role anon` makes them). Shared by the REST and the
// realtime suites.
//
//   const s = await startServer();
//   const supabase = createClient(s.url, s.anonKey, s.clientOptions);
//   await s.createCollection({ name: 'todos', fields: [...], rules: {...} });
//   ...
//   await s.stop();
//
// LIVEBASE_BIN names the binary (default ../../target/debug/livebase, relative to
// clients/supabase-compat).
import { spawn } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(fileURLToPath(new URL('.', import.meta.url)), '..');
export const LIVEBASE_BIN = resolve(root, process.env.LIVEBASE_BIN ?? '../../target/debug/livebase');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.unref();
    s.on('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => res(typeof a === 'object' && a ? a.port : 0));
    });
  });
}

/** An HS256 JWT over `claims` (iat and exp added; `ttlSecs` may be negative: expired). */
export function signJwt(secret, claims, ttlSecs = 3600) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ iss: 'livebase', ...claims, iat: now, exp: now + ttlSecs })}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}

/**
 * @param {{ env?: Record<string,string>, args?: string[] }} [opts] extra environment / flags
 * @returns {Promise<{
 *   url: string, adminKey: string, secret: string, anonKey: string, serviceKey: string,
 *   clientOptions: object,
 *   userToken: (sub: string, role?: string, ttlSecs?: number, extra?: object) => string,
 *   admin: (method: string, path: string, body?: unknown) => Promise<{status: number, data: any}>,
 *   createCollection: (def: object) => Promise<void>,
 *   stop: () => Promise<void>,
 * }>}
 */
export async function startServer(opts = {}) {
  if (!existsSync(LIVEBASE_BIN)) {
    throw new Error(`livebase binary not found at ${LIVEBASE_BIN}: run \`cargo build -p livebase-server\` or set LIVEBASE_BIN`);
  }
  const adminKey = `test-admin-${randomBytes(8).toString('hex')}`;
  const secret = `test-secret-${randomBytes(16).toString('hex')}`;
  const dataDir = mkdtempSync(join(tmpdir(), 'livebase-supabase-'));
  let proc = null;
  let stderr = '';
  let url = '';
  for (let tries = 0; tries < 5 && !url; tries++) {
    const port = await freePort();
    const env = { ...process.env, LIVEBASE_JWT_SECRET: secret, ...(opts.env ?? {}) };
    stderr = '';
    proc = spawn(
      LIVEBASE_BIN,
      ['serve', '--addr', `127.0.0.1:${port}`, '--data', dataDir, '--admin-key', adminKey, '--log', 'warn', ...(opts.args ?? [])],
      { env, stdio: ['ignore', 'ignore', 'pipe'] },
    );
    proc.stderr.on('data', (d) => {
      stderr = (stderr + d.toString()).slice(-4000);
    });
    let exited = false;
    proc.once('exit', () => {
      exited = true;
    });
    const deadline = Date.now() + 15_000;
    while (Date.now() < deadline && !exited) {
      try {
        const r = await fetch(`http://127.0.0.1:${port}/health`);
        if (r.ok) {
          url = `http://127.0.0.1:${port}`;
          break;
        }
      } catch {
        // not listening yet
      }
      await sleep(25);
    }
    if (!url) {
      proc.kill('SIGKILL');
      if (!exited) throw new Error(`livebase did not become healthy in time: ${stderr}`);
    }
  }
  if (!url) {
    rmSync(dataDir, { recursive: true, force: true });
    throw new Error(`livebase failed to start: ${stderr}`);
  }

  const admin = async (method, path, body) => {
    const res = await fetch(`${url}${path}`, {
      method,
      headers: { authorization: `Bearer ${adminKey}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, data: text ? JSON.parse(text) : null };
  };

  return {
    url,
    adminKey,
    secret,
    anonKey: signJwt(secret, { role: 'anon' }, 10 * 365 * 86_400),
    serviceKey: signJwt(secret, { role: 'service_role' }, 10 * 365 * 86_400),
    /** For createClient in Node tests: no session storage, no refresh timers. */
    clientOptions: { auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false } },
    userToken: (sub, role = 'authenticated', ttlSecs = 3600, extra = {}) => signJwt(secret, { ...extra, sub, role }, ttlSecs),
    admin,
    createCollection: async (def) => {
      const r = await admin('POST', '/api/collections', def);
      if (r.status !== 201) throw new Error(`create collection failed: ${r.status} ${JSON.stringify(r.data)}`);
    },
    /** Output the server wrote to stderr lately (for failure messages). */
    stderr: () => stderr,
    stop: async () => {
      const p = proc;
      proc = null;
      if (p && p.exitCode === null && p.signalCode === null) {
        await new Promise((res) => {
          p.once('exit', () => res());
          p.kill('SIGTERM');
          setTimeout(() => p.kill('SIGKILL'), 5000).unref();
        });
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
