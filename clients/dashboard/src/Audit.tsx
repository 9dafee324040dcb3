import { useEffect, useState } from 'react';
import { useSession } from './App';
import { api } from './api';
import { go, type Route } from './router';

interface Event {
  seq: number;
  collection: string;
  op: string;
  id: string;
  version: number;
  actor: string | null;
  committed_at: string;
  old: Record<string, unknown> | null;
  new: Record<string, unknown> | null;
}
const SYSTEM = new Set(['version', 'updated_at', 'created_at']);
const show = (v: unknown) => (v === undefined || v === null ? '∅' : typeof v === 'object' ? JSON.stringify(v) : String(v));

export function AuditView({ route }: { route: Route }) {
  const { session, collections } = useSession();
  const p = route.params;
  const filters = { collection: p.get('collection') ?? '', record: p.get('record') ?? '', actor: p.get('actor') ?? '', from: p.get('from') ?? '', to: p.get('to') ?? '' };
  const [form, setForm] = useState(filters);
  const key = JSON.stringify(filters);
  useEffect(() => setForm(filters), [key]);
  const [events, setEvents] = useState<Event[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let stop = false;
    setError(null);
    (async () => {
      const q = new URLSearchParams();
      if (filters.collection) q.set('collection', filters.collection);
      if (filters.record) q.set('record_id', filters.record);
      if (filters.actor) q.set('actor', filters.actor);
      if (filters.from) q.set('from', new Date(filters.from).toISOString());
      if (filters.to) q.set('to', new Date(filters.to).toISOString());
      // The newest 1000 matching events: read forward from a window before the head.
      const head = (await api(session.token, 'GET', '/api/changes?limit=1')).head as number;
      const out: Event[] = [];
      let since = filters.record ? 0 : Math.max(0, head - 2000);
      for (let i = 0; i < 20; i++) {
        q.set('since', String(since));
        q.set('limit', '1000');
        const r = await api(session.token, 'GET', '/api/changes?' + q.toString());
        out.push(...r.events);
        if (r.next_since == null || r.events.length === 0) break;
        since = r.next_since;
      }
      if (!stop) setEvents(out.reverse().slice(0, 1000));
    })().catch((e) => !stop && setError(e.message));
    return () => {
      stop = true;
    };
  }, [key, session.token, tick]);
  useEffect(() => {
    const t = setInterval(() => setTick((x) => x + 1), 3000);
    return () => clearInterval(t);
  }, []);
  return (
    <div className="audit">
      <h2>Audit log{filters.record ? ` of ${filters.record}` : ''}</h2>
      <form
        className="filters row"
        onSubmit={(e) => {
          e.preventDefault();
          go(['audit'], form);
        }}
      >
        <select aria-label="Audit collection" value={form.collection} onChange={(e) => setForm({ ...form, collection: e.target.value })}>
          <option value="">all collections</option>
          {(collections ?? []).map((c) => (
            <option key={c.name}>{c.name}</option>
          ))}
          {form.collection && !collections?.some((c) => c.name === form.collection) && <option>{form.collection}</option>}
        </select>
        <input aria-label="Audit record" placeholder="record id" value={form.record} onChange={(e) => setForm({ ...form, record: e.target.value })} />
        <input aria-label="Audit actor" placeholder="actor" value={form.actor} onChange={(e) => setForm({ ...form, actor: e.target.value })} />
        <input aria-label="From" type="datetime-local" value={form.from} onChange={(e) => setForm({ ...form, from: e.target.value })} />
        <input aria-label="To" type="datetime-local" value={form.to} onChange={(e) => setForm({ ...form, to: e.target.value })} />
        <button type="submit">Filter</button>
      </form>
      {error && <p className="error">{error}</p>}
      {events === null ? (
        <p className="empty">Loading…</p>
      ) : events.length === 0 ? (
        <p className="empty">No changes match these filters.</p>
      ) : (
        <ol className="events">
          {events.map((e) => (
            <li key={e.seq} data-seq={e.seq} data-id={e.id}>
              <div className="ev-head">
                <span className={'op op-' + e.op}>{e.op}</span> <b>{e.collection}</b> <code>{e.id}</code> v{e.version} · by {e.actor ?? 'anonymous'} · {e.committed_at} · #{e.seq}
              </div>
              <Diff old={e.old} next={e.new} />
            </li>
          ))}
        </ol>
      )}
    </div>
  );
}

function Diff({ old, next }: { old: Record<string, unknown> | null; next: Record<string, unknown> | null }) {
  const keys = [...new Set([...Object.keys(old ?? {}), ...Object.keys(next ?? {})])].filter((k) => !SYSTEM.has(k) && k !== 'id');
  const changed = keys.filter((k) => JSON.stringify(old?.[k] ?? null) !== JSON.stringify(next?.[k] ?? null));
  if (!changed.length) return null;
  return (
    <table className="diff">
      <tbody>
        {changed.map((k) => (
          <tr key={k}>
            <td>{k}</td>
            <td className="old">{show(old?.[k])}</td>
            <td>→</td>
            <td className="new">{show(next?.[k])}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}
