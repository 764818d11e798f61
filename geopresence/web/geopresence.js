// geopresence.js: the browser client of geopresence (wire contract PROTOCOL.md v1).
//
// A dependency-free ES module, served by every geopresence server at
// GET /client/geopresence.js. It follows docs/protocol.md's "recommended client algorithm":
// hello, heartbeats at the welcome's interval (with an id, to notice a dead link), reconnects
// with the same device id (at once, then with backoff and jitter), request/response by id,
// sync from the last message id after every connect, resends of unacknowledged chat
// messages with their client_msg_id, and typed events. Reference: docs/client-js.md.

export const VERSION = "0.1.0";

/** Close codes after which reconnecting would not help (docs/protocol.md, close codes). */
const FINAL_CLOSES = new Map([
  [1008, "refused"], // a bad token or a device limit: get a new token, or log a device out
  [4001, "logged out"],
  [4002, "replaced by a newer connection of this device"],
]);
const MAX_TEXT_BYTES = 4096; // a chat text's limit (PROTOCOL.md): longer ones are refused here
const SEND_WINDOW = 8; // chat sends in flight at once; the others wait in the outbox
const SEEN_IDS = 10000; // message ids remembered to drop duplicates (sync vs live, resends)

/** An error frame from the server, or a refused hello: `code` is the wire error code. */
export class GeoPresenceError extends Error {
  constructor(frame, closeCode = null) {
    super(frame.message || frame.code || "error");
    this.name = "GeoPresenceError";
    this.code = frame.code || "error";
    this.frame = frame;
    this.closeCode = closeCode;
  }
}

/** The connection ended before a request's reply came (the request may or may not have
 *  been handled); `code` is "disconnected" or "timeout". */
export class DisconnectedError extends Error {
  constructor(message = "not connected", code = "disconnected") {
    super(message);
    this.name = "DisconnectedError";
    this.code = code;
  }
}

/** Order of two message ids (decimal strings of 64-bit integers): -1, 0 or 1. Never compare
 *  them as JavaScript numbers, which lose their last digits. */
export function compareMessageIds(a, b) {
  const x = String(a);
  const y = String(b);
  if (x.length !== y.length) return x.length < y.length ? -1 : 1;
  return x < y ? -1 : x > y ? 1 : 0;
}

/** A random id (device ids, client_msg_id): `prefix` and 12 base-36 characters. */
export function randomId(prefix = "") {
  const bytes = new Uint8Array(12);
  globalThis.crypto.getRandomValues(bytes);
  return prefix + Array.from(bytes, (b) => (b % 36).toString(36)).join("");
}

const DEFAULTS = {
  heartbeat: true, // heartbeats at the welcome's heartbeat_interval
  reconnect: true,
  backoff: { first: 0, min: 0.5, max: 30, jitter: 0.5 }, // seconds; first: after a drop
  requestTimeout: 15, // seconds without a reply (or a welcome): it fails (or is retried)
  rateLimitRetries: 3, // a rate_limited reply is retried after the time it names
  locationInterval: 30, // resend the last location this often (0: never), keeping it live
  syncLimit: 100,
  nearbyPages: 5, // nearby_friends pages fetched per query (20 friends a page)
};

export class GeoPresence {
  /**
   * @param {object} options `url` (ws://HOST:8765/ws), `token` or (insecure servers) `user`,
   *   `device` (keep it per installation), `cursor` (the last message id applied, "0"), and
   *   the tunables of DEFAULTS; `WebSocket` replaces the global one (tests).
   */
  constructor(options = {}) {
    if (!options.url) throw new TypeError("GeoPresence: options.url is required");
    if (!options.token && !options.user) {
      throw new TypeError("GeoPresence: options.token (or, insecure servers, options.user)");
    }
    this.options = {
      ...DEFAULTS,
      WebSocket: globalThis.WebSocket,
      ...options,
      backoff: { ...DEFAULTS.backoff, ...options.backoff },
    };
    this.url = options.url;
    this.device = options.device || randomId("web-");
    this.cursor = options.cursor || "0";
    this.state = "idle"; // idle, connecting, open, reconnecting, closed
    this.user = null;
    this.welcome = null;
    this.clockOffset = 0; // server time - local time, seconds
    this.friends = new Map(); // user -> {user, status, last_active_at}
    this.nearby = new Map(); // user -> {user, lat, lon, ts, distance_m}
    this.strangers = new Map(); // user -> {user, distance_m, ts}
    this.settings = null; // {share_location, radius_m, visible_to_strangers} once read
    this.location = null; // {lat, lon}: ours, re-sent after each connect
    this.watching = false; // watch_strangers, renewed after each connect
    this.closeInfo = null; // {code, reason} of the last close
    this._handlers = new Map();
    this._pending = new Map(); // request id -> {resolve, reject, timer}
    this._outbox = new Map(); // client_msg_id -> unacknowledged send
    this._sendsPausedUntil = 0; // Date.now() before which no send goes (rate_limited)
    this._sendsTimer = null;
    this._seen = new Set();
    this._nextId = 1;
    this._ws = null;
    this._attempt = 0;
    this._stopped = false;
    this._onVisible = () => {
      if (globalThis.document?.visibilityState === "visible" && this.state === "open") this._beat();
    };
    this._onOnline = () => {
      if (this.state === "reconnecting" && this._retryTimer) this._retryNow();
    };
  }

  // ------------------------------------------------------------------ events

  /** Call `handler(detail, type)` on each event `type` ("*": every event). Returns a
   *  function that removes it. */
  on(type, handler) {
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(handler);
    return () => this.off(type, handler);
  }

  off(type, handler) {
    this._handlers.get(type)?.delete(handler);
  }

  /** The next event `type`, as a promise. */
  once(type) {
    return new Promise((resolve) => {
      const off = this.on(type, (detail) => {
        off();
        resolve(detail);
      });
    });
  }

  _emit(type, detail) {
    for (const key of [type, "*"]) {
      for (const handler of [...(this._handlers.get(key) || [])]) {
        try {
          handler(detail, type);
        } catch (error) {
          console.error(`geopresence: a "${type}" handler failed`, error);
        }
      }
    }
  }

  // ------------------------------------------------------------------ lifecycle

  /** Connect (and keep reconnecting until close() or logout()). Resolves with the welcome
   *  of the first session; rejects with a GeoPresenceError if the hello is refused. */
  connect() {
    if (!this._ready) {
      let resolve;
      let reject;
      const promise = new Promise((ok, fail) => {
        resolve = ok;
        reject = fail;
      });
      promise.catch(() => {}); // a caller that never awaits it must not see an unhandled rejection
      this._ready = { promise, resolve, reject };
    }
    const { promise } = this._ready;
    if (this.state === "idle" || this.state === "closed") {
      this._stopped = false;
      this._attempt = 0;
      globalThis.document?.addEventListener?.("visibilitychange", this._onVisible);
      globalThis.addEventListener?.("online", this._onOnline);
      this._open();
    }
    return promise;
  }

  /** Close the connection and stop reconnecting. For the server this is a drop: friends see
   *  this user offline `offline_after` later unless it connects again. */
  close() {
    this._stop();
    this._detach(1000, "closed by the client");
    this._finish(1000, "closed by the client");
  }

  /** Sign out: the server ends this device at once (friends see it offline now if it was
   *  the last) and closes with 4001. While reconnecting, the session is brought back first
   *  (at once, for at most 5 s): a mere drop would leave the user online `offline_after`. */
  logout() {
    if (this.state === "connecting" || this.state === "reconnecting") {
      return new Promise((resolve) => {
        const settle = (then) => {
          clearTimeout(timer);
          off();
          then().then(resolve);
        };
        const off = this.on("state", ({ state }) => {
          if (state === "open") settle(() => this.logout());
          else if (state === "closed") settle(() => Promise.resolve());
        });
        const timer = setTimeout(() => settle(() => Promise.resolve(this.close())), 5000);
        if (this._retryTimer) this._retryNow(); // no wait for the backoff
      });
    }
    const ws = this._ws;
    this._stop();
    if (ws && this.state === "open") {
      ws.send(JSON.stringify({ type: "logout" }));
      return new Promise((resolve) => {
        const done = () => {
          clearTimeout(timer);
          off();
          resolve();
        };
        const off = this.on("state", ({ state }) => state === "closed" && done());
        const timer = setTimeout(() => {
          this.close(); // no close from the server in time: give up waiting
          done();
        }, 3000);
      });
    }
    this.close();
    return Promise.resolve();
  }

  /** Server time now, epoch seconds (the local clock corrected by the welcome's). */
  serverNow() {
    return Date.now() / 1000 + this.clockOffset;
  }

  _stop() {
    this._stopped = true;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    globalThis.document?.removeEventListener?.("visibilitychange", this._onVisible);
    globalThis.removeEventListener?.("online", this._onOnline);
  }

  _setState(state) {
    if (state === this.state) return;
    const previous = this.state;
    this.state = state;
    this._emit("state", { state, previous });
  }

  _open() {
    this._setState(this.welcome ? "reconnecting" : "connecting");
    this._greeting = "hello";
    let ws;
    try {
      ws = new this.options.WebSocket(this.url);
    } catch (error) {
      // A malformed URL: retrying cannot help.
      this._stop();
      this._finish(1006, String(error), error);
      return;
    }
    this._ws = ws;
    // No welcome in time (a socket that never opens, a hello lost on a dead link): retry.
    clearTimeout(this._greetTimer);
    this._greetTimer = setTimeout(() => {
      if (ws !== this._ws || this._greeting === "done") return;
      this._detach(4000, "no welcome in time");
      this._closed(1006, "no welcome in time");
    }, this.options.requestTimeout * 1000);
    ws.onopen = () => {
      if (ws !== this._ws) return;
      const hello = { type: "hello", device: this.device };
      if (this.options.token) hello.token = this.options.token;
      else hello.user = this.options.user;
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = (event) => {
      if (ws === this._ws) this._receive(event.data);
    };
    ws.onclose = (event) => {
      if (ws === this._ws) this._closed(event.code, event.reason);
    };
    ws.onerror = () => {}; // a close event follows
  }

  /** Forget the current socket (its late events are ignored) and close it. */
  _detach(code, reason) {
    const ws = this._ws;
    this._ws = null;
    clearTimeout(this._greetTimer);
    clearInterval(this._heartbeatTimer);
    clearInterval(this._locationTimer);
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(code, reason);
    } catch {
      // already closing
    }
  }

  _closed(code, reason) {
    const refusal = this._greeting !== "done" ? this._refusal : null;
    this._refusal = null;
    this._detach(1000, "");
    if (code === 1009) this._refuseOversized(reason);
    this._failPending();
    this.closeInfo = { code, reason };
    const final = FINAL_CLOSES.get(code);
    if (refusal || final || this._stopped || !this.options.reconnect) {
      this._stop();
      const error = refusal ? new GeoPresenceError(refusal, code) : null;
      if (error) this._emit("refused", error);
      this._finish(code, reason || final || "", error);
      return;
    }
    const { first, min, max, jitter } = this.options.backoff;
    const base = this._attempt === 0 ? first : Math.min(max, min * 2 ** (this._attempt - 1));
    const delay = base * (1 - jitter / 2 + Math.random() * jitter);
    this._attempt += 1;
    this._setState("reconnecting");
    this._emit("close", { code, reason, reconnecting: true, delay });
    this._retryTimer = setTimeout(() => this._retryNow(), delay * 1000);
  }

  _retryNow() {
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    if (!this._stopped) this._open();
  }

  _finish(code, reason, error = null) {
    const wasClosed = this.state === "closed";
    this._setState("closed");
    if (!wasClosed) this._emit("close", { code, reason, reconnecting: false });
    if (this._ready && this._greeting !== "done") {
      this._ready.reject(error || new DisconnectedError(`closed (${code} ${reason})`));
      this._ready = null;
    }
  }

  /** A 1009 closed the socket for a frame over the server's size limit: the send that was
   *  it is refused (too_large), not resent after the reconnect to be closed again, forever.
   *  The reason names the limit; without it, the largest send in flight is the one. */
  _refuseOversized(reason) {
    const limit = Number(/limit of (\d+) bytes/.exec(reason || "")?.[1]) || 0;
    const inflight = [...this._outbox.values()].filter((entry) => entry.inflight);
    const largest = Math.max(0, ...inflight.map((entry) => entry.bytes));
    for (const entry of inflight) {
      if (limit ? entry.bytes <= limit : entry.bytes < largest) continue;
      this._outbox.delete(entry.frame.client_msg_id);
      entry.reject(new GeoPresenceError({ code: "too_large", message: reason || "message too large" }, 1009));
    }
  }

  _failPending() {
    for (const [id, pending] of this._pending) {
      clearTimeout(pending.timer);
      pending.reject(new DisconnectedError("the connection ended before the reply"));
      this._pending.delete(id);
    }
  }

  // ------------------------------------------------------------------ receiving

  _receive(data) {
    this._lastReceived = Date.now();
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (!frame || typeof frame !== "object") return;
    this._emit("frame", frame);
    if (this._greeting !== "done") {
      this._greet(frame);
      return;
    }
    if (frame.re !== undefined && frame.re !== null && this._pending.has(frame.re)) {
      const pending = this._pending.get(frame.re);
      this._pending.delete(frame.re);
      clearTimeout(pending.timer);
      if (frame.type === "error") pending.reject(new GeoPresenceError(frame));
      else pending.resolve(frame);
      return;
    }
    this._event(frame);
  }

  _greet(frame) {
    if (frame.type === "error") {
      this._refusal = frame; // the close (1008) follows
    } else if (frame.type === "welcome") {
      const reconnected = this.welcome !== null;
      this.welcome = frame;
      this.user = frame.user;
      this.clockOffset = frame.server_time - Date.now() / 1000;
      this._greeting = "friends";
      this._reconnected = reconnected;
    } else if (frame.type === "friends_presence" && this._greeting === "friends") {
      // The first friends_presence of a session is the whole list: it replaces the table.
      this.friends = new Map(frame.friends.map((f) => [f.user, { ...f }]));
      this._greeting = "done";
      this._attempt = 0;
      this._setState("open");
      this._emit("friends", { friends: this.friends, changed: frame.friends, replaced: true });
      this._emit("open", { welcome: this.welcome, reconnected: this._reconnected });
      if (this._ready) {
        this._ready.resolve(this.welcome);
        this._ready = null;
      }
      this._startTimers();
      this._afterConnect();
    }
  }

  _event(frame) {
    const { type, user } = frame;
    if (type === "presence") {
      // Also of co-members of small groups who are not friends: an event only.
      if (this.friends.has(user)) {
        this.friends.set(user, { user, status: frame.status, last_active_at: frame.last_active_at });
      }
    } else if (type === "friends_presence") {
      for (const f of frame.friends) this.friends.set(f.user, { ...f }); // new friends: merge
      this._emit("friends", { friends: this.friends, changed: frame.friends, replaced: false });
      return;
    } else if (type === "friend_removed") {
      this.friends.delete(user);
      this.nearby.delete(user);
    } else if (type === "friend_location") {
      const entry = { user, lat: frame.lat, lon: frame.lon, ts: frame.ts, distance_m: frame.distance_m };
      this.nearby.set(user, entry);
      this._nearbyDraft?.set(user, entry);
    } else if (type === "friend_gone") {
      this.nearby.delete(user);
      this._nearbyDraft?.delete(user);
    } else if (type === "stranger_nearby") {
      this.strangers.set(user, { user, distance_m: frame.distance_m, ts: frame.ts });
    } else if (type === "stranger_gone") {
      this.strangers.delete(user);
    } else if (type === "message") {
      this._applyMessage(frame, "live");
      return;
    } else if (type === "error") {
      this._emit("error", new GeoPresenceError(frame));
      return;
    }
    this._emit(type, frame);
  }

  // ------------------------------------------------------------------ after each connect

  _startTimers() {
    const interval = Number(this.welcome.heartbeat_interval);
    if (this.options.heartbeat && interval > 0) {
      this._heartbeatSent = null;
      this._heartbeatTimer = setInterval(() => this._beat(), interval * 1000);
    }
    if (this.options.locationInterval > 0) {
      this._locationTimer = setInterval(() => {
        if (this.location) this._send({ type: "location", ...this.location });
      }, this.options.locationInterval * 1000);
    }
  }

  /** A heartbeat with an id; if the previous one got no reply and nothing at all came in
   *  since, the link is dead (a socket can stay "open" long after its network went): drop
   *  it and reconnect now, well inside offline_after, so friends see no change. */
  _beat() {
    const sent = this._heartbeatSent;
    const interval = Number(this.welcome.heartbeat_interval) * 1000;
    const waited = Date.now() - sent;
    // (A beat out of turn, when a hidden tab shows again, judges only a heartbeat that has
    // had its interval to be answered.)
    if (sent != null && !(this._lastReceived >= sent) && waited >= 0.9 * interval) {
      this._detach(4000, "no heartbeat reply");
      this._closed(1006, "no heartbeat reply");
      return;
    }
    const at = Date.now();
    this._heartbeatSent = at;
    this.request("heartbeat").then(
      (reply) => {
        if (this._heartbeatSent === at) this._heartbeatSent = null;
        if (typeof reply.server_time === "number") {
          this.clockOffset = reply.server_time - Date.now() / 1000;
        }
      },
      () => {},
    );
  }

  async _afterConnect() {
    const ws = this._ws;
    // Each step on its own: one refused (strangers without a position: no_location) must
    // not keep the others, above all the sync, from running.
    const steps = [
      async () => {
        this.settings = await this.request("settings");
        this._emit("settings", this.settings);
      },
      async () => {
        if (this.location) await this.nearbyFriends(this.location);
        else if (this.nearby.size) {
          this.nearby = new Map(); // shown before the drop; this connection's view is empty
          this._emit("nearby", { friends: [] });
        }
      },
      async () => {
        if (this.watching) await this.watchStrangers(true);
      },
      () => this.sync(),
    ];
    for (const step of steps) {
      if (ws !== this._ws) return; // that connection ended: the next one starts over
      try {
        await step();
      } catch (error) {
        if (!(error instanceof DisconnectedError)) this._emit("error", error);
      }
    }
    if (ws === this._ws) {
      this._flushSends();
    }
  }

  // ------------------------------------------------------------------ requests

  _send(frame) {
    if (!this._ws || this._greeting !== "done") return false;
    this._ws.send(JSON.stringify(frame));
    return true;
  }

  /** Send `{type, id, ...fields}` and resolve with the reply that carries `re` = id; an
   *  `error` reply rejects with a GeoPresenceError (rate_limited ones are retried first),
   *  a connection that ends first with a DisconnectedError. */
  request(type, fields = {}, retries = this.options.rateLimitRetries) {
    if (!this._ws || this._greeting !== "done") {
      return Promise.reject(new DisconnectedError());
    }
    const id = this._nextId++;
    const reply = new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new DisconnectedError(`no reply to ${type} in time`, "timeout"));
      }, this.options.requestTimeout * 1000);
      this._pending.set(id, { resolve, reject, timer });
    });
    this._ws.send(JSON.stringify({ type, id, ...fields }));
    return reply.catch((error) => {
      const wait = /retry in ([0-9.]+) s/.exec(error.message || "");
      if (error.code !== "rate_limited" || retries <= 0 || !wait) throw error;
      return new Promise((r) => setTimeout(r, Number(wait[1]) * 1000 + 10)).then(() =>
        this.request(type, fields, retries - 1),
      );
    });
  }

  /** Report our position (`location`, no reply). It is remembered: re-sent every
   *  `locationInterval` and, after a reconnect, with nearby_friends. */
  setLocation(lat, lon) {
    this.location = { lat, lon };
    this._send({ type: "location", lat, lon });
  }

  /** The friends near us, every page (nearest first); with `{lat, lon}` our position is
   *  first set to it. Replaces `nearby` and emits "nearby". */
  async nearbyFriends(at = null) {
    const where = at ? { lat: at.lat, lon: at.lon } : {};
    if (at) this.location = { lat: at.lat, lon: at.lon };
    const draft = new Map();
    this._nearbyDraft = draft; // events that arrive meanwhile are newer than the pages
    try {
      for (let page = 0; page < this.options.nearbyPages; page++) {
        const reply = await this.request("nearby_friends", { page, ...(page === 0 ? where : {}) });
        for (const f of reply.friends) draft.set(f.user, { ...f }); // newer than earlier events
        if ((page + 1) * reply.page_size >= reply.total) break;
      }
    } finally {
      if (this._nearbyDraft === draft) this._nearbyDraft = null;
    }
    this.nearby = draft;
    const friends = [...draft.values()];
    this._emit("nearby", { friends });
    return friends;
  }

  /** Read (no argument) or change settings: any of share_location, radius_m,
   *  visible_to_strangers. Resolves with all three, once durable. */
  async updateSettings(patch = {}) {
    this.settings = await this.request("settings", patch);
    this._emit("settings", this.settings);
    return this.settings;
  }

  /** Watch strangers (opt-in users near us who are not friends) or stop. While on, renewed
   *  after each reconnect; `strangers` is filled with nearby_people's first page. */
  async watchStrangers(on = true) {
    this.watching = on;
    if (!on) {
      // Emptied first: the request fails while reconnecting, and the next connection does
      // not watch at all (a watch lasts one connection).
      this.strangers = new Map();
      this._emit("strangers", { people: [] });
    }
    await this.request("watch_strangers", { on });
    return on ? this.nearbyPeople() : [];
  }

  /** One page of nearby_people (rate limited by the server); page 0 replaces `strangers`. */
  async nearbyPeople(page = 0) {
    const reply = await this.request("nearby_people", { page });
    if (page === 0) {
      this.strangers = new Map(reply.people.map((p) => [p.user, { ...p }]));
      this._emit("strangers", { people: reply.people });
    }
    return reply.people;
  }

  /** `{group, online, total}` of a group we belong to. */
  groupPresence(group) {
    return this.request("group_presence", { group });
  }

  // ------------------------------------------------------------------ chat

  /** Send a chat message `{to}` (a friend) or `{group}`, with `text`. Resolves with the
   *  `sent` ack once the server stored it. Kept across reconnects and resent with the same
   *  client_msg_id (the server answers a resend with the original), so it is sent once. */
  sendMessage({ to, group, text, clientMsgId }) {
    const bytes = typeof text === "string" ? new TextEncoder().encode(text).length : 0;
    if (bytes > MAX_TEXT_BYTES) {
      const message = `text is ${bytes} UTF-8 bytes, more than ${MAX_TEXT_BYTES}`;
      return Promise.reject(new GeoPresenceError({ code: "too_large", message }));
    }
    const client_msg_id = clientMsgId || randomId("m-");
    const frame = { text, client_msg_id, ...(group ? { group } : { to }) };
    return new Promise((resolve, reject) => {
      const entry = { frame, resolve, reject, inflight: false };
      this._outbox.set(client_msg_id, entry);
      if (this.state === "open") this._flushSends();
    });
  }

  /** Send what waits in the outbox, in order, at most SEND_WINDOW at once, none while a
   *  rate_limited reply's wait runs: a burst of sends (many queued while offline, or a
   *  loop) must not flood the server's rate limit, which refuses them and then closes the
   *  connection for abuse (4008). */
  _flushSends() {
    const wait = this._sendsPausedUntil - Date.now();
    if (wait > 0) {
      this._sendsTimer ??= setTimeout(() => {
        this._sendsTimer = null;
        if (this.state === "open") this._flushSends();
      }, wait);
      return;
    }
    let inflight = 0;
    for (const entry of this._outbox.values()) if (entry.inflight) inflight += 1;
    for (const entry of this._outbox.values()) {
      if (inflight >= SEND_WINDOW) break;
      if (entry.inflight) continue;
      this._flushSend(entry);
      inflight += 1;
    }
  }

  _flushSend(entry) {
    entry.inflight = true;
    entry.bytes = new TextEncoder().encode(JSON.stringify({ type: "send", id: this._nextId, ...entry.frame })).length;
    this.request("send", entry.frame, 0).then(
      (sent) => {
        this._outbox.delete(entry.frame.client_msg_id);
        const message = {
          type: "message",
          message_id: sent.message_id,
          from: this.user,
          text: entry.frame.text,
          created_at: sent.created_at,
          ...(entry.frame.group ? { group: entry.frame.group } : { to: entry.frame.to }),
          client_msg_id: entry.frame.client_msg_id,
        };
        this._applyMessage(message, "sent");
        entry.resolve(sent);
        if (this.state === "open") this._flushSends();
      },
      (error) => {
        entry.inflight = false;
        if (error instanceof DisconnectedError) {
          // No ack in time on a live connection (a slow disk or Redis): resent now with the
          // same client_msg_id, answered with the original if it was stored; after a drop,
          // resent after the reconnect.
          if (error.code === "timeout" && this.state === "open" && this._outbox.has(entry.frame.client_msg_id)) {
            this._flushSend(entry);
          }
          return;
        }
        const wait = /retry in ([0-9.]+) s/.exec(error.message || "");
        if (error.code === "rate_limited" && wait) {
          // Not handled: kept, and every send waits the time named.
          this._sendsPausedUntil = Math.max(this._sendsPausedUntil, Date.now() + Number(wait[1]) * 1000 + 10);
        } else {
          this._outbox.delete(entry.frame.client_msg_id);
          entry.reject(error);
        }
        if (this.state === "open") this._flushSends();
      },
    );
  }

  /** Fetch every message after `cursor` (pages of `sync` until `more` is false) and emit
   *  each as a "message" event; done after every connect. Live messages (and our own
   *  acknowledged sends) that arrive meanwhile are held and applied after, in id order; a
   *  sync cut short (a drop) drops them instead: applied, they would move the cursor past
   *  messages it had not fetched yet, and the next sync, from the cursor, brings them. */
  async sync() {
    this._held = this._held || [];
    this._syncing = (this._syncing || 0) + 1;
    let complete = false;
    try {
      let after = this.cursor;
      for (;;) {
        const reply = await this.request("sync", { after, limit: this.options.syncLimit });
        for (const message of reply.messages) this._applyMessage(message, "sync");
        if (!reply.more || reply.messages.length === 0) break;
        after = reply.messages[reply.messages.length - 1].message_id;
      }
      complete = true;
    } finally {
      this._syncing -= 1;
      if (this._syncing === 0) {
        const held = this._held.sort((a, b) => compareMessageIds(a[0].message_id, b[0].message_id));
        this._held = [];
        if (complete) for (const [message, source] of held) this._applyMessage(message, source);
      }
    }
    this._emit("synced", { cursor: this.cursor });
    return this.cursor;
  }

  /** Emit a message once (by id) and advance the cursor. */
  _applyMessage(message, source) {
    if (source !== "sync" && this._syncing) {
      this._held.push([message, source]);
      return;
    }
    const id = message.message_id;
    if (this._seen.has(id)) return;
    this._seen.add(id);
    if (this._seen.size > SEEN_IDS) this._seen.delete(this._seen.values().next().value);
    if (compareMessageIds(id, this.cursor) > 0) this.cursor = id;
    this._emit("message", { ...message, source });
  }
}
