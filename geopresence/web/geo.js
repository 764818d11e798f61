// Sphere geometry for the console, on the server's sphere (mean Earth radius, haversine).

export const EARTH_RADIUS_M = 6371008.8;
export const MILE_M = 1609.344;
const RAD = Math.PI / 180;

/** Great-circle distance in metres between {lat, lon} points. */
export function distanceM(a, b) {
  const dLat = (b.lat - a.lat) * RAD;
  const dLon = (b.lon - a.lon) * RAD;
  const h =
    Math.sin(dLat / 2) ** 2 + Math.cos(a.lat * RAD) * Math.cos(b.lat * RAD) * Math.sin(dLon / 2) ** 2;
  return 2 * EARTH_RADIUS_M * Math.asin(Math.min(1, Math.sqrt(h)));
}

/** Initial bearing from a to b, radians clockwise from north. */
export function bearing(a, b) {
  const p1 = a.lat * RAD;
  const p2 = b.lat * RAD;
  const dLon = (b.lon - a.lon) * RAD;
  const y = Math.sin(dLon) * Math.cos(p2);
  const x = Math.cos(p1) * Math.sin(p2) - Math.sin(p1) * Math.cos(p2) * Math.cos(dLon);
  return Math.atan2(y, x);
}

/** The point `distance` metres from `from` at `heading` (radians clockwise from north). */
export function destination(from, heading, distance) {
  const d = distance / EARTH_RADIUS_M;
  const p1 = from.lat * RAD;
  const l1 = from.lon * RAD;
  const p2 = Math.asin(Math.sin(p1) * Math.cos(d) + Math.cos(p1) * Math.sin(d) * Math.cos(heading));
  const l2 =
    l1 + Math.atan2(Math.sin(heading) * Math.sin(d) * Math.cos(p1), Math.cos(d) - Math.sin(p1) * Math.sin(p2));
  const lon = ((((l2 / RAD + 540) % 360) + 360) % 360) - 180; // into [-180, 180)
  return { lat: Math.max(-90, Math.min(90, p2 / RAD)), lon };
}

/** "0.9 mi", "12 mi", or metres below 0.1 mi. */
export function formatDistance(metres) {
  if (metres < 0.1 * MILE_M) return `${Math.round(metres)} m`;
  const miles = metres / MILE_M;
  return `${miles < 10 ? miles.toFixed(1) : Math.round(miles)} mi`;
}

/** "just now", "5 min ago", "3 h ago", "2 d ago" for an age in seconds. */
export function formatAge(seconds) {
  if (seconds < 60) return "just now";
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

const PALETTE = ["#f97316", "#22c55e", "#eab308", "#ec4899", "#a855f7", "#14b8a6", "#f43f5e", "#3b82f6", "#84cc16", "#06b6d4"];

/** A stable colour per user id (its avatar and its radar dot). */
export function colorOf(user) {
  let h = 0;
  for (const c of user) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return PALETTE[h % PALETTE.length];
}
