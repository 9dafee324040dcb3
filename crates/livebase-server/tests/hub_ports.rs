//! The hub's ports hold: another wire protocol is a codec on the same hub (same matching,
//! one encoding per codec and view, shared bytes), and channels reach members on other nodes
//! through the channel bus with identities that stay unique across nodes.

mod common;

use common::{items_collection, TestServer};
use livebase_core::ChangeEvent;
use livebase_server::access::AccessCache;
use livebase_server::auth::Principal;
use livebase_server::metrics::Metrics;
use livebase_server::realtime::bus::{ChannelEvent, MemoryBus, NodeId};
use livebase_server::realtime::codec::{Codec, Delivery, Frame, NativeCodec, Sides};
use livebase_server::realtime::hub::{
    BroadcastReq, CloseSignal, ConnHandle, ConnId, Hub, HubParts, Start, TrackReq,
};
use livebase_server::realtime::protocol::View;
use livebase_server::realtime::Limits;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// A compact line protocol, to prove that the hub knows nothing of JSON frames.
struct LineCodec;

impl Codec for LineCodec {
    fn change_body(&self, e: &ChangeEvent, sides: Sides) -> Arc<str> {
        format!("seq={} op={} id={} new={} old={}", e.seq, e.op.as_str(), e.id, sides.new, sides.old).into()
    }

    fn change(&self, body: &str, sub_id: u64, view: View) -> Frame {
        Frame::text(&format!("change sub={sub_id} view={view:?} {body}"))
    }

    fn encode(&self, d: Delivery<'_>) -> Option<Frame> {
        let keys = |m: &livebase_server::realtime::codec::PresenceMap| {
            m.iter().map(|(k, v)| format!("{k}@{}", v[0].conn_id)).collect::<Vec<_>>().join(",")
        };
        Some(Frame::text(&match d {
            Delivery::Subscribed { sub_id, seq, .. } => format!("subscribed sub={sub_id} seq={seq}"),
            Delivery::Ok { .. } => "ok".to_string(),
            Delivery::PresenceState { channel, state } => format!("state {channel} {}", keys(state)),
            Delivery::PresenceDiff { channel, joins, leaves } => {
                format!("diff {channel} +{} -{}", keys(joins), keys(leaves))
            }
            Delivery::Broadcast { channel, event, payload, from } => {
                format!("broadcast {channel} {event} {payload} from={from}")
            }
            other => format!("other {other:?}"),
        }))
    }
}

struct TestConn {
    id: ConnId,
    name: Arc<str>,
    rx: mpsc::Receiver<Frame>,
}

impl TestConn {
    async fn next(&mut self) -> String {
        let f = tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
            .await
            .expect("a frame within 10 s")
            .expect("queue open");
        f.as_text().expect("text frame").to_string()
    }

    async fn next_frame(&mut self) -> Frame {
        tokio::time::timeout(Duration::from_secs(10), self.rx.recv()).await.expect("a frame").expect("open")
    }
}

fn connect(hub: &Hub, codec: Arc<dyn Codec>) -> TestConn {
    let (tx, rx) = mpsc::channel(64);
    let handle = ConnHandle { tx: Arc::new(tx), close: Arc::new(CloseSignal::default()), codec };
    let (id, name) = hub.connect(handle, Principal::Admin).ok().expect("connects");
    TestConn { id, name, rx }
}

/// A hub of its own over the server's store and feed, on `bus` as node `node`.
fn hub_on(t: &TestServer, bus: &MemoryBus, node: &str) -> Hub {
    let app = &t.server.as_ref().expect("running").app;
    let hub = Hub::new(HubParts {
        store: app.store.clone(),
        feed: app.store.feed(),
        bus: bus.attach(NodeId::new(node)),
        limits: Limits::default(),
        metrics: Arc::new(Metrics::new()),
        access: Arc::new(AccessCache::new(app.store.schema(), &[]).expect("rules")),
    });
    hub.spawn_dispatcher();
    hub
}

#[tokio::test]
async fn a_second_codec_shares_the_hub_and_each_codec_encodes_an_event_once() {
    let t = TestServer::start().await;
    t.create_collection(items_collection()).await;
    let hub = hub_on(&t, &MemoryBus::new(), "n1");
    let (mut a, mut b) = (connect(&hub, Arc::new(LineCodec)), connect(&hub, Arc::new(LineCodec)));
    let line: Arc<dyn Codec> = Arc::new(LineCodec);
    let (mut c, mut d) = (connect(&hub, line.clone()), connect(&hub, line));
    let mut native = connect(&hub, NativeCodec::shared());
    for conn in [&a, &b, &c, &d, &native] {
        hub.subscribe(conn.id, None, "items", Some("qty=gt.1"), Start::Now).expect("subscribes");
    }
    for conn in [&mut a, &mut b, &mut c, &mut d] {
        assert!(conn.next().await.starts_with("subscribed sub="));
    }
    let sub: Value = serde_json::from_str(&native.next().await).unwrap();
    assert_eq!(sub["type"], "subscribed");

    let r = t.create("items", json!({"title": "x", "qty": 5})).await;
    let id = r["id"].as_str().unwrap();
    let expect = format!("change sub={} view=Add seq=1 op=insert id={id} new=true old=false", sub["sub_id"]);
    assert_eq!(a.next().await, expect);
    assert_eq!(b.next().await, expect);
    // Connections sharing one codec instance receive the very same bytes.
    let (fc, fd) = (c.next_frame().await, d.next_frame().await);
    assert_eq!(fc.as_text().unwrap(), expect);
    assert_eq!(fc.as_text().unwrap().as_ptr(), fd.as_text().unwrap().as_ptr());
    // The native connection, on the same query, gets the native frame.
    let n: Value = serde_json::from_str(&native.next().await).unwrap();
    assert_eq!((&n["type"], &n["view"], &n["new"]["qty"]), (&json!("change"), &json!("add"), &json!(5)));

    // A change that takes the row out of the query is a removal, for every codec.
    t.patch(&format!("/api/collections/items/records/{id}"), json!({"qty": 0})).await;
    assert!(a.next().await.contains("view=Remove seq=2 op=update"));
}

#[tokio::test]
async fn broadcast_and_presence_reach_members_on_another_node() {
    let t = TestServer::start().await;
    let bus = MemoryBus::new();
    let (hub_a, hub_b, hub_c) =
        (hub_on(&t, &bus, "nodea"), hub_on(&t, &bus, "nodeb"), hub_on(&t, &bus, "nodec"));
    let mut a = connect(&hub_a, Arc::new(LineCodec));
    let mut b = connect(&hub_b, Arc::new(LineCodec));
    let mut c = connect(&hub_c, Arc::new(LineCodec));
    assert!(a.name.starts_with("nodea-") && b.name.starts_with("nodeb-"), "{} {}", a.name, b.name);
    hub_c.join(c.id, &None, "room:1").unwrap();
    assert_eq!(c.next().await, "ok");
    assert_eq!(c.next().await, "state room:1 ");

    hub_a.join(a.id, &None, "room:1").unwrap();
    assert_eq!(a.next().await, "ok");
    assert_eq!(a.next().await, "state room:1 ");
    let meta = json!({"editing": "status"});
    hub_a
        .track(a.id, TrackReq { reference: &None, channel: "room:1", key: Some("ada"), meta: &meta })
        .unwrap();
    assert_eq!(a.next().await, "ok");
    assert_eq!(a.next().await, format!("diff room:1 +ada@{} -", a.name));

    // B joins on the other node and sees A's presence in its state: presence is cluster-wide.
    // (Wait for the track to cross: the state is read when B joins.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        hub_b.join(b.id, &None, "room:1").unwrap();
        assert_eq!(b.next().await, "ok");
        let state = b.next().await;
        if state == format!("state room:1 ada@{}", a.name) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "presence never crossed: {state}");
        hub_b.leave(b.id, &None, "room:1").unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let payload = json!({"x": 1});
    let req = BroadcastReq {
        reference: &None,
        channel: "room:1",
        event: "cursor",
        payload: &payload,
        include_self: false,
        ack: false,
    };
    hub_b.broadcast(b.id, req).unwrap();
    assert_eq!(a.next().await, format!("broadcast room:1 cursor {{\"x\":1}} from={}", b.name));

    hub_b
        .track(b.id, TrackReq { reference: &None, channel: "room:1", key: Some("bob"), meta: &json!({}) })
        .unwrap();
    assert_eq!(a.next().await, format!("diff room:1 +bob@{} -", b.name));
    // B's connection ends: its presence leaves A's view.
    hub_b.disconnect(b.id, "client_gone");
    assert_eq!(a.next().await, format!("diff room:1 + -bob@{}", b.name));

    // A third node saw every event, in order; when node A dies, A's members leave it too.
    for want in [
        format!("diff room:1 +ada@{} -", a.name),
        format!("broadcast room:1 cursor {{\"x\":1}} from={}", b.name),
        format!("diff room:1 +bob@{} -", b.name),
        format!("diff room:1 + -bob@{}", b.name),
    ] {
        assert_eq!(c.next().await, want);
    }
    hub_c.apply_remote(ChannelEvent::NodeGone { node: NodeId::new("nodea") });
    assert_eq!(c.next().await, format!("diff room:1 + -ada@{}", a.name));
}

/// A feed the test moves by hand: the first read gets the first event; every later read
/// waits (in `history`) until the test opens the gate.
struct GatedFeed {
    epoch: livebase_store::Epoch,
    events: Vec<Arc<ChangeEvent>>,
    head: tokio::sync::watch::Sender<u64>,
    open: tokio::sync::watch::Sender<bool>,
}

impl livebase_store::ChangeFeed for GatedFeed {
    fn epoch(&self) -> &livebase_store::Epoch {
        &self.epoch
    }
    fn head(&self) -> u64 {
        *self.head.borrow()
    }
    fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.head.subscribe()
    }
    fn recent(&self, seq: u64, _max: usize) -> livebase_store::feed::Recent {
        match (seq, *self.open.borrow()) {
            (0, _) => livebase_store::feed::Recent::Events(self.events[..1].to_vec()),
            (_, true) => livebase_store::feed::Recent::Events(self.events[seq as usize..].to_vec()),
            (_, false) => livebase_store::feed::Recent::TooOld,
        }
    }
    fn history(
        &self,
        q: livebase_store::ChangeQuery,
    ) -> livebase_store::BoxFuture<'static, Result<livebase_store::ChangePage, livebase_store::StoreError>>
    {
        let mut open = self.open.subscribe();
        let events: Vec<ChangeEvent> =
            self.events[q.since as usize..].iter().map(|e| (**e).clone()).collect();
        let head = self.events.len() as u64;
        Box::pin(async move {
            let _ = open.wait_for(|o| *o).await;
            Ok(livebase_store::ChangePage { events, head })
        })
    }
}

fn event_committed_ago(seq: u64, ago: Duration) -> Arc<ChangeEvent> {
    let at = time::OffsetDateTime::now_utc() - ago;
    Arc::new(ChangeEvent {
        seq,
        collection: "items".into(),
        op: livebase_core::ChangeOp::Insert,
        id: format!("r{seq}"),
        new: None,
        old: None,
        version: 1,
        actor: None,
        committed_at: at.format(&time::format_description::well_known::Rfc3339).expect("formats"),
    })
}

#[tokio::test]
async fn writes_wait_while_dispatch_is_behind_the_commits_and_never_without_bound() {
    use livebase_server::realtime::hub::{Admitted, ADMIT_LAG, ADMIT_WAIT};
    let t = TestServer::start().await;
    let app = &t.server.as_ref().expect("running").app;
    // Event 1 reaches dispatch long after its commit; event 2 is fresh but held back.
    let events = vec![event_committed_ago(1, ADMIT_LAG * 5), event_committed_ago(2, Duration::ZERO)];
    let (open, _) = tokio::sync::watch::channel(false);
    let feed = Arc::new(GatedFeed {
        epoch: livebase_store::Epoch::new("gated"),
        events,
        head: tokio::sync::watch::channel(0).0,
        open: open.clone(),
    });
    let hub = Hub::new(HubParts {
        store: app.store.clone(),
        feed: feed.clone(),
        bus: MemoryBus::new().attach(NodeId::new("n1")),
        limits: Limits::default(),
        metrics: Arc::new(Metrics::new()),
        access: Arc::new(AccessCache::new(app.store.schema(), &[]).expect("rules")),
    });
    hub.spawn_dispatcher();
    assert_eq!(hub.admit().await, Admitted::AtOnce, "a node that keeps up takes writes at once");

    feed.head.send_replace(2);
    for _ in 0..2000 {
        if hub.behind() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(hub.behind(), "dispatch reached an event long after its commit");

    // Dispatch stuck: a write waits its longest, then goes on.
    assert_eq!(hub.admit().await, Admitted::GaveUp);
    // Dispatch catching up lets the waiting writes go.
    let waiting = tokio::spawn({
        let hub = hub.clone();
        async move { hub.admit().await }
    });
    tokio::time::sleep(ADMIT_WAIT / 10).await;
    assert!(!waiting.is_finished(), "still behind: the write waits");
    open.send_replace(true);
    assert_eq!(waiting.await.expect("admit"), Admitted::CaughtUp);
    assert!(!hub.behind());
    assert_eq!(hub.admit().await, Admitted::AtOnce);
    let text = hub.metrics().render();
    assert!(text.contains(r#"livebase_write_admission_waits_total{outcome="gave_up"} 1"#), "{text}");
    assert!(text.contains(r#"livebase_write_admission_waits_total{outcome="caught_up"} 1"#), "{text}");
}
