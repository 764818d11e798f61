// A scripted geopresence server behind a fake WebSocket class, for the client's unit tests:
// every socket the client opens is recorded, frames are answered like the real server does
// (welcome, replies by id, sync pages, sent acks with client_msg_id de-duplication), and a
// test can drop, silence or refuse connections.

export class FakeServer {
  constructor({ heartbeatInterval = 0.05, friends = [] } = {}) {
    this.heartbeatInterval = heartbeatInterval;
    this.friends = friends;
    this.sockets = [];
    this.opened = []; // Date.now() of each socket
    this.messages = []; // the store: {message_id, from, to|group, text, created_at}
    this.keys = new Map(); // client_msg_id -> message
    this.nextId = 7311000000000000001n;
    this.silent = false; // answer nothing (a dead link): true, or a predicate of the socket
    this.refuse = null; // an error frame for the next hellos, then close 1008
    this.unreachable = false; // sockets fail before opening
    this.ackSends = true;
    this.handlers = {}; // type -> (socket, frame) => reply or undefined
    const server = this;
    this.WebSocket = class FakeSocket {
      constructor(url) {
        this.url = url;
        this.readyState = 0;
        this.sent = [];
        server.sockets.push(this);
        server.opened.push(Date.now());
        setTimeout(() => {
          if (server.unreachable) return this.drop(1006);
          this.readyState = 1;
          this.onopen?.({});
        }, 1);
      }
      send(data) {
        if (this.readyState !== 1) throw new Error("not open");
        const frame = JSON.parse(data);
        this.sent.push(frame);
        const silent = typeof server.silent === "function" ? server.silent(this) : server.silent;
        if (!silent) server.handle(this, frame);
      }
      close(code = 1000, reason = "") {
        this.closedBy = { code, reason };
        this.readyState = 3;
      }
      /** The server side: a frame to the client. */
      push(frame) {
        if (this.readyState === 1) this.onmessage?.({ data: JSON.stringify(frame) });
      }
      /** The connection ends with `code` (1006: no close frame, the network went). */
      drop(code = 1006, reason = "") {
        if (this.readyState === 3) return;
        this.readyState = 3;
        this.onclose?.({ code, reason });
      }
    };
  }

  get last() {
    return this.sockets[this.sockets.length - 1];
  }

  store(fields) {
    const message = { type: "message", message_id: String(this.nextId++), created_at: Date.now() / 1000, ...fields };
    this.messages.push(message);
    return message;
  }

  handle(socket, frame) {
    const reply = (fields) => setTimeout(() => socket.push({ ...fields, re: frame.id ?? null }), 1);
    const custom = this.handlers[frame.type]?.(socket, frame);
    if (custom !== undefined) {
      if (custom !== null) reply(custom);
      return;
    }
    switch (frame.type) {
      case "hello":
        if (this.refuse) {
          const refusal = this.refuse;
          setTimeout(() => socket.push({ type: "error", re: null, ...refusal }), 1);
          setTimeout(() => socket.drop(1008, refusal.message), 3);
          return;
        }
        socket.hello = frame;
        setTimeout(() => {
          socket.push({
            type: "welcome", user: frame.user || "tokenuser", device: frame.device,
            heartbeat_interval: this.heartbeatInterval, offline_after: 30, server_time: Date.now() / 1000 + 100,
          });
          socket.push({ type: "friends_presence", friends: this.friends });
        }, 1);
        return;
      case "heartbeat":
        if (frame.id !== undefined) reply({ type: "heartbeat", server_time: Date.now() / 1000 });
        return;
      case "settings":
        reply({ type: "settings", share_location: true, radius_m: 8046.72, visible_to_strangers: false, ...frame, id: undefined });
        return;
      case "nearby_friends":
        reply({ type: "nearby_friends", page: frame.page || 0, page_size: 20, total: 0, friends: [] });
        return;
      case "sync": {
        const after = BigInt(frame.after);
        const page = this.messages.filter((m) => BigInt(m.message_id) > after).slice(0, frame.limit);
        const more = this.messages.filter((m) => BigInt(m.message_id) > after).length > page.length;
        reply({ type: "messages", messages: page, more });
        return;
      }
      case "send": {
        if (!this.ackSends) return;
        const known = this.keys.get(frame.client_msg_id);
        const message = known || this.store({ from: socket.hello.user, to: frame.to, group: frame.group, text: frame.text });
        this.keys.set(frame.client_msg_id, message);
        reply({ type: "sent", message_id: message.message_id, created_at: message.created_at, ...(known ? { duplicate: true } : {}) });
        return;
      }
      default:
        reply({ type: frame.type });
    }
  }
}
