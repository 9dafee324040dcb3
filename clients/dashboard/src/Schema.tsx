import { useEffect, useState } from 'react';
import { useSession } from './App';
import { api, ApiError, type CollectionDef, type Field } from './api';
import { href } from './router';

const TYPES: Field['type'][] = ['text', 'integer', 'number', 'boolean', 'datetime', 'json', 'select', 'relation'];
const ACTIONS = ['list', 'view', 'create', 'update', 'delete'];

export function SchemaView({ name }: { name: string }) {
  const { session, collections, reloadSchema } = useSession();
  const isNew = name === 'new';
  const existing = collections?.find((c) => c.name === name);
  const [def, setDef] = useState<CollectionDef>(() => existing ?? { name: '', fields: [{ name: 'title', type: 'text', required: true }], conflict: 'reject', rules: {} });
  useEffect(() => {
    if (existing) setDef(structuredClone(existing));
  }, [existing]);
  const [error, setError] = useState<string | null>(null);
  const [ok, setOk] = useState<string | null>(null);
  if (!session.admin) return <p className="empty">The schema is the admin's: sign in with the admin key.</p>;
  if (!isNew && !existing) return <p className="empty">Loading…</p>;
  const setField = (i: number, f: Partial<Field>) => setDef({ ...def, fields: def.fields.map((x, j) => (j === i ? clean({ ...x, ...f }) : x)) });
  const save = async (force = false) => {
    setError(null);
    setOk(null);
    const body = { ...def, rules: Object.fromEntries(Object.entries(def.rules ?? {}).filter(([, v]) => v.trim())) };
    try {
      if (isNew) await api(session.token, 'POST', '/api/collections', body);
      else await api(session.token, 'PATCH', `/api/collections/${encodeURIComponent(name)}${force ? '?force=true' : ''}`, body);
      reloadSchema();
      setOk('Saved.');
      if (isNew) location.hash = href(['c', def.name]);
    } catch (e) {
      if (e instanceof ApiError && e.code === 'destructive_change' && !force) {
        if (confirm(`${e.message}\n\nThis drops or converts stored data. Apply anyway?`)) return save(true);
        return setError(e.message);
      }
      setError(e instanceof Error ? e.message : String(e));
    }
  };
  return (
    <div className="schema">
      <h2>{isNew ? 'New collection' : `Schema of ${name}`}</h2>
      {isNew && (
        <label>
          Name <input aria-label="Collection name" value={def.name} onChange={(e) => setDef({ ...def, name: e.target.value })} />
        </label>
      )}
      <label>
        Conflict strategy{' '}
        <select aria-label="Conflict strategy" value={def.conflict ?? 'reject'} onChange={(e) => setDef({ ...def, conflict: e.target.value as any })}>
          <option value="reject">reject (409 on a stale version)</option>
          <option value="lww">lww (last write wins)</option>
          <option value="merge">merge (409 only when the same fields changed)</option>
        </select>
      </label>
      <h3>Fields</h3>
      <table className="fields">
        <thead>
          <tr>
            <th>name</th>
            <th>type</th>
            <th>required</th>
            <th>unique</th>
            <th>min</th>
            <th>max</th>
            <th>values / collection</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {def.fields.map((f, i) => (
            <tr key={i}>
              <td>
                <input aria-label={`field ${i} name`} value={f.name} onChange={(e) => setField(i, { name: e.target.value })} />
              </td>
              <td>
                <select aria-label={`field ${i} type`} value={f.type} onChange={(e) => setField(i, { type: e.target.value as Field['type'] })}>
                  {TYPES.map((t) => (
                    <option key={t}>{t}</option>
                  ))}
                </select>
              </td>
              <td>
                <input type="checkbox" checked={!!f.required} onChange={(e) => setField(i, { required: e.target.checked })} />
              </td>
              <td>
                <input type="checkbox" checked={!!f.unique} onChange={(e) => setField(i, { unique: e.target.checked })} />
              </td>
              <td>
                <input className="narrow" value={f.min ?? ''} onChange={(e) => setField(i, { min: e.target.value === '' ? undefined : Number(e.target.value) })} />
              </td>
              <td>
                <input className="narrow" value={f.max ?? ''} onChange={(e) => setField(i, { max: e.target.value === '' ? undefined : Number(e.target.value) })} />
              </td>
              <td>
                {f.type === 'select' && <input value={(f.values ?? []).join(',')} placeholder="a,b,c" onChange={(e) => setField(i, { values: e.target.value.split(',').map((s) => s.trim()).filter(Boolean) })} />}
                {f.type === 'relation' && (
                  <select value={f.collection ?? ''} onChange={(e) => setField(i, { collection: e.target.value })}>
                    <option value="">—</option>
                    {(collections ?? []).map((c) => (
                      <option key={c.name}>{c.name}</option>
                    ))}
                  </select>
                )}
              </td>
              <td>
                <button type="button" onClick={() => setDef({ ...def, fields: def.fields.filter((_, j) => j !== i) })} aria-label={`remove field ${f.name}`}>
                  ✕
                </button>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      <button type="button" onClick={() => setDef({ ...def, fields: [...def.fields, { name: '', type: 'text' }] })}>
        + Add field
      </button>
      <h3>Rules</h3>
      <p className="muted small">
        One expression per action over <code>auth.*</code>, <code>record.*</code>, <code>data.*</code>; empty means admin only, <code>true</code> everyone.
      </p>
      {ACTIONS.map((a) => (
        <label key={a} className="rule">
          <span>{a}</span>
          <textarea aria-label={`rule ${a}`} className="mono" rows={1} value={def.rules?.[a] ?? ''} onChange={(e) => setDef({ ...def, rules: { ...def.rules, [a]: e.target.value } })} />
        </label>
      ))}
      {error && (
        <p className="error" role="alert" data-testid="schema-error">
          {error}
        </p>
      )}
      {ok && <p className="ok">{ok}</p>}
      <div className="row">
        <button className="primary" onClick={() => void save()}>
          {isNew ? 'Create collection' : 'Save schema'}
        </button>
        {!isNew && (
          <button
            className="danger"
            onClick={async () => {
              if (!confirm(`Drop the collection ${name} and all its records?`)) return;
              try {
                await api(session.token, 'DELETE', `/api/collections/${encodeURIComponent(name)}?force=true`);
                reloadSchema();
                location.hash = '#/';
              } catch (e: any) {
                setError(e.message);
              }
            }}
          >
            Drop collection
          </button>
        )}
      </div>
    </div>
  );
}

function clean(f: Field): Field {
  const out: any = { ...f };
  if (f.type !== 'select') delete out.values;
  if (f.type !== 'relation') {
    delete out.collection;
    delete out.on_delete;
  }
  for (const k of ['min', 'max']) if (out[k] === undefined || Number.isNaN(out[k])) delete out[k];
  if (!out.required) delete out.required;
  if (!out.unique) delete out.unique;
  return out;
}
