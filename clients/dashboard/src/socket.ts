import type { WebSocketConstructor, WebSocketLike } from '@livebase/client';

const REF = '__dashboard_auth';

/**
 * The SDK passes the token in the socket URL (`?token=`). The dashboard keeps credentials
 * out of every URL: it connects without one and authenticates with the first frame (`auth`),
 * which the server handles before any later frame of the connection. A refused token closes
 * the socket with 4003, as a refused `?token=` would.
 */
export function authFrameWebSocket(token: string): WebSocketConstructor {
  return class implements WebSocketLike {
    private ws: WebSocket;
    onopen: WebSocketLike['onopen'] = null;
    onmessage: WebSocketLike['onmessage'] = null;
    onclose: WebSocketLike['onclose'] = null;
    onerror: WebSocketLike['onerror'] = null;
    constructor(url: string) {
      const u = new URL(url);
      u.searchParams.delete('token');
      this.ws = new WebSocket(u.toString());
      this.ws.onopen = (ev) => {
        this.ws.send(JSON.stringify({ type: 'auth', ref: REF, token }));
        this.onopen?.(ev);
      };
      this.ws.onmessage = (ev) => {
        if (typeof ev.data === 'string' && ev.data.includes(REF)) {
          try {
            const f = JSON.parse(ev.data);
            if (f.ref === REF) {
              if (f.type === 'error') this.ws.close(4003, String(f.code ?? 'invalid_token'));
              return;
            }
          } catch {
            // not ours
          }
        }
        this.onmessage?.(ev);
      };
      this.ws.onclose = (ev) => this.onclose?.(ev);
      this.ws.onerror = (ev) => this.onerror?.(ev);
    }
    get readyState() {
      return this.ws.readyState;
    }
    send(data: string) {
      this.ws.send(data);
    }
    close(code?: number, reason?: string) {
      this.ws.close(code, reason);
    }
  };
}
