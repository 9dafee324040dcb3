import { useEffect, useRef, useState } from 'react';
import { useLiveAggregate } from '@livebase/react';
import type { Field } from './api';

// Pinned KPI tiles per collection, kept in sessionStorage (the project keeps nothing in localStorage).
export interface Tile {
  kind: 'count' | 'sum';
  field: string;
  filter?: string;
}
const key = (c: string) => `livebase.kpi.${c}`;
function load(c: string): Tile[] {
  try {
    return JSON.parse(sessionStorage.getItem(key(c)) ?? '[]') as Tile[];
  } catch {
    return [];
  }
}
function save(c: string, tiles: Tile[]) {
  if (tiles.length) sessionStorage.setItem(key(c), JSON.stringify(tiles));
  else sessionStorage.removeItem(key(c));
}

function fmt(v: unknown) {
  if (v == null) return '—';
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : v.toFixed(2);
  return String(v);
}

/** A value that flashes briefly when it changes. */
function Num({ value, label }: { value: unknown; label: string }) {
  const prev = useRef(value);
  const [flash, setFlash] = useState(false);
  useEffect(() => {
    if (prev.current === value) return;
    prev.current = value;
    setFlash(true);
    const t = setTimeout(() => setFlash(false), 1200);
    return () => clearTimeout(t);
  }, [value]);
  return (
    <span className={'kpi-value' + (flash ? ' flash' : '')} data-group={label}>
      <strong data-testid="kpi-number">{fmt(value)}</strong> <span className="muted">{label}</span>
    </span>
  );
}

function TileView({ collection, tile, values, onRemove }: { collection: string; tile: Tile; values: string[]; onRemove: () => void }) {
  const fn = tile.kind === 'count' ? 'count' : `sum(${tile.field})`;
  const agg = useLiveAggregate(collection, {
    filter: tile.filter || undefined,
    group: tile.kind === 'count' ? [tile.field] : [],
    fn: [fn],
  });
  const title = tile.kind === 'count' ? `count by ${tile.field}` : `sum of ${tile.field}`;
  const groups = agg.groups as Record<string, unknown>[];
  return (
    <div className={'kpi-tile' + (agg.stale ? ' stale' : '')} data-testid="kpi-tile" data-title={title} aria-label={title}>
      <div className="kpi-head">
        <span>{title}</span>
        {tile.filter && <code className="muted">{tile.filter}</code>}
        <button className="kpi-remove" aria-label={`remove ${title}`} onClick={onRemove}>
          ×
        </button>
      </div>
      {agg.status === 'error' ? (
        <p className="error" role="alert" data-testid="kpi-error">
          {agg.error?.code ? `${agg.error.code}: ` : ''}
          {agg.error?.message}
        </p>
      ) : agg.status === 'loading' ? (
        <span className="muted">…</span>
      ) : tile.kind === 'count' ? (
        <div className="kpi-values">
          {[...new Set([...values, ...groups.map((g) => String(g[tile.field] ?? 'null'))])].map((v) => {
            const g = groups.find((x) => String(x[tile.field] ?? 'null') === v);
            return <Num key={v} label={v} value={g ? g[fn] : 0} />;
          })}
        </div>
      ) : (
        <div className="kpi-values">
          <Num label="total" value={groups[0]?.[fn] ?? null} />
        </div>
      )}
    </div>
  );
}

export function KpiTiles({ collection, fields, filter }: { collection: string; fields: Field[] | undefined; filter: string }) {
  const [tiles, setTiles] = useState<Tile[]>(() => load(collection));
  useEffect(() => setTiles(load(collection)), [collection]);
  const update = (t: Tile[]) => {
    save(collection, t);
    setTiles(t);
  };
  const selects = (fields ?? []).filter((f) => f.type === 'select');
  const numbers = (fields ?? []).filter((f) => f.type === 'number' || f.type === 'integer');
  const options = [...selects.map((f) => `count:${f.name}`), ...numbers.map((f) => `sum:${f.name}`)];
  const [choice, setChoice] = useState('');
  const [withFilter, setWithFilter] = useState(false);
  const pick = choice && options.includes(choice) ? choice : (options[0] ?? '');
  const add = () => {
    if (!pick) return;
    const [kind, field] = pick.split(':') as ['count' | 'sum', string];
    update([...tiles, { kind, field, ...(withFilter && filter ? { filter } : {}) }]);
  };
  return (
    <div className="kpi-row" data-testid="kpi-row">
      {tiles.map((t, i) => (
        <TileView
          key={`${i}:${t.kind}:${t.field}:${t.filter ?? ''}`}
          collection={collection}
          tile={t}
          values={(fields ?? []).find((f) => f.name === t.field)?.values ?? []}
          onRemove={() => update(tiles.filter((_, j) => j !== i))}
        />
      ))}
      {options.length > 0 && (
        <div className="kpi-add">
          <select aria-label="KPI tile" value={pick} onChange={(e) => setChoice(e.target.value)}>
            {options.map((o) => {
              const [kind, field] = o.split(':');
              return (
                <option key={o} value={o}>
                  {kind === 'count' ? `count by ${field}` : `sum of ${field}`}
                </option>
              );
            })}
          </select>
          {filter && (
            <label>
              <input type="checkbox" checked={withFilter} onChange={(e) => setWithFilter(e.target.checked)} /> with current filter
            </label>
          )}
          <button onClick={add}>Pin tile</button>
        </div>
      )}
    </div>
  );
}
