// supabase-js's query builder (postgrest-js) against Livebase's /rest/v1: the real,
// unmodified client, the real binary. Every call below is what an app written for Supabase
// already does.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createClient } from '@supabase/supabase-js';
import { startServer } from './server.mjs';

const open = { list: 'true', view: 'true', create: 'true', update: 'true', delete: 'true' };

let s;
let anon;
let service;

const titles = (data) => data.map((r) => r.title);

before(async () => {
  s = await startServer();
  await s.createCollection({
    name: 'todos',
    fields: [
      { name: 'title', type: 'text', required: true },
      { name: 'qty', type: 'integer', min: 0 },
      { name: 'status', type: 'select', values: ['open', 'late', 'done'], default: 'open' },
      { name: 'done', type: 'boolean' },
      { name: 'sku', type: 'text', unique: true },
    ],
    rules: open,
  });
  await s.createCollection({
    name: 'notes',
    fields: [
      { name: 'owner', type: 'text' },
      { name: 'body', type: 'text' },
    ],
    rules: {
      list: 'auth.role == "authenticated"',
      view: 'record.owner == auth.sub',
      create: 'data.owner == auth.sub',
      update: 'record.owner == auth.sub',
      delete: 'record.owner == auth.sub',
    },
  });
  anon = createClient(s.url, s.anonKey, s.clientOptions);
  service = createClient(s.url, s.serviceKey, s.clientOptions);
});

after(async () => {
  await s?.stop();
});

async function seed() {
  const { error: delError } = await service.from('todos').delete().neq('title', '');
  assert.equal(delError, null);
  const { data, error } = await anon
    .from('todos')
    .insert([
      { title: 'apple', qty: 5, status: 'open', done: false, sku: 'A' },
      { title: 'Banana', qty: 2, status: 'late', done: true, sku: 'B' },
      { title: 'cherry', qty: 9, status: 'open', done: false, sku: 'C' },
      { title: 'date', status: 'done', sku: 'D' },
      { title: 'elder, berry', qty: 0, status: 'late', done: true, sku: 'E' },
    ])
    .select();
  assert.equal(error, null);
  assert.equal(data.length, 5);
  return data;
}

describe('reads', () => {
  before(seed);

  it('selects columns', async () => {
    const { data, error, status } = await anon.from('todos').select('title, qty').eq('sku', 'A');
    assert.equal(error, null);
    assert.equal(status, 200);
    assert.deepEqual(data, [{ title: 'apple', qty: 5 }]);
    const all = await anon.from('todos').select();
    assert.equal(all.data.length, 5);
    assert.ok(all.data[0].id && all.data[0].created_at);
  });

  it('filters like PostgREST', async () => {
    const q = () => anon.from('todos').select('title').order('title');
    const cases = [
      [q().eq('qty', 5), ['apple']],
      [q().neq('qty', 5), ['Banana', 'cherry', 'elder, berry']],
      [q().gt('qty', 2), ['apple', 'cherry']],
      [q().gte('qty', 2), ['Banana', 'apple', 'cherry']],
      [q().lt('qty', 2), ['elder, berry']],
      [q().lte('qty', 2), ['Banana', 'elder, berry']],
      [q().like('title', '%an%'), ['Banana']],
      [q().ilike('title', 'b%'), ['Banana']],
      [q().is('qty', null), ['date']],
      [q().is('done', true), ['Banana', 'elder, berry']],
      [q().in('qty', [2, 9]), ['Banana', 'cherry']],
      [q().in('title', ['elder, berry', 'apple']), ['apple', 'elder, berry']],
      [q().not('qty', 'is', null).lt('qty', 3), ['Banana', 'elder, berry']],
      [q().not('qty', 'in', '(2,9)'), ['apple', 'elder, berry']],
      [q().or('qty.gt.8,title.eq.date'), ['cherry', 'date']],
      [q().or('status.eq.done,and(qty.gt.4,qty.lt.6)'), ['apple', 'date']],
      [q().filter('status', 'eq', 'late').match({ done: true }), ['Banana', 'elder, berry']],
      [q().eq('title', 'elder, berry'), ['elder, berry']],
    ];
    for (const [query, want] of cases) {
      const { data, error } = await query;
      assert.equal(error, null, JSON.stringify(error));
      assert.deepEqual(titles(data), want);
    }
  });

  it('orders, with nulls first or last', async () => {
    let r = await anon.from('todos').select('title').order('qty', { ascending: false, nullsFirst: false }).order('title');
    assert.deepEqual(titles(r.data), ['cherry', 'apple', 'Banana', 'elder, berry', 'date']);
    r = await anon.from('todos').select('title').order('qty', { ascending: true, nullsFirst: true });
    assert.deepEqual(titles(r.data), ['date', 'elder, berry', 'Banana', 'apple', 'cherry']);
  });

  it('pages with range and limit, and counts', async () => {
    let r = await anon.from('todos').select('title').order('title').range(1, 3);
    assert.deepEqual(titles(r.data), ['apple', 'cherry', 'date']);
    r = await anon.from('todos').select('title').order('title').limit(2);
    assert.deepEqual(titles(r.data), ['Banana', 'apple']);
    r = await anon.from('todos').select('*', { count: 'exact' }).limit(2);
    assert.equal(r.error, null);
    assert.equal(r.count, 5);
    assert.equal(r.data.length, 2);
    r = await anon.from('todos').select('*', { count: 'exact', head: true }).eq('status', 'open');
    assert.equal(r.error, null);
    assert.equal(r.count, 2);
    assert.equal(r.data, null);
    r = await anon.from('todos').select('*', { count: 'exact', head: true }).gt('qty', 100);
    assert.equal(r.count, 0);
  });

  it('returns one object with single() and maybeSingle()', async () => {
    let r = await anon.from('todos').select('title, qty').eq('sku', 'C').single();
    assert.equal(r.error, null);
    assert.deepEqual(r.data, { title: 'cherry', qty: 9 });
    r = await anon.from('todos').select().eq('sku', 'nope').single();
    assert.equal(r.status, 406);
    assert.deepEqual(r.error, {
      code: 'PGRST116',
      details: 'The result contains 0 rows',
      hint: null,
      message: 'JSON object requested, multiple (or no) rows returned',
    });
    r = await anon.from('todos').select().eq('status', 'open').single();
    assert.equal(r.error.code, 'PGRST116');
    r = await anon.from('todos').select('title').eq('sku', 'nope').maybeSingle();
    assert.equal(r.error, null);
    assert.equal(r.data, null);
    r = await anon.from('todos').select('title').eq('sku', 'A').maybeSingle();
    assert.deepEqual(r.data, { title: 'apple' });
  });
});

describe('writes', () => {
  before(seed);

  it('inserts one row, returning nothing unless asked', async () => {
    let r = await anon.from('todos').insert({ title: 'fig', qty: 1 });
    assert.equal(r.error, null);
    assert.equal(r.status, 201);
    assert.equal(r.data, null);
    r = await anon.from('todos').insert({ title: 'grape' }).select('title, status').single();
    assert.equal(r.error, null);
    assert.deepEqual(r.data, { title: 'grape', status: 'open' });
  });

  it('inserts many rows: absent keys are null unless defaultToNull is off', async () => {
    // postgrest-js lists every key of every object in columns=; h2 has no status, so it gets null.
    let r = await anon.from('todos').insert([{ title: 'h1', status: 'late' }, { title: 'h2' }]).select('title, status');
    assert.equal(r.error, null);
    assert.deepEqual(r.data, [
      { title: 'h1', status: 'late' },
      { title: 'h2', status: null },
    ]);
    r = await anon.from('todos').insert([{ title: 'i1', status: 'late' }, { title: 'i2' }], { defaultToNull: false }).select('title, status');
    assert.deepEqual(r.data, [
      { title: 'i1', status: 'late' },
      { title: 'i2', status: 'open' },
    ]);
  });

  it('updates every matching row', async () => {
    let r = await anon.from('todos').update({ qty: 7 }).eq('status', 'late').not('sku', 'is', null).select('title, qty');
    assert.equal(r.error, null);
    assert.deepEqual(titles(r.data).sort(), ['Banana', 'elder, berry']);
    assert.ok(r.data.every((x) => x.qty === 7));
    r = await anon.from('todos').update({ done: true }, { count: 'exact' }).eq('status', 'open');
    assert.equal(r.error, null);
    assert.equal(r.status, 204);
    assert.ok(r.count >= 2);
    r = await anon.from('todos').update({ qty: 1 }).eq('sku', 'nope').select();
    assert.deepEqual(r.data, []);
  });

  it('upserts on id or on a unique column', async () => {
    const { data: [apple] } = await anon.from('todos').select('id').eq('sku', 'A');
    let r = await anon
      .from('todos')
      .upsert([{ id: apple.id, title: 'apple', qty: 50 }, { id: 'upsert-new-1', title: 'kiwi', qty: 1 }])
      .select('id, title, qty');
    assert.equal(r.error, null, JSON.stringify(r.error));
    assert.deepEqual(r.data, [
      { id: apple.id, title: 'apple', qty: 50 },
      { id: 'upsert-new-1', title: 'kiwi', qty: 1 },
    ]);
    r = await anon.from('todos').upsert({ sku: 'B', title: 'BANANA' }, { onConflict: 'sku' }).select('title');
    assert.equal(r.error, null, JSON.stringify(r.error));
    assert.deepEqual(r.data, [{ title: 'BANANA' }]);
    r = await anon.from('todos').upsert({ sku: 'C', title: 'CHERRY' }, { onConflict: 'sku', ignoreDuplicates: true }).select('title');
    assert.deepEqual(r.data, []);
    r = await anon.from('todos').select('title').eq('sku', 'C').single();
    assert.equal(r.data.title, 'cherry');
  });

  it('deletes with filters', async () => {
    let r = await anon.from('todos').delete().eq('sku', 'D');
    assert.equal(r.error, null);
    assert.equal(r.status, 204);
    assert.equal(r.data, null);
    r = await anon.from('todos').delete().eq('sku', 'E').select('title');
    assert.deepEqual(r.data, [{ title: 'elder, berry' }]);
    r = await anon.from('todos').select('*', { count: 'exact', head: true }).in('sku', ['D', 'E']);
    assert.equal(r.count, 0);
  });
});

describe('errors', () => {
  before(seed);

  it('come in PostgREST shape with PostgREST codes', async () => {
    let r = await anon.from('todos').select().eq('qty', 'abc');
    assert.equal(r.status, 400);
    assert.equal(r.error.code, '22P02');
    assert.equal(r.error.message, 'invalid input syntax for type integer: "abc"');
    assert.ok('details' in r.error && 'hint' in r.error);
    r = await anon.from('todos').insert({ title: 'dup', sku: 'A' });
    assert.equal(r.status, 409);
    assert.equal(r.error.code, '23505');
    r = await anon.from('nothing_here').select();
    assert.equal(r.status, 404);
    assert.equal(r.error.code, '42P01');
    assert.equal(r.data, null);
    r = await anon.from('todos').select('nope');
    assert.equal(r.error.code, '42703');
    r = await anon.from('todos').insert({ qty: 1 });
    assert.equal(r.error.code, '23502');
    r = await anon.from('todos').select().textSearch('title', 'apple');
    assert.equal(r.status, 400);
    assert.equal(r.error.code, 'PGRST100');
    r = await anon.rpc('do_things');
    assert.equal(r.status, 404);
    assert.equal(r.error.code, 'PGRST202');
  });

  it('a bad key is a 401', async () => {
    const forged = createClient(s.url, s.anonKey.slice(0, -4) + 'AAAA', s.clientOptions);
    let r = await forged.from('todos').select();
    assert.equal(r.status, 401);
    assert.equal(r.error.code, 'PGRST301');
    const expired = createClient(s.url, s.userToken('u1', 'authenticated', -10), s.clientOptions);
    r = await expired.from('todos').select();
    assert.equal(r.status, 401);
    assert.equal(r.error.message, 'JWT expired');
    const other = createClient(s.url, 'not-a-key', s.clientOptions);
    r = await other.from('todos').insert({ title: 'x' });
    assert.equal(r.status, 401);
  });
});

describe('keys and roles', () => {
  it('a user sees and changes its own rows; anon nothing; service_role everything', async () => {
    // A signed-in user's token, handed over the two ways supabase-js offers.
    const ann = createClient(s.url, s.anonKey, { ...s.clientOptions, accessToken: async () => s.userToken('ann') });
    const bob = createClient(s.url, s.anonKey, {
      ...s.clientOptions,
      global: { headers: { Authorization: `Bearer ${s.userToken('bob')}` } },
    });
    assert.equal((await ann.from('notes').insert({ owner: 'ann', body: "ann's" })).error, null);
    assert.equal((await bob.from('notes').insert({ owner: 'bob', body: "bob's" })).error, null);
    let r = await ann.from('notes').select('body');
    assert.deepEqual(r.data, [{ body: "ann's" }]);
    r = await ann.from('notes').update({ body: 'edited' }).neq('body', '').select('body');
    assert.deepEqual(r.data, [{ body: 'edited' }]);
    r = await bob.from('notes').select('body');
    assert.deepEqual(r.data, [{ body: "bob's" }]);
    r = await ann.from('notes').insert({ owner: 'bob', body: 'forged' });
    assert.equal(r.status, 403);
    assert.equal(r.error.code, '42501');
    r = await anon.from('notes').select();
    assert.equal(r.status, 401);
    assert.equal(r.error.code, '42501');
    r = await service.from('notes').select('body').order('body');
    assert.deepEqual(r.data, [{ body: "bob's" }, { body: 'edited' }]);
  });
});
