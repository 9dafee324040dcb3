import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { ADMIN_KEY, ARTIFACTS, ROOT, eventually, launch, rest, signIn, startServer, token } from './harness.mjs';

let server, browser;
const contexts = [];
const shot = (page, name) => page.screenshot({ path: join(ARTIFACTS, name + '.png') });

before(async () => {
  server = await startServer();
  browser = await launch();
});
after(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  await browser?.close().catch(() => {});
  await server?.stop();
});

async function admin(name, hash) {
  const s = await signIn(browser, server.url, ADMIN_KEY, name, hash);
  contexts.push(s.context);
  return s;
}

const customer = async () => (await rest(server.url, 'GET', '/api/collections/customers/records?limit=1')).body.items[0].id;
const row = (page, id) => page.locator(`.grid-row[data-id="${id}"]`);

test('the server serves the dashboard and / redirects to it', async () => {
  const r = await fetch(server.url + '/', { redirect: 'manual' });
  assert.equal(r.status, 303);
  assert.equal(r.headers.get('location'), '/_/');
  const deep = await fetch(server.url + '/_/anything/deep');
  assert.equal(deep.status, 200);
  assert.match(deep.headers.get('content-security-policy'), /default-src 'self'/);
});

test('sign in, live table: a REST create appears, an update flashes, a delete removes it', async () => {
  const { page, context, errors, sockets } = await admin('Ada', '');
  await page.getByRole('link', { name: /shipments/ }).click();
  await page.locator('.grid-row').first().waitFor();
  // Counts in the sidebar (count=exact).
  await eventually(async () => /\d+/.test(await page.locator('.sidebar a.active .count').innerText()), 'a record count');
  // The credential is in sessionStorage only, never in the URL or localStorage.
  assert.ok(!page.url().includes(ADMIN_KEY));
  assert.ok(sockets.length > 0 && sockets.every((u) => !u.includes('token')), `no credential in socket URLs: ${sockets}`);
  assert.ok(!JSON.stringify(await page.evaluate(() => ({ ...localStorage }))).includes(ADMIN_KEY));
  // Newest first, so the new row is in view.
  await page.goto(server.url + '/_/#/c/shipments?order=created_at.desc');
  await page.locator('.grid-row').first().waitFor();
  await shot(page, 'table');
  const created = await rest(server.url, 'POST', '/api/collections/shipments/records', { reference: 'SHP-LIVE-1', customer: await customer(), status: 'pending' });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const id = created.body.id;
  await row(page, id).waitFor({ timeout: 5000 });
  const upd = await rest(server.url, 'PATCH', `/api/collections/shipments/records/${id}`, { status: 'late' });
  assert.equal(upd.status, 200);
  await page.locator(`.grid-row.flash[data-id="${id}"]`).waitFor();
  await row(page, id).locator('[data-field="status"]', { hasText: 'late' }).waitFor();
  const del = await rest(server.url, 'DELETE', `/api/collections/shipments/records/${id}`);
  assert.equal(del.status, 200);
  await row(page, id).waitFor({ state: 'detached' });
  assert.deepEqual(errors.filter((e) => !/Failed to load resource/.test(e)), []);
  // Sign out clears the credential.
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByLabel('Admin key or JWT').waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  await context.close();
});

test('filters: the grammar, inline server errors, readable empty state', async () => {
  const { page, context } = await admin('Ada', '#/c/inventory_items');
  await page.locator('.grid-row').first().waitFor();
  await page.getByLabel('Filter', { exact: true }).fill('qty=gtx.5');
  await page.getByRole('button', { name: 'Apply' }).click();
  await page.getByTestId('filter-error').waitFor();
  assert.match(await page.getByTestId('filter-error').innerText(), /gtx/);
  await page.getByLabel('Filter', { exact: true }).fill('qty=gt.100000');
  await page.getByRole('button', { name: 'Apply' }).click();
  await page.getByTestId('empty').waitFor();
  assert.match(await page.getByTestId('empty').innerText(), /No records match qty=gt\.100000/);
  // The view is in the URL: a reload keeps it.
  await page.reload();
  await page.getByTestId('empty').waitFor();
  await context.close();
});

test('two editors: presence, editing signal, conflict resolver, merged save, audit log', async () => {
  const created = await rest(server.url, 'POST', '/api/collections/shipments/records', { reference: 'SHP-CONFLICT', customer: await customer(), notes: 'original' });
  const id = created.body.id;
  const hash = `#/c/shipments?record=${id}`;
  const a = await admin('Ada Lovelace', hash);
  const b = await admin('Ben Bitdiddle', hash);
  await a.page.locator('.avatar[data-name="Ben Bitdiddle"]').waitFor();
  await b.page.locator('.avatar[data-name="Ada Lovelace"]').waitFor();
  // Both start editing the same field from version 1.
  await a.page.getByRole('textbox', { name: 'notes', exact: true }).fill('from Ada');
  await b.page.getByRole('textbox', { name: 'notes', exact: true }).fill('from Ben');
  await a.page.getByText('Ben Bitdiddle is editing notes').waitFor();
  await shot(a.page, 'record-presence');
  await a.page.getByRole('button', { name: 'Save', exact: true }).click();
  await eventually(async () => (await rest(server.url, 'GET', `/api/collections/shipments/records/${id}`)).body.notes === 'from Ada', "Ada's save");
  await b.page.getByRole('button', { name: 'Save', exact: true }).click();
  const dialog = b.page.getByRole('dialog', { name: 'Resolve conflict' });
  await dialog.waitFor();
  const line = dialog.locator('tr[data-field="notes"]');
  assert.match(await line.innerText(), /original[\s\S]*from Ada[\s\S]*from Ben/);
  await shot(b.page, 'conflict');
  await dialog.getByLabel('yours notes').check();
  await dialog.getByRole('button', { name: 'Save merge' }).click();
  const final = await eventually(async () => {
    const r = await rest(server.url, 'GET', `/api/collections/shipments/records/${id}`);
    return r.body.notes === 'from Ben' && r.body;
  }, 'the merged save');
  assert.equal(final.version, 3);
  // Ada's open table shows it live.
  await a.page.getByRole('textbox', { name: 'notes', exact: true }).waitFor();
  // The audit log of the record shows the change as a diff.
  await a.page.goto(server.url + `/_/#/audit?collection=shipments&record=${id}`);
  const ev = a.page.locator(`.events li[data-id="${id}"]`, { hasText: 'from Ben' });
  await ev.first().waitFor();
  assert.match(await ev.first().innerText(), /from Ada[\s\S]*→[\s\S]*from Ben/);
  await shot(a.page, 'audit');
  await a.context.close();
  await b.context.close();
});

test('a user token sees only the rows its rules allow', async () => {
  const def = {
    name: 'notes',
    fields: [
      { name: 'owner', type: 'text', required: true },
      { name: 'title', type: 'text', required: true },
    ],
    rules: { list: 'auth.role != "anon"', view: 'record.owner == auth.sub', create: 'data.owner == auth.sub', update: 'record.owner == auth.sub' },
  };
  const c = await rest(server.url, 'POST', '/api/collections', def);
  assert.equal(c.status, 201, JSON.stringify(c.body));
  await rest(server.url, 'POST', '/api/collections/notes/records', { owner: 'u1', title: 'mine' });
  await rest(server.url, 'POST', '/api/collections/notes/records', { owner: 'u2', title: 'theirs' });
  const s = await signIn(browser, server.url, token('u1'), 'u1', '#/c/notes');
  contexts.push(s.context);
  await s.page.locator('.grid-row [data-field="title"]', { hasText: 'mine' }).waitFor();
  // A row created for u2 meanwhile never shows; one for u1 does, live.
  await rest(server.url, 'POST', '/api/collections/notes/records', { owner: 'u2', title: 'theirs too' });
  await rest(server.url, 'POST', '/api/collections/notes/records', { owner: 'u1', title: 'mine too' });
  await s.page.locator('.grid-row [data-field="title"]', { hasText: 'mine too' }).waitFor();
  const titles = await s.page.locator('.grid-row [data-field="title"]').allInnerTexts();
  assert.deepEqual(titles.sort(), ['mine', 'mine too']);
  await shot(s.page, 'user-view');
  await s.context.close();
});

test('offline: an edit waits in the IndexedDB queue and lands once when back online', async () => {
  const created = await rest(server.url, 'POST', '/api/collections/shipments/records', { reference: 'SHP-OFFLINE', customer: await customer(), notes: 'before' });
  const id = created.body.id;
  const { page, context } = await admin('Ada', `#/c/shipments?record=${id}`);
  await page.getByRole('textbox', { name: 'notes', exact: true }).waitFor();
  await context.setOffline(true);
  await page.locator('.conn[data-state="offline"]').waitFor();
  await page.getByRole('textbox', { name: 'notes', exact: true }).fill('edited offline');
  await page.getByRole('button', { name: 'Save', exact: true }).click();
  await page.locator('.conn', { hasText: '1 queued' }).waitFor();
  // Stored in IndexedDB, not sent.
  const stored = await page.evaluate(async () => (await indexedDB.databases()).map((d) => d.name));
  assert.ok(stored.length > 0, 'an IndexedDB database holds the queue');
  assert.equal((await rest(server.url, 'GET', `/api/collections/shipments/records/${id}`)).body.notes, 'before');
  await shot(page, 'offline');
  await context.setOffline(false);
  await eventually(async () => (await rest(server.url, 'GET', `/api/collections/shipments/records/${id}`)).body.notes === 'edited offline', 'the queued edit');
  await page.locator('.conn[data-state="connected"]').waitFor();
  await eventually(async () => !/queued/.test(await page.locator('.conn').innerText()), 'the queue to drain');
  const log = await rest(server.url, 'GET', `/api/changes?since=0&record_id=${id}`);
  const landed = log.body.events.filter((e) => e.new?.notes === 'edited offline');
  assert.equal(landed.length, 1, 'applied exactly once');
  await context.close();
});

test('schema, live status, API page, themes', async () => {
  const { page, context } = await admin('Ada', '#/schema/new');
  await page.getByLabel('Collection name').fill('tickets');
  await page.getByLabel('rule list').fill('auth.role ==');
  await page.getByRole('button', { name: 'Create collection' }).click();
  await page.getByTestId('schema-error').waitFor();
  assert.match(await page.getByTestId('schema-error').innerText(), /line 1|column/i);
  await page.getByLabel('rule list').fill('true');
  await page.getByRole('button', { name: 'Create collection' }).click();
  await page.waitForURL(/#\/c\/tickets/);
  await page.getByTestId('empty').waitFor();
  await page.goto(server.url + '/_/#/status');
  await page.locator('.chart').first().waitFor();
  await page.locator('table.channels').waitFor({ timeout: 5000 }).catch(() => {});
  await rest(server.url, 'POST', '/api/collections/shipments/records', { reference: 'SHP-STATUS', customer: await customer() });
  await eventually(async () => (await page.locator('.chart polyline').first().getAttribute('points'))?.includes(','), 'a chart line');
  await shot(page, 'status');
  await page.goto(server.url + '/_/#/api/shipments');
  await page.getByText("lb.collection<Shipments>('shipments')").waitFor();
  assert.match(await page.locator('.snippet pre').first().innerText(), /\/api\/collections\/shipments\/records/);
  await shot(page, 'api');
  await page.getByRole('button', { name: 'Toggle theme' }).click();
  const theme = await page.evaluate(() => document.documentElement.dataset.theme);
  await page.goto(server.url + '/_/#/c/shipments');
  await page.locator('.grid-row').first().waitFor();
  await shot(page, `table-${theme}`);
  await context.close();
});

test('thousands of rows: virtualized, live', async () => {
  for (let b = 0; b < 3; b++) {
    const ops = Array.from({ length: 1000 }, (_, i) => ({ op: 'create', data: { sku: `BULK-${b}-${i}`, title: `bulk ${b}/${i}`, qty: i } }));
    const r = await rest(server.url, 'POST', '/api/collections/inventory_items/batch', { ops });
    assert.equal(r.status, 200, JSON.stringify(r.body).slice(0, 300));
  }
  const { page, context } = await admin('Ada', '#/c/inventory_items');
  await eventually(async () => Number(await page.getByRole('grid').getAttribute('aria-rowcount')) >= 3120, 'all rows in the live view', 20_000);
  const rendered = await page.locator('.grid-row').count();
  assert.ok(rendered < 200, `only the visible rows are in the DOM (${rendered})`);
  // Keyboard: End jumps to the last row, Enter opens it.
  await page.getByTestId('grid-body').focus();
  await page.keyboard.press('End');
  await page.keyboard.press('Enter');
  await page.getByRole('complementary', { name: 'Record editor' }).waitFor();
  assert.match(page.url(), /record=/);
  await context.close();
});

test('a result set over the live limit falls back to cursor pages', async () => {
  const small = await startServer({ LIVEBASE_MAX_SNAPSHOT_ROWS: '50' });
  // 210 shipments: the demo's 200 and 10 more, so there is a second page.
  const cust = (await rest(small.url, 'GET', '/api/collections/customers/records?limit=1')).body.items[0].id;
  const ops = Array.from({ length: 10 }, (_, i) => ({ op: 'create', data: { reference: `SHP-PAGE-${i}`, customer: cust } }));
  assert.equal((await rest(small.url, 'POST', '/api/collections/shipments/batch', { ops })).status, 200);
  const s = await signIn(browser, small.url, ADMIN_KEY, 'Ada', '#/c/shipments');
  try {
    await s.page.getByTestId('paged').waitFor();
    await eventually(async () => (await s.page.getByRole('grid').getAttribute('aria-rowcount')) === '200', 'the first page', 10_000);
    await s.page.getByTestId('paged').getByRole('button', { name: 'Load more' }).click();
    await eventually(async () => (await s.page.getByRole('grid').getAttribute('aria-rowcount')) === '210', 'the next page', 10_000);
  } finally {
    await s.context.close();
    await small.stop();
  }
});

test('copy screenshots for the README', () => {
  mkdirSync(join(ROOT, 'docs', 'img'), { recursive: true });
  if (process.env.LIVEBASE_UPDATE_SCREENSHOTS === '1') {
    copyFileSync(join(ARTIFACTS, 'record-presence.png'), join(ROOT, 'docs', 'img', 'dashboard-table.png'));
    copyFileSync(join(ARTIFACTS, 'conflict.png'), join(ROOT, 'docs', 'img', 'dashboard-conflict.png'));
  }
});

test('KPI tiles: pin "count by status" on shipments, a REST create moves its number up by one, live', async () => {
  const { page, context, errors } = await admin('Ada', '#/c/shipments');
  await page.locator('.grid-row').first().waitFor();
  await page.getByLabel('KPI tile').selectOption('count:status');
  await page.getByRole('button', { name: 'Pin tile' }).click();
  const tile = page.locator('[data-testid="kpi-tile"][data-title="count by status"]');
  const late = tile.locator('.kpi-value[data-group="late"] [data-testid="kpi-number"]');
  await late.waitFor();
  const count = async () => Number(await late.innerText());
  const before = await eventually(async () => {
    const n = await count();
    return Number.isFinite(n) ? { n } : null;
  }, 'the tile number');
  // The server's number agrees with the tile.
  const agg = await rest(server.url, 'GET', '/api/collections/shipments/aggregate?group=status&fn=count');
  assert.equal(agg.status, 200, JSON.stringify(agg.body));
  const created = await rest(server.url, 'POST', '/api/collections/shipments/records', { reference: 'SHP-KPI-1', customer: await customer(), status: 'late' });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  await eventually(async () => (await count()) === before.n + 1, `late count ${before.n} -> ${before.n + 1}`);
  // The tile persists per collection in sessionStorage (never localStorage).
  const stored = await page.evaluate(() => sessionStorage.getItem('livebase.kpi.shipments'));
  assert.match(stored ?? '', /"status"/);
  // (Other preferences may live in localStorage; tiles never do.)
  assert.deepEqual(await page.evaluate(() => Object.keys(localStorage).filter((k) => k.includes('kpi'))), []);
  await page.reload();
  await tile.waitFor();
  await shot(page, 'kpi');
  // Remove it.
  await tile.getByRole('button', { name: 'remove count by status' }).click();
  await tile.waitFor({ state: 'detached' });
  assert.equal(await page.evaluate(() => sessionStorage.getItem('livebase.kpi.shipments')), null);
  assert.deepEqual(errors.filter((e) => !/Failed to load resource/.test(e)), []);
  await rest(server.url, 'DELETE', `/api/collections/shipments/records/${created.body.id}`);
  await context.close();
});
