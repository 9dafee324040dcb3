import { useEffect, useState } from 'react';
import type { AnyRow, ConflictInfo, ConflictResolution } from '@livebase/client';

// The client's onConflict handler hands each 409 to the dialog below and waits for the user.
interface Pending {
  base: AnyRow | null;
  local: AnyRow | null;
  server: AnyRow;
  info: ConflictInfo;
  resolve: (r: ConflictResolution) => void;
}
let show: ((p: Pending) => void) | null = null;

// The record as the editor showed it when its save was made (the SDK's base may hold only
// the fields the write touched).
const bases = new Map<string, AnyRow>();
export function rememberBase(collection: string, id: string, row: AnyRow) {
  bases.set(`${collection}/${id}`, row);
}

export function askConflict(base: AnyRow | null, local: AnyRow | null, server: AnyRow, info: ConflictInfo): Promise<ConflictResolution> {
  return new Promise((resolve) => {
    if (!show || !local) return resolve('merge');
    const seen = bases.get(`${info.collection}/${info.id}`);
    show({ base: seen ? { ...seen, ...(base ?? {}) } : base, local, server, info, resolve });
  });
}

const SYSTEM = new Set(['id', 'version', 'created_at', 'updated_at']);
const fmt = (v: unknown) => (v === undefined || v === null ? '—' : typeof v === 'object' ? JSON.stringify(v) : String(v));
const same = (a: unknown, b: unknown) => JSON.stringify(a ?? null) === JSON.stringify(b ?? null);

export function ConflictDialog() {
  const [p, setP] = useState<Pending | null>(null);
  const [pick, setPick] = useState<Record<string, 'theirs' | 'yours'>>({});
  useEffect(() => {
    show = (x) => {
      setPick({});
      setP(x);
    };
    return () => {
      show = null;
    };
  }, []);
  if (!p || !p.local) return null;
  const local = p.local;
  const fields = Object.keys({ ...p.server, ...local }).filter((k) => !SYSTEM.has(k) && !same(local[k], p.base?.[k]));
  const choice = (f: string) => pick[f] ?? (same(p.server[f], p.base?.[f]) ? 'yours' : 'theirs');
  const done = (r: ConflictResolution) => {
    p.resolve(r);
    setP(null);
  };
  return (
    <div className="modal-back" role="dialog" aria-label="Resolve conflict">
      <div className="modal conflict">
        <h2>Someone else changed this record</h2>
        <p className="muted">
          Your save was based on version {String(p.base?.version ?? '?')}; the server now has version {String(p.server.version)}. Pick a value per field, then save the merge.
        </p>
        <table className="diff">
          <thead>
            <tr>
              <th>field</th>
              <th>base</th>
              <th>theirs</th>
              <th>yours</th>
            </tr>
          </thead>
          <tbody>
            {fields.map((f) => (
              <tr key={f} data-field={f} className={same(p.server[f], p.base?.[f]) ? '' : 'both'}>
                <td>{f}</td>
                <td className="muted">{fmt(p.base?.[f])}</td>
                <td>
                  <label>
                    <input type="radio" name={'pick-' + f} aria-label={`theirs ${f}`} checked={choice(f) === 'theirs'} onChange={() => setPick({ ...pick, [f]: 'theirs' })} /> {fmt(p.server[f])}
                  </label>
                </td>
                <td>
                  <label>
                    <input type="radio" name={'pick-' + f} aria-label={`yours ${f}`} checked={choice(f) === 'yours'} onChange={() => setPick({ ...pick, [f]: 'yours' })} /> {fmt(local[f])}
                  </label>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
        <div className="row">
          <button
            className="primary"
            onClick={() => {
              const data: Record<string, unknown> = {};
              for (const f of fields) if (choice(f) === 'yours') data[f] = local[f];
              done(Object.keys(data).length ? { data } : 'server-wins');
            }}
          >
            Save merge
          </button>
          <button onClick={() => done('server-wins')}>Keep theirs</button>
        </div>
      </div>
    </div>
  );
}
