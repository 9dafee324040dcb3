/**
 * The server's filter grammar (PostgREST operators), parsed and evaluated on the client so
 * that optimistic writes and confirmed results land in exactly the live queries whose
 * filter they match. This mirrors `livebase-core/src/filter.rs`:
 *
 * - pairs `qty=gt.5&status=in.(open,late)` are ANDed; `title=like.*box*`, `ilike`,
 *   `owner=is.null`, `done=is.true`, `qty=not.gt.5`;
 * - groups `or=(a.eq.1,b.lt.2)`, `and=(a.eq.1,or(b.lt.2,c.gt.3))`, `not.or=(...)`,
 *   `not.and=(...)`; values in groups and `in` lists may be double-quoted;
 * - SQL three-valued logic: a comparison with a null field is unknown, only true matches.
 *
 * The server types literals by the field's declared type; the client has no schema, so it
 * types a literal by the JSON type of the record's value (number, string, boolean), which
 * gives the same answer for every record the server accepts. Datetime literals are
 * normalized to the server's canonical form before they are compared as text.
 */

export type CmpOp = 'eq' | 'neq' | 'lt' | 'lte' | 'gt' | 'gte';

export type FilterNode =
  | { kind: 'and'; items: FilterNode[] }
  | { kind: 'or'; items: FilterNode[] }
  | { kind: 'not'; item: FilterNode }
  | { kind: 'cmp'; field: string; op: CmpOp; value: string }
  | { kind: 'in'; field: string; values: string[] }
  | { kind: 'is'; field: string; value: 'null' | 'true' | 'false' }
  | { kind: 'like'; field: string; pattern: string; ci: boolean };

/** A filter as the SDK accepts it: the query-string form, or an object of `field: "op.value"`. */
export type FilterInput = string | Record<string, string | number | boolean | null> | null | undefined;

export class FilterSyntaxError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FilterSyntaxError';
  }
}

const OPS = new Set(['eq', 'neq', 'lt', 'lte', 'gt', 'gte', 'in', 'is', 'like', 'ilike']);
const RESERVED = new Set(['and', 'or', 'not']);
const isNameChar = (c: string | undefined) => c !== undefined && /[A-Za-z0-9_]/.test(c);

class Parser {
  pos = 0;
  constructor(
    readonly s: string,
    readonly ctx: string,
  ) {}

  err(what: string): FilterSyntaxError {
    return new FilterSyntaxError(`${what} in '${this.ctx}'`);
  }
  peek(): string | undefined {
    return this.s[this.pos];
  }
  rest(): string {
    return this.s.slice(this.pos);
  }
  skipWs(): void {
    while (this.peek() === ' ' || this.peek() === '\t') this.pos++;
  }

  value(): string {
    if (this.peek() === '"') {
      this.pos++;
      let out = '';
      for (;;) {
        const c = this.peek();
        if (c === undefined) throw this.err('unterminated quoted value');
        this.pos++;
        if (c === '"') break;
        if (c === '\\') {
          const n = this.peek();
          if (n === '"' || n === '\\') {
            out += n;
            this.pos++;
          } else if (n === undefined) {
            throw this.err('unterminated quoted value');
          } else {
            out += '\\';
          }
        } else {
          out += c;
        }
      }
      this.skipWs();
      const p = this.peek();
      if (p === ',' || p === ')' || p === undefined) return out;
      throw this.err(`unexpected '${this.rest()}' after quoted value`);
    }
    const start = this.pos;
    let depth = 0;
    for (;;) {
      const c = this.peek();
      if (c === undefined) break;
      if (c === '(') depth++;
      else if (c === ')') {
        if (depth === 0) break;
        depth--;
      } else if (c === ',' && depth === 0) break;
      this.pos++;
    }
    if (depth > 0) throw this.err('unbalanced parentheses');
    return this.s.slice(start, this.pos);
  }

  list(): string[] {
    if (this.peek() !== '(') throw this.err("'in' needs a parenthesized list like in.(a,b)");
    this.pos++;
    const values: string[] = [];
    if (this.peek() === ')') {
      this.pos++;
      return values;
    }
    for (;;) {
      values.push(this.value());
      const c = this.peek();
      if (c === ',') this.pos++;
      else if (c === ')') {
        this.pos++;
        return values;
      } else throw this.err('unbalanced parentheses');
    }
  }

  opName(inGroup: boolean): string {
    const start = this.pos;
    for (;;) {
      const c = this.peek();
      if (c === undefined || c === '.' || (inGroup && (c === ',' || c === ')'))) break;
      this.pos++;
    }
    const name = this.s.slice(start, this.pos);
    if (this.peek() === '.') {
      this.pos++;
      return name;
    }
    throw this.err(name ? `missing value after '${name}'` : 'missing operator');
  }

  condition(field: string, inGroup: boolean): FilterNode {
    let name = this.opName(inGroup);
    const negated = name === 'not';
    if (negated) name = this.opName(inGroup);
    if (!OPS.has(name)) throw this.err(`unknown operator '${name}'`);
    const raw = (): string => {
      if (inGroup) return this.value();
      const v = this.rest();
      this.pos = this.s.length;
      return v;
    };
    let leaf: FilterNode;
    if (name === 'in') {
      const values = this.list();
      if (!inGroup && this.pos !== this.s.length) throw this.err("unexpected text after the 'in' list");
      leaf = { kind: 'in', field, values };
    } else if (name === 'is') {
      const v = raw();
      if (v !== 'null' && v !== 'true' && v !== 'false') throw this.err("'is' accepts only null, true or false");
      leaf = { kind: 'is', field, value: v };
    } else if (name === 'like' || name === 'ilike') {
      leaf = { kind: 'like', field, pattern: raw(), ci: name === 'ilike' };
    } else {
      leaf = { kind: 'cmp', field, op: name as CmpOp, value: raw() };
    }
    return negated ? { kind: 'not', item: leaf } : leaf;
  }

  group(depth: number): FilterNode[] {
    if (depth > 8) throw this.err('filter nesting is too deep');
    if (this.peek() !== '(') throw this.err("expected '('");
    this.pos++;
    const items: FilterNode[] = [];
    for (;;) {
      this.skipWs();
      const c = this.peek();
      if (c === undefined) throw this.err('unbalanced parentheses');
      if (c === ')' && items.length === 0) throw this.err("empty group '()'");
      items.push(this.groupItem(depth));
      this.skipWs();
      const n = this.peek();
      if (n === ',') this.pos++;
      else if (n === ')') {
        this.pos++;
        return items;
      } else if (n === undefined) throw this.err('unbalanced parentheses');
      else throw this.err(`unexpected '${this.rest()}'`);
    }
  }

  groupItem(depth: number): FilterNode {
    for (const [prefix, negated, isAnd] of [
      ['and(', false, true],
      ['or(', false, false],
      ['not.and(', true, true],
      ['not.or(', true, false],
    ] as const) {
      if (this.rest().startsWith(prefix)) {
        this.pos += prefix.length - 1;
        const items = this.group(depth + 1);
        const g: FilterNode = isAnd ? { kind: 'and', items } : { kind: 'or', items };
        return negated ? { kind: 'not', item: g } : g;
      }
    }
    const start = this.pos;
    while (isNameChar(this.peek())) this.pos++;
    const field = this.s.slice(start, this.pos);
    if (!field || this.peek() !== '.') throw this.err(`expected field.operator.value at '${this.s.slice(start)}'`);
    this.pos++;
    checkField(field, this.ctx);
    return this.condition(field, true);
  }
}

function checkField(name: string, ctx: string): void {
  if (!name || ![...name].every(isNameChar)) throw new FilterSyntaxError(`invalid field name '${name}' in '${ctx}'`);
  if (RESERVED.has(name)) throw new FilterSyntaxError(`'${name}' is reserved in '${ctx}'`);
}

function parsePair(key: string, value: string): FilterNode {
  const ctx = `${key}=${value}`;
  const p = new Parser(value, ctx);
  const groups: Record<string, [boolean, boolean]> = {
    and: [false, true],
    or: [false, false],
    'not.and': [true, true],
    'not.or': [true, false],
  };
  const g = groups[key];
  if (g) {
    const items = p.group(1);
    if (p.pos !== value.length) throw p.err(`unexpected '${p.rest()}' after ')'`);
    const node: FilterNode = g[1] ? { kind: 'and', items } : { kind: 'or', items };
    return g[0] ? { kind: 'not', item: node } : node;
  }
  checkField(key, ctx);
  return p.condition(key, false);
}

function percentDecode(s: string): string {
  const bytes: number[] = [];
  const enc = new TextEncoder();
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (c === '+') bytes.push(32);
    else if (c === '%' && /^[0-9a-fA-F]{2}$/.test(s.slice(i + 1, i + 3))) {
      bytes.push(parseInt(s.slice(i + 1, i + 3), 16));
      i += 2;
    } else {
      const cp = s.codePointAt(i)!;
      const ch = String.fromCodePoint(cp);
      if (ch.length === 2) i++;
      bytes.push(...enc.encode(ch));
    }
  }
  return new TextDecoder('utf-8', { fatal: true }).decode(new Uint8Array(bytes));
}

/** Parses a filter in query form. Returns null for an empty filter. Throws FilterSyntaxError. */
export function parseFilter(s: string): FilterNode | null {
  const body = s.trim().replace(/^\?/, '');
  const parts: FilterNode[] = [];
  for (const part of body.split('&')) {
    if (!part) continue;
    const eq = part.indexOf('=');
    if (eq < 0) throw new FilterSyntaxError(`expected key=value but found '${part}'`);
    parts.push(parsePair(percentDecode(part.slice(0, eq)), percentDecode(part.slice(eq + 1))));
  }
  if (parts.length === 0) return null;
  return parts.length === 1 ? parts[0]! : { kind: 'and', items: parts };
}

// ---------------------------------------------------------------------------------------
// Printing: the server's canonical form (Display for Filter), used as the local query key.
// ---------------------------------------------------------------------------------------

function groupValue(v: string): string {
  if (v !== '' && !/[,()"\\]/.test(v)) return v;
  return `"${v.replace(/["\\]/g, (m) => `\\${m}`)}"`;
}

function opValue(n: FilterNode, inGroup: boolean): string {
  const plain = (v: string) => (inGroup ? groupValue(v) : v);
  switch (n.kind) {
    case 'cmp':
      return `${n.op}.${plain(n.value)}`;
    case 'in':
      return `in.(${n.values.map(groupValue).join(',')})`;
    case 'is':
      return `is.${plain(n.value)}`;
    case 'like':
      return `${n.ci ? 'ilike' : 'like'}.${plain(n.pattern)}`;
    default:
      return '';
  }
}

function items(list: FilterNode[]): string {
  return `(${list.map(groupItem).join(',')})`;
}

function groupItem(n: FilterNode): string {
  switch (n.kind) {
    case 'and':
      return `and${items(n.items)}`;
    case 'or':
      return `or${items(n.items)}`;
    case 'not': {
      const i = n.item;
      if (i.kind === 'and') return `not.and${items(i.items)}`;
      if (i.kind === 'or') return `not.or${items(i.items)}`;
      if (i.kind === 'not') return `not.and${items([i])}`;
      return `${i.field}.not.${opValue(i, true)}`;
    }
    default:
      return `${n.field}.${opValue(n, true)}`;
  }
}

function pairString(n: FilterNode): string {
  switch (n.kind) {
    case 'and':
      return `and=${items(n.items)}`;
    case 'or':
      return `or=${items(n.items)}`;
    case 'not': {
      const i = n.item;
      if (i.kind === 'and') return `not.and=${items(i.items)}`;
      if (i.kind === 'or') return `not.or=${items(i.items)}`;
      if (i.kind === 'not') return `not.and=${items([i])}`;
      return `${i.field}=not.${opValue(i, false)}`;
    }
    default:
      return `${n.field}=${opValue(n, false)}`;
  }
}

function percentEncode(s: string): string {
  let out = '';
  for (const c of s) {
    if (c === '%' || c === '&' || c === '+' || c === '#' || /\s/u.test(c) || /\p{Cc}/u.test(c)) {
      for (const b of new TextEncoder().encode(c)) out += `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
    } else out += c;
  }
  return out;
}

/** The canonical query form of a parsed filter (what the server uses to name a query). */
export function printFilter(n: FilterNode | null): string {
  if (!n) return '';
  const parts = n.kind === 'and' && n.items.length >= 2 ? n.items : [n];
  return parts.map((p) => percentEncode(pairString(p))).join('&');
}

/** Turns the accepted filter inputs into the query-string form sent to the server. */
export function filterToString(f: FilterInput): string {
  if (f == null) return '';
  if (typeof f === 'string') return f.trim().replace(/^\?/, '');
  const parts: string[] = [];
  for (const [k, v] of Object.entries(f)) {
    let value: string;
    if (v === null) value = 'is.null';
    else if (typeof v === 'number' || typeof v === 'boolean') value = `eq.${v}`;
    else value = v;
    parts.push(`${percentEncode(k)}=${percentEncode(value)}`);
  }
  return parts.join('&');
}

// ---------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------

const TS_RE = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$/;

/** RFC 3339 to the server's canonical `YYYY-MM-DDTHH:MM:SS.ffffffZ`, or null. */
export function normalizeTimestamp(s: string): string | null {
  const m = TS_RE.exec(s) ?? TS_RE.exec(s.replace(/ (\d{2}:\d{2})$/, '+$1'));
  if (!m) return null;
  const [, y, mo, d, h, mi, se, frac = '', off] = m;
  let ms = Date.UTC(+y!, +mo! - 1, +d!, +h!, +mi!, +se!);
  if (Number.isNaN(ms)) return null;
  if (off !== 'Z' && off !== 'z') {
    const sign = off![0] === '-' ? -1 : 1;
    ms -= sign * (+off!.slice(1, 3) * 60 + +off!.slice(4, 6)) * 60_000;
  }
  const t = new Date(ms);
  const y2 = t.getUTCFullYear();
  if (y2 < 0 || y2 > 9999) return null;
  const p = (n: number, w = 2) => String(n).padStart(w, '0');
  const micros = (frac + '000000').slice(0, 6);
  return `${p(y2, 4)}-${p(t.getUTCMonth() + 1)}-${p(t.getUTCDate())}T${p(t.getUTCHours())}:${p(t.getUTCMinutes())}:${p(t.getUTCSeconds())}.${micros}Z`;
}

/** Code point order, like Rust's `str::cmp` (JS `<` compares UTF-16 units). */
export function compareText(a: string, b: string): number {
  if (a === b) return 0;
  const ia = a[Symbol.iterator]();
  const ib = b[Symbol.iterator]();
  for (;;) {
    const x = ia.next();
    const y = ib.next();
    if (x.done) return y.done ? 0 : -1;
    if (y.done) return 1;
    const cx = x.value.codePointAt(0)!;
    const cy = y.value.codePointAt(0)!;
    if (cx !== cy) return cx < cy ? -1 : 1;
  }
}

/** The record's value compared with a raw literal: -1/0/1, or undefined when unknown. */
function compareLiteral(v: unknown, lit: string): number | undefined {
  if (typeof v === 'number') {
    if (lit.trim() === '') return undefined;
    const n = Number(lit);
    if (!Number.isFinite(n)) return undefined;
    return v < n ? -1 : v > n ? 1 : 0;
  }
  if (typeof v === 'string') {
    if (TS_RE.test(v)) {
      const canon = normalizeTimestamp(lit);
      if (canon !== null) return compareText(v, canon);
    }
    return compareText(v, lit);
  }
  if (typeof v === 'boolean') {
    if (lit !== 'true' && lit !== 'false') return undefined;
    const b = lit === 'true';
    return v === b ? 0 : v ? 1 : -1;
  }
  return undefined;
}

function holds(op: CmpOp, ord: number): boolean {
  switch (op) {
    case 'eq':
      return ord === 0;
    case 'neq':
      return ord !== 0;
    case 'lt':
      return ord < 0;
    case 'lte':
      return ord <= 0;
    case 'gt':
      return ord > 0;
    case 'gte':
      return ord >= 0;
  }
}

const asciiLower = (s: string) => s.replace(/[A-Z]/g, (c) => c.toLowerCase());

/** `*` and `%` match any sequence, `_` one character (greedy, one backtrack point). */
export function likeMatch(pattern: string, text: string): boolean {
  const p = [...pattern];
  const t = [...text];
  const any = (c: string | undefined) => c === '*' || c === '%';
  let pi = 0;
  let ti = 0;
  let star: [number, number] | null = null;
  while (ti < t.length) {
    const c = p[pi];
    if (any(c)) {
      star = [pi, ti];
      pi++;
    } else if (c !== undefined && (c === '_' || c === t[ti])) {
      pi++;
      ti++;
    } else if (star) {
      pi = star[0] + 1;
      ti = star[1] + 1;
      star = [star[0], star[1] + 1];
    } else return false;
  }
  return p.slice(pi).every(any);
}

type Tri = boolean | undefined;

function field(r: Record<string, unknown>, name: string): unknown {
  const v = r[name];
  return v === null ? undefined : v;
}

export function evaluate(n: FilterNode, r: Record<string, unknown>): Tri {
  switch (n.kind) {
    case 'and': {
      let unknown = false;
      for (const i of n.items) {
        const v = evaluate(i, r);
        if (v === false) return false;
        if (v === undefined) unknown = true;
      }
      return unknown ? undefined : true;
    }
    case 'or': {
      let unknown = false;
      for (const i of n.items) {
        const v = evaluate(i, r);
        if (v === true) return true;
        if (v === undefined) unknown = true;
      }
      return unknown ? undefined : false;
    }
    case 'not': {
      const v = evaluate(n.item, r);
      return v === undefined ? undefined : !v;
    }
    case 'cmp': {
      const v = field(r, n.field);
      if (v === undefined) return undefined;
      const o = compareLiteral(v, n.value);
      return o === undefined ? undefined : holds(n.op, o);
    }
    case 'in': {
      if (n.values.length === 0) return false;
      const v = field(r, n.field);
      if (v === undefined) return undefined;
      let found = false;
      for (const lit of n.values) {
        const o = compareLiteral(v, lit);
        if (o === undefined) return undefined;
        if (o === 0) found = true;
      }
      return found;
    }
    case 'is': {
      const v = field(r, n.field);
      if (n.value === 'null') return v === undefined;
      return v === (n.value === 'true');
    }
    case 'like': {
      const v = field(r, n.field);
      if (typeof v !== 'string') return undefined;
      return n.ci ? likeMatch(asciiLower(n.pattern), asciiLower(v)) : likeMatch(n.pattern, v);
    }
  }
}

/**
 * A compiled filter. `matches` answers whether a record belongs to the query's result;
 * `exact` is false when the filter could not be parsed here (the server may still accept
 * it), in which case callers fall back to the server's own answers.
 */
export interface CompiledFilter {
  readonly source: string;
  /** The canonical form: two filters with the same key are the same server query. */
  readonly key: string;
  readonly exact: boolean;
  matches(r: Record<string, unknown>): boolean;
}

export function compileFilter(input: FilterInput): CompiledFilter {
  const source = filterToString(input);
  try {
    const node = parseFilter(source);
    return {
      source,
      key: printFilter(node),
      exact: true,
      matches: node ? (r) => evaluate(node, r) === true : () => true,
    };
  } catch {
    return { source, key: source, exact: false, matches: () => true };
  }
}

// ---------------------------------------------------------------------------------------
// Ordering (the server's list order), for live queries sorted on the client.
// ---------------------------------------------------------------------------------------

export interface OrderKey {
  field: string;
  descending: boolean;
  nullsFirst: boolean;
}

/** Parses `qty.desc,title` (modifiers asc, desc, nullsfirst, nullslast). */
export function parseOrder(s: string | undefined): OrderKey[] {
  if (!s) return [];
  return s.split(',').map((item) => {
    const [fieldName, ...mods] = item.trim().split('.');
    if (!fieldName) throw new FilterSyntaxError(`empty field in order '${s}'`);
    let descending: boolean | undefined;
    let nullsFirst: boolean | undefined;
    for (const m of mods) {
      if (m === 'asc') descending = false;
      else if (m === 'desc') descending = true;
      else if (m === 'nullsfirst') nullsFirst = true;
      else if (m === 'nullslast') nullsFirst = false;
      else throw new FilterSyntaxError(`unknown order modifier '${m}' in '${item}'`);
    }
    const d = descending ?? false;
    return { field: fieldName, descending: d, nullsFirst: nullsFirst ?? d };
  });
}

function typeRank(v: unknown): number {
  if (v === null || v === undefined) return 0;
  if (typeof v === 'boolean' || typeof v === 'number') return 1;
  if (typeof v === 'string') return 2;
  return 3;
}

export function compareValues(a: unknown, b: unknown): number {
  if (typeof a === 'number' && typeof b === 'number') return a < b ? -1 : a > b ? 1 : 0;
  if (typeof a === 'string' && typeof b === 'string') return compareText(a, b);
  if (typeof a === 'boolean' && typeof b === 'boolean') return a === b ? 0 : a ? 1 : -1;
  const ra = typeRank(a);
  const rb = typeRank(b);
  if (ra !== rb) return ra < rb ? -1 : 1;
  if (ra === 1) {
    const na = Number(a);
    const nb = Number(b);
    return na < nb ? -1 : na > nb ? 1 : 0;
  }
  return compareText(JSON.stringify(a), JSON.stringify(b));
}

/** A comparator for records: the keys, then `id` ascending so the order is total. */
export function recordComparator(order: OrderKey[]): (a: Record<string, unknown>, b: Record<string, unknown>) => number {
  const hasId = order.some((o) => o.field === 'id');
  return (a, b) => {
    for (const o of order) {
      const va = field(a, o.field);
      const vb = field(b, o.field);
      let c: number;
      if (va === undefined && vb === undefined) c = 0;
      else if (va === undefined) c = o.nullsFirst ? -1 : 1;
      else if (vb === undefined) c = o.nullsFirst ? 1 : -1;
      else {
        c = compareValues(va, vb);
        if (o.descending) c = -c;
      }
      if (c !== 0) return c;
    }
    return hasId ? 0 : compareText(String(a.id ?? ''), String(b.id ?? ''));
  };
}
