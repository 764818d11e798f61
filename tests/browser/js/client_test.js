// geopresence.js's own tests, run in the browser (tests/browser/test_client_js.py serves
// this folder, opens index.html and collects window.__results). Each test("...") is one
// pytest case; keep the names unique.

import { FakeServer } from "./fake_server.js";

// The module under test comes from the geopresence server (another origin: CORS).
const params = new URLSearchParams(location.search);
const { DisconnectedError, GeoPresence, GeoPresenceError, compareMessageIds } = await import(
  `${params.get("http")}/client/geopresence.js`
);

const tests = [];
const test = (name, fn) => tests.push({ name, fn });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function assert(condition, message = "assertion failed") {
  if (!condition) throw new Error(message);
}
function equal(actual, expected, what = "value") {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${what}: expected ${e}, got ${a}`);
}
async function until(check, what, ms = 3000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (check()) return;
    await sleep(5);
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** A client of `server` with fast timings. */
function fakeClient(server, options = {}) {
  return new GeoPresence({
    url: "ws://fake.test/ws",
    user: "alice",
    device: "phone",
    WebSocket: server.WebSocket,
    backoff: { first: 0, min: 0.04, max: 0.2, jitter: 0 },
    locationInterval: 0,
    requestTimeout: 2,
    ...options,
  });
}

// ---------------------------------------------------------------------- fake server

test("hello carries user and device; welcome and friends_presence fill the state", async () => {
  const server = new FakeServer({ friends: [{ user: "bob", status: "online", last_active_at: 5 }] });
  const client = fakeClient(server);
  const welcome = await client.connect();
  equal(server.sockets[0].sent[0], { type: "hello", device: "phone", user: "alice" }, "hello");
  equal(welcome.user, "alice", "welcome.user");
  equal(client.state, "open", "state");
  equal([...client.friends.keys()], ["bob"], "friends");
  assert(Math.abs(client.serverNow() - (Date.now() / 1000 + 100)) < 1, "clock offset from the welcome");
  client.close();
});

test("a token goes in the hello instead of a user", async () => {
  const server = new FakeServer();
  const client = new GeoPresence({ url: "ws://x/ws", token: "t0k", device: "d", WebSocket: server.WebSocket });
  await client.connect();
  equal(server.sockets[0].sent[0], { type: "hello", device: "d", token: "t0k" }, "hello");
  client.close();
});

test("request resolves with the reply carrying its id; an error reply rejects with its code", async () => {
  const server = new FakeServer();
  server.handlers.group_presence = (socket, frame) =>
    frame.group === "g1"
      ? { type: "group_presence", group: "g1", online: ["bob"], total: 3 }
      : { type: "error", code: "forbidden", message: "not a member of group 'g2'" };
  const client = fakeClient(server);
  await client.connect();
  const [one, two] = await Promise.all([client.groupPresence("g1"), client.groupPresence("g1")]);
  assert(one.re !== two.re, "each request has its own id");
  equal(one.online, ["bob"], "reply");
  try {
    await client.groupPresence("g2");
    throw new Error("no rejection");
  } catch (error) {
    assert(error instanceof GeoPresenceError, `a GeoPresenceError, got ${error}`);
    equal(error.code, "forbidden", "code");
  }
  client.close();
});

test("heartbeats go at the welcome's interval, with an id", async () => {
  const server = new FakeServer({ heartbeatInterval: 0.03 });
  const client = fakeClient(server);
  await client.connect();
  await sleep(200);
  const beats = server.sockets[0].sent.filter((f) => f.type === "heartbeat");
  // At most one per 30 ms (8 in 0.2 s); timers run late on a busy machine, never early.
  assert(beats.length >= 2 && beats.length <= 8, `2 to 8 heartbeats in 0.2 s, got ${beats.length}`);
  assert(beats.every((b) => typeof b.id === "number"), "with an id");
  client.close();
});

test("a dead link (no heartbeat reply) is dropped and reconnected with the same device", async () => {
  const server = new FakeServer({ heartbeatInterval: 0.03 });
  const client = fakeClient(server);
  await client.connect();
  const first = server.last;
  server.silent = (socket) => socket === first; // the network went: it looks open, says nothing
  await until(() => server.sockets.length === 2, "a second connection");
  await until(() => client.state === "open", "open again");
  equal(server.sockets[1].hello.device, "phone", "same device id");
  assert(server.sockets[0].closedBy, "the dead socket was closed by the client");
  client.close();
});

test("a connection that gets no welcome in time is dropped and retried", async () => {
  const server = new FakeServer();
  server.silent = (socket) => socket === server.sockets[0];
  const client = fakeClient(server, { requestTimeout: 0.1 });
  await client.connect();
  equal(server.sockets.length, 2, "a second connection");
  assert(server.opened[1] - server.opened[0] >= 90, "after the timeout");
  client.close();
});

test("after a drop it reconnects at once, then backs off", async () => {
  const server = new FakeServer();
  const client = fakeClient(server);
  await client.connect();
  server.unreachable = true;
  const dropped = Date.now();
  server.last.drop(1006);
  await until(() => server.sockets.length >= 5, "four reconnect attempts");
  const [, first, ...next] = server.opened;
  assert(first - dropped < 30, `the first attempt at once, got ${first - dropped} ms`);
  const gaps = next.map((t, i) => t - server.opened[i + 1]);
  assert(gaps[0] >= 35 && gaps[1] >= 75 && gaps[2] >= 155, `then 40, 80, 160 ms: got ${gaps}`);
  server.unreachable = false;
  await until(() => client.state === "open", "open again");
  client.close();
});

for (const [code, why] of [[4001, "logged out"], [4002, "replaced"], [1008, "refused"]]) {
  test(`close ${code} (${why}) stops reconnecting`, async () => {
    const server = new FakeServer();
    const client = fakeClient(server);
    await client.connect();
    const closed = client.once("close");
    server.last.drop(code, why);
    const event = await closed;
    equal([event.code, event.reconnecting], [code, false], "close event");
    await sleep(100);
    equal([server.sockets.length, client.state], [1, "closed"], "no new connection");
  });
}

test("a refused hello rejects connect() with the server's error", async () => {
  const server = new FakeServer();
  server.refuse = { code: "unauthorized", message: "token expired" };
  const client = fakeClient(server);
  try {
    await client.connect();
    throw new Error("connect() resolved");
  } catch (error) {
    assert(error instanceof GeoPresenceError, `a GeoPresenceError, got ${error}`);
    equal([error.code, error.message, error.closeCode], ["unauthorized", "token expired", 1008], "error");
  }
  await sleep(100);
  equal(server.sockets.length, 1, "no retry in a loop");
});

test("sync pages from the cursor after every connect, each message once, in id order", async () => {
  const server = new FakeServer();
  for (let i = 0; i < 5; i++) server.store({ from: "bob", to: "alice", text: `m${i}` });
  const client = fakeClient(server, { syncLimit: 2 });
  const seen = [];
  client.on("message", (m) => seen.push([m.text, m.source]));
  await client.connect();
  await client.once("synced");
  const syncs = server.sockets[0].sent.filter((f) => f.type === "sync");
  equal(syncs.map((s) => s.after), ["0", server.messages[1].message_id, server.messages[3].message_id], "pages");
  equal(seen.map((s) => s[0]), ["m0", "m1", "m2", "m3", "m4"], "messages");
  equal(client.cursor, server.messages[4].message_id, "cursor");
  // Offline meanwhile: two more, then a reconnect syncs from the cursor.
  server.store({ from: "bob", to: "alice", text: "m5" });
  server.store({ from: "bob", to: "alice", text: "m6" });
  server.last.drop(1006);
  await client.once("synced");
  equal(server.last.sent.find((f) => f.type === "sync").after, server.messages[4].message_id, "from the cursor");
  equal(seen.map((s) => s[0]).slice(5), ["m5", "m6"], "only the new ones");
  // A live frame that repeats a synced one is dropped.
  server.last.push(server.messages[6]);
  await sleep(20);
  equal(seen.length, 7, "no duplicate");
  client.close();
});

test("live messages during a sync are held and applied after it, in id order", async () => {
  const server = new FakeServer();
  const early = server.store({ from: "bob", to: "alice", text: "stored" });
  let release;
  server.handlers.sync = (socket, frame) => {
    // The reply waits; meanwhile two live messages arrive, newest first.
    const later = server.store({ from: "bob", to: "alice", text: "live1" });
    const latest = server.store({ from: "bob", to: "alice", text: "live2" });
    socket.push(latest);
    socket.push(later);
    release = () => socket.push({ type: "messages", re: frame.id, messages: [early], more: false });
    return null;
  };
  const client = fakeClient(server);
  const seen = [];
  client.on("message", (m) => seen.push(m.text));
  await client.connect();
  await until(() => release, "the sync request");
  await sleep(10);
  equal(seen, [], "held while syncing");
  release();
  await client.once("synced");
  await sleep(5);
  equal(seen, ["stored", "live1", "live2"], "in id order");
  client.close();
});

test("a sync cut by a drop does not move the cursor past what it had not fetched yet", async () => {
  const server = new FakeServer();
  server.store({ from: "bob", to: "alice", text: "while away" });
  let first = true;
  server.handlers.sync = (socket) => {
    if (!first) return undefined; // the usual pages
    first = false;
    // A live message arrives during the sync, then the link drops before the reply.
    socket.push(server.store({ from: "bob", to: "alice", text: "live" }));
    setTimeout(() => socket.drop(1006), 5);
    return null;
  };
  const client = fakeClient(server);
  const seen = [];
  client.on("message", (m) => seen.push(m.text));
  await client.connect();
  await client.once("synced");
  equal(server.last.sent.find((f) => f.type === "sync").after, "0", "the second sync starts where the first did");
  equal(seen.sort(), ["live", "while away"], "both messages");
  client.close();
});

test("our own acknowledged send during a sync does not move the cursor past it either", async () => {
  const server = new FakeServer();
  server.store({ from: "bob", to: "alice", text: "while away" });
  let first = true;
  let client;
  server.handlers.sync = (socket) => {
    if (!first) return undefined;
    first = false;
    client.sendMessage({ to: "bob", text: "mine" }); // acknowledged before the sync's reply
    setTimeout(() => socket.drop(1006), 20);
    return null;
  };
  client = fakeClient(server);
  const seen = [];
  client.on("message", (m) => seen.push(m.text));
  await client.connect();
  await client.once("synced");
  await sleep(20);
  equal(server.last.sent.find((f) => f.type === "sync").after, "0", "the second sync starts where the first did");
  equal(seen.sort(), ["mine", "while away"], "both messages, once each");
  client.close();
});

test("an unacknowledged send is resent with the same client_msg_id after a reconnect", async () => {
  const server = new FakeServer();
  server.ackSends = false;
  const client = fakeClient(server);
  await client.connect();
  const events = [];
  client.on("message", (m) => events.push(m));
  const sent = client.sendMessage({ to: "bob", text: "lunch?" });
  await until(() => server.last.sent.some((f) => f.type === "send"), "the send");
  const first = server.last.sent.find((f) => f.type === "send");
  server.ackSends = true;
  server.last.drop(1006);
  const ack = await sent;
  const resent = server.last.sent.find((f) => f.type === "send");
  equal(resent.client_msg_id, first.client_msg_id, "same client_msg_id");
  equal(ack.message_id, server.messages[0].message_id, "ack");
  equal(server.messages.length, 1, "stored once");
  await sleep(20);
  equal(events.map((m) => [m.text, m.source, m.from]), [["lunch?", "sent", "alice"]], "one message event");
  client.close();
});

test("a send whose ack does not come in time is resent on the same connection", async () => {
  const server = new FakeServer();
  let calls = 0;
  server.handlers.send = () => (++calls === 1 ? null : undefined); // the first ack is lost (a stuck disk)
  const client = fakeClient(server, { requestTimeout: 0.2 });
  await client.connect();
  const ack = await client.sendMessage({ to: "bob", text: "lunch?" });
  const sends = server.last.sent.filter((f) => f.type === "send");
  equal([server.sockets.length, sends.length], [1, 2], "resent on the same connection");
  equal(sends[1].client_msg_id, sends[0].client_msg_id, "same client_msg_id");
  equal(ack.message_id, server.messages[0].message_id, "ack");
  client.close();
});

test("many sends at once stay under the rate limit: none refused, no 4008 for abuse", async () => {
  const server = new FakeServer();
  // The server's token bucket, small: a burst of 10, then one per 20 ms; 20 refused in a
  // row close the connection (4008 rate limit abuse), as --rate-burst and --abuse-limit do.
  let tokens = 10;
  let refill = Date.now();
  let inARow = 0;
  const sent = server.handlers;
  sent.send = (socket) => {
    tokens = Math.min(10, tokens + (Date.now() - refill) / 20);
    refill = Date.now();
    if (tokens >= 1) {
      tokens -= 1;
      inARow = 0;
      return undefined; // stored and acknowledged
    }
    if (++inARow >= 20) setTimeout(() => socket.drop(4008, "rate limit abuse"), 1);
    return { type: "error", code: "rate_limited", message: "more than 50 messages per second (burst 10); retry in 0.02 s" };
  };
  const client = fakeClient(server);
  await client.connect();
  const all = [];
  for (let i = 0; i < 60; i++) all.push(client.sendMessage({ to: "bob", text: `m${i}` }));
  const outcomes = await Promise.allSettled(all);
  equal(outcomes.filter((o) => o.status === "rejected").map((o) => o.reason.code), [], "refused");
  equal([server.sockets.length, server.messages.length], [1, 60], "one connection, every message stored once");
  client.close();
});

test("a send refused by the server rejects, and is not resent", async () => {
  const server = new FakeServer();
  server.handlers.send = () => ({ type: "error", code: "forbidden", message: "'carol' is not your friend" });
  const client = fakeClient(server);
  await client.connect();
  try {
    await client.sendMessage({ to: "carol", text: "hi" });
    throw new Error("resolved");
  } catch (error) {
    equal(error.code, "forbidden", "code");
  }
  server.last.drop(1006);
  await client.once("synced");
  await sleep(20);
  equal(server.last.sent.filter((f) => f.type === "send").length, 0, "not resent");
  client.close();
});

test("a send closed with 1009 (over the server's frame limit) is refused, not resent in a loop", async () => {
  const server = new FakeServer();
  const limit = 2000; // a server run with a low --max-message-bytes
  server.handlers.send = (socket, frame) => {
    const bytes = new TextEncoder().encode(JSON.stringify(frame)).length;
    if (bytes <= limit) return undefined; // stored and acknowledged as usual
    setTimeout(() => socket.drop(1009, `frame with ${bytes} bytes exceeds limit of ${limit} bytes`), 1);
    return null;
  };
  const client = fakeClient(server);
  await client.connect();
  try {
    await client.sendMessage({ to: "bob", text: "x".repeat(3000) });
    throw new Error("resolved");
  } catch (error) {
    equal([error.code, error.closeCode], ["too_large", 1009], "refused");
  }
  await until(() => client.state === "open", "reconnected");
  const ack = await client.sendMessage({ to: "bob", text: "short" });
  await sleep(50);
  const sends = server.sockets.flatMap((s) => s.sent).filter((f) => f.type === "send");
  equal([server.sockets.length, sends.length, ack.message_id], [2, 2, server.messages[0].message_id], "sent once each");
  client.close();
});

test("a text over 4096 UTF-8 bytes is refused before it is sent", async () => {
  const server = new FakeServer();
  const client = fakeClient(server);
  await client.connect();
  try {
    await client.sendMessage({ to: "bob", text: "é".repeat(2049) });
    throw new Error("resolved");
  } catch (error) {
    equal(error.code, "too_large", "code");
  }
  await sleep(20);
  equal(server.last.sent.filter((f) => f.type === "send").length, 0, "nothing sent");
  client.close();
});

test("events keep the friends, nearby and strangers tables", async () => {
  const server = new FakeServer({ friends: [{ user: "bob", status: "offline", last_active_at: null }] });
  const client = fakeClient(server);
  await client.connect();
  const types = [];
  client.on("*", (_, type) => types.push(type));
  const s = server.last;
  s.push({ type: "presence", user: "bob", status: "online", last_active_at: 10 });
  s.push({ type: "friends_presence", friends: [{ user: "carol", status: "online", last_active_at: 11 }] });
  s.push({ type: "friend_location", user: "bob", lat: 1, lon: 2, ts: 12, distance_m: 150.5 });
  s.push({ type: "stranger_nearby", user: "zoe", distance_m: 300, ts: 13 });
  equal(client.friends.get("bob").status, "online", "presence applied");
  equal([...client.friends.keys()].sort(), ["bob", "carol"], "a later friends_presence merges");
  equal(client.nearby.get("bob").distance_m, 150.5, "friend_location");
  equal(client.strangers.get("zoe").distance_m, 300, "stranger_nearby");
  s.push({ type: "friend_gone", user: "bob", reason: "hidden" });
  s.push({ type: "stranger_gone", user: "zoe", reason: "offline" });
  s.push({ type: "friend_removed", user: "carol" });
  equal([client.nearby.size, client.strangers.size, [...client.friends.keys()]], [0, 0, ["bob"]], "gone");
  s.push({ type: "error", re: null, code: "bad_request", message: "x" });
  equal(types.filter((t) => !["frame"].includes(t)),
    ["presence", "friends", "friend_location", "stranger_nearby", "friend_gone", "stranger_gone", "friend_removed", "error"],
    "typed events");
  client.close();
});

test("presence of a group co-member who is not a friend does not add a friend", async () => {
  const server = new FakeServer({ friends: [{ user: "bob", status: "offline", last_active_at: null }] });
  const client = fakeClient(server);
  await client.connect();
  const seen = client.once("presence");
  server.last.push({ type: "presence", user: "carol", status: "online", last_active_at: 10 });
  equal((await seen).user, "carol", "still an event");
  equal([...client.friends.keys()], ["bob"], "friends");
  client.close();
});

/** A connected client at (37.5, 127) watching strangers, zoe 200 m away among them. */
async function watchingZoe() {
  const server = new FakeServer();
  server.handlers.nearby_people = () => ({ type: "nearby_people", page: 0, page_size: 20, total: 1, people: [{ user: "zoe", distance_m: 200, ts: 1 }] });
  const client = fakeClient(server);
  await client.connect();
  await client.nearbyFriends({ lat: 37.5, lon: 127 });
  await client.watchStrangers(true);
  return { server, client };
}

test("a reconnect re-sends our position with nearby_friends and renews watch_strangers", async () => {
  const { server, client } = await watchingZoe();
  equal(client.strangers.get("zoe").distance_m, 200, "strangers table");
  server.last.drop(1001, "server shutting down");
  await client.once("synced");
  const sent = server.last.sent.map((f) => f.type);
  equal(sent.slice(0, 5), ["hello", "settings", "nearby_friends", "watch_strangers", "nearby_people"], "after reconnect");
  equal(server.last.sent[2].lat, 37.5, "same position");
  client.close();
});

test("a refused step after a connect (strangers without a position) does not skip the sync", async () => {
  const server = new FakeServer();
  server.store({ from: "bob", to: "alice", text: "while away" });
  server.handlers.nearby_people = () => ({
    type: "error", code: "no_location", message: "no known location for you: send a location first",
  });
  const client = fakeClient(server);
  client.watching = true; // ticked before any position (the console renews it after a reload)
  const seen = [];
  const errors = [];
  client.on("message", (m) => seen.push(m.text));
  client.on("error", (e) => errors.push(e.code));
  await client.connect();
  await until(() => seen.length === 1, "the message synced despite the refused nearby_people");
  equal(errors, ["no_location"], "the refusal is still reported");
  client.close();
});

test("watching strangers turned off while reconnecting empties the table all the same", async () => {
  const { server, client } = await watchingZoe();
  equal(client.strangers.size, 1, "watching");
  server.unreachable = true;
  server.last.drop(1006);
  const emptied = client.once("strangers");
  await client.watchStrangers(false).catch(() => {}); // not connected: the request fails
  equal((await emptied).people, [], "a strangers event");
  equal(client.strangers.size, 0, "nobody shown any more");
  server.unreachable = false;
  await client.once("synced");
  equal([client.strangers.size, server.last.sent.some((f) => f.type === "watch_strangers")], [0, false], "not renewed");
  client.close();
});

test("a request on a connection that drops rejects with DisconnectedError", async () => {
  const server = new FakeServer();
  server.handlers.group_presence = () => null; // never answered
  const client = fakeClient(server);
  await client.connect();
  const pending = client.groupPresence("g1");
  server.last.drop(1006);
  try {
    await pending;
    throw new Error("resolved");
  } catch (error) {
    assert(error instanceof DisconnectedError, `DisconnectedError, got ${error}`);
  }
  client.close();
});

test("rate_limited replies are retried after the time the server names", async () => {
  const server = new FakeServer();
  let calls = 0;
  server.handlers.nearby_people = () =>
    ++calls === 1
      ? { type: "error", code: "rate_limited", message: "nearby_people is limited; retry in 0.05 s" }
      : { type: "nearby_people", page: 0, page_size: 20, total: 0, people: [] };
  const client = fakeClient(server);
  await client.connect();
  const started = Date.now();
  await client.nearbyPeople();
  assert(calls === 2 && Date.now() - started >= 50, `retried after 50 ms (${calls} calls)`);
  client.close();
});

test("logout sends logout and ends without reconnecting", async () => {
  const server = new FakeServer();
  server.handlers.logout = (socket) => {
    setTimeout(() => socket.drop(4001, "logged out"), 2);
    return null;
  };
  const client = fakeClient(server);
  await client.connect();
  await client.logout();
  equal(client.state, "closed", "state");
  await sleep(60);
  equal(server.sockets.length, 1, "no reconnect");
});

test("logout while reconnecting gets the session back first, then logs out", async () => {
  const server = new FakeServer();
  const logouts = [];
  server.handlers.logout = (socket) => {
    logouts.push(socket);
    setTimeout(() => socket.drop(4001, "logged out"), 2);
    return null;
  };
  const client = fakeClient(server, { backoff: { first: 10, min: 10, max: 10, jitter: 0 } });
  await client.connect();
  server.last.drop(1006, "network"); // the next attempt is 10 s away
  await until(() => client.state === "reconnecting", "reconnecting");
  await client.logout(); // a drop alone would leave the user online for offline_after
  equal(logouts.length, 1, "a logout sent");
  equal(logouts[0], server.sockets[1], "on the new connection, at once");
  equal(client.state, "closed", "state");
  await sleep(60);
  equal(server.sockets.length, 2, "no reconnect after it");
});

test("compareMessageIds orders 64-bit ids that JavaScript numbers cannot", async () => {
  equal(compareMessageIds("9007199254740993", "9007199254740992"), 1, "beyond 2**53");
  equal(compareMessageIds("99", "100"), -1, "by length first");
  equal(compareMessageIds("7311", "7311"), 0, "equal");
});

// ---------------------------------------------------------------------- the real server

const WS = params.get("ws");

test("against the real server: presence, a location and a message between two clients", async () => {
  const a = new GeoPresence({ url: WS, user: params.get("a"), device: "js" });
  const b = new GeoPresence({ url: WS, user: params.get("b"), device: "js" });
  await a.connect();
  const online = a.once("presence");
  await b.connect();
  equal((await online).status, "online", "presence");
  await a.nearbyFriends({ lat: 37.5665, lon: 126.978 });
  const seen = a.once("friend_location");
  b.setLocation(37.5796, 126.977);
  const location = await seen;
  assert(Math.abs(location.distance_m - 1459.3) < 1, `1459 m, got ${location.distance_m}`);
  const got = a.once("message");
  const ack = await b.sendMessage({ to: params.get("a"), text: "lunch?" });
  const message = await got;
  equal([message.message_id, message.text, message.source], [ack.message_id, "lunch?", "live"], "message");
  const offline = a.once("presence");
  await b.logout();
  equal((await offline).status, "offline", "offline at once after logout");
  a.close();
});

// ---------------------------------------------------------------------- runner

async function run() {
  const results = [];
  for (const { name, fn } of tests) {
    const started = performance.now();
    try {
      await Promise.race([fn(), sleep(8000).then(() => Promise.reject(new Error("timed out (8 s)")))]);
      results.push({ name, ok: true, ms: performance.now() - started });
    } catch (error) {
      results.push({ name, ok: false, error: String(error?.stack || error), ms: performance.now() - started });
    }
  }
  return results;
}

window.__results = run();
