import { describe, expect, it } from 'vitest';
import { compileFilter, filterToString, parseFilter, printFilter } from '@livebase/client';

const items = [
  { id: 'a', version: 1, title: 'apple', qty: 3, status: 'open', done: true },
  { id: 'b', version: 1, title: 'Banana', qty: 7, status: 'late', done: false },
  { id: 'c', version: 1, title: 'cherry', qty: null, status: 'done', done: null },
  { id: 'd', version: 1, title: 'Bob', qty: 1, status: 'open' },
  { id: 'e', version: 1, title: 'date', qty: 5, status: 'late', done: true, created_at: '2026-01-02T03:04:05.000000Z' },
];

function ids(filter: string): string[] {
  const f = compileFilter(filter);
  expect(f.exact).toBe(true);
  return items.filter((r) => f.matches(r)).map((r) => r.id);
}

describe('filters evaluated on the client (the server grammar and SQL three-valued logic)', () => {
  it('compares with every operator; nulls never match a comparison', () => {
    expect(ids('qty=eq.3')).toEqual(['a']);
    expect(ids('qty=neq.3')).toEqual(['b', 'd', 'e']);
    expect(ids('qty=lt.4')).toEqual(['a', 'd']);
    expect(ids('qty=lte.5')).toEqual(['a', 'd', 'e']);
    expect(ids('qty=gt.5')).toEqual(['b']);
    expect(ids('qty=gte.5')).toEqual(['b', 'e']);
    expect(ids('status=in.(open,late)')).toEqual(['a', 'b', 'd', 'e']);
    expect(ids('qty=is.null')).toEqual(['c']);
    expect(ids('done=is.true')).toEqual(['a', 'e']);
    expect(ids('done=is.false')).toEqual(['b']);
    expect(ids('qty=not.gt.5')).toEqual(['a', 'd', 'e']);
    expect(ids('qty=not.is.null')).toEqual(['a', 'b', 'd', 'e']);
  });

  it('like and ilike with * and % and _', () => {
    expect(ids('title=like.*a*')).toEqual(['a', 'b', 'e']);
    expect(ids('title=like.B*')).toEqual(['b', 'd']);
    expect(ids('title=ilike.b*')).toEqual(['b', 'd']);
    expect(ids('title=like.d_te')).toEqual(['e']);
    expect(ids('title=like.%rr%')).toEqual(['c']);
  });

  it('and / or / not groups, nested', () => {
    expect(ids('or=(qty.lt.2,status.eq.late)')).toEqual(['b', 'd', 'e']);
    expect(ids('and=(qty.gte.2,or(status.eq.open,done.is.false))')).toEqual(['a', 'b']);
    expect(ids('not.and=(qty.gt.1,qty.lt.8)')).toEqual(['d']);
    expect(ids('qty=gt.1&status=eq.late')).toEqual(['b', 'e']);
    expect(ids('not.or=(status.eq.open,status.eq.late)')).toEqual(['c']);
  });

  it('timestamps compare after normalizing the literal', () => {
    expect(ids('created_at=gt.2026-01-02T04:00:00+02:00')).toEqual(['e']);
    expect(ids('created_at=eq.2026-01-02T03:04:05Z')).toEqual(['e']);
  });

  it('quoted values in groups and lists', () => {
    const f = compileFilter('title=in.("a,b",plain)');
    expect(f.matches({ title: 'a,b' })).toBe(true);
    expect(f.matches({ title: 'plain' })).toBe(true);
    expect(f.matches({ title: 'a' })).toBe(false);
  });

  it('prints the canonical form the server uses to name a query', () => {
    expect(printFilter(parseFilter(' qty=gt.5 '))).toBe('qty=gt.5');
    expect(printFilter(parseFilter('?a=eq.1&b=in.(x,"y,z")'))).toBe('a=eq.1&b=in.(x,"y,z")');
    expect(printFilter(parseFilter('or=(a.not.eq.1,and(b.lt.2,c.is.null))'))).toBe('or=(a.not.eq.1,and(b.lt.2,c.is.null))');
    expect(printFilter(parseFilter('title=eq.a%26b'))).toBe('title=eq.a%26b');
    expect(compileFilter('qty=gt.5').key).toBe(compileFilter('qty=gt.5 ').key);
  });

  it('object filters become query strings', () => {
    expect(filterToString({ status: 'eq.open', qty: 3, done: true, owner: null })).toBe('status=eq.open&qty=eq.3&done=eq.true&owner=is.null');
    expect(filterToString({ title: 'eq.a&b' })).toBe('title=eq.a%26b');
    expect(filterToString(undefined)).toBe('');
  });

  it('a filter it cannot parse is left to the server', () => {
    const f = compileFilter('qty=gtx.5');
    expect(f.exact).toBe(false);
    expect(() => parseFilter('qty=gtx.5')).toThrow(/unknown operator/);
    expect(() => parseFilter('or=(a.eq.1')).toThrow(/unbalanced/);
  });
});
