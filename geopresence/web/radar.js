// The radar: an SVG centred on me, range rings at 1, 2 and 5 miles (and my radius), a dot
// per nearby friend at its bearing and distance. Clicking moves me there; dragging pans
// (moves me the other way, like a map).

import { MILE_M, bearing, colorOf, destination, formatDistance } from "./geo.js";

const SVG = "http://www.w3.org/2000/svg";
const EDGE = 300; // px (viewBox units) from the centre to the outermost range
const RINGS = [1, 2, 5].map((miles) => ({ metres: miles * MILE_M, label: `${miles} mi` }));
const DRAG_PX = 5; // a pointer that moves less than this between down and up is a click

function el(name, attrs = {}, parent = null) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (parent) parent.appendChild(node);
  return node;
}

export class Radar {
  /** `onMove({lat, lon}, {final})` when I click or drag; `onPick(user)` when a dot is clicked. */
  constructor(svg, { onMove, onPick }) {
    this.svg = svg;
    this.onMove = onMove;
    this.onPick = onPick;
    this.me = null;
    this.radiusM = 5 * MILE_M;
    this.entries = new Map();
    this.dots = new Map();
    this.grid = el("g", { class: "grid" }, svg);
    this.layer = el("g", { class: "dots" }, svg);
    el("circle", { class: "me-halo", r: 12 }, svg);
    el("circle", { class: "me-dot", r: 8 }, svg);
    this._drawGrid();
    svg.addEventListener("pointerdown", (e) => this._down(e));
    svg.addEventListener("pointermove", (e) => this._drag(e));
    svg.addEventListener("pointerup", (e) => this._up(e));
    svg.addEventListener("pointercancel", () => this._end());
  }

  /** Metres per viewBox unit: the larger of 5 miles and my radius reaches the edge. */
  get scale() {
    return (Math.max(5 * MILE_M, this.radiusM) * 1.04) / EDGE;
  }

  setRadius(metres) {
    this.radiusM = metres;
    this._drawGrid();
    this.render();
  }

  setMe(position) {
    this.me = position;
    this.render();
  }

  /** Replace every dot with `entries` (user -> {lat, lon, distance_m}). */
  setAll(entries) {
    this.entries = new Map(entries);
    this.render();
  }

  put(entry) {
    this.entries.set(entry.user, entry);
    this.render();
  }

  remove(user) {
    this.entries.delete(user);
    this.render();
  }

  _drawGrid() {
    this.grid.replaceChildren();
    el("line", { class: "axis", x1: -EDGE, y1: 0, x2: EDGE, y2: 0 }, this.grid);
    el("line", { class: "axis", x1: 0, y1: -EDGE, x2: 0, y2: EDGE }, this.grid);
    const north = el("text", { class: "north", x: 0, y: -EDGE + 22, "text-anchor": "middle" }, this.grid);
    north.textContent = "N";
    for (const ring of RINGS) this._ring(ring.metres, ring.label, "ring");
    if (!RINGS.some((r) => Math.abs(r.metres - this.radiusM) < 1)) {
      this._ring(this.radiusM, `radius ${formatDistance(this.radiusM)}`, "ring mine");
    }
  }

  _ring(metres, label, cls) {
    const r = metres / this.scale;
    el("circle", { class: cls, r }, this.grid);
    const text = el("text", { class: "ring-label", x: r * 0.707 + 4, y: -r * 0.707 - 4 }, this.grid);
    text.textContent = label;
  }

  /** Place every dot: bearing from my position to the friend's, distance as the server
   *  measured it (`distance_m`). */
  render() {
    for (const [user, dot] of this.dots) {
      if (!this.entries.has(user) || !this.me) {
        dot.remove();
        this.dots.delete(user);
      }
    }
    if (!this.me) return;
    for (const entry of this.entries.values()) {
      let dot = this.dots.get(entry.user);
      const fresh = !dot;
      if (fresh) dot = this._dot(entry.user);
      const angle = bearing(this.me, entry);
      const r = Math.min(entry.distance_m / this.scale, EDGE + 8);
      dot.style.transform = `translate(${(r * Math.sin(angle)).toFixed(1)}px, ${(-r * Math.cos(angle)).toFixed(1)}px)`;
      dot.setAttribute("data-distance-m", String(Math.round(entry.distance_m)));
      dot.querySelector(".dist").textContent = formatDistance(entry.distance_m);
      if (fresh) this.layer.appendChild(dot); // after its first position: no slide from the centre
    }
  }

  _dot(user) {
    const dot = el("g", { class: "dot", "data-nearby": user });
    el("circle", { r: 9, fill: colorOf(user) }, dot);
    // SVG text does not wrap or clip: a long id (up to 64 characters) is cut to fit the radar.
    el("text", { x: 14, y: 0 }, dot).textContent = user.length > 16 ? `${user.slice(0, 15)}…` : user;
    el("title", {}, dot).textContent = user; // the whole id on hover
    el("text", { class: "dist", x: 14, y: 16 }, dot);
    this.dots.set(user, dot);
    return dot;
  }

  // ------------------------------------------------------------------ pointer

  _point(event) {
    const matrix = this.svg.getScreenCTM();
    if (!matrix) return { x: 0, y: 0 };
    const p = new DOMPoint(event.clientX, event.clientY).matrixTransform(matrix.inverse());
    return { x: p.x, y: p.y };
  }

  /** Where the viewBox point {x, y} is on Earth, seen from `origin`. */
  _at(origin, { x, y }) {
    return destination(origin, Math.atan2(x, -y), Math.hypot(x, y) * this.scale);
  }

  _down(event) {
    if (event.button !== 0) return;
    const dot = event.target.closest?.("[data-nearby]");
    this.gesture = { start: this._point(event), origin: this.me, dot, moved: false };
    this.svg.setPointerCapture(event.pointerId);
  }

  _drag(event) {
    const g = this.gesture;
    if (!g || !g.origin) return;
    const p = this._point(event);
    const dx = p.x - g.start.x;
    const dy = p.y - g.start.y;
    if (!g.moved && Math.hypot(dx, dy) < DRAG_PX) return;
    g.moved = true;
    this.svg.classList.add("dragging");
    this.onMove(this._at(g.origin, { x: -dx, y: -dy }), { final: false });
  }

  _up(event) {
    const g = this.gesture;
    this._end();
    if (!g) return;
    const p = this._point(event);
    if (g.moved && g.origin) {
      this.onMove(this._at(g.origin, { x: g.start.x - p.x, y: g.start.y - p.y }), { final: true });
    } else if (g.dot) {
      this.onPick(g.dot.getAttribute("data-nearby"));
    } else if (this.me) {
      this.onMove(this._at(this.me, p), { final: true });
    }
  }

  _end() {
    this.gesture = null;
    this.svg.classList.remove("dragging");
  }
}
