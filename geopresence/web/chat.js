// The chat panel: a conversation per friend and per group, messages in id order, a composer.
// Every message stays in the page (one <ol data-conversation> per conversation, only the
// open one shown), so [data-message-id] finds any message the page has received.

import { compareMessageIds } from "/client/geopresence.js";

const TIME = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });

function h(tag, attrs = {}, text = null) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== null) node.textContent = text;
  return node;
}

export class Chat {
  /** `root`: the chat card; `send({to|group, text, clientMsgId})` returns the ack's promise. */
  constructor(root, { me, send, onError }) {
    this.me = me;
    this.send = send;
    this.onError = onError;
    this.list = root.querySelector("[data-conversations]");
    this.messages = root.querySelector("[data-messages]");
    this.title = root.querySelector("[data-thread-title]");
    this.composer = root.querySelector("[data-composer]");
    this.input = this.composer.elements.text;
    this.conversations = new Map(); // key ("u:bob", "g:hikers") -> conversation
    this.current = null;
    this.composer.addEventListener("submit", (event) => {
      event.preventDefault();
      this._submit();
    });
    root.querySelector("[data-group-form]").addEventListener("submit", (event) => {
      event.preventDefault();
      const group = event.target.elements.group.value.trim();
      if (group) this.open(`g:${group}`);
      event.target.reset();
    });
  }

  /** The conversation a message belongs to, from this user's side. */
  keyOf(message) {
    if (message.group) return `g:${message.group}`;
    return `u:${message.from === this.me ? message.to : message.from}`;
  }

  conversation(key) {
    let c = this.conversations.get(key);
    if (c) return c;
    const name = key.slice(2);
    const group = key.startsWith("g:");
    const button = h("button", { type: "button", "data-conversation-button": key });
    button.append(h("span", {}, group ? `# ${name}` : name), h("span", { class: "unread", hidden: "" }));
    button.addEventListener("click", () => this.open(key));
    const ol = h("ol", { "data-conversation": key, hidden: "" });
    this.messages.append(ol);
    c = { key, name, group, button, ol, unread: 0, last: "0" };
    this.conversations.set(key, c);
    this._order();
    return c;
  }

  /** Show conversation `key` ("u:USER" or "g:GROUP"); `focus`: into its message box (not
   *  when a message opened it: the person may be typing elsewhere). */
  open(key, { focus = true } = {}) {
    const c = this.conversation(key);
    if (this.current) {
      this.current.ol.hidden = true;
      this.current.button.removeAttribute("aria-current");
    }
    this.current = c;
    c.ol.hidden = false;
    c.button.setAttribute("aria-current", "true");
    c.unread = 0;
    this._badge(c);
    this.title.textContent = c.group ? `# ${c.name} (group)` : c.name;
    this.input.disabled = false;
    this.composer.querySelector("button").disabled = false;
    if (focus) this.input.focus();
    this._scroll(c);
  }

  /** A message from the client ("message" events: live, synced, or our own acked send). */
  add(message) {
    const c = this.conversation(this.keyOf(message));
    if (c.ol.querySelector(`[data-message-id="${message.message_id}"]`)) return;
    let li = message.client_msg_id
      ? c.ol.querySelector(`[data-client-msg-id="${CSS.escape(message.client_msg_id)}"]`)
      : null;
    if (li) {
      li.removeAttribute("data-pending"); // our pending send, now acknowledged
    } else {
      li = this._item(message);
    }
    li.setAttribute("data-message-id", message.message_id);
    li.querySelector(".meta").textContent = this._meta(message);
    this._insert(c, li, message.message_id);
    if (compareMessageIds(message.message_id, c.last) > 0) c.last = message.message_id;
    if (message.from !== this.me && c !== this.current && message.source === "live") {
      c.unread += 1;
      this._badge(c);
    }
    if (!this.current && message.source === "live") this.open(c.key, { focus: false });
    this._order();
    if (c === this.current) this._scroll(c);
  }

  _submit() {
    const c = this.current;
    const text = this.input.value.trim();
    if (!c || !text) return;
    this.input.value = "";
    const clientMsgId = `c-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
    const pending = this._item({ from: this.me, text, client_msg_id: clientMsgId });
    pending.setAttribute("data-pending", "");
    pending.querySelector(".meta").textContent = "sending…";
    c.ol.append(pending);
    this._scroll(c);
    const target = c.group ? { group: c.name } : { to: c.name };
    this.send({ ...target, text, clientMsgId }).catch((error) => {
      pending.querySelector(".meta").textContent = `not sent: ${error.message}`;
      pending.classList.add("failed");
      this.onError(error);
    });
  }

  _item(message) {
    const mine = message.from === this.me;
    const li = h("li", { class: mine ? "msg mine" : "msg", "data-from": message.from });
    if (message.client_msg_id) li.setAttribute("data-client-msg-id", message.client_msg_id);
    li.append(h("div", { class: "bubble" }, message.text), h("div", { class: "meta" }));
    return li;
  }

  _meta(message) {
    const when = TIME.format(new Date(message.created_at * 1000));
    return message.from === this.me ? when : `${message.from} · ${when}`;
  }

  /** Messages in id order, our pending sends after them (most arrive last: look from the end). */
  _insert(c, li, id) {
    let before = null; // the node li goes before; null: the end
    for (let node = c.ol.lastElementChild; node; node = node.previousElementSibling) {
      if (node === li) continue;
      const other = node.getAttribute("data-message-id");
      if (other !== null && compareMessageIds(other, id) < 0) break;
      before = node; // a pending send or a later message
    }
    c.ol.insertBefore(li, before);
  }

  _badge(c) {
    const badge = c.button.querySelector(".unread");
    badge.hidden = c.unread === 0;
    badge.textContent = String(c.unread);
  }

  /** Conversations with the newest message first, then the rest by name. */
  _order() {
    const sorted = [...this.conversations.values()].sort(
      (a, b) => compareMessageIds(b.last, a.last) || a.name.localeCompare(b.name),
    );
    for (const c of sorted) this.list.append(c.button);
  }

  _scroll(c) {
    if (c === this.current) this.messages.scrollTop = this.messages.scrollHeight;
  }
}
