// REST calls the SDK does not cover (schema, change log, status), with the session's token.

export interface Field {
  name: string;
  type: 'text' | 'integer' | 'number' | 'boolean' | 'datetime' | 'json' | 'select' | 'relation';
  required?: boolean;
  unique?: boolean;
  min?: number;
  max?: number;
  default?: unknown;
  values?: string[];
  collection?: string;
  on_delete?: 'restrict' | 'cascade' | 'set_null';
}
export interface CollectionDef {
  name: string;
  fields: Field[];
  conflict?: 'reject' | 'lww' | 'merge';
  rules?: Record<string, string>;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details?: unknown,
  ) {
    super(message);
  }
}

const KEY = 'livebase.session';
export interface Session {
  token: string;
  name: string;
  admin: boolean;
}
// The credential lives in sessionStorage only (never the URL, never localStorage).
export function loadSession(): Session | null {
  try {
    const s = sessionStorage.getItem(KEY);
    return s ? (JSON.parse(s) as Session) : null;
  } catch {
    return null;
  }
}
export function saveSession(s: Session | null) {
  if (s) sessionStorage.setItem(KEY, JSON.stringify(s));
  else sessionStorage.removeItem(KEY);
}

export async function api<T = any>(token: string, method: string, path: string, body?: unknown): Promise<T> {
  const res = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${token}`, ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}) },
    body: body !== undefined ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  const json = text ? JSON.parse(text) : null;
  if (!res.ok) {
    const e = json?.error ?? {};
    throw new ApiError(res.status, e.code ?? 'http_' + res.status, e.message ?? res.statusText, e.details);
  }
  return json as T;
}

/** Field errors from a 422 `details.fields` (array of {field, message} or of names). */
export function fieldErrors(details: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  const f = (details as any)?.fields;
  if (Array.isArray(f)) {
    for (const x of f) {
      if (typeof x === 'string') out[x] = 'invalid';
      else if (x && typeof x === 'object') out[x.field ?? x.name ?? x.path ?? '?'] = x.message ?? 'invalid';
    }
  } else if (f && typeof f === 'object') {
    for (const [k, v] of Object.entries(f)) out[k] = String(v);
  }
  return out;
}
