/**
 * User tokens (JWT) and collection rules: writes the rules refuse roll back, live queries
 * only ever hold what the user may see, and an expiring token is refreshed on the open
 * socket (`auth`) with nothing missed.
 */
import { describe, expect, it } from 'vitest';
import type { LivebaseError } from '@livebase/client';
import { type TestServer, userToken } from './server.js';
import { client, serverPerTest, waitFor } from './helpers.js';

const SECRET = 'test-secret-for-hs256-tokens-0123456789';
type Note = { title: string; owner: string };

let t: TestServer;
const clients = serverPerTest((s) => (t = s), {
  start: { jwtSecret: SECRET },
  collection: {
    name: 'notes',
    fields: [
      { name: 'title', type: 'text', required: true },
      { name: 'owner', type: 'text', required: true },
    ],
    rules: {
      list: 'record.owner == auth.sub',
      view: 'record.owner == auth.sub',
      create: 'data.owner == auth.sub',
      update: 'record.owner == auth.sub',
      delete: 'record.owner == auth.sub',
    },
  },
});

async function adminCreate(title: string, owner: string): Promise<void> {
  const r = await t.http('POST', '/api/collections/notes/records', { title, owner });
  expect(r.status).toBe(201);
}

describe('user tokens and rules', () => {
  it('live queries hold only what the rules let the user see; refused writes roll back', async () => {
    const A = client(t, { token: userToken(SECRET, 'u1', 3600) });
    clients.push(A);
    const errors: LivebaseError[] = [];
    A.on('error', (e) => errors.push(e));
    await A.whenConnected();
    const notes = A.collection<Note>('notes');
    const live = notes.live();
    await live.ready();
    await adminCreate('theirs', 'u2');
    await adminCreate('mine', 'u1');
    await waitFor('own note arrives', () => live.rows.length === 1, { subscribe: [live.subscribe] });
    expect(live.rows[0]!.title).toBe('mine');

    // The client cannot know the server's rules: the write shows until the server refuses it.
    const forged = notes.create({ title: 'forged', owner: 'u2' });
    expect(live.rows.map((r) => r.title).sort()).toEqual(['forged', 'mine']);
    await expect(forged).rejects.toMatchObject({ status: 403, code: 'forbidden' });
    expect(live.rows.map((r) => r.title)).toEqual(['mine']);
    const ok = await notes.create({ title: 'second', owner: 'u1' });
    expect(ok.owner).toBe('u1');
    await waitFor('two own notes', () => live.rows.length === 2 && live.getSnapshot().pendingIds.size === 0, {
      subscribe: [live.subscribe],
    });
    expect(errors.map((e) => e.code)).toEqual(['forbidden']);
  });

  it('an expired fixed token is reported; setToken resumes the subscriptions with nothing missed', async () => {
    const A = client(t, { token: userToken(SECRET, 'u1', 2) });
    clients.push(A);
    const expired: LivebaseError[] = [];
    A.on('error', (e) => e.code === 'token_expired' && expired.push(e));
    await A.whenConnected();
    const live = A.collection<Note>('notes').live();
    await live.ready();
    await waitFor('token_expired reported', () => expired.length === 1, { timeoutMs: 10_000 });
    await adminCreate('while expired', 'u1');
    await A.setToken(userToken(SECRET, 'u1', 3600));
    await waitFor('the note made while expired arrives', () => live.rows.some((r) => r.title === 'while expired'), {
      subscribe: [live.subscribe],
    });
    expect(A.getStatus().state).toBe('connected');
  });

  it('a token function is asked again when the token expires, and the live query goes on', async () => {
    let current = '';
    let exp = 0;
    let minted = 0;
    // Like a real provider: reuse the token until it is about to expire. `exp` is taken
    // before signing, so the token never outlives what this function believes.
    const token = () => {
      if (Date.now() / 1000 >= exp - 0.5) {
        exp = Math.floor(Date.now() / 1000) + 2;
        current = userToken(SECRET, 'u1', 2);
        minted++;
      }
      return current;
    };
    const A = client(t, { token });
    clients.push(A);
    await A.whenConnected();
    const live = A.collection<Note>('notes').live();
    await live.ready();
    await waitFor('refreshed after expiry', () => minted >= 2, { timeoutMs: 10_000 });
    await adminCreate('after refresh', 'u1');
    await waitFor('note arrives', () => live.rows.some((r) => r.title === 'after refresh'), { subscribe: [live.subscribe] });
    expect(A.getStatus().state).toBe('connected');
  });
});
