/**
 * Every failure the SDK reports is a {@link LivebaseError}: the server's `{"error": {code,
 * message, details}}` for HTTP, an `error` frame for the realtime socket, or a local code
 * (`network_error`, `not_connected`, `timeout`, `closed`, ...).
 */
export class LivebaseError extends Error {
  /** Machine-readable code: the server's (`version_conflict`, `validation_failed`, ...) or a local one. */
  readonly code: string;
  /** HTTP status, 0 when the request never got an answer. */
  readonly status: number;
  readonly details: unknown;
  /** The server's `Retry-After` (429, 503), in milliseconds. */
  retryAfterMs?: number;

  constructor(code: string, message: string, status = 0, details?: unknown) {
    super(message);
    this.name = 'LivebaseError';
    this.code = code;
    this.status = status;
    this.details = details;
  }

  /** No answer from the server (offline, refused, reset): worth retrying later. */
  get isNetwork(): boolean {
    return this.status === 0 && (this.code === 'network_error' || this.code === 'timeout');
  }

  /** Worth retrying with the same idempotency key: network failures, 5xx, 408 and 429. */
  get isTransient(): boolean {
    return this.isNetwork || this.status >= 500 || this.status === 408 || this.status === 429;
  }
}

export function isLivebaseError(e: unknown): e is LivebaseError {
  return e instanceof LivebaseError;
}

/** Wraps anything thrown into a LivebaseError. */
export function toLivebaseError(e: unknown, code = 'internal'): LivebaseError {
  if (e instanceof LivebaseError) return e;
  const message = e instanceof Error ? e.message : String(e);
  return new LivebaseError(code, message);
}
