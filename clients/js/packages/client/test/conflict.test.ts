import { describe, expect, it } from 'vitest';
import { mergePatch, resolveConflict, type AnyRow } from '@livebase/client';

const base = { id: 'r', version: 1, created_at: 't', updated_at: 't', title: 'crate', qty: 1, status: 'open', tags: ['a'] } as AnyRow;
const server = { ...base, version: 2, qty: 5, status: 'late' } as AnyRow;

describe('merge (field level, base / local / server)', () => {
  it('keeps local changes to fields the server left alone, and the server value where both changed', () => {
    expect(mergePatch(base, { title: 'crate (A)', status: 'done' }, server)).toEqual({ title: 'crate (A)' });
  });

  it('drops fields that already hold the local value on the server', () => {
    expect(mergePatch(base, { qty: 5, title: 'x' }, server)).toEqual({ title: 'x' });
  });

  it('compares JSON values by content', () => {
    const s = { ...server, tags: ['a'] } as AnyRow;
    expect(mergePatch(base, { tags: ['a', 'b'] }, s)).toEqual({ tags: ['a', 'b'] });
    const s2 = { ...server, tags: ['z'] } as AnyRow;
    expect(mergePatch(base, { tags: ['a', 'b'] }, s2)).toEqual({});
  });

  it('without a base, the fields the server reported decide; failing that, the server wins', () => {
    expect(mergePatch(null, { title: 'x', qty: 9 }, server, ['qty'])).toEqual({ title: 'x' });
    expect(mergePatch(null, { title: 'x', qty: 9 }, server)).toEqual({});
  });
});

describe('resolutions', () => {
  const patch = { title: 'crate (A)', status: 'done' };
  it('server-wins drops the write', () => {
    expect(resolveConflict('server-wins', 'update', base, patch, server, [])).toEqual({ kind: 'drop' });
    expect(resolveConflict('server-wins', 'delete', base, null, server, [])).toEqual({ kind: 'drop' });
  });

  it('client-wins writes the whole patch again on the server version', () => {
    expect(resolveConflict('client-wins', 'update', base, patch, server, [])).toEqual({ kind: 'update', data: patch, ifVersion: 2 });
    expect(resolveConflict('client-wins', 'delete', base, null, server, [])).toEqual({ kind: 'delete', ifVersion: 2 });
  });

  it('merge writes only the surviving fields, or nothing', () => {
    expect(resolveConflict('merge', 'update', base, patch, server, [])).toEqual({ kind: 'update', data: { title: 'crate (A)' }, ifVersion: 2 });
    expect(resolveConflict('merge', 'update', base, { status: 'done' }, server, [])).toEqual({ kind: 'drop' });
    expect(resolveConflict('merge', 'delete', base, null, server, [])).toEqual({ kind: 'drop' });
  });

  it('a custom answer writes its fields on the server version (system fields ignored)', () => {
    expect(resolveConflict({ data: { title: 'mine', id: 'x', version: 9 } }, 'update', base, patch, server, [])).toEqual({
      kind: 'update',
      data: { title: 'mine' },
      ifVersion: 2,
    });
    expect(resolveConflict({ data: {} }, 'update', base, patch, server, [])).toEqual({ kind: 'drop' });
    expect(() => resolveConflict('nonsense' as never, 'update', base, patch, server, [])).toThrow(/unknown conflict resolution/);
  });
});
