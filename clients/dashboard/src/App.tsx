import { createContext, useContext, useEffect, useMemo, useState } from 'react';
import { createClient, type LivebaseClient } from '@livebase/client';
import { LivebaseProvider, useConnectionStatus, useQueueStatus } from '@livebase/react';
import { api, loadSession, saveSession, type CollectionDef, type Session } from './api';
import { askConflict, ConflictDialog } from './conflict';
import { authFrameWebSocket } from './socket';
import { href, useRoute } from './router';
import { TableView } from './Table';
import { SchemaView } from './Schema';
import { AuditView } from './Audit';
import { StatusView } from './Status';
import { ApiView } from './ApiPage';

export interface Ctx {
  session: Session;
  collections: CollectionDef[] | null;
  counts: Record<string, number>;
  reloadSchema: () => void;
}
const SessionCtx = createContext<Ctx | null>(null);
export const useSession = () => useContext(SessionCtx)!;

export function App() {
  const [session, setSession] = useState<Session | null>(loadSession);
  const [theme, setTheme] = useState(() => localStorage.getItem('livebase.theme') ?? (matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light'));
  useEffect(() => {
    document.documentElement.dataset.theme = theme;
    localStorage.setItem('livebase.theme', theme);
  }, [theme]);
  const toggle = () => setTheme(theme === 'dark' ? 'light' : 'dark');
  if (!session)
    return (
      <SignIn
        onSignedIn={(s) => {
          saveSession(s);
          setSession(s);
        }}
      />
    );
  return (
    <Shell
      key={session.token}
      session={session}
      theme={theme}
      toggleTheme={toggle}
      signOut={() => {
        saveSession(null);
        setSession(null);
      }}
    />
  );
}

function SignIn({ onSignedIn }: { onSignedIn: (s: Session) => void }) {
  const [token, setToken] = useState('');
  const [name, setName] = useState('');
  const [error, setError] = useState<string | null>(null);
  const submit = async (e: React.FormEvent) => {
    e.preventDefault();
    setError(null);
    const t = token.trim();
    try {
      await api(t, 'GET', '/api/collections');
      onSignedIn({ token: t, name: name.trim() || 'admin', admin: true });
    } catch (err: any) {
      // Not the admin key: a user JWT is fine if the server accepts it at all.
      if (err.status !== 401) return setError(err.message);
      try {
        await api(t, 'GET', '/api/changes?limit=1');
        const sub = decodeSub(t);
        onSignedIn({ token: t, name: name.trim() || sub || 'user', admin: false });
      } catch (e2: any) {
        setError(e2.status === 401 ? `The server refused this credential: ${e2.message}` : e2.message);
      }
    }
  };
  return (
    <main className="signin">
      <form onSubmit={submit} aria-label="Sign in">
        <h1>Livebase</h1>
        <p className="muted">Sign in with the admin key (printed at the server's first start, or in livebase_data/admin.key) or a user JWT.</p>
        <label>
          Admin key or JWT
          <input type="password" name="token" autoComplete="off" value={token} onChange={(e) => setToken(e.target.value)} autoFocus required />
        </label>
        <label>
          Display name (for presence)
          <input name="name" value={name} onChange={(e) => setName(e.target.value)} placeholder="admin" />
        </label>
        {error && <p className="error" role="alert">{error}</p>}
        <button className="primary" type="submit">
          Sign in
        </button>
      </form>
    </main>
  );
}

function decodeSub(jwt: string): string | null {
  try {
    const p = JSON.parse(atob(jwt.split('.')[1]!.replace(/-/g, '+').replace(/_/g, '/')));
    return typeof p.sub === 'string' ? p.sub : null;
  } catch {
    return null;
  }
}

function Shell({ session, signOut, theme, toggleTheme }: { session: Session; signOut: () => void; theme: string; toggleTheme: () => void }) {
  const client: LivebaseClient = useMemo(
    () => createClient({
        url: location.origin,
        token: session.token,
        WebSocket: authFrameWebSocket(session.token),
        storage: 'indexeddb',
        onConflict: askConflict,
      }),
    [session.token],
  );
  useEffect(
    () => () => {
      void client.close();
    },
    [client],
  );
  const [collections, setCollections] = useState<CollectionDef[] | null>(null);
  const [counts, setCounts] = useState<Record<string, number>>({});
  const [tick, setTick] = useState(0);
  const reloadSchema = () => setTick((t) => t + 1);
  useEffect(() => {
    if (!session.admin) return;
    api(session.token, 'GET', '/api/collections').then((r) => setCollections(r.items), () => setCollections([]));
  }, [session, tick]);
  // Record counts (count=exact), refreshed every few seconds.
  useEffect(() => {
    const names = collections?.map((c) => c.name) ?? [];
    let stop = false;
    const load = async () => {
      const out: Record<string, number> = {};
      await Promise.all(
        names.map(async (n) => {
          try {
            const r = await api(session.token, 'GET', `/api/collections/${encodeURIComponent(n)}/records?limit=1&select=id&count=exact`);
            out[n] = r.total;
          } catch {}
        }),
      );
      if (!stop) setCounts(out);
    };
    void load();
    const t = setInterval(load, 3000);
    return () => {
      stop = true;
      clearInterval(t);
    };
  }, [collections, session.token]);
  const ctx = { session, collections, counts, reloadSchema };
  return (
    <LivebaseProvider client={client}>
      <SessionCtx.Provider value={ctx}>
        <div className="shell">
          <header>
            <a className="brand" href="#/">
              Livebase
            </a>
            <ConnIndicator />
            <span className="spacer" />
            <span className="who" title={session.admin ? 'admin key' : 'user token'}>
              {session.name} {session.admin ? '(admin)' : '(user)'}
            </span>
            <button onClick={toggleTheme} aria-label="Toggle theme">
              {theme === 'dark' ? '☀ light' : '☾ dark'}
            </button>
            <button onClick={signOut}>Sign out</button>
          </header>
          <Sidebar />
          <main className="content">
            <Views />
          </main>
        </div>
        <ConflictDialog />
      </SessionCtx.Provider>
    </LivebaseProvider>
  );
}

function ConnIndicator() {
  const s = useConnectionStatus();
  const q = useQueueStatus();
  return (
    <span className={'conn conn-' + s.state} data-state={s.state} aria-label={'connection ' + s.state}>
      <span className="dot" /> {s.state}
      {s.quality ? ` · ${s.quality}` : ''}
      {s.latencyMs != null ? ` · ${Math.round(s.latencyMs)} ms` : ''}
      {q.size > 0 ? ` · ${q.size} queued` : ''}
    </span>
  );
}

function Sidebar() {
  const { collections, counts, session } = useSession();
  const route = useRoute();
  const [open, setOpen] = useState('');
  const current = route.parts[0] === 'c' ? route.parts[1] : undefined;
  return (
    <nav className="sidebar" aria-label="Collections">
      <h3>Collections</h3>
      <ul>
        {(collections ?? []).map((c) => (
          <li key={c.name}>
            <a href={href(['c', c.name])} className={current === c.name ? 'active' : ''}>
              <span>{c.name}</span> <span className="count">{counts[c.name] ?? ''}</span>
            </a>
          </li>
        ))}
      </ul>
      {!session.admin && (
        <form
          onSubmit={(e) => {
            e.preventDefault();
            if (open) location.hash = href(['c', open]);
          }}
        >
          <input aria-label="Open collection" placeholder="collection name" value={open} onChange={(e) => setOpen(e.target.value)} />
        </form>
      )}
      <h3>Server</h3>
      <ul>
        {session.admin && (
          <li>
            <a href={href(['schema', 'new'])}>+ New collection</a>
          </li>
        )}
        <li>
          <a href={href(['audit'])}>Audit log</a>
        </li>
        {session.admin && (
          <li>
            <a href={href(['status'])}>Live status</a>
          </li>
        )}
      </ul>
    </nav>
  );
}

function Views() {
  const route = useRoute();
  const { collections, session } = useSession();
  const [view, name] = route.parts;
  if (view === 'c' && name) return <TableView key={name} name={name} route={route} />;
  if (view === 'schema' && name) return <SchemaView key={name} name={name} />;
  if (view === 'api' && name) return <ApiView name={name} />;
  if (view === 'audit') return <AuditView route={route} />;
  if (view === 'status') return <StatusView />;
  return (
    <div className="empty">
      <h2>Welcome</h2>
      {session.admin ? (
        collections && collections.length === 0 ? (
          <p>
            No collections yet. <a href={href(['schema', 'new'])}>Create one</a>.
          </p>
        ) : (
          <p>Pick a collection on the left to see its records live.</p>
        )
      ) : (
        <p>Signed in with a user token: type a collection name on the left; you see exactly what its rules allow.</p>
      )}
    </div>
  );
}
