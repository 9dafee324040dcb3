import { useEffect, useRef, useState } from 'react';
import { useConnectionStatus } from '@livebase/react';
import { useSession } from './App';
import { api } from './api';

interface Hist {
  bounds: (number | null)[];
  counts: number[];
  count: number;
}
interface Reading {
  at: number;
  metrics: {
    events_committed: number;
    events_delivered: number;
    connections: number;
    subscriptions: number;
    presence_members: number;
    queue_depth: number;
    slow_consumers_dropped: number;
    commit_seconds: Hist;
    fanout_seconds: Hist;
  };
  channels: { name: string; members: number; presence: number }[];
  head: number;
}
interface Point {
  committed: number;
  delivered: number;
  connections: number;
  subscriptions: number;
  queue: number;
  dropped: number;
  commitP50: number | null;
  commitP99: number | null;
  fanoutP50: number | null;
  fanoutP99: number | null;
}

/** A quantile (ms) of the observations between two readings of a histogram. */
function quantile(a: Hist, b: Hist, q: number): number | null {
  const d = b.counts.map((c, i) => c - (a.counts[i] ?? 0));
  const n = d.reduce((x, y) => x + y, 0);
  if (n <= 0) return null;
  let acc = 0;
  for (let i = 0; i < d.length; i++) {
    acc += d[i]!;
    if (acc >= q * n) return (b.bounds[i] ?? b.bounds[i - 1] ?? 5) * 1000;
  }
  return null;
}

export function StatusView() {
  const { session } = useSession();
  const conn = useConnectionStatus();
  const [points, setPoints] = useState<Point[]>([]);
  const [last, setLast] = useState<Reading | null>(null);
  const [error, setError] = useState<string | null>(null);
  const prev = useRef<Reading | null>(null);
  useEffect(() => {
    let stop = false;
    const poll = async () => {
      try {
        const r = { ...(await api(session.token, 'GET', '/api/_status')), at: performance.now() } as Reading;
        const p = prev.current;
        if (p) {
          const dt = Math.max(0.001, (r.at - p.at) / 1000);
          const m = r.metrics,
            o = p.metrics;
          const pt: Point = {
            committed: (m.events_committed - o.events_committed) / dt,
            delivered: (m.events_delivered - o.events_delivered) / dt,
            connections: m.connections,
            subscriptions: m.subscriptions,
            queue: m.queue_depth,
            dropped: m.slow_consumers_dropped,
            commitP50: quantile(o.commit_seconds, m.commit_seconds, 0.5),
            commitP99: quantile(o.commit_seconds, m.commit_seconds, 0.99),
            fanoutP50: quantile(o.fanout_seconds, m.fanout_seconds, 0.5),
            fanoutP99: quantile(o.fanout_seconds, m.fanout_seconds, 0.99),
          };
          if (!stop) setPoints((ps) => [...ps.slice(-59), pt]);
        }
        prev.current = r;
        if (!stop) {
          setLast(r);
          setError(null);
        }
      } catch (e: any) {
        if (!stop) setError(e.message);
      }
    };
    void poll();
    const t = setInterval(poll, 1000);
    return () => {
      stop = true;
      clearInterval(t);
    };
  }, [session.token]);
  const series = (k: keyof Point) => points.map((p) => p[k] as number | null);
  return (
    <div className="status">
      <h2>Live status</h2>
      <p>
        This tab: <b data-testid="conn-state">{conn.state}</b>
        {conn.quality ? ` · quality ${conn.quality}` : ''}
        {conn.latencyMs != null ? ` · ${Math.round(conn.latencyMs)} ms round trip` : ''}
        {last ? ` · log head #${last.head}` : ''}
      </p>
      {error && <p className="error">{error}</p>}
      <div className="charts">
        <Chart title="events / s" lines={[{ label: 'committed', data: series('committed') }, { label: 'delivered', data: series('delivered') }]} />
        <Chart title="connections · subscriptions" lines={[{ label: 'connections', data: series('connections') }, { label: 'subscriptions', data: series('subscriptions') }]} />
        <Chart title="commit latency (ms)" lines={[{ label: 'p50', data: series('commitP50') }, { label: 'p99', data: series('commitP99') }]} />
        <Chart title="fan-out latency (ms)" lines={[{ label: 'p50', data: series('fanoutP50') }, { label: 'p99', data: series('fanoutP99') }]} />
        <Chart title="outbound queue depth" lines={[{ label: 'frames', data: series('queue') }]} />
        <Chart title="slow consumers dropped (total)" lines={[{ label: 'dropped', data: series('dropped') }]} />
      </div>
      <h3>Presence channels</h3>
      {last && last.channels.length === 0 ? (
        <p className="muted">No open channels.</p>
      ) : (
        <table className="channels">
          <thead>
            <tr>
              <th>channel</th>
              <th>connections joined</th>
              <th>presence entries</th>
            </tr>
          </thead>
          <tbody>
            {last?.channels.map((c) => (
              <tr key={c.name}>
                <td>
                  <code>{c.name}</code>
                </td>
                <td>{c.members}</td>
                <td>{c.presence}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}

function Chart({ title, lines }: { title: string; lines: { label: string; data: (number | null)[] }[] }) {
  const W = 300,
    H = 90;
  const all = lines.flatMap((l) => l.data).filter((v): v is number => v != null);
  const max = Math.max(1, ...all);
  const lastOf = (d: (number | null)[]) => [...d].reverse().find((v) => v != null);
  return (
    <figure className="chart">
      <figcaption>
        {title}
        {lines.map((l, i) => (
          <span key={l.label} className={'legend l' + i}>
            {l.label} {fmtNum(lastOf(l.data))}
          </span>
        ))}
      </figcaption>
      <svg viewBox={`0 0 ${W} ${H}`} preserveAspectRatio="none" role="img" aria-label={title}>
        <line x1="0" y1={H - 1} x2={W} y2={H - 1} className="axis" />
        {lines.map((l, i) => {
          const pts = l.data
            .map((v, j) => (v == null ? null : `${(j / 59) * W},${H - 2 - (v / max) * (H - 8)}`))
            .filter(Boolean)
            .join(' ');
          return <polyline key={l.label} points={pts} className={'l' + i} fill="none" />;
        })}
        <text x="2" y="10" className="max">
          {fmtNum(max)}
        </text>
      </svg>
    </figure>
  );
}

function fmtNum(v: number | null | undefined) {
  if (v == null) return '–';
  return v >= 100 ? Math.round(v).toString() : v.toFixed(v >= 10 ? 1 : 2);
}
