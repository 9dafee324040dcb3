/** HTTP transport: JSON in and out, bearer token, the server's error shape mapped to LivebaseError. */
import { LivebaseError } from './errors.js';

export type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

export interface RestRequest {
  method: 'GET' | 'POST' | 'PATCH' | 'DELETE';
  path: string;
  query?: string;
  body?: unknown;
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

export interface RestResponse<T> {
  status: number;
  data: T;
  /** True when the server answered from its idempotency store (a retry of an applied write). */
  replayed: boolean;
}

export class RestClient {
  constructor(
    private readonly baseUrl: string,
    private readonly getToken: () => Promise<string | undefined>,
    private readonly fetchImpl: FetchLike,
    private readonly timeoutMs: number,
  ) {}

  async request<T>(req: RestRequest): Promise<RestResponse<T>> {
    const token = await this.getToken();
    const headers: Record<string, string> = { accept: 'application/json', ...req.headers };
    if (token) headers.authorization = `Bearer ${token}`;
    let body: string | undefined;
    if (req.body !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(req.body);
    }
    const url = `${this.baseUrl}${req.path}${req.query ? `?${req.query}` : ''}`;
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), this.timeoutMs);
    const onAbort = () => ctrl.abort();
    req.signal?.addEventListener('abort', onAbort);
    let res: Response;
    try {
      res = await this.fetchImpl(url, { method: req.method, headers, body, signal: ctrl.signal });
    } catch (e) {
      const timedOut = ctrl.signal.aborted && !req.signal?.aborted;
      throw new LivebaseError(
        timedOut ? 'timeout' : 'network_error',
        timedOut ? `${req.method} ${req.path} timed out after ${this.timeoutMs} ms` : `${req.method} ${req.path} failed: ${errorText(e)}`,
      );
    } finally {
      clearTimeout(timer);
      req.signal?.removeEventListener('abort', onAbort);
    }
    let text: string;
    try {
      text = await res.text();
    } catch (e) {
      throw new LivebaseError('network_error', `${req.method} ${req.path}: reading the response failed: ${errorText(e)}`);
    }
    let data: unknown = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        if (res.ok) throw new LivebaseError('bad_response', `${req.method} ${req.path}: response is not JSON`, res.status);
        data = null;
      }
    }
    if (!res.ok) {
      const err = (data as { error?: { code?: string; message?: string; details?: unknown } } | null)?.error;
      const e = new LivebaseError(
        err?.code ?? `http_${res.status}`,
        err?.message ?? `${req.method} ${req.path} answered ${res.status}`,
        res.status,
        err?.details,
      );
      const retry = Number(res.headers.get('retry-after'));
      if (Number.isFinite(retry) && retry > 0) e.retryAfterMs = retry * 1000;
      throw e;
    }
    return { status: res.status, data: data as T, replayed: res.headers.get('idempotent-replayed') === 'true' };
  }
}

function errorText(e: unknown): string {
  if (e instanceof Error) {
    const cause = (e as { cause?: unknown }).cause;
    return cause instanceof Error ? `${e.message} (${cause.message})` : e.message;
  }
  return String(e);
}
