// The console: sign in, friends with live presence, the radar, people nearby, chat and
// settings, over geopresence.js. docs/console.md lists the page's stable hooks (data-*).

import { GeoPresence, randomId } from "/client/geopresence.js";
import { Chat } from "./chat.js";
import { MILE_M, colorOf, formatAge, formatDistance } from "./geo.js";
import { Radar } from "./radar.js";

const $ = (selector, root = document) => root.querySelector(selector);
const KEYS = {
  session: "geopresence.session",
  device: "geopresence.device",
  place: "geopresence.place",
  watch: "geopresence.watch",
  flash: "geopresence.flash", // why the last session ended, shown by the sign-in form
};
let signingOut = false;
const MOVE_EVERY_MS = 250; // at most one nearby_friends query in flight, and this far apart
const SOURCES = { browser: "from your browser", hand: "set by hand", link: "from the link", before: "as before" };
const STATE_TEXT = { connecting: "connecting…", open: "online", reconnecting: "reconnecting…", closed: "offline" };

// Per tab, per visit: sessionStorage survives a reload (which then signs in again, with the
// same device id, so friends see no change) and is gone with the tab. Never localStorage.
const session = {
  get(key) {
    try {
      return JSON.parse(sessionStorage.getItem(key));
    } catch {
      return null;
    }
  },
  set(key, value) {
    try {
      if (value === null) sessionStorage.removeItem(key);
      else sessionStorage.setItem(key, JSON.stringify(value));
    } catch {
      // storage disabled: the page still works, it only forgets on reload
    }
  },
};

let toastTimer = null;
function toast(text) {
  const node = $("[data-toast]");
  node.textContent = text;
  node.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (node.hidden = true), 4000);
}

// A tab opened from this one (window.open, the browser's "Duplicate tab") starts with a copy
// of its sessionStorage, device id included: signed in as the same device, each would
// replace the other (4002). The tabs of this origin answer a claim of the device they use;
// an answered claim means a copy, which takes a device of its own. (A reload: no answer.)
const devices = globalThis.BroadcastChannel ? new BroadcastChannel("geopresence.devices") : null;
let myDevice = null;
devices?.addEventListener("message", ({ data }) => {
  if (myDevice !== null && data?.claim === myDevice) devices.postMessage({ taken: myDevice });
});

function taken(device) {
  if (!devices) return Promise.resolve(false);
  return new Promise((resolve) => {
    const answer = ({ data }) => data?.taken === device && done(true);
    const done = (result) => {
      clearTimeout(timer);
      devices.removeEventListener("message", answer);
      resolve(result);
    };
    const timer = setTimeout(() => done(false), 200);
    devices.addEventListener("message", answer);
    devices.postMessage({ claim: device });
  });
}

async function deviceId() {
  if (myDevice !== null) return myDevice;
  let device = session.get(KEYS.device);
  if (!device || (await taken(device))) {
    device = randomId("web-");
    session.set(KEYS.device, device);
  }
  myDevice = device;
  return device;
}

function wsUrl(config) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.hostname}:${config.ws_port}${config.ws_path}`;
}

function linkPosition() {
  const at = new URLSearchParams(location.search).get("at");
  const [lat, lon] = (at || "").split(",").map(Number);
  return at && Number.isFinite(lat) && Number.isFinite(lon) ? { lat, lon } : null;
}

// ---------------------------------------------------------------------- sign in

function showSignIn(config, error = "") {
  document.body.dataset.connection = "signed-out";
  $("[data-app]").hidden = true;
  $("[data-session]").hidden = true;
  $("[data-signin-view]").hidden = false;
  const form = $("[data-signin]");
  const byUser = config.insecure;
  // Only the field in use stays in the form (tests look for name=user or name=token).
  $(byUser ? "[data-token-field]" : "[data-user-field]")?.remove();
  const field = $(byUser ? "[data-user-field]" : "[data-token-field]");
  field.hidden = false;
  form.elements[byUser ? "user" : "token"].required = true;
  $("[data-signin-hint]").textContent = byUser
    ? "This server is insecure (development): any user name signs in."
    : "Paste a token from your backend (POST /v1/tokens) or from `geopresence token USER`.";
  const suggested = new URLSearchParams(location.search).get("user");
  if (byUser && suggested && !form.elements.user.value) form.elements.user.value = suggested;
  $("[data-signin-error]").textContent = error;
  form.querySelector("button").disabled = false;
}

async function main() {
  let config;
  try {
    config = await (await fetch("/console/config.json")).json();
  } catch (error) {
    $("[data-signin-hint]").textContent = `Cannot reach the server: ${error.message}`;
    return;
  }
  const form = $("[data-signin]");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const credentials = config.insecure
      ? { user: form.elements.user.value.trim() }
      : { token: form.elements.token.value.trim() };
    if (credentials.user === "" || credentials.token === "") return;
    form.querySelector("button").disabled = true;
    $("[data-signin-error]").textContent = "";
    signIn(config, credentials);
  });
  showSignIn(config, session.get(KEYS.flash) || "");
  session.set(KEYS.flash, null);
  const saved = session.get(KEYS.session);
  if (saved) signIn(config, saved);
}

async function signIn(config, credentials) {
  const client = new GeoPresence({ url: wsUrl(config), ...credentials, device: await deviceId() });
  let app = null;
  let everOpen = false;
  client.on("state", ({ state }) => {
    if (app) app.showState(state);
  });
  client.on("close", ({ reconnecting, code, reason }) => {
    if (!everOpen && reconnecting) {
      $("[data-signin-error]").textContent = `Cannot reach ${client.url} (close ${code}); retrying…`;
    } else if (everOpen && !reconnecting && !signingOut) {
      // Logged out elsewhere (4001), replaced by this device (4002), refused on a
      // reconnect (1008): back to a fresh sign-in form, saying why.
      session.set(KEYS.session, null);
      session.set(KEYS.flash, `Signed out: ${reason || `close ${code}`}`);
      location.replace(location.pathname + location.search);
    }
  });
  client.on("open", () => {
    if (!app) {
      everOpen = true;
      session.set(KEYS.session, credentials);
      app = new ConsoleApp(config, client);
    }
  });
  client.connect().catch((error) => {
    session.set(KEYS.session, null);
    app?.stop();
    showSignIn(config, `Refused: ${error.message}`);
  });
}

// ---------------------------------------------------------------------- the signed-in page

class ConsoleApp {
  constructor(config, client) {
    this.config = config;
    this.client = client;
    this.me = null; // {lat, lon}
    this.watchId = null;
    this.rows = new Map(); // friend -> <li>
    $("[data-signin-view]").hidden = true;
    $("[data-app]").hidden = false;
    $("[data-session]").hidden = false;
    $("[data-me]").textContent = client.user;
    this.showState(client.state);
    this.radar = new Radar($("[data-radar]"), {
      onMove: (at, { final }) => this.moveTo(at, { final, source: "hand" }),
      onPick: (user) => this.chat.open(`u:${user}`),
    });
    this.radar.setRadius(config.radius_m);
    for (const option of [...$("[data-settings]").elements.radius_m.options]) {
      if (Number(option.value) > config.max_radius_m) option.remove(); // would be refused
    }
    this.chat = new Chat($(".chat"), {
      me: client.user,
      send: (message) => client.sendMessage(message),
      onError: (error) => toast(error.message),
    });
    this._wire();
    this.renderFriends();
    this.clock = setInterval(() => this.renderFriends(), 15000); // "last seen" ages
    this._startPosition();
  }

  stop() {
    clearInterval(this.clock);
    if (this.watchId !== null) navigator.geolocation.clearWatch(this.watchId);
  }

  showState(state) {
    document.body.dataset.connection = state;
    const pill = $("[data-connection-pill]");
    pill.dataset.state = state;
    pill.textContent = STATE_TEXT[state] || state;
  }

  _wire() {
    const c = this.client;
    const friendsChanged = () => this.renderFriends();
    c.on("friends", friendsChanged);
    c.on("presence", friendsChanged);
    c.on("friend_removed", friendsChanged);
    c.on("friend_location", (entry) => {
      this.radar.put(entry);
      this.renderFriends();
    });
    c.on("friend_gone", ({ user }) => {
      this.radar.remove(user);
      this.renderFriends();
    });
    c.on("nearby", () => {
      this.radar.setAll(c.nearby);
      this.renderFriends();
    });
    c.on("message", (message) => this.chat.add(message));
    c.on("settings", (settings) => this.showSettings(settings));
    c.on("strangers", () => this.renderStrangers());
    c.on("stranger_nearby", () => this.renderStrangers());
    c.on("stranger_gone", () => this.renderStrangers());
    c.on("error", (error) => toast(error.message));
    $("[data-signout]").addEventListener("click", () => this.signOut());
    $("[data-geolocate]").addEventListener("click", () => this.follow());
    $("[data-coords-form]").addEventListener("submit", (event) => {
      event.preventDefault();
      const { lat, lon } = event.target.elements;
      this.moveTo({ lat: Number(lat.value), lon: Number(lon.value) }, { final: true, source: "hand" });
    });
    const settings = $("[data-settings]");
    settings.addEventListener("change", (event) => {
      const field = event.target;
      const patch = { [field.name]: field.type === "checkbox" ? field.checked : Number(field.value) };
      c.updateSettings(patch).catch((error) => {
        toast(error.message);
        if (c.settings) this.showSettings(c.settings);
      });
    });
    const watch = $("[data-watch-strangers]");
    watch.checked = Boolean(session.get(KEYS.watch));
    if (watch.checked) c.watching = true; // renewed with each connect, like after a reconnect
    watch.addEventListener("change", () => {
      session.set(KEYS.watch, watch.checked);
      c.watchStrangers(watch.checked).catch((error) => toast(error.message));
    });
  }

  async signOut() {
    signingOut = true;
    this.stop();
    session.set(KEYS.session, null);
    session.set(KEYS.place, null);
    await this.client.logout();
    location.replace(location.pathname);
  }

  // -------------------------------------------------------------------- friends

  renderFriends() {
    const list = $("[data-friends]");
    const now = this.client.serverNow();
    const friends = [...this.client.friends.values()].sort(
      (a, b) => (a.status === "online" ? 0 : 1) - (b.status === "online" ? 0 : 1) || a.user.localeCompare(b.user),
    );
    for (const [user, row] of this.rows) {
      if (!this.client.friends.has(user)) {
        row.remove();
        this.rows.delete(user);
      }
    }
    for (const f of friends) {
      let row = this.rows.get(f.user);
      if (!row) {
        row = document.createElement("li");
        row.setAttribute("data-friend", f.user);
        row.innerHTML = '<span class="avatar"></span><span class="who"><strong></strong><span></span></span><span class="far"></span>';
        const avatar = $(".avatar", row);
        avatar.textContent = f.user.slice(0, 1).toUpperCase();
        avatar.style.background = colorOf(f.user); // CSSOM, which the CSP allows (no style="")
        $("strong", row).textContent = f.user;
        $("strong", row).title = f.user; // a long one is cut short (CSS)
        row.addEventListener("click", () => this.chat.open(`u:${f.user}`));
        this.rows.set(f.user, row);
        this.chat.conversation(`u:${f.user}`);
      }
      if (row.getAttribute("data-status") !== f.status) row.setAttribute("data-status", f.status);
      const seen = f.last_active_at === null ? "offline" : `last seen ${formatAge(Math.max(0, now - f.last_active_at))}`;
      $(".who span", row).textContent = f.status === "online" ? "online" : seen;
      const near = this.client.nearby.get(f.user);
      $(".far", row).textContent = near ? formatDistance(near.distance_m) : "";
      list.append(row); // in sorted order
    }
    const online = friends.filter((f) => f.status === "online").length;
    $("[data-online-count]").textContent = friends.length ? `${online} online` : "";
    $("[data-friends-empty]").hidden = friends.length > 0;
  }

  renderStrangers() {
    const list = $("[data-strangers]");
    list.replaceChildren();
    const people = [...this.client.strangers.values()].sort((a, b) => a.distance_m - b.distance_m);
    for (const p of people) {
      const li = document.createElement("li");
      li.setAttribute("data-stranger", p.user);
      li.setAttribute("data-distance-m", String(p.distance_m));
      li.innerHTML = '<strong></strong><span class="far"></span>';
      $("strong", li).textContent = p.user;
      $("strong", li).title = p.user;
      $(".far", li).textContent = `≈ ${formatDistance(p.distance_m)}`; // the units of the rest
      list.append(li);
    }
  }

  showSettings(settings) {
    const form = $("[data-settings]");
    form.elements.share_location.checked = settings.share_location;
    form.elements.visible_to_strangers.checked = settings.visible_to_strangers;
    const select = form.elements.radius_m;
    let option = [...select.options].find((o) => Math.abs(Number(o.value) - settings.radius_m) < 0.01);
    if (!option) {
      option = new Option(formatDistance(settings.radius_m), String(settings.radius_m));
      select.add(option);
    }
    select.value = option.value;
    this.radar.setRadius(settings.radius_m);
  }

  // -------------------------------------------------------------------- my position

  /** Where I am at sign-in: the browser's position when already granted (sent now, then
   *  followed), else where I was before a reload, else the link's ?at=LAT,LON. */
  async _startPosition() {
    const before = session.get(KEYS.place);
    const link = linkPosition();
    let state = "unavailable";
    try {
      const status = await navigator.permissions?.query({ name: "geolocation" });
      state = status?.state || "prompt";
      if (status) status.onchange = () => status.state === "granted" && this.watchId === null && this.follow();
    } catch {
      // no Permissions API: ask only when the button is pressed
    }
    if (state === "granted" && navigator.geolocation) this.follow();
    else if (before) this.moveTo(before, { final: true, source: "before" });
    else if (link) this.moveTo(link, { final: true, source: "link" });
    $("[data-geolocate]").hidden = !navigator.geolocation || state === "denied";
  }

  /** Follow the browser's position (asks for permission if needed). */
  follow() {
    if (!navigator.geolocation || this.watchId !== null) return;
    this.watchId = navigator.geolocation.watchPosition(
      (pos) => this.moveTo({ lat: pos.coords.latitude, lon: pos.coords.longitude }, { final: true, source: "browser" }),
      (error) => {
        // Unavailable or slow for a moment (also while the position changes): keep
        // watching; only a refusal ends it.
        if (error.code !== error.PERMISSION_DENIED) return;
        toast("Location access was refused");
        this.unfollow();
      },
      { enableHighAccuracy: true, maximumAge: 5000 },
    );
    $("[data-geolocate]").textContent = "Following your location";
    $("[data-geolocate]").disabled = true;
  }

  unfollow() {
    if (this.watchId !== null) navigator.geolocation.clearWatch(this.watchId);
    this.watchId = null;
    $("[data-geolocate]").textContent = "Use my location";
    $("[data-geolocate]").disabled = false;
  }

  /** Move me: shown at once, sent as nearby_friends with lat/lon (which also brings the
   *  friends now in range onto the radar), one query at a time, the latest position wins. */
  moveTo(at, { final, source }) {
    if (!Number.isFinite(at.lat) || !Number.isFinite(at.lon) || Math.abs(at.lat) > 90 || Math.abs(at.lon) > 180) {
      toast("Not a position: lat in [-90, 90], lon in [-180, 180]");
      return;
    }
    if (source === "hand") this.unfollow();
    this.me = { lat: at.lat, lon: at.lon };
    session.set(KEYS.place, this.me);
    this.radar.setMe(this.me);
    $("[data-radar-empty]").hidden = true;
    $("[data-position]").textContent = `${at.lat.toFixed(5)}, ${at.lon.toFixed(5)} · ${SOURCES[source]}`;
    this.pendingMove = this.me;
    if (final || !this.lastMoveAt || Date.now() - this.lastMoveAt > MOVE_EVERY_MS) this._flushMove();
  }

  async _flushMove() {
    if (this.moving || !this.pendingMove) return;
    const at = this.pendingMove;
    this.pendingMove = null;
    this.moving = true;
    this.lastMoveAt = Date.now();
    try {
      if (this.client.state === "open") await this.client.nearbyFriends(at);
      else this.client.location = at; // sent with the next connect
    } catch (error) {
      if (error.code !== "disconnected") toast(error.message);
    } finally {
      this.moving = false;
    }
    if (this.pendingMove) setTimeout(() => this._flushMove(), MOVE_EVERY_MS);
  }
}

main();
