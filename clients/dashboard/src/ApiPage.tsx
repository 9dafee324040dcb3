import { useState } from 'react';
import { useSession } from './App';
import type { Field } from './api';

function sample(f: Field): unknown {
  switch (f.type) {
    case 'integer':
      return f.min ?? 1;
    case 'number':
      return 1.5;
    case 'boolean':
      return true;
    case 'datetime':
      return '2026-12-01T12:00:00Z';
    case 'select':
      return f.values?.[0] ?? 'value';
    case 'relation':
      return `<${f.collection} id>`;
    case 'json':
      return { any: 'json' };
    default:
      return `example ${f.name}`;
  }
}

function Snippet({ title, code }: { title: string; code: string }) {
  const [copied, setCopied] = useState(false);
  return (
    <figure className="snippet">
      <figcaption>
        {title}
        <button
          onClick={() =>
            navigator.clipboard?.writeText(code).then(
              () => {
                setCopied(true);
                setTimeout(() => setCopied(false), 1200);
              },
              () => {},
            )
          }
        >
          {copied ? 'copied' : 'copy'}
        </button>
      </figcaption>
      <pre className="mono">{code}</pre>
    </figure>
  );
}

export function ApiView({ name }: { name: string }) {
  const { collections } = useSession();
  const def = collections?.find((c) => c.name === name);
  const fields = def?.fields ?? [];
  const origin = location.origin;
  const data = Object.fromEntries(fields.filter((f) => f.required || fields.length <= 4).map((f) => [f.name, sample(f)]));
  const first = fields.find((f) => f.type !== 'json') ?? fields[0];
  const patch = first ? { [first.name]: sample(first) } : {};
  const filterField = fields.find((f) => f.type === 'select') ?? fields.find((f) => f.type === 'integer' || f.type === 'number');
  const filter = filterField ? (filterField.type === 'select' ? `${filterField.name}=eq.${filterField.values?.[0] ?? 'x'}` : `${filterField.name}=gt.0`) : 'id=neq.x';
  const order = first ? first.name : 'id';
  const type = `type ${pascal(name)} = {\n${fields.map((f) => `  ${f.name}${f.required ? '' : '?'}: ${tsType(f)};`).join('\n')}\n};`;
  const j = (v: unknown) => JSON.stringify(v);
  return (
    <div className="api">
      <h2>API of {name}</h2>
      <p className="muted">
        Generated from the collection's fields. Full reference: <a href="/api/openapi.json">/api/openapi.json</a> (OpenAPI 3.1) and docs/protocol.md for the realtime frames.
      </p>
      <h3>curl</h3>
      <Snippet
        title="list, create, update, delete"
        code={`H="Authorization: Bearer $LIVEBASE_TOKEN"
curl -s -H "$H" '${origin}/api/collections/${name}/records?${filter}&order=${order}&limit=20'
curl -s -H "$H" ${origin}/api/collections/${name}/records -d '${j(data)}'
curl -s -H "$H" -X PATCH -H 'If-Match: 1' ${origin}/api/collections/${name}/records/ID -d '${j(patch)}'
curl -s -H "$H" -X DELETE ${origin}/api/collections/${name}/records/ID`}
      />
      <h3>@livebase/client</h3>
      <Snippet
        title="TypeScript"
        code={`import { createClient } from '@livebase/client';

${type}

const lb = createClient({ url: '${origin}', token: () => getToken() });
const ${camel(name)} = lb.collection<${pascal(name)}>('${name}');

const page = await ${camel(name)}.list({ filter: '${filter}', order: '${order}', limit: 20 });
const created = await ${camel(name)}.create(${j(data)});
await ${camel(name)}.update(created.id, ${j(patch)}); // If-Match: the version seen
const live = ${camel(name)}.live({ filter: '${filter}' });
live.subscribe(() => console.log(live.rows.length, 'rows'));`}
      />
      <h3>@livebase/react</h3>
      <Snippet
        title="React"
        code={`import { useLiveQuery, useMutation } from '@livebase/react';

function ${pascal(name)}List() {
  const { rows, status } = useLiveQuery<${pascal(name)}>('${name}', { filter: '${filter}', order: '${order}' });
  const { create, update } = useMutation<${pascal(name)}>('${name}');
  if (status === 'loading') return <p>Loading…</p>;
  return (
    <ul>
      {rows.map((r) => (
        <li key={r.id} onClick={() => update(r.id, ${j(patch)})}>{String(r.${order})}</li>
      ))}
      <button onClick={() => create(${j(data)})}>Add</button>
    </ul>
  );
}`}
      />
    </div>
  );
}

const pascal = (s: string) => s.replace(/(^|[^a-zA-Z0-9])([a-zA-Z0-9])/g, (_, __, c: string) => c.toUpperCase());
const camel = (s: string) => {
  const p = pascal(s);
  return p.charAt(0).toLowerCase() + p.slice(1);
};
function tsType(f: Field): string {
  switch (f.type) {
    case 'integer':
    case 'number':
      return 'number';
    case 'boolean':
      return 'boolean';
    case 'select':
      return (f.values ?? []).map((v) => `'${v}'`).join(' | ') || 'string';
    case 'json':
      return 'unknown';
    default:
      return 'string';
  }
}
