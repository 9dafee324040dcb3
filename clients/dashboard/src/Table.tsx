import { useEffect, useMemo, useRef, useState } from 'react';
import { useVirtualizer } from '@tanstack/react-virtual';
import { useLiveQuery } from '@livebase/react';
import { useSession } from './App';
import { go, href, type Route } from './router';
import { RecordEditor } from './Record';
import { api, type Field } from './api';
import { KpiTiles } from './Kpi';

/**
 * Cursor pagination over REST, for result sets a live query refuses (over the server's
 * snapshot limit): pages of 200 by `next_cursor`, not live.
 */
function usePaged(name: string, filter: string, order: string, enabled: boolean, token: string) {
  const [rows, setRows] = useState<Record<string, any>[]>([]);
  const [cursor, setCursor] = useState<string | null>(null);
  const [loading, setLoading] = useState(false);
  const load = async (from: string | null, reset: boolean) => {
    setLoading(true);
    try {
      const q = new URLSearchParams(filter);
      q.set('limit', '200');
      if (order) q.set('order', order);
      if (from) q.set('cursor', from);
      const r = await api(token, 'GET', `/api/collections/${encodeURIComponent(name)}/records?${q.toString()}`);
      setRows((old) => (reset ? r.items : [...old, ...r.items]));
      setCursor(r.next_cursor ?? null);
    } finally {
      setLoading(false);
    }
  };
  useEffect(() => {
    if (enabled) void load(null, true);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [enabled, name, filter, order]);
  return { rows, more: cursor ? () => void load(cursor, false) : null, loading };
}

const OPS = ['eq', 'neq', 'gt', 'gte', 'lt', 'lte', 'like', 'ilike', 'in', 'is'];
const SYSTEM = ['id', 'version', 'created_at', 'updated_at'];

export function TableView({ name, route }: { name: string; route: Route }) {
  const { collections, counts, session } = useSession();
  const def = collections?.find((c) => c.name === name);
  const filter = route.params.get('filter') ?? '';
  const order = route.params.get('order') ?? '';
  const open = route.params.get('record') ?? undefined;
  const live = useLiveQuery<Record<string, unknown>>(name, { filter: filter || undefined, order: order || undefined });
  const tooLarge = live.error?.code === 'snapshot_too_large';
  const paged = usePaged(name, filter, order, tooLarge, session.token);
  const snap = tooLarge ? { ...live, rows: paged.rows as unknown as typeof live.rows, error: null, status: 'ready' as const } : live;
  const fields: string[] = useMemo(() => {
    if (def) return ['id', ...def.fields.map((f) => f.name), 'version', 'updated_at'];
    const keys = new Set<string>(['id']);
    for (const r of snap.rows.slice(0, 50)) for (const k of Object.keys(r)) keys.add(k);
    return [...keys];
  }, [def, snap.rows]);
  const setParams = (p: Record<string, string | undefined>) => go(['c', name], { filter, order, record: open, ...p }, true);

  // Rows that appeared or changed since the first snapshot flash briefly.
  const seen = useRef<Map<string, number> | null>(null);
  const [flash, setFlash] = useState<Map<string, number>>(new Map());
  useEffect(() => {
    if (snap.status === 'loading') return;
    const prev = seen.current;
    const now = new Map<string, number>();
    const changed: string[] = [];
    for (const r of snap.rows) {
      const v = Number(r.version ?? 0);
      now.set(r.id, v);
      if (prev && prev.get(r.id) !== v) changed.push(r.id);
    }
    seen.current = now;
    if (changed.length) {
      const stamp = Date.now();
      setFlash((f) => {
        const n = new Map(f);
        for (const id of changed) n.set(id, stamp);
        return n;
      });
      setTimeout(() => setFlash((f) => new Map([...f].filter(([, t]) => t !== stamp))), 1500);
    }
  }, [snap.rows, snap.status]);

  const [sel, setSel] = useState(0);
  const parent = useRef<HTMLDivElement>(null);
  const v = useVirtualizer({ count: snap.rows.length, getScrollElement: () => parent.current, estimateSize: () => 34, overscan: 12 });
  const onKey = (e: React.KeyboardEvent) => {
    if (e.target !== e.currentTarget) return;
    const n = snap.rows.length;
    if (!n) return;
    let next = sel;
    if (e.key === 'ArrowDown' || e.key === 'j') next = Math.min(n - 1, sel + 1);
    else if (e.key === 'ArrowUp' || e.key === 'k') next = Math.max(0, sel - 1);
    else if (e.key === 'PageDown') next = Math.min(n - 1, sel + 15);
    else if (e.key === 'PageUp') next = Math.max(0, sel - 15);
    else if (e.key === 'Home') next = 0;
    else if (e.key === 'End') next = n - 1;
    else if (e.key === 'Enter') return setParams({ record: snap.rows[sel]!.id });
    else if (e.key === 'Escape') return setParams({ record: undefined });
    else return;
    e.preventDefault();
    setSel(next);
    v.scrollToIndex(next);
  };
  const sortBy = (f: string) => {
    const cur = order.split(',')[0] ?? '';
    setParams({ order: cur === f ? `${f}.desc` : cur === `${f}.desc` ? undefined : f });
  };
  const cols = fields.map((f) => (f === 'id' ? '11rem' : 'minmax(7rem, 1fr)')).join(' ');
  return (
    <div className="table-view">
      <div className="toolbar">
        <h2>
          {name} <span className="count">{counts[name] != null ? `${counts[name]} records` : ''}</span>
        </h2>
        <span className="spacer" />
        <a href={href(['audit'], { collection: name })}>history</a>
        <a href={href(['api', name])}>API</a>
        {session.admin && <a href={href(['schema', name])}>schema</a>}
        <button className="primary" onClick={() => setParams({ record: 'new' })}>
          + New record
        </button>
      </div>
      <KpiTiles collection={name} fields={def?.fields} filter={filter} />
      <FilterBar fields={def?.fields} filter={filter} onChange={(f) => setParams({ filter: f || undefined })} />
      {snap.error && (
        <p className="error" role="alert" data-testid="filter-error">
          {snap.error.message}
        </p>
      )}
      {tooLarge && (
        <p className="warn" data-testid="paged">
          More rows than a live view holds: showing {paged.rows.length} in pages (not live).{' '}
          {paged.more && (
            <button onClick={paged.more} disabled={paged.loading}>
              Load more
            </button>
          )}{' '}
          Narrow the filter to go live again.
        </p>
      )}
      <div className="grid" role="grid" aria-label={`${name} records`} aria-rowcount={snap.rows.length}>
        <div className="grid-head" role="row" style={{ gridTemplateColumns: cols }}>
          {fields.map((f) => {
            const o = order.split(',')[0];
            return (
              <button role="columnheader" key={f} onClick={() => sortBy(f)} className={o === f || o === `${f}.desc` ? 'sorted' : ''}>
                {f} {o === f ? '▲' : o === `${f}.desc` ? '▼' : ''}
              </button>
            );
          })}
        </div>
        <div className="grid-body" ref={parent} tabIndex={0} onKeyDown={onKey} data-testid="grid-body">
          {snap.status === 'loading' ? (
            <p className="empty">Loading…</p>
          ) : snap.rows.length === 0 && !snap.error ? (
            <p className="empty" data-testid="empty">
              {filter ? (
                <>
                  No records match <code>{filter}</code>.
                </>
              ) : (
                'No records yet.'
              )}
            </p>
          ) : (
            <div style={{ height: v.getTotalSize(), position: 'relative' }}>
              {v.getVirtualItems().map((it) => {
                const r = snap.rows[it.index]!;
                const cls = ['grid-row', flash.has(r.id) ? 'flash' : '', it.index === sel ? 'selected' : '', snap.pendingIds.has(r.id) ? 'pending' : '', open === r.id ? 'open' : ''].join(' ');
                return (
                  <div
                    role="row"
                    key={r.id}
                    data-id={r.id}
                    className={cls}
                    style={{ transform: `translateY(${it.start}px)`, gridTemplateColumns: cols }}
                    onClick={() => {
                      setSel(it.index);
                      setParams({ record: r.id });
                    }}
                  >
                    {fields.map((f) => (
                      <span role="gridcell" key={f} data-field={f} title={cell(r[f])}>
                        {cell(r[f])}
                      </span>
                    ))}
                  </div>
                );
              })}
            </div>
          )}
        </div>
      </div>
      <p className="muted small">↑/↓ or j/k move · Enter opens · Esc closes · click a header to sort</p>
      {open && <RecordEditor key={open} collection={name} id={open} def={def} onClose={() => setParams({ record: undefined })} />}
    </div>
  );
}

function cell(v: unknown): string {
  if (v === null || v === undefined) return '';
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

function FilterBar({ fields, filter, onChange }: { fields?: Field[]; filter: string; onChange: (f: string) => void }) {
  const [text, setText] = useState(filter);
  useEffect(() => setText(filter), [filter]);
  const names = [...(fields?.map((f) => f.name) ?? []), ...SYSTEM];
  const [field, setField] = useState(names[0] ?? 'id');
  const [op, setOp] = useState('eq');
  const [value, setValue] = useState('');
  return (
    <div className="filters">
      <form
        className="builder"
        onSubmit={(e) => {
          e.preventDefault();
          const cond = `${field}=${op}.${op === 'in' ? `(${value})` : value}`;
          onChange(filter ? `${filter}&${cond}` : cond);
          setValue('');
        }}
      >
        <select aria-label="Filter field" value={field} onChange={(e) => setField(e.target.value)}>
          {names.map((n) => (
            <option key={n}>{n}</option>
          ))}
        </select>
        <select aria-label="Filter operator" value={op} onChange={(e) => setOp(e.target.value)}>
          {OPS.map((o) => (
            <option key={o}>{o}</option>
          ))}
        </select>
        <input aria-label="Filter value" value={value} onChange={(e) => setValue(e.target.value)} placeholder="value" />
        <button type="submit">Add</button>
      </form>
      <form
        className="grammar"
        onSubmit={(e) => {
          e.preventDefault();
          onChange(text.trim());
        }}
      >
        <input aria-label="Filter" className="mono" value={text} onChange={(e) => setText(e.target.value)} placeholder="qty=gt.5&or=(status.eq.late,status.eq.pending)" />
        <button type="submit">Apply</button>
        {filter && (
          <button type="button" onClick={() => onChange('')}>
            Clear
          </button>
        )}
      </form>
    </div>
  );
}
