/**
 * The realtime frames of `docs/protocol.md`, as the SDK reads and writes them. The shapes
 * follow the Rust crate `livebase-protocol`; its JSON fixtures
 * (`crates/livebase-protocol/fixtures/{client,server}/*.json`) are checked against this file
 * by `test/frames.test.ts`.
 *
 * `ref` is any JSON value the client chose; the server echoes it unchanged. This SDK sends
 * numbers.
 */

/** `subscribe`: plain, resume (`since` with the `epoch` it was read in) or live query (`snapshot`). */
export type SubscribeRequest = {
  type: 'subscribe';
  ref?: unknown;
  collection: string;
  filter?: string;
  since?: number;
  /** The server epoch `since` belongs to (from the `subscribed` that started the subscription). */
  epoch?: string;
  snapshot?: boolean;
  /** A live aggregate over the matching rows instead of the rows. */
  aggregate?: AggregateRequest;
};

/** What a live aggregate computes: `group` by zero, one or two fields; functions as written. */
export interface AggregateRequest {
  group?: string[];
  fn: string[];
}

/** Why the client's previous connection (`?resume_of=`) was cut off. */
export interface CutOff {
  reason: string;
  at_seq: number;
}

export interface WelcomeFrame {
  type: 'welcome';
  conn_id: string;
  server_time?: string;
  heartbeat_ms?: number;
  timeout_ms?: number;
  /** The server's epoch; absent from servers that predate it. */
  epoch?: string;
  /** Present when the client's previous connection was cut off (e.g. `slow_consumer`). */
  cut_off?: CutOff;
}

export interface SubscribedFrame {
  type: 'subscribed';
  ref?: unknown;
  sub_id: number;
  seq: number;
  /** The epoch `seq` belongs to: sent back beside `since` when resuming. Absent from older servers. */
  epoch?: string;
}

export interface ChangeFrame {
  type: 'change';
  sub_id: number;
  seq: number;
  op: 'insert' | 'update' | 'delete';
  view: 'add' | 'update' | 'remove';
  id: string;
  version: number;
  actor: string | null;
  committed_at: string;
  new: Record<string, unknown> | null;
  old: Record<string, unknown> | null;
}

export interface SnapshotFrame {
  type: 'snapshot';
  sub_id: number;
  seq: number;
  rows: Record<string, unknown>[];
  done: boolean;
}

/**
 * A live aggregate's values: every group (`full`), or the groups a change moved (current
 * values) and, in `removed`, the groups it emptied (their group fields only).
 */
export interface AggregateFrame {
  type: 'aggregate';
  sub_id: number;
  seq: number;
  full: boolean;
  groups: Record<string, unknown>[];
  removed: Record<string, unknown>[];
}

export interface PresenceEntryFrame {
  conn_id: string;
  meta: unknown;
}

export interface PresenceStateFrame {
  type: 'presence_state';
  channel: string;
  state: Record<string, PresenceEntryFrame[]>;
}

export interface PresenceDiffFrame {
  type: 'presence_diff';
  channel: string;
  joins: Record<string, PresenceEntryFrame[]>;
  leaves: Record<string, PresenceEntryFrame[]>;
}

export interface BroadcastFrame {
  type: 'broadcast';
  channel: string;
  event: string;
  payload: unknown;
  from?: string;
}

export interface OkFrame {
  type: 'ok';
  ref?: unknown;
}

export interface PongFrame {
  type: 'pong';
  ref?: unknown;
  server_time?: string;
}

export interface ErrorFrame {
  type: 'error';
  ref?: unknown;
  code: string;
  message: string;
  /** `already_subscribed` names the existing subscription. */
  sub_id?: number;
}

/** Reasons of `resync_required`; later servers may add others (handle them all alike). */
export type ResyncReason = 'log_trimmed' | 'epoch_changed' | (string & {});

export interface ResyncRequiredFrame {
  type: 'resync_required';
  ref?: unknown;
  sub_id?: number;
  reason?: ResyncReason;
}

/** Every frame type this SDK knows. */
export type KnownServerFrame =
  | WelcomeFrame
  | SubscribedFrame
  | ChangeFrame
  | SnapshotFrame
  | AggregateFrame
  | PresenceStateFrame
  | PresenceDiffFrame
  | BroadcastFrame
  | OkFrame
  | PongFrame
  | ErrorFrame
  | ResyncRequiredFrame;

export const SERVER_FRAME_TYPES: readonly KnownServerFrame['type'][] = [
  'welcome',
  'subscribed',
  'change',
  'snapshot',
  'aggregate',
  'presence_state',
  'presence_diff',
  'broadcast',
  'ok',
  'pong',
  'error',
  'resync_required',
];

/**
 * One text frame from the server: a JSON object with a string `type`, or `null` for anything
 * else (ignored). Unknown types are returned as they are, for forward compatibility.
 */
export function decodeServerFrame(text: string): { type: string; ref?: unknown; [k: string]: unknown } | null {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return null;
  }
  if (!v || typeof v !== 'object' || Array.isArray(v)) return null;
  const f = v as { type?: unknown };
  return typeof f.type === 'string' ? (v as { type: string }) : null;
}

/** The `epoch` of a `subscribed` or `welcome` frame, when the server sent a non-empty one. */
export function frameEpoch(f: Readonly<Record<string, unknown>>): string | null {
  return typeof f.epoch === 'string' && f.epoch !== '' ? f.epoch : null;
}
