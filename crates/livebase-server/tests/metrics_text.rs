//! The metrics registry renders valid exposition text, and every recording call moves the
//! series it names.

use livebase_server::metrics::Metrics;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default)]
struct Exposition {
    /// family name → type
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    fn series(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}

fn is_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some('a'..='z' | 'A'..='Z' | '_' | ':'))
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// A strict parser for the text formats: every line is a `# HELP`, `# TYPE`, `# UNIT` or the
/// final `# EOF` comment, or a sample `name{label="value",...} number` whose family was
/// declared by a `# TYPE` line before it, with the suffixes that type allows.
fn parse(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::default();
    let lines: Vec<&str> = text.lines().collect();
    let mut saw_eof = false;
    for (i, line) in lines.iter().enumerate() {
        let err = |m: &str| format!("line {}: {m}: {line:?}", i + 1);
        if saw_eof {
            return Err(err("content after # EOF"));
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            match parts.next() {
                Some("EOF") => saw_eof = true,
                Some("HELP") | Some("UNIT") => {
                    let name = parts.next().ok_or_else(|| err("no name"))?;
                    if !is_name(name) {
                        return Err(err("bad name"));
                    }
                }
                Some("TYPE") => {
                    let name = parts.next().ok_or_else(|| err("no name"))?;
                    let ty = parts.next().ok_or_else(|| err("no type"))?;
                    if !is_name(name) {
                        return Err(err("bad name"));
                    }
                    if !["counter", "gauge", "histogram", "summary", "info", "stateset", "unknown"]
                        .contains(&ty)
                    {
                        return Err(err("unknown type"));
                    }
                    if out.types.insert(name.to_string(), ty.to_string()).is_some() {
                        return Err(err("family declared twice"));
                    }
                }
                _ => return Err(err("unknown comment")),
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            return Err(err("empty line or bare comment"));
        }
        // name
        let name_end = line.find(['{', ' ']).ok_or_else(|| err("no value"))?;
        let name = &line[..name_end];
        if !is_name(name) {
            return Err(err("bad metric name"));
        }
        let mut rest = &line[name_end..];
        // labels
        let mut labels = BTreeMap::new();
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let end: usize;
            loop {
                // key
                let start = chars.peek().map(|(i, _)| *i).ok_or_else(|| err("unterminated labels"))?;
                if body[start..].starts_with('}') {
                    end = start + 1;
                    break;
                }
                let eq = body[start..].find('=').ok_or_else(|| err("label without ="))? + start;
                let key = &body[start..eq];
                if !is_name(key) || key.contains(':') {
                    return Err(err("bad label name"));
                }
                while chars.peek().is_some_and(|(i, _)| *i <= eq) {
                    chars.next();
                }
                if chars.next().map(|(_, c)| c) != Some('"') {
                    return Err(err("label value not quoted"));
                }
                let mut value = String::new();
                loop {
                    match chars.next().ok_or_else(|| err("unterminated label value"))? {
                        (_, '\\') => match chars.next().ok_or_else(|| err("bad escape"))?.1 {
                            'n' => value.push('\n'),
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            _ => return Err(err("bad escape")),
                        },
                        (_, '"') => break,
                        (_, c) => value.push(c),
                    }
                }
                if labels.insert(key.to_string(), value).is_some() {
                    return Err(err("duplicate label"));
                }
                match chars.next() {
                    Some((_, ',')) => {}
                    Some((i, '}')) => {
                        end = i + 1;
                        break;
                    }
                    _ => return Err(err("expected , or }")),
                }
            }
            rest = &body[end..];
        }
        let value_text = rest.strip_prefix(' ').ok_or_else(|| err("no space before the value"))?;
        if value_text.contains(' ') {
            return Err(err("trailing content (timestamps and exemplars are not expected)"));
        }
        let value = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse::<f64>().map_err(|_| err("value is not a number"))?,
        };
        // family
        let has_family = out.types.iter().any(|(fam, ty)| {
            let suffixes: &[&str] = match ty.as_str() {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                "summary" => &["", "_sum", "_count", "_created"],
                _ => &[""],
            };
            suffixes.iter().any(|s| name.strip_suffix(s) == Some(fam.as_str()))
        });
        if !has_family {
            return Err(err("sample without a # TYPE for its family"));
        }
        if name.ends_with("_bucket") && !labels.contains_key("le") {
            return Err(err("bucket without le"));
        }
        out.samples.push(Sample { name: name.to_string(), labels, value });
    }
    if !saw_eof {
        return Err("no # EOF at the end".into());
    }
    Ok(out)
}

const FAMILIES: &[(&str, &str)] = &[
    ("livebase_http_request_duration_seconds", "histogram"),
    ("livebase_commit_batch_size", "histogram"),
    ("livebase_commit_duration_seconds", "histogram"),
    ("livebase_events_committed", "counter"),
    ("livebase_events_delivered", "counter"),
    ("livebase_fanout_latency_seconds", "histogram"),
    ("livebase_connections", "gauge"),
    ("livebase_connections_opened", "counter"),
    ("livebase_connections_closed", "counter"),
    ("livebase_slow_consumers_dropped", "counter"),
    ("livebase_subscriptions", "gauge"),
    ("livebase_presence_members", "gauge"),
    ("livebase_outbound_queue_depth", "gauge"),
    ("livebase_log_head_seq", "gauge"),
];

#[test]
fn a_fresh_registry_renders_every_family_with_its_type() {
    let m = Metrics::new();
    let e = parse(&m.render()).unwrap();
    for (name, ty) in FAMILIES {
        assert_eq!(e.types.get(*name).map(String::as_str), Some(*ty), "family {name}");
    }
    assert_eq!(e.value("livebase_events_committed_total", &[]), Some(0.0));
    assert_eq!(e.value("livebase_connections", &[]), Some(0.0));
    assert_eq!(e.value("livebase_commit_duration_seconds_count", &[]), Some(0.0));
}

#[test]
fn recording_calls_move_their_series() {
    let m = Metrics::new();
    let route = "/api/collections/{name}/records";
    m.http_request(route, "POST", 201, 0.0012);
    m.http_request(route, "POST", 201, 0.0004);
    m.http_request(route, "GET", 200, 0.2);
    m.http_request(route, "POST", 409, 7.0);
    m.commit_batch(12, 0.003);
    m.commit_batch(1, 0.0001);
    m.events_committed(13);
    m.events_delivered(1300);
    m.fanout_latency(0.00002);
    m.connection_opened();
    m.connection_opened();
    m.connection_opened();
    m.connection_closed("client");
    m.connection_closed("slow_consumer");
    m.slow_consumer_dropped();
    m.set_subscriptions(7);
    m.set_presence_members(-0);
    m.set_presence_members(3);
    m.set_queue_depth(42);
    m.set_log_head(4810);

    let text = m.render();
    let e = parse(&text).unwrap_or_else(|err| panic!("{err}\n{text}"));
    let post201 = [("route", route), ("method", "POST"), ("status", "201")];
    assert_eq!(e.value("livebase_http_request_duration_seconds_count", &post201), Some(2.0));
    let sum = e.value("livebase_http_request_duration_seconds_sum", &post201).unwrap();
    assert!((sum - 0.0016).abs() < 1e-9, "{sum}");
    // Buckets are cumulative and end at +Inf == count.
    let le = |le: &str| {
        let mut l = post201.to_vec();
        l.push(("le", le));
        e.value("livebase_http_request_duration_seconds_bucket", &l)
    };
    assert_eq!(le("0.0005"), Some(1.0));
    assert_eq!(le("0.0025"), Some(2.0));
    assert_eq!(le("+Inf"), Some(2.0));
    let slow = [("route", route), ("method", "POST"), ("status", "409")];
    assert_eq!(e.value("livebase_http_request_duration_seconds_count", &slow), Some(1.0));
    let mut slow_inf = slow.to_vec();
    slow_inf.push(("le", "5.0"));
    assert_eq!(e.value("livebase_http_request_duration_seconds_bucket", &slow_inf), Some(0.0));
    assert_eq!(
        e.value("livebase_http_request_duration_seconds_count", &[("method", "GET"), ("status", "200")]),
        Some(1.0)
    );

    assert_eq!(e.value("livebase_commit_batch_size_count", &[]), Some(2.0));
    assert_eq!(e.value("livebase_commit_batch_size_sum", &[]), Some(13.0));
    assert_eq!(e.value("livebase_commit_duration_seconds_count", &[]), Some(2.0));
    assert_eq!(e.value("livebase_events_committed_total", &[]), Some(13.0));
    assert_eq!(e.value("livebase_events_delivered_total", &[]), Some(1300.0));
    assert_eq!(
        e.value("livebase_fanout_latency_seconds_bucket", &[("le", "5e-5")]).or_else(|| {
            // dtoa may print the bound as 0.00005
            e.value("livebase_fanout_latency_seconds_bucket", &[("le", "0.00005")])
        }),
        Some(1.0)
    );
    assert_eq!(e.value("livebase_connections", &[]), Some(1.0));
    assert_eq!(e.value("livebase_connections_opened_total", &[]), Some(3.0));
    assert_eq!(e.value("livebase_connections_closed_total", &[("reason", "client")]), Some(1.0));
    assert_eq!(e.value("livebase_connections_closed_total", &[("reason", "slow_consumer")]), Some(1.0));
    assert_eq!(e.value("livebase_slow_consumers_dropped_total", &[]), Some(1.0));
    assert_eq!(e.value("livebase_subscriptions", &[]), Some(7.0));
    assert_eq!(e.value("livebase_presence_members", &[]), Some(3.0));
    assert_eq!(e.value("livebase_outbound_queue_depth", &[]), Some(42.0));
    assert_eq!(e.value("livebase_log_head_seq", &[]), Some(4810.0));

    // Every histogram series: cumulative buckets, +Inf equal to _count.
    for (family, _) in FAMILIES.iter().filter(|(_, t)| *t == "histogram") {
        for count in e.series(&format!("{family}_count")) {
            let mut buckets: Vec<&Sample> = e
                .series(&format!("{family}_bucket"))
                .into_iter()
                .filter(|b| {
                    b.labels.iter().filter(|(k, _)| *k != "le").all(|(k, v)| count.labels.get(k) == Some(v))
                })
                .filter(|b| b.labels.len() == count.labels.len() + 1)
                .collect();
            assert!(!buckets.is_empty(), "{family} has buckets");
            let bound = |s: &Sample| match s.labels["le"].as_str() {
                "+Inf" => f64::INFINITY,
                v => v.parse::<f64>().unwrap(),
            };
            buckets.sort_by(|a, b| bound(a).partial_cmp(&bound(b)).unwrap());
            assert!(buckets.windows(2).all(|w| w[0].value <= w[1].value), "{family} buckets are cumulative");
            let last = buckets.last().unwrap();
            assert_eq!(bound(last), f64::INFINITY);
            assert_eq!(last.value, count.value, "{family}: +Inf bucket equals _count");
        }
    }
}

#[test]
fn counters_only_grow_between_renders() {
    let m = Metrics::new();
    m.events_committed(5);
    let a = parse(&m.render()).unwrap();
    m.events_committed(2);
    m.connection_opened();
    let b = parse(&m.render()).unwrap();
    assert_eq!(a.value("livebase_events_committed_total", &[]), Some(5.0));
    assert_eq!(b.value("livebase_events_committed_total", &[]), Some(7.0));
    assert_eq!(b.value("livebase_connections_opened_total", &[]), Some(1.0));
}

#[test]
fn two_servers_in_one_process_keep_separate_figures() {
    let a = Metrics::new();
    let b = Metrics::new();
    a.events_delivered(10);
    a.connection_opened();
    let eb = parse(&b.render()).unwrap();
    assert_eq!(eb.value("livebase_events_delivered_total", &[]), Some(0.0));
    assert_eq!(eb.value("livebase_connections", &[]), Some(0.0));
    let ea = parse(&a.render()).unwrap();
    assert_eq!(ea.value("livebase_events_delivered_total", &[]), Some(10.0));
}

#[test]
fn label_values_are_escaped() {
    let m = Metrics::new();
    m.connection_closed("odd \"reason\"\\\n");
    let e = parse(&m.render()).unwrap();
    assert_eq!(e.value("livebase_connections_closed_total", &[("reason", "odd \"reason\"\\\n")]), Some(1.0));
}

#[test]
fn concurrent_recording_loses_nothing() {
    let m = std::sync::Arc::new(Metrics::new());
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let m = m.clone();
            std::thread::spawn(move || {
                for j in 0..10_000u32 {
                    m.events_delivered(1);
                    m.fanout_latency(f64::from(j % 100) * 1e-4);
                    m.http_request("/r", "GET", 200 + (i % 2), 0.001);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let e = parse(&m.render()).unwrap();
    assert_eq!(e.value("livebase_events_delivered_total", &[]), Some(40_000.0));
    assert_eq!(e.value("livebase_fanout_latency_seconds_count", &[]), Some(40_000.0));
    assert_eq!(e.value("livebase_http_request_duration_seconds_count", &[("status", "200")]), Some(20_000.0));
    assert_eq!(e.value("livebase_http_request_duration_seconds_count", &[("status", "201")]), Some(20_000.0));
}

mod common;

/// `GET /metrics` on a live server parses, and its counters and gauges follow real traffic.
#[tokio::test]
async fn live_metrics_parse_and_move_when_events_flow() {
    use serde_json::json;
    let t = common::TestServer::start().await;
    t.create_collection(common::items_collection()).await;
    let scrape = || async {
        let r = t.http.get(format!("{}/metrics", t.url)).send().await.unwrap();
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
        parse(&r.text().await.unwrap()).unwrap()
    };
    let before = scrape().await;
    assert_eq!(before.value("livebase_events_committed_total", &[]), Some(0.0));
    let mut ws = common::ws::Ws::connect(&t.url, Some(&t.admin_key)).await;
    ws.subscribe("items", None, json!({})).await;
    for i in 0..5 {
        t.create("items", json!({"title": format!("m{i}")})).await;
    }
    for _ in 0..5 {
        ws.next_change().await;
    }
    let after = scrape().await;
    assert_eq!(after.value("livebase_events_committed_total", &[]), Some(5.0));
    assert_eq!(after.value("livebase_events_delivered_total", &[]), Some(5.0));
    assert_eq!(after.value("livebase_log_head_seq", &[]), Some(5.0));
    assert_eq!(after.value("livebase_connections", &[]), Some(1.0));
    assert_eq!(after.value("livebase_subscriptions", &[]), Some(1.0));
    let created = [("route", "/api/collections/{name}/records"), ("method", "POST"), ("status", "201")];
    assert_eq!(after.value("livebase_http_request_duration_seconds_count", &created), Some(5.0));
    assert!(after.value("livebase_commit_batch_size_count", &[]).unwrap() >= 1.0);
    assert!(after.value("livebase_fanout_latency_seconds_count", &[]).unwrap() >= 1.0);
    drop(ws);
}
