import { useEffect, useState } from 'react';

// Hash routing: `#/c/shipments?filter=...`, so every view has a URL that survives a reload.
export interface Route {
  parts: string[];
  params: URLSearchParams;
}
function parse(): Route {
  const h = location.hash.replace(/^#\/?/, '');
  const [p, q] = h.split('?');
  return { parts: (p ?? '').split('/').filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(q ?? '') };
}
export function useRoute(): Route {
  const [r, setR] = useState(parse);
  useEffect(() => {
    const on = () => setR(parse());
    addEventListener('hashchange', on);
    return () => removeEventListener('hashchange', on);
  }, []);
  return r;
}
export function href(parts: string[], params?: Record<string, string | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params ?? {})) if (v) q.set(k, v);
  const qs = q.toString();
  return '#/' + parts.map(encodeURIComponent).join('/') + (qs ? '?' + qs : '');
}
export function go(parts: string[], params?: Record<string, string | undefined>, replace = false) {
  const h = href(parts, params);
  if (replace) history.replaceState(null, '', h);
  else location.hash = h;
  if (replace) dispatchEvent(new HashChangeEvent('hashchange'));
}
