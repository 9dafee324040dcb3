/**
 * @livebase/client — the TypeScript SDK for Livebase.
 *
 * Layout:
 * - `client`: the entry point (`createClient`), wiring the pieces below;
 * - `connection`: the realtime socket (states, backoff, heartbeats, latency, auth);
 * - `frames`: the realtime frames (shared fixtures with the Rust `livebase-protocol` crate);
 * - `subscriptions`: one server subscription per (collection, filter), resumed by `seq`;
 * - `live`: live queries (external stores) = server rows + optimistic writes;
 * - `aggregate`: live aggregates (KPI numbers kept current by the server), resumed by value;
 * - `queue`: the write outbox (persisted, ordered, idempotent, conflict-resolving);
 * - `conflict`, `optimistic`, `cache`, `filter`: the pure parts those use;
 * - `channel`: broadcast and presence;
 * - `storage`: where the queue lives (IndexedDB, memory; a file via `@livebase/client/node`).
 */
export { LivebaseClient, createClient } from './client.js';
export type { LivebaseClientOptions, ClientEvents, TokenSource } from './client.js';
export { Collection } from './collection.js';
export type { ListOptions, LiveQueryOptions, WriteOptions, UpdateOptions, BatchOp, BatchResult } from './collection.js';
export { LiveQuery } from './live.js';
export type { LiveSnapshot, LiveStatus } from './live.js';
export { LiveAggregate, groupKey, compareGroups, normalizeFn } from './aggregate.js';
export type { AggregateSnapshot, AggregateQuery, AggregateGroup, AggregateRow, AggregateValue } from './aggregate.js';
export type { AggregateResult } from './collection.js';
export { Channel } from './channel.js';
export type { PresenceMember, PresenceEvent, BroadcastMessage, SendOptions } from './channel.js';
export { Connection } from './connection.js';
export type {
  ConnectionState,
  ConnectionStatus,
  HeartbeatOptions,
  WebSocketLike,
  WebSocketConstructor,
  ServerFrame,
} from './connection.js';
export { decodeServerFrame, SERVER_FRAME_TYPES } from './frames.js';
export type {
  SubscribeRequest,
  WelcomeFrame,
  SubscribedFrame,
  ChangeFrame,
  SnapshotFrame,
  AggregateFrame,
  AggregateRequest,
  CutOff,
  PresenceStateFrame,
  PresenceDiffFrame,
  PresenceEntryFrame,
  BroadcastFrame,
  OkFrame,
  PongFrame,
  ErrorFrame,
  ResyncRequiredFrame,
  ResyncReason,
  KnownServerFrame,
} from './frames.js';
export { Backoff } from './backoff.js';
export type { BackoffOptions } from './backoff.js';
export { gradeLatency, DEFAULT_QUALITY_THRESHOLDS } from './quality.js';
export type { ConnectionQuality, QualityThresholds } from './quality.js';
export { mergePatch, resolveConflict, jsonEqual } from './conflict.js';
export type { ConflictStrategy, ConflictResolution, ConflictHandler, ConflictInfo, ConflictOutcome } from './conflict.js';
export type { QueueStatus, QueuedMutation, QueuedOp, ConflictEvent, OpResult } from './queue.js';
export { memoryStorage, indexedDBStorage } from './storage.js';
export type { QueueStorage } from './storage.js';
export { compileFilter, parseFilter, printFilter, filterToString } from './filter.js';
export type { FilterInput, CompiledFilter } from './filter.js';
export { LivebaseError, isLivebaseError } from './errors.js';
export { uuid, recordId } from './ids.js';
export type { Row, AnyRow, Patch, SystemFields, ChangeEvent, SubscriptionEvent, ListResult } from './types.js';
