/**
 * Exponential backoff with full jitter: attempt n waits a uniformly random time in
 * `[0, min(capMs, baseMs * 2^n))`. Full jitter spreads reconnecting clients out after a
 * server restart instead of having them all retry in lockstep.
 */
export interface BackoffOptions {
  /** First window, in milliseconds. Default 500. */
  baseMs?: number;
  /** Largest window, in milliseconds. Default 30 000. */
  capMs?: number;
  /** A source of numbers in [0, 1): injectable for tests. Default Math.random. */
  random?: () => number;
}

export class Backoff {
  readonly baseMs: number;
  readonly capMs: number;
  private readonly random: () => number;
  private n = 0;

  constructor(options: BackoffOptions = {}) {
    this.baseMs = Math.max(1, options.baseMs ?? 500);
    this.capMs = Math.max(this.baseMs, options.capMs ?? 30_000);
    this.random = options.random ?? Math.random;
  }

  /** How many delays were handed out since the last reset. */
  get attempt(): number {
    return this.n;
  }

  /** The upper bound of the window for attempt `n`. */
  window(n: number): number {
    // 2^n overflows to Infinity for large n; min() caps it either way.
    return Math.min(this.capMs, this.baseMs * Math.pow(2, n));
  }

  /** The next delay, and advances the attempt counter. */
  next(): number {
    const w = this.window(this.n);
    this.n += 1;
    return Math.floor(this.random() * w);
  }

  reset(): void {
    this.n = 0;
  }
}
