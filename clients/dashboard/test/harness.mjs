// Test harness: the real livebase binary on a free port with a temp data dir, and chromium
// through playwright-core. Every wait is bounded; every process started is stopped.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const ROOT = join(here, '..', '..', '..');
export const BIN = process.env.LIVEBASE_BIN ?? join(ROOT, 'target', 'debug', 'livebase');
export const ARTIFACTS = join(here, '..', 'artifacts');
export const ADMIN_KEY = 'dash-test-admin-key';
export const JWT_SECRET = 'dash-test-jwt-secret-0123456789abcdef';

export async function startServer(env = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'livebase-dash-'));
  const child = spawn(BIN, ['serve', '--demo', '--addr', '127.0.0.1:0', '--data', join(dir, 'data')], {
    env: { ...process.env, LIVEBASE_ADMIN_KEY: ADMIN_KEY, LIVEBASE_JWT_SECRET: JWT_SECRET, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  child.stderr.on('data', (d) => (log += d));
  const url = await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('server did not start in 30 s:\n' + log)), 30_000);
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/dashboard: (http:\/\/[^\s]+)\/_\//);
      if (m) {
        clearTimeout(t);
        resolve(m[1]);
      }
    });
    child.on('exit', (c) => reject(new Error(`server exited (${c}):\n${log}`)));
  });
  const stop = async () => {
    if (child.exitCode === null) {
      child.kill('SIGTERM');
      await new Promise((r) => {
        const t = setTimeout(() => {
          child.kill('SIGKILL');
          r();
        }, 5000);
        child.on('exit', () => {
          clearTimeout(t);
          r();
        });
      });
    }
    rmSync(dir, { recursive: true, force: true });
  };
  return { url, stop, log: () => log };
}

export function token(sub, role = 'authenticated') {
  return execFileSync(BIN, ['token', '--sub', sub, '--role', role, '--secret', JWT_SECRET], { encoding: 'utf8' }).trim();
}

export async function rest(url, method, path, body, auth = ADMIN_KEY, headers = {}) {
  const res = await fetch(url + path, {
    method,
    headers: { Authorization: `Bearer ${auth}`, ...(body ? { 'Content-Type': 'application/json' } : {}), ...headers },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

/** Polls `fn` until it returns a truthy value (bounded). */
export async function eventually(fn, what, timeoutMs = 10_000) {
  const until = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > until) throw new Error(`timed out waiting for ${what} (last: ${last})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function launch() {
  mkdirSync(ARTIFACTS, { recursive: true });
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: 30_000,
  });
}

export async function signIn(browser, url, credential, name, hash = '') {
  const context = await browser.newContext({ viewport: { width: 1400, height: 860 } });
  context.setDefaultTimeout(10_000);
  const page = await context.newPage();
  const errors = [];
  const sockets = [];
  page.on('websocket', (w) => sockets.push(w.url()));
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => m.type() === 'error' && errors.push(m.text()));
  await page.goto(url + '/_/' + hash);
  await page.getByLabel('Admin key or JWT').fill(credential);
  await page.getByLabel('Display name (for presence)').fill(name);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('.conn[data-state="connected"]').waitFor();
  return { context, page, errors, sockets };
}
