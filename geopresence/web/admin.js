// The admin view: /metrics read every 2 s (?refresh=SECONDS) with the admin key, the main figures as cards and
// every sample in a table, counters with their rate. The key lives in this tab's memory and
// sessionStorage (gone when the tab closes), never in localStorage or a cookie.

const $ = (selector) => document.querySelector(selector);
const KEY = "geopresence.admin_key";
// Refresh period: ?refresh=SECONDS (at least 0.25), else (absent, not a number) 2 s.
const REFRESH_S = Number(new URLSearchParams(location.search).get("refresh") || 2);
const EVERY_MS = Math.max(250, (Number.isFinite(REFRESH_S) ? REFRESH_S : 2) * 1000);
const CARDS = [
  ["geopresence_users_online", "users online", "value"],
  ["geopresence_connections", "connections", "value"],
  ["geopresence_messages_in_total", "messages in /s", "rate"],
  ["geopresence_messages_out_total", "messages out /s", "rate"],
  ['geopresence_location_updates_total{result="accepted"}', "location updates /s", "rate"],
  ['geopresence_chat_messages_total{result="stored"}', "chat messages /s", "rate"],
  ["geopresence_locations", "live locations", "value"],
  ["geopresence_sessions_opened_total", "sessions opened", "value"],
  ["geopresence_errors_total", "errors /s (all codes)", "rate"],
  ["geopresence_chat_messages_stored", "messages stored", "value"],
];

let key = null; // the admin key, for this tab only
let previous = null; // {at, values} of the last poll
let timer = null;
let keyed = 0; // counts key changes: a poll's answer that comes after one is dropped

function storeKey(value) {
  key = value;
  keyed += 1;
  try {
    if (value === null) sessionStorage.removeItem(KEY);
    else sessionStorage.setItem(KEY, value);
  } catch {
    // storage off: the key stays in memory until the page goes
  }
}

/** Prometheus text -> [{name, labels, series, value, counter}]. */
export function parseMetrics(text) {
  const counters = new Set();
  const samples = [];
  for (const line of text.split("\n")) {
    const type = /^# TYPE (\S+) (\S+)/.exec(line);
    if (type) {
      if (type[2] === "counter") counters.add(type[1]);
      continue;
    }
    const m = /^([A-Za-z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$/.exec(line.trim());
    if (!m) continue;
    const labels = m[2] || "";
    samples.push({ name: m[1], labels, series: m[1] + labels, value: Number(m[3]), counter: counters.has(m[1]) });
  }
  return samples;
}

function format(value) {
  if (!Number.isFinite(value)) return "–";
  if (Number.isInteger(value)) return value.toLocaleString();
  return value.toLocaleString(undefined, { maximumFractionDigits: 2 });
}

function showSignIn(error = "") {
  clearTimeout(timer);
  document.body.dataset.admin = "signed-out";
  $("[data-admin-view]").hidden = true;
  $("[data-admin-session]").hidden = true;
  $("[data-admin-signin-view]").hidden = false;
  $("[data-admin-error]").textContent = error;
}

function showView() {
  document.body.dataset.admin = "live";
  $("[data-admin-signin-view]").hidden = true;
  $("[data-admin-view]").hidden = false;
  $("[data-admin-session]").hidden = false;
}

async function poll() {
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  const asked = keyed;
  let response;
  let text;
  try {
    response = await fetch("/metrics", { headers, cache: "no-store" });
    text = await response.text();
  } catch (error) {
    if (asked !== keyed) return; // the key was forgotten or changed meanwhile
    $("[data-admin-pill]").textContent = "unreachable";
    $("[data-admin-pill]").dataset.state = "closed";
    timer = setTimeout(poll, EVERY_MS);
    return;
  }
  if (asked !== keyed) return; // the key was forgotten or changed meanwhile: not for this view
  if (response.status === 401) {
    storeKey(null);
    showSignIn("Wrong admin key.");
    return;
  }
  showView();
  const at = performance.now() / 1000;
  const samples = parseMetrics(text);
  render(samples, at);
  previous = { at, values: new Map(samples.map((s) => [s.series, s.value])) };
  $("[data-admin-pill]").textContent = "live";
  $("[data-admin-pill]").dataset.state = "open";
  $("[data-updated]").textContent = `updated ${new Date().toLocaleTimeString()}`;
  timer = setTimeout(poll, EVERY_MS);
}

function rateOf(series, value, at) {
  if (!previous || !previous.values.has(series)) return NaN;
  return Math.max(0, value - previous.values.get(series)) / (at - previous.at);
}

function render(samples, at) {
  const bySeries = new Map(samples.map((s) => [s.series, s]));
  const stats = $("[data-stats]");
  stats.replaceChildren();
  for (const [series, label, kind] of CARDS) {
    // A family without labels in CARDS sums its labelled samples (errors of every code).
    const matching = bySeries.has(series) ? [bySeries.get(series)] : samples.filter((s) => s.name === series);
    const value = matching.reduce((sum, s) => sum + s.value, 0);
    const rate = matching.reduce((sum, s) => sum + (rateOf(s.series, s.value, at) || 0), 0);
    const card = document.createElement("div");
    card.className = "card stat";
    card.setAttribute("data-stat", series);
    card.innerHTML = '<div class="value"></div><div class="label"></div>';
    card.querySelector(".value").textContent = format(kind === "rate" ? (previous ? rate : NaN) : value);
    card.querySelector(".label").textContent = label;
    stats.append(card);
  }
  const body = $("[data-metrics]");
  body.replaceChildren();
  for (const s of samples) {
    const row = document.createElement("tr");
    row.setAttribute("data-metric", s.series);
    const rate = s.counter ? rateOf(s.series, s.value, at) : NaN;
    for (const [text, cls] of [[s.name.replace(/^geopresence_/, ""), ""], [s.labels, ""], [format(s.value), "num"], [s.counter ? format(rate) : "", "num"]]) {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      row.append(td);
    }
    body.append(row);
  }
}

async function main() {
  const config = await (await fetch("/console/config.json")).json();
  $("[data-admin-signin]").addEventListener("submit", (event) => {
    event.preventDefault();
    storeKey(event.target.elements.key.value.trim());
    event.target.reset();
    previous = null;
    poll();
  });
  $("[data-forget]").addEventListener("click", () => {
    storeKey(null);
    showSignIn();
  });
  try {
    key = sessionStorage.getItem(KEY);
  } catch {
    key = null;
  }
  $("[data-forget]").hidden = config.insecure; // no key on an --insecure server
  if (config.insecure || key) poll();
  else showSignIn();
}

main();
