/** Identifiers: UUIDs for idempotency keys, time-ordered ids for records created on the client. */

function randomBytes(n: number): Uint8Array {
  const out = new Uint8Array(n);
  const c = (globalThis as { crypto?: Crypto }).crypto;
  if (c?.getRandomValues) {
    c.getRandomValues(out);
  } else {
    for (let i = 0; i < n; i++) out[i] = Math.floor(Math.random() * 256);
  }
  return out;
}

/** A random (v4) UUID. */
export function uuid(): string {
  const c = (globalThis as { crypto?: Crypto }).crypto;
  if (c && typeof c.randomUUID === 'function') return c.randomUUID();
  const b = randomBytes(16);
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

const CROCKFORD = '0123456789abcdefghjkmnpqrstvwxyz';

/**
 * A record id in the server's own format (26 lowercase Crockford base32 characters: 48 bits
 * of milliseconds, 80 random bits), so ids made offline sort by creation time like the
 * server's.
 */
export function recordId(now: number = Date.now()): string {
  let v = BigInt(Math.max(0, Math.floor(now))) & 0xffff_ffff_ffffn;
  const r = randomBytes(10);
  for (const byte of r) v = (v << 8n) | BigInt(byte);
  // 128 bits in all; 26 characters of 5 bits cover 130, the top two being zero.
  let out = '';
  for (let i = 0; i < 26; i++) {
    const shift = BigInt(125 - i * 5);
    out += CROCKFORD[Number((v >> shift) & 31n)];
  }
  return out;
}
