// The live WebSocket and its reconnection policy.
//
// Exactly the protocol's "Close Codes" and "Reconnection Strategy": the
// delay starts at `baseDelay` (3 s) and doubles per attempt, at most
// `maxAttempts` (10) attempts, then the page says so (never an alert()).
// 1000 (normal) and 1008 (policy) end the session for good; 1001, 1006,
// 1011, 1013 and anything else reconnect.

export const NO_RECONNECT = new Map([
  [1000, "The server closed the connection."],
  [1008, "The server refused this connection (policy violation)."],
]);

export class Connection {
  /**
   * @param {object} options
   *   url: () => string          the ws:// URL (re-read each attempt: token)
   *   baseDelay, maxAttempts     reconnection policy
   *   onSnapshot(doc)            each snapshot document
   *   onEvent(event)             each {"type": "event"} (asked for at open)
   *   onTokenExpired()           after close 1008 "token expired": ask for a new one
   *   onStatus(status)           {state: "connecting"|"connected"|"reconnecting"
   *                               |"disconnected"|"locked", attempt, maxAttempts,
   *                               deadline (ms epoch, while waiting), reason}
   *   onClosed({code, opened})   async, after a close that would reconnect;
   *                              resolve true to stop instead (token refused)
   */
  constructor(options) {
    this.url = options.url;
    this.baseDelay = options.baseDelay ?? 3000;
    this.maxAttempts = options.maxAttempts ?? 10;
    this.onSnapshot = options.onSnapshot || (() => {});
    this.onEvent = options.onEvent || null;
    this.onTokenExpired = options.onTokenExpired || null;
    this.onStatus = options.onStatus || (() => {});
    this.onClosed = options.onClosed || (async () => false);
    this.ws = null;
    this.attempts = 0;
    this.timer = null;
    this.status = {state: "idle"};
  }

  /** Connect now, forgetting earlier failed attempts (also "Reconnect now"). */
  connect() {
    this.stop();
    this.attempts = 0;
    this.open();
  }

  /** Close without reconnecting. */
  stop() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(1000);
      } catch {
        // already closing
      }
    }
  }

  setStatus(status) {
    this.status = {attempt: this.attempts, maxAttempts: this.maxAttempts, ...status};
    this.onStatus(this.status);
  }

  open() {
    this.timer = null;
    let ws;
    this.setStatus({state: this.attempts === 0 ? "connecting" : "reconnecting"});
    try {
      ws = new WebSocket(this.url());
    } catch (err) {
      this.setStatus({state: "disconnected", reason: `Cannot open WebSocket: ${err.message}`});
      return;
    }
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.attempts = 0;
      if (this.onEvent) ws.send(JSON.stringify({type: "subscribe", events: true}));
      this.setStatus({state: "connected"});
    };
    ws.onmessage = (event) => {
      let doc;
      try {
        doc = JSON.parse(event.data);
      } catch {
        console.warn("Control Center: ignoring a message that is not JSON");
        return;
      }
      if (doc && doc.type === "error") {
        console.warn("Control Center: server says", doc.error);
        return;
      }
      if (doc && doc.type === "event") {
        if (this.onEvent) this.onEvent(doc);
        return;
      }
      if (doc && doc.components && doc.metrics) this.onSnapshot(doc);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.closed(event.code, event.reason, opened);
    };
  }

  async closed(code, reason, opened) {
    if (code === 1008 && reason === "token expired" && this.onTokenExpired) {
      // Reconnecting with the same token would be refused: ask for a new one.
      this.setStatus({state: "locked", code});
      this.onTokenExpired();
      return;
    }
    if (NO_RECONNECT.has(code)) {
      const detail = reason ? ` (${reason})` : "";
      this.setStatus({state: "disconnected", code, reason: NO_RECONNECT.get(code) + detail});
      return;
    }
    // A refused handshake looks like 1006 to a browser: the page asks REST
    // why (and refreshes its data that way while the socket is down).
    if (await this.onClosed({code, opened})) {
      this.setStatus({state: "locked", code});
      return;
    }
    if (this.ws || this.timer) return; // connect() was called meanwhile
    this.schedule(code);
  }

  schedule(code) {
    if (this.attempts >= this.maxAttempts) {
      this.setStatus({state: "disconnected", code,
        reason: `Lost connection to Control Center: ${this.maxAttempts} reconnection ` +
          "attempts failed. Check that the server is running, then reconnect."});
      return;
    }
    const delay = this.baseDelay * 2 ** this.attempts;
    this.attempts += 1;
    this.timer = setTimeout(() => this.open(), delay);
    this.setStatus({state: "reconnecting", code, deadline: Date.now() + delay});
  }
}
