//! The WAL stream: logical replication from a PostgreSQL slot with the built-in `pgoutput`
//! plugin, as plain data.
//!
//! [`WalStream::start`] connects in replication mode and streams the slot from its confirmed
//! position with `proto_version '1'`, the configured publication and `messages 'true'`.
//! [`WalStream::next`] returns whole committed transactions ([`WalEvent::Txn`]) in commit
//! order, and non-transactional logical messages ([`WalEvent::Message`]) in WAL order.
//!
//! # Values
//! Column values are pgoutput's text format (each type's output function), `None` for SQL
//! NULL. The replication session pins the settings that shape that text through the startup
//! `options` parameter, which PostgreSQL honours on replication connections (and which beat
//! per-database and per-role settings): `TimeZone=UTC`, `DateStyle=ISO`,
//! `IntervalStyle=postgres`, `extra_float_digits=1` (shortest exact floats) and
//! `bytea_output=hex`. So a `timestamptz` arrives as `2024-05-06 07:08:09.123456+00`, a
//! `boolean` as `t`/`f`, `jsonb` in its normalised text form.
//!
//! An UPDATE's unchanged TOASTed values (pgoutput sends a marker instead of the value) are
//! filled from the old row; tables are expected to use `REPLICA IDENTITY FULL`, without which
//! such an update is a [`WalError::Decode`].
//!
//! TRUNCATE is not represented: it is skipped with a warning. Create publications with
//! `WITH (publish = 'insert, update, delete')`.
//!
//! # Acknowledgements and resending
//! [`WalStream::ack`] returns once a standby status update carrying the position was written
//! to the server. While the server keeps running, the slot then resends nothing before it on
//! a new connection. Across a server restart it may: PostgreSQL before 17 does not write a
//! slot whose only change is its confirmed position at the shutdown checkpoint (seen here on
//! 15, even with a fast shutdown), and after a crash a slot restarts from its last saved
//! state. So a consumer must still skip transactions whose `end_lsn` is at or below the
//! position it made durable itself.
//!
//! When every transaction handed out has been acknowledged, the stream also confirms the
//! positions of server keepalives by itself (everything committed before them was sent):
//! an idle slot does not hold WAL back, and a server shutting down is not kept waiting for
//! its walsender. Non-transactional messages need no acknowledgement.
//!
//! Dropping a [`WalStream`] ends its session in the background (CopyDone), so the slot is
//! free again shortly after. A connection that drops makes [`WalStream::next`] fail; reconnecting (with backoff) is the
//! caller's job. Right after a connection drops, the server may still consider the slot active
//! for a moment ("replication slot ... is active for PID ..."): that is one more reason to
//! retry [`WalStream::start`].

use pg_walstream::{LogicalReplicationMessage, LogicalReplicationParser, TupleData};
use pgwire_replication::{
    FeedbackObserver, Lsn, PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Where to stream from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalConfig {
    /// `postgres://user[:password]@host[:port]/database` (`postgresql://` too). The user needs
    /// the `REPLICATION` attribute (or superuser). Query parameters are ignored; TLS is not
    /// supported (password authentication: SCRAM-SHA-256 or trust).
    pub url: String,
    /// An existing logical replication slot created with the `pgoutput` plugin.
    pub slot: String,
    /// An existing publication of the tables to stream.
    pub publication: String,
}

/// What [`WalStream::next`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalEvent {
    /// One whole committed transaction, in commit order.
    Txn(WalTxn),
    /// A non-transactional logical message (pg_logical_emit_message(false, prefix, content)),
    /// in WAL order.
    Message { lsn: u64, prefix: String, content: Vec<u8> },
}

/// A committed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalTxn {
    pub xid: u32,
    /// The LSN of the commit record.
    pub commit_lsn: u64,
    /// The end of the commit record: acknowledge this to not see the transaction again.
    pub end_lsn: u64,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_time_unix_us: i64,
    pub items: Vec<WalItem>,
}

/// One thing that happened inside a transaction, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalItem {
    /// A transactional logical message emitted inside the transaction, at its position among
    /// the changes.
    Message {
        prefix: String,
        content: Vec<u8>,
    },
    Change(WalChange),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalOp {
    Insert,
    Update,
    Delete,
}

/// One row change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalChange {
    pub schema: String,
    pub table: String,
    pub op: WalOp,
    /// Column names in table order.
    pub columns: Vec<String>,
    /// Text-format values, `None` for SQL NULL; insert and update.
    pub new: Option<Vec<Option<String>>>,
    /// The full old row (tables use REPLICA IDENTITY FULL); update and delete.
    pub old: Option<Vec<Option<String>>>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WalError {
    /// The configuration cannot be used (e.g. a malformed URL).
    #[error("WAL stream configuration: {0}")]
    Config(String),
    /// Connecting, authenticating, starting replication or reading from the server failed, or
    /// the server reported an error. Reconnect with backoff.
    #[error("WAL stream connection: {0}")]
    Connection(String),
    /// The stream ended (the server closed it or the session was stopped). Reconnect.
    #[error("WAL stream closed: {0}")]
    Closed(String),
    /// The server sent something this decoder cannot turn into events.
    #[error("WAL decoding: {0}")]
    Decode(String),
}

impl From<PgWireError> for WalError {
    fn from(e: PgWireError) -> Self {
        WalError::Connection(e.to_string())
    }
}

/// Session settings pinned on the replication connection; see the module docs.
const SESSION_OPTIONS: &str = "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=postgres \
                               -c extra_float_digits=1 -c bytea_output=hex";

/// How often a raised acknowledgement is sent at most; also the worst-case wait in `ack`.
const STATUS_INTERVAL: Duration = Duration::from_millis(10);
/// How long `ack` waits for its status update to be written.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_UNIX_US: i64 = 946_684_800_000_000;

struct Relation {
    schema: String,
    table: String,
    columns: Vec<String>,
}

/// A logical replication session. See the module docs.
pub struct WalStream {
    client: ReplicationClient,
    decoder: Decoder,
    /// Woken after each status update that advanced the acknowledged position.
    fed_back: Arc<Notify>,
    /// The highest position acknowledged (by [`WalStream::ack`] or an idle confirmation).
    acked: u64,
    /// The `end_lsn` of the last transaction handed out.
    delivered_end: u64,
}

/// A dropped stream closes its connection at once. A graceful stop (CopyDone) would leave the
/// walsender waiting to be confirmed up to the end of WAL, which nobody does any more: a
/// server shutting down would then stall for `wal_sender_timeout`. Nothing is lost by the hard
/// close; the slot resends everything after the last acknowledged position.
impl Drop for WalStream {
    fn drop(&mut self) {
        self.client.abort();
    }
}

/// Turns the transport's events into [`WalEvent`]s: relation metadata, the open transaction.
struct Decoder {
    parser: LogicalReplicationParser,
    relations: HashMap<u32, Relation>,
    /// The transaction being assembled (between Begin and Commit).
    txn: Option<WalTxn>,
    wal_end: u64,
}

impl std::fmt::Debug for WalStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalStream")
            .field("wal_end", &format_lsn(self.server_wal_end()))
            .field("in_txn", &self.decoder.txn.is_some())
            .finish_non_exhaustive()
    }
}

impl WalStream {
    /// Connects in replication mode and starts streaming the slot from its confirmed position.
    pub async fn start(cfg: &WalConfig) -> Result<WalStream, WalError> {
        let target = ConnTarget::parse(&cfg.url)?;
        if cfg.slot.is_empty() || cfg.publication.is_empty() {
            return Err(WalError::Config("slot and publication must not be empty".into()));
        }
        let fed_back = Arc::new(Notify::new());
        let observer = {
            let fed_back = Arc::clone(&fed_back);
            FeedbackObserver::new(move |_| fed_back.notify_waiters())
        };
        let config = ReplicationConfig::new(
            target.host,
            target.user,
            target.password,
            target.database,
            cfg.slot.clone(),
            cfg.publication.as_str(),
        )
        .with_port(target.port)
        .with_start_lsn(Lsn::ZERO)
        .with_options(SESSION_OPTIONS)
        .with_status_interval(STATUS_INTERVAL)
        .with_application_name("livebase")
        .with_feedback_observer(observer);
        let mut client = ReplicationClient::connect(config).await?;
        client.wait_started().await?;
        Ok(WalStream { client, decoder: Decoder::new(), fed_back, acked: 0, delivered_end: 0 })
    }

    /// The next event; answers server keepalives itself (reporting the last acked position).
    ///
    /// Cancel-safe: a partly received transaction stays buffered in the stream.
    pub async fn next(&mut self) -> Result<WalEvent, WalError> {
        loop {
            let event = match self.client.recv().await {
                Ok(Some(event)) => event,
                Ok(None) => return Err(WalError::Closed("the replication session ended".into())),
                Err(e) => return Err(e.into()),
            };
            if let ReplicationEvent::KeepAlive { wal_end, .. } = &event {
                self.confirm_idle(wal_end.as_u64());
            }
            if let Some(out) = self.decoder.handle(event)? {
                if let WalEvent::Txn(txn) = &out {
                    self.delivered_end = self.delivered_end.max(txn.end_lsn);
                }
                return Ok(out);
            }
        }
    }

    /// Like [`WalStream::ack`] without waiting: the position goes out with the next status
    /// update (every few milliseconds), so a consumer need not stall its stream on it.
    pub fn confirm(&mut self, lsn: u64) {
        self.client.update_applied_lsn(Lsn::from_u64(lsn));
        self.acked = self.acked.max(lsn);
    }

    /// Confirms everything up to `lsn` as flushed: the slot may release WAL before it and will
    /// not resend it after a reconnect.
    ///
    /// Returns once the status update carrying `lsn` (or a later one) was written to the
    /// server; that takes at most a few milliseconds.
    pub async fn ack(&mut self, lsn: u64) -> Result<(), WalError> {
        self.client.update_applied_lsn(Lsn::from_u64(lsn));
        self.acked = self.acked.max(lsn);
        let metrics = self.client.metrics();
        let deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
        loop {
            let notified = self.fed_back.notified();
            if metrics.last_applied_lsn().as_u64() >= lsn {
                return Ok(());
            }
            if !self.client.is_running() {
                return Err(WalError::Closed(format!(
                    "the replication session ended before {} was acknowledged",
                    format_lsn(lsn)
                )));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(WalError::Connection(format!("acknowledging {} timed out", format_lsn(lsn))));
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        }
    }

    /// When every transaction handed out was acknowledged and none is half received, a
    /// keepalive's position can be confirmed too: the server sent everything that committed
    /// before it. Without this the slot would lag on an idle stream, and a server shutting
    /// down (which waits for its walsenders to be confirmed up to the end) would stall until
    /// `wal_sender_timeout`.
    fn confirm_idle(&mut self, wal_end: u64) {
        if self.decoder.txn.is_none() && self.acked >= self.delivered_end && wal_end > self.acked {
            self.client.update_applied_lsn(Lsn::from_u64(wal_end));
            self.acked = wal_end;
        }
    }

    /// Newest server WAL position seen (from XLogData / keepalives), for lag metrics.
    pub fn server_wal_end(&self) -> u64 {
        self.decoder.wal_end.max(self.client.metrics().last_wal_end().as_u64())
    }
}

impl Decoder {
    fn new() -> Decoder {
        Decoder {
            parser: LogicalReplicationParser::with_protocol_version(1),
            relations: HashMap::new(),
            txn: None,
            wal_end: 0,
        }
    }

    fn handle(&mut self, event: ReplicationEvent) -> Result<Option<WalEvent>, WalError> {
        match event {
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                self.wal_end = self.wal_end.max(wal_end.as_u64());
                Ok(None)
            }
            ReplicationEvent::Begin { final_lsn, xid, commit_time_micros } => {
                if let Some(open) = &self.txn {
                    return Err(WalError::Decode(format!(
                        "BEGIN of transaction {xid} while transaction {} is still open",
                        open.xid
                    )));
                }
                self.txn = Some(WalTxn {
                    xid,
                    commit_lsn: final_lsn.as_u64(),
                    end_lsn: 0,
                    commit_time_unix_us: pg_time_to_unix_us(commit_time_micros),
                    items: Vec::new(),
                });
                Ok(None)
            }
            ReplicationEvent::Commit { lsn, end_lsn, commit_time_micros } => {
                let Some(mut txn) = self.txn.take() else {
                    return Err(WalError::Decode(format!(
                        "COMMIT at {} outside a transaction",
                        format_lsn(lsn.as_u64())
                    )));
                };
                txn.commit_lsn = lsn.as_u64();
                txn.end_lsn = end_lsn.as_u64();
                txn.commit_time_unix_us = pg_time_to_unix_us(commit_time_micros);
                self.wal_end = self.wal_end.max(txn.end_lsn);
                Ok(Some(WalEvent::Txn(txn)))
            }
            ReplicationEvent::Message { transactional, lsn, prefix, content } => {
                let content = content.to_vec();
                if !transactional {
                    return Ok(Some(WalEvent::Message { lsn: lsn.as_u64(), prefix, content }));
                }
                match &mut self.txn {
                    Some(txn) => {
                        txn.items.push(WalItem::Message { prefix, content });
                        Ok(None)
                    }
                    None => Err(WalError::Decode(format!(
                        "transactional message '{prefix}' at {} outside a transaction",
                        format_lsn(lsn.as_u64())
                    ))),
                }
            }
            ReplicationEvent::XLogData { wal_end, data, .. } => {
                self.wal_end = self.wal_end.max(wal_end.as_u64());
                self.decode(&data)
            }
            ReplicationEvent::StoppedAt { reached } => {
                Err(WalError::Closed(format!("the session stopped at {}", format_lsn(reached.as_u64()))))
            }
        }
    }

    /// Decodes one pgoutput message that is not a Begin, Commit or logical message (those are
    /// recognised by the transport).
    fn decode(&mut self, data: &[u8]) -> Result<Option<WalEvent>, WalError> {
        if data.is_empty() {
            return Err(WalError::Decode("empty pgoutput message".into()));
        }
        let tag = data[0] as char;
        let message = self
            .parser
            .parse_wal_message(data)
            .map_err(|e| WalError::Decode(format!("pgoutput message '{tag}': {e}")))?
            .message;
        match message {
            LogicalReplicationMessage::Relation {
                relation_id, namespace, relation_name, columns, ..
            } => {
                self.relations.insert(
                    relation_id,
                    Relation {
                        schema: namespace.to_string(),
                        table: relation_name.to_string(),
                        columns: columns.iter().map(|c| c.name.to_string()).collect(),
                    },
                );
                Ok(None)
            }
            LogicalReplicationMessage::Insert { relation_id, tuple } => {
                self.change(relation_id, WalOp::Insert, None, Some(&tuple))
            }
            LogicalReplicationMessage::Update { relation_id, old_tuple, new_tuple, .. } => {
                self.change(relation_id, WalOp::Update, old_tuple.as_ref(), Some(&new_tuple))
            }
            LogicalReplicationMessage::Delete { relation_id, old_tuple, .. } => {
                self.change(relation_id, WalOp::Delete, Some(&old_tuple), None)
            }
            LogicalReplicationMessage::Truncate { relation_ids, .. } => {
                let names: Vec<String> = relation_ids
                    .iter()
                    .map(|id| match self.relations.get(id) {
                        Some(r) => format!("{}.{}", r.schema, r.table),
                        None => format!("oid {id}"),
                    })
                    .collect();
                tracing::warn!(
                    tables = %names.join(", "),
                    "TRUNCATE in the WAL stream is not represented; skipped"
                );
                Ok(None)
            }
            LogicalReplicationMessage::Type { .. } | LogicalReplicationMessage::Origin { .. } => Ok(None),
            other => Err(WalError::Decode(format!(
                "unexpected pgoutput message '{tag}' ({}) with proto_version 1",
                variant_name(&other)
            ))),
        }
    }

    fn change(
        &mut self,
        relation_id: u32,
        op: WalOp,
        old: Option<&TupleData>,
        new: Option<&TupleData>,
    ) -> Result<Option<WalEvent>, WalError> {
        let Some(rel) = self.relations.get(&relation_id) else {
            return Err(WalError::Decode(format!(
                "{op:?} for relation oid {relation_id} before its Relation message"
            )));
        };
        let where_ = || format!("{op:?} on {}.{}", rel.schema, rel.table);
        let old = old.map(|t| tuple_values(t, rel.columns.len(), &where_, None)).transpose()?;
        let new = new.map(|t| tuple_values(t, rel.columns.len(), &where_, old.as_deref())).transpose()?;
        let change = WalChange {
            schema: rel.schema.clone(),
            table: rel.table.clone(),
            op,
            columns: rel.columns.clone(),
            new,
            old,
        };
        match &mut self.txn {
            Some(txn) => {
                txn.items.push(WalItem::Change(change));
                Ok(None)
            }
            None => Err(WalError::Decode(format!("{} outside a transaction", where_()))),
        }
    }
}

/// Text values of a tuple. Unchanged-TOAST markers are taken from `old` at the same position.
fn tuple_values(
    tuple: &TupleData,
    width: usize,
    where_: &dyn Fn() -> String,
    old: Option<&[Option<String>]>,
) -> Result<Vec<Option<String>>, WalError> {
    if tuple.columns.len() != width {
        return Err(WalError::Decode(format!(
            "{}: tuple has {} columns, the relation {width}",
            where_(),
            tuple.columns.len()
        )));
    }
    let mut out = Vec::with_capacity(width);
    for (i, col) in tuple.columns.iter().enumerate() {
        let value = if col.is_null() {
            None
        } else if col.is_text() {
            let text = std::str::from_utf8(col.as_bytes())
                .map_err(|e| WalError::Decode(format!("{}: column {i} is not UTF-8: {e}", where_())))?;
            Some(text.to_string())
        } else if col.is_unchanged() {
            match old.and_then(|o| o.get(i)) {
                Some(v) => v.clone(),
                None => {
                    return Err(WalError::Decode(format!(
                        "{}: column {i} is an unchanged TOAST value and there is no old row \
                         to take it from (use REPLICA IDENTITY FULL)",
                        where_()
                    )))
                }
            }
        } else {
            return Err(WalError::Decode(format!(
                "{}: column {i} has value kind '{}' (binary values were not requested)",
                where_(),
                col.data_type as char
            )));
        };
        out.push(value);
    }
    Ok(out)
}

fn variant_name(m: &LogicalReplicationMessage) -> &'static str {
    use LogicalReplicationMessage as M;
    match m {
        M::Begin { .. } => "Begin",
        M::Commit { .. } => "Commit",
        M::Message { .. } => "Message",
        M::StreamStart { .. } => "StreamStart",
        M::StreamStop => "StreamStop",
        M::StreamCommit { .. } => "StreamCommit",
        M::StreamAbort { .. } => "StreamAbort",
        M::BeginPrepare { .. } => "BeginPrepare",
        M::Prepare { .. } => "Prepare",
        M::CommitPrepared { .. } => "CommitPrepared",
        M::RollbackPrepared { .. } => "RollbackPrepared",
        M::StreamPrepare { .. } => "StreamPrepare",
        _ => "other",
    }
}

fn pg_time_to_unix_us(pg_us: i64) -> i64 {
    pg_us.saturating_add(PG_EPOCH_UNIX_US)
}

/// `16/B374D848`: PostgreSQL's notation, upper-case hex halves without leading zeros.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Parses PostgreSQL's `hi/lo` LSN notation (hex, either case, 1-8 digits per half).
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    let half = |h: &str| -> Option<u64> {
        if h.is_empty() || h.len() > 8 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(h, 16).ok()
    };
    Some((half(hi)? << 32) | half(lo)?)
}

/// The parts of a `postgres://` URL the replication connection uses.
#[derive(Debug, PartialEq, Eq)]
struct ConnTarget {
    host: String,
    port: u16,
    user: String,
    password: String,
    database: String,
}

impl ConnTarget {
    fn parse(url: &str) -> Result<ConnTarget, WalError> {
        let bad = |why: &str| WalError::Config(format!("database URL: {why}"));
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(|| bad("must start with postgres:// or postgresql://"))?;
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((user, pw)) => (percent_decode(user)?, percent_decode(pw)?),
                None => (percent_decode(u)?, String::new()),
            },
            None => (String::new(), String::new()),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        let port = match port {
            None | Some("") => 5432,
            Some(p) => p.parse().map_err(|_| bad("port is not a number"))?,
        };
        let host = percent_decode(&host)?;
        let user = if user.is_empty() { "postgres".to_string() } else { user };
        let database = percent_decode(path)?;
        Ok(ConnTarget {
            host: if host.is_empty() { "localhost".into() } else { host },
            port,
            database: if database.is_empty() { user.clone() } else { database },
            user,
            password,
        })
    }
}

fn percent_decode(s: &str) -> Result<String, WalError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| WalError::Config("database URL: bad %-escape".into()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| WalError::Config("database URL: not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_can_move_between_tasks() {
        fn assert_send<T: Send + 'static>() {}
        assert_send::<WalStream>();
        assert_send::<WalError>();
    }

    #[test]
    fn lsn_round_trips() {
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(format_lsn(0), "0/0");
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("16/b374d848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("FFFFFFFF/FFFFFFFF"), Some(u64::MAX));
        for bad in ["", "/", "1/", "/1", "1", "x/1", "1/2/3", "123456789/0", "+1/0", " 1/0"] {
            assert_eq!(parse_lsn(bad), None, "{bad:?}");
        }
        for v in [1u64, 0xFFFF_FFFF, 0x1_0000_0000, u64::MAX, 0xABCD_0000_0001] {
            assert_eq!(parse_lsn(&format_lsn(v)), Some(v));
        }
    }

    #[test]
    fn urls_parse() {
        let t = ConnTarget::parse("postgres://postgres@127.0.0.1:5544/lb_1").expect("url");
        assert_eq!(
            t,
            ConnTarget {
                host: "127.0.0.1".into(),
                port: 5544,
                user: "postgres".into(),
                password: String::new(),
                database: "lb_1".into(),
            }
        );
        let t = ConnTarget::parse("postgresql://u%40x:p%3Aw@[::1]/db?sslmode=disable").expect("url");
        assert_eq!((t.user.as_str(), t.password.as_str(), t.host.as_str()), ("u@x", "p:w", "::1"));
        assert_eq!((t.port, t.database.as_str()), (5432, "db"));
        for bad in ["mysql://x", "postgres://h:port/db", "postgres://[::1/db", "postgres://%zz@h/d"] {
            assert!(ConnTarget::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unchanged_toast_is_filled_from_old() {
        use pg_walstream::ColumnData;
        let old = vec![Some("1".to_string()), Some("big".to_string())];
        let new = TupleData::new(vec![ColumnData::text(b"2".to_vec()), ColumnData::unchanged()]);
        let where_ = || "Update on public.t".to_string();
        let got = tuple_values(&new, 2, &where_, Some(&old)).expect("filled");
        assert_eq!(got, vec![Some("2".into()), Some("big".into())]);
        let err = tuple_values(&new, 2, &where_, None).expect_err("no old row");
        assert!(err.to_string().contains("REPLICA IDENTITY FULL"), "{err}");
        let err = tuple_values(&new, 3, &where_, Some(&old)).expect_err("width");
        assert!(err.to_string().contains("3"), "{err}");
    }

    /// Arbitrary bytes never panic the decoder; they are events or errors.
    #[test]
    fn decoding_garbage_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut decoder = Decoder::new();
        let tags = b"RIUDTYOMBCSEcKAPrp";
        // A valid Relation message (oid 1, public.t, columns a and b) so that changes
        // referring to oid 1 get past the lookup.
        let mut relation = vec![b'R'];
        relation.extend(1u32.to_be_bytes());
        relation.extend(b"public\0t\0");
        relation.push(b'f');
        relation.extend(2u16.to_be_bytes());
        for name in [&b"a\0"[..], &b"b\0"[..]] {
            relation.push(0);
            relation.extend(name);
            relation.extend(25u32.to_be_bytes());
            relation.extend((-1i32).to_be_bytes());
        }
        let xlog = |data: Vec<u8>| ReplicationEvent::XLogData {
            wal_start: Lsn::ZERO,
            wal_end: Lsn::ZERO,
            server_time_micros: 0,
            data: data.into(),
        };
        decoder.handle(xlog(relation)).expect("relation decodes");
        assert_eq!(decoder.relations[&1].columns, ["a", "b"]);
        let begin = ReplicationEvent::Begin { final_lsn: Lsn::ZERO, xid: 1, commit_time_micros: 0 };
        decoder.handle(begin).expect("begin");
        for _ in 0..50_000 {
            let len = rng.random_range(0..48);
            let mut data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if let Some(first) = data.first_mut() {
                *first = tags[rng.random_range(0..tags.len())];
            }
            if data.len() >= 5 && rng.random_bool(0.7) {
                data[1..5].copy_from_slice(&1u32.to_be_bytes());
            }
            let _ = decoder.handle(xlog(data));
        }
    }
}
