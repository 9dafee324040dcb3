import { describe, expect, it } from 'vitest';
import { Backoff, gradeLatency } from '@livebase/client';

describe('backoff (exponential, full jitter)', () => {
  it('draws each delay uniformly from [0, min(cap, base * 2^n))', () => {
    let next = 0.999999;
    const b = new Backoff({ baseMs: 100, capMs: 1000, random: () => next });
    expect([b.next(), b.next(), b.next(), b.next(), b.next(), b.next()]).toEqual([99, 199, 399, 799, 999, 999]);
    next = 0;
    expect(b.next()).toBe(0);
    next = 0.5;
    expect(b.next()).toBe(500);
  });

  it('windows double up to the cap and never overflow', () => {
    const b = new Backoff({ baseMs: 250, capMs: 30_000 });
    expect([0, 1, 2, 3, 4, 5, 6, 7].map((n) => b.window(n))).toEqual([250, 500, 1000, 2000, 4000, 8000, 16000, 30000]);
    expect(b.window(5000)).toBe(30_000);
  });

  it('stays inside the window with a real random source', () => {
    const b = new Backoff({ baseMs: 10, capMs: 80 });
    for (let i = 0; i < 200; i++) {
      const n = b.attempt;
      const d = b.next();
      expect(d).toBeGreaterThanOrEqual(0);
      expect(d).toBeLessThan(b.window(n));
    }
  });

  it('reset starts the sequence again', () => {
    const b = new Backoff({ baseMs: 100, capMs: 10_000, random: () => 0.999 });
    b.next();
    b.next();
    b.next();
    expect(b.attempt).toBe(3);
    b.reset();
    expect(b.attempt).toBe(0);
    expect(b.next()).toBe(99);
  });
});

describe('latency grades', () => {
  it('uses the documented thresholds', () => {
    expect(gradeLatency(0)).toBe('excellent');
    expect(gradeLatency(49)).toBe('excellent');
    expect(gradeLatency(50)).toBe('good');
    expect(gradeLatency(149)).toBe('good');
    expect(gradeLatency(150)).toBe('fair');
    expect(gradeLatency(399)).toBe('fair');
    expect(gradeLatency(400)).toBe('poor');
    expect(gradeLatency(120, { excellent: 100, good: 200, fair: 300 })).toBe('good');
  });
});
