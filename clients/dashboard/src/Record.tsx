import { useEffect, useMemo, useRef, useState } from 'react';
import { useBroadcast, useConnectionStatus, useLivebase, usePresence, useRecord } from '@livebase/react';
import { isLivebaseError } from '@livebase/client';
import { useSession } from './App';
import { api, fieldErrors, type CollectionDef, type Field } from './api';
import { href } from './router';
import { rememberBase } from './conflict';

type Row = Record<string, unknown>;
const SYSTEM = new Set(['id', 'version', 'created_at', 'updated_at']);

export function RecordEditor({ collection, id, def, onClose }: { collection: string; id: string; def?: CollectionDef; onClose: () => void }) {
  const isNew = id === 'new';
  const client = useLivebase();
  const { record, status } = useRecord<Row>(collection, isNew ? null : id);
  const [draft, setDraft] = useState<Row>({});
  const [base, setBase] = useState<Row | null>(null);
  const [errors, setErrors] = useState<Record<string, string>>({});
  const [message, setMessage] = useState<string | null>(null);
  const [saving, setSaving] = useState(false);
  const dirty = Object.keys(draft).length > 0;
  // The version seen: follows the live record until the first edit, then stays (If-Match).
  useEffect(() => {
    if (record && (!dirty || !base)) setBase(record);
  }, [record, dirty, base]);
  const fields: Field[] = useMemo(() => {
    if (def) return def.fields;
    return Object.keys(record ?? {})
      .filter((k) => !SYSTEM.has(k))
      .map((k) => ({ name: k, type: guessType(record?.[k]) }));
  }, [def, record]);
  const value = (f: string) => (f in draft ? draft[f] : (base ?? {})[f]);

  const save = async () => {
    setSaving(true);
    setErrors({});
    setMessage(null);
    try {
      const c = client.collection<Row>(collection);
      if (isNew) {
        const r = await c.create(draft);
        location.hash = href(['c', collection], { record: r.id });
      } else {
        if (base) rememberBase(collection, id, base as any);
        const p = c.update(id, draft, { ifVersion: Number(base?.version) });
        setDraft({});
        await p;
        setMessage('Saved.');
      }
      if (isNew) setDraft({});
    } catch (e) {
      if (isLivebaseError(e)) {
        setErrors(fieldErrors(e.details));
        setMessage(e.message);
      } else setMessage(String(e));
    } finally {
      setSaving(false);
    }
  };

  return (
    <aside className="editor" aria-label="Record editor">
      <div className="toolbar">
        <h3>{isNew ? `New ${collection} record` : <code>{id}</code>}</h3>
        <span className="spacer" />
        <button onClick={onClose} aria-label="Close editor">
          ✕
        </button>
      </div>
      {!isNew && <Presence collection={collection} id={id} />}
      {!isNew && status !== 'loading' && !record && <p className="empty">This record does not exist (or was deleted, or you may not see it).</p>}
      {(isNew || base) && (
        <form
          onSubmit={(e) => {
            e.preventDefault();
            void save();
          }}
        >
          {!isNew && (
            <p className="muted small">
              version {String(base?.version)} · updated {String(base?.updated_at ?? '')}
              {record && base && record.version !== base.version && <span className="warn"> · changed meanwhile (v{String(record.version)})</span>}
            </p>
          )}
          {fields.map((f) => (
            <FieldInput
              key={f.name}
              field={f}
              collection={collection}
              id={id}
              value={value(f.name)}
              error={errors[f.name]}
              onChange={(v) => setDraft((d) => ({ ...d, [f.name]: v }))}
            />
          ))}
          {message && (
            <p className={Object.keys(errors).length || message !== 'Saved.' ? 'error' : 'ok'} role="status">
              {message}
            </p>
          )}
          <div className="row">
            <button className="primary" type="submit" disabled={saving || (!dirty && !isNew)}>
              {isNew ? 'Create' : 'Save'}
            </button>
            {!isNew && (
              <button
                type="button"
                className="danger"
                onClick={async () => {
                  if (!confirm(`Delete ${id}?`)) return;
                  try {
                    await client.collection(collection).delete(id);
                    onClose();
                  } catch (e: any) {
                    setMessage(e.message);
                  }
                }}
              >
                Delete
              </button>
            )}
            {!isNew && <a href={href(['audit'], { collection, record: id })}>history</a>}
          </div>
        </form>
      )}
    </aside>
  );
}

function guessType(v: unknown): Field['type'] {
  if (typeof v === 'number') return 'number';
  if (typeof v === 'boolean') return 'boolean';
  if (v && typeof v === 'object') return 'json';
  return 'text';
}

function initials(name: string) {
  return name
    .split(/\s+/)
    .map((w) => w[0] ?? '')
    .join('')
    .slice(0, 2)
    .toUpperCase();
}

/** Who else has this record open (presence), and what they are editing (broadcast). */
function Presence({ collection, id }: { collection: string; id: string }) {
  const { session } = useSession();
  const conn = useConnectionStatus();
  const channel = `record:${collection}:${id}`;
  const { members } = usePresence<{ name: string }>(channel, { name: session.name });
  const [editing, setEditing] = useState<Record<string, { field: string | null; at: number }>>({});
  useBroadcast<{ name: string; field: string | null }>(channel, 'editing', (p) => setEditing((e) => ({ ...e, [p.name]: { field: p.field, at: Date.now() } })));
  const others = members.filter((m) => m.conn_id !== conn.connId);
  const active = Object.entries(editing).filter(([n, e]) => e.field && others.some((m) => m.meta?.name === n));
  return (
    <div className="presence" data-testid="presence">
      {others.length === 0 ? (
        <span className="muted small">Only you are here.</span>
      ) : (
        others.map((m) => (
          <span className="avatar" key={m.conn_id} title={m.meta?.name} data-name={m.meta?.name}>
            {initials(m.meta?.name ?? '?')}
          </span>
        ))
      )}
      {active.map(([n, e]) => (
        <span className="editing" key={n}>
          {n} is editing {e.field}
        </span>
      ))}
    </div>
  );
}

function useEditingSignal(collection: string, id: string) {
  const { session } = useSession();
  const send = useBroadcast<{ name: string; field: string | null }>(`record:${collection}:${id}`, 'editing');
  return (field: string | null) => void send({ name: session.name, field }).catch(() => {});
}

function FieldInput({ field, collection, id, value, error, onChange }: { field: Field; collection: string; id: string; value: unknown; error?: string; onChange: (v: unknown) => void }) {
  const signal = useEditingSignal(collection, id === 'new' ? '_new' : id);
  const common = { 'aria-label': field.name, name: field.name, onFocus: () => signal(field.name), onBlur: () => signal(null) };
  let input: React.ReactNode;
  switch (field.type) {
    case 'boolean':
      input = <input type="checkbox" {...common} checked={value === true} onChange={(e) => onChange(e.target.checked)} />;
      break;
    case 'integer':
    case 'number':
      input = (
        <input
          type="number"
          step={field.type === 'integer' ? 1 : 'any'}
          {...common}
          value={value === null || value === undefined ? '' : String(value)}
          onChange={(e) => onChange(e.target.value === '' ? null : Number(e.target.value))}
        />
      );
      break;
    case 'datetime':
      input = (
        <input
          type="datetime-local"
          {...common}
          value={typeof value === 'string' ? value.slice(0, 16) : ''}
          onChange={(e) => onChange(e.target.value ? new Date(e.target.value + 'Z').toISOString() : null)}
        />
      );
      break;
    case 'select':
      input = (
        <select {...common} value={typeof value === 'string' ? value : ''} onChange={(e) => onChange(e.target.value || null)}>
          <option value="">—</option>
          {(field.values ?? []).map((v) => (
            <option key={v}>{v}</option>
          ))}
        </select>
      );
      break;
    case 'relation':
      input = <RelationPicker field={field} common={common} value={value} onChange={onChange} />;
      break;
    case 'json':
      input = <JsonInput common={common} value={value} onChange={onChange} />;
      break;
    default:
      input = <input type="text" {...common} value={value === null || value === undefined ? '' : String(value)} onChange={(e) => onChange(e.target.value)} />;
  }
  return (
    <label className={'field' + (error ? ' invalid' : '')} data-field={field.name}>
      <span>
        {field.name} <span className="muted small">{field.type}{field.required ? ' · required' : ''}</span>
      </span>
      {input}
      {error && <span className="error small">{error}</span>}
    </label>
  );
}

function JsonInput({ common, value, onChange }: { common: any; value: unknown; onChange: (v: unknown) => void }) {
  const [text, setText] = useState(() => (value === undefined ? '' : JSON.stringify(value, null, 2)));
  const [bad, setBad] = useState(false);
  return (
    <>
      <textarea
        className="mono"
        rows={4}
        {...common}
        value={text}
        onChange={(e) => {
          setText(e.target.value);
          try {
            onChange(e.target.value.trim() ? JSON.parse(e.target.value) : null);
            setBad(false);
          } catch {
            setBad(true);
          }
        }}
      />
      {bad && <span className="error small">not valid JSON</span>}
    </>
  );
}

function RelationPicker({ field, common, value, onChange }: { field: Field; common: any; value: unknown; onChange: (v: unknown) => void }) {
  const { session } = useSession();
  const [opts, setOpts] = useState<Row[]>([]);
  const [q, setQ] = useState('');
  const loaded = useRef(false);
  useEffect(() => {
    if (loaded.current || !field.collection) return;
    loaded.current = true;
    api(session.token, 'GET', `/api/collections/${encodeURIComponent(field.collection)}/records?limit=500`).then(
      (r) => setOpts(r.items),
      () => {},
    );
  }, [field.collection, session.token]);
  const label = (r: Row) => {
    const t = Object.entries(r).find(([k, v]) => !SYSTEM.has(k) && typeof v === 'string');
    return t ? `${t[1]} (${r.id})` : String(r.id);
  };
  const shown = opts.filter((r) => !q || label(r).toLowerCase().includes(q.toLowerCase()));
  return (
    <span className="relation">
      <input aria-label={`search ${field.collection}`} placeholder={`search ${field.collection}`} value={q} onChange={(e) => setQ(e.target.value)} />
      <select {...common} value={typeof value === 'string' ? value : ''} onChange={(e) => onChange(e.target.value || null)}>
        <option value="">—</option>
        {typeof value === 'string' && !shown.some((r) => r.id === value) && <option value={value}>{value}</option>}
        {shown.map((r) => (
          <option key={String(r.id)} value={String(r.id)}>
            {label(r)}
          </option>
        ))}
      </select>
    </span>
  );
}
