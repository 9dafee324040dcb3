//! Every frame kind against the shared JSON fixtures (`fixtures/client/*.json`,
//! `fixtures/server/*.json`), which the TypeScript SDK's tests read too.

use livebase_protocol::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn fixtures(side: &str) -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(side);
    let mut out: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("fixture readable");
            (p, text.trim_end().to_string())
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no fixtures in {}", dir.display());
    out
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("fixture is JSON")
}

#[test]
fn every_client_fixture_decodes_and_encodes_back_to_itself() {
    let mut kinds = BTreeSet::new();
    for (path, text) in fixtures("client") {
        let frame = decode_client_frame(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(json(&frame.encode()), json(&text), "{}", path.display());
        kinds.insert(json(&text)["type"].as_str().unwrap_or_default().to_string());
    }
    let all = [
        "auth",
        "broadcast",
        "join",
        "leave",
        "ping",
        "presence_track",
        "presence_untrack",
        "subscribe",
        "unsubscribe",
    ];
    assert_eq!(kinds, all.iter().map(|s| s.to_string()).collect());
}

#[test]
fn every_server_fixture_decodes_and_encodes_back_to_itself() {
    let mut kinds = BTreeSet::new();
    for (path, text) in fixtures("server") {
        let frame = ServerFrame::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_ne!(frame, ServerFrame::Unknown, "{}", path.display());
        assert_eq!(json(&frame.encode()), json(&text), "{}", path.display());
        assert_eq!(frame.kind(), json(&text)["type"], "{}", path.display());
        kinds.insert(frame.kind());
    }
    let all = [
        "aggregate",
        "broadcast",
        "change",
        "error",
        "ok",
        "pong",
        "presence_diff",
        "presence_state",
        "resync_required",
        "snapshot",
        "subscribed",
        "welcome",
    ];
    assert_eq!(kinds, all.into_iter().collect());
}

/// The frame written by the server's encoders, from the decoded fields.
fn server_encoding(frame: &ServerFrame) -> String {
    match frame {
        ServerFrame::Welcome { conn_id, server_time, heartbeat_ms, timeout_ms, epoch, cut_off } => welcome(
            conn_id,
            server_time.as_deref().unwrap_or_default(),
            heartbeat_ms.unwrap_or_default(),
            timeout_ms.unwrap_or_default(),
            epoch.as_deref().unwrap_or_default(),
            cut_off.as_ref(),
        ),
        ServerFrame::Aggregate { sub_id, seq, full, groups, removed } => {
            aggregate(*sub_id, *seq, *full, groups, removed)
        }
        ServerFrame::Subscribed { reference, sub_id, seq, epoch } => {
            subscribed(reference, *sub_id, *seq, epoch.as_deref().unwrap_or_default())
        }
        ServerFrame::Change { sub_id, change } => {
            let body = change_body(&ChangeBody {
                seq: change.seq,
                op: change.op,
                id: &change.id,
                version: change.version,
                actor: change.actor.as_deref(),
                committed_at: &change.committed_at,
                new: change.new.as_ref(),
                old: change.old.as_ref(),
            });
            change_frame(&body, *sub_id, change.view)
        }
        ServerFrame::Snapshot { sub_id, seq, rows, done } => snapshot(*sub_id, *seq, rows, *done),
        ServerFrame::Broadcast { channel, event, payload, from } => {
            broadcast(channel, event, payload, from.as_deref().unwrap_or_default())
        }
        ServerFrame::PresenceState { channel, state } => presence_state(channel, state),
        ServerFrame::PresenceDiff { channel, joins, leaves } => presence_diff(channel, joins, leaves),
        ServerFrame::Pong { reference, server_time } => {
            pong(reference, server_time.as_deref().unwrap_or_default())
        }
        ServerFrame::Ok { reference } => ok(reference),
        ServerFrame::Error { reference, code, message, sub_id } => error(reference, code, message, *sub_id),
        ServerFrame::ResyncRequired { reference, sub_id, reason } => {
            resync_required(reference, sub_id.unwrap_or_default(), reason.as_deref().unwrap_or_default())
        }
        ServerFrame::Unknown => String::new(),
    }
}

#[test]
fn server_encoders_write_every_fixture_byte_for_byte() {
    for (path, text) in fixtures("server") {
        let frame = ServerFrame::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(server_encoding(&frame), text, "{}", path.display());
    }
}

#[test]
fn resuming_subscribe_fixture_carries_since_and_epoch() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/client/subscribe_resume.json"),
    )
    .expect("fixture readable");
    let Ok(ClientFrame::Subscribe(s)) = decode_client_frame(&text) else { panic!("not a subscribe") };
    assert_eq!((s.since, s.epoch.as_deref()), (Some(4810), Some("01jd5x3k8m2q")));
}

#[test]
fn epoch_changed_fixture_is_a_resync_reason() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/server/resync_required_epoch_changed.json"),
    )
    .expect("fixture readable");
    let frame = ServerFrame::parse(&text).expect("decodes");
    assert!(
        matches!(frame, ServerFrame::ResyncRequired { reason: Some(r), .. } if r == reason::EPOCH_CHANGED)
    );
}

#[test]
fn payload_floats_survive_a_decode_encode_round_trip_exactly() {
    // A float whose nearest f64 an approximate parser misses by one ulp.
    let text = r#"{"type":"broadcast","channel":"c","event":"e","payload":{"n":0.5e050,"m":2.2250738585072011e-308,"k":-0.0},"self":false}"#;
    let frame = decode_client_frame(text).expect("decodes");
    let again = decode_client_frame(&frame.encode()).expect("encoded frame decodes");
    assert_eq!(again, frame);
    assert_eq!(again.encode(), frame.encode());
}
