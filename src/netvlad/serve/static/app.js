// The page of `netvlad serve`: upload a photo to /localize, show the matches and draw the map.
// The map is SVG drawn from the database's UTM coordinates, so it works offline; when the browser
// can reach a tile server, a Leaflet street map (our own copy of Leaflet) is shown as well.
"use strict";
const $ = (id) => document.getElementById(id);
const COLOURS = ["#d32f2f", "#f57c00", "#7b1fa2", "#00897b", "#5d4037", "#c2185b", "#455a64"];
let info = null, points = null, lastResult = null, leafletMap = null, tileLayerOk = false;

async function getJSON(url) {
  const r = await fetch(url, { credentials: "same-origin" });
  if (!r.ok) throw new Error(`${url}: ${r.status} ${(await r.json().catch(() => ({}))).error || ""}`);
  return r.json();
}

function fmt(x, d) { return Number(x).toFixed(d); }

function setStatus(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function init() {
  try {
    [info, points] = await Promise.all([getJSON("/api/index"), getJSON("/api/points")]);
  } catch (e) {
    $("about").textContent = String(e);
    return;
  }
  const area = info.area ? `, ${fmt(info.area.width_m, 0)} × ${fmt(info.area.height_m, 0)} m` : "";
  $("about").textContent = `${info.size} database images, ${info.dim}-D, model ${info.model || "?"}` +
    `${info.zone ? ", UTM zone " + info.zone : ""}${area}`;
  $("k").max = info.k_max;
  $("k").value = info.k_default;
  drawMap(null);
  tryTiles();
}

// ---------------------------------------------------------------- the offline map (SVG, UTM metres)
function projector() {
  const xs = points.utm.map((p) => p[0]), ys = points.utm.map((p) => p[1]);
  const lo = [Math.min(...xs), Math.min(...ys)], hi = [Math.max(...xs), Math.max(...ys)];
  const span = Math.max(hi[0] - lo[0], hi[1] - lo[1], 1), pad = 0.05 * span, size = 480;
  const s = (size - 1) / (span + 2 * pad);
  // centre the shorter side
  const ox = (span - (hi[0] - lo[0])) / 2, oy = (span - (hi[1] - lo[1])) / 2;
  return { s, span, xy: (e, n) => [(e - lo[0] + pad + ox) * s, (hi[1] - n + pad + oy) * s] };
}

function svg(tag, attrs, title) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (title) {
    const t = document.createElementNS("http://www.w3.org/2000/svg", "title");
    t.textContent = title;
    el.appendChild(t);
  }
  return el;
}

function drawMap(res) {
  const map = $("map");
  map.replaceChildren();
  if (!points || !points.utm.length) {
    map.appendChild(svg("text", { x: 20, y: 240 }, null)).textContent = "the index holds no coordinates";
    return;
  }
  const P = projector();
  for (const [e, n] of points.utm) {
    const [x, y] = P.xy(e, n);
    map.appendChild(svg("circle", { cx: x, cy: y, r: 2, fill: "#aaa", class: "db" }));
  }
  if (res && res.prior) {
    const [x, y] = P.xy(res.prior.utm[0], res.prior.utm[1]);
    map.appendChild(svg("circle", { cx: x, cy: y, r: Math.max(res.prior.gate_m * P.s, 3), fill: "none",
      stroke: "#555", "stroke-dasharray": "5 4", class: "prior" }, "prior gate"));
  }
  if (res) {
    res.results.slice().reverse().forEach((m) => {
      if (!m.utm) return;
      const [x, y] = P.xy(m.utm[0], m.utm[1]);
      map.appendChild(svg("circle", { cx: x, cy: y, r: m.rank === 1 ? 9 : 6,
        fill: COLOURS[(m.rank - 1) % COLOURS.length], "fill-opacity": 0.8, class: "match" },
        `#${m.rank} ${m.name} (${fmt(m.score, 3)})`));
    });
    if (res.location) {
      const [x, y] = P.xy(res.location[0], res.location[1]);
      map.appendChild(svg("path", { d: `M${x - 10} ${y}h20M${x} ${y - 10}v20`, stroke: "#1565c0",
        "stroke-width": 4, class: "estimate" }, "estimated location"));
    }
  }
  const t = svg("text", { x: 6, y: 472, "font-size": 12 });
  t.textContent = `${fmt(P.span, 0)} m across, north up`;
  map.appendChild(t);
}

// ---------------------------------------------------------------- the online map (Leaflet tiles)
function tryTiles() {
  if (!points || !points.latlon || !points.latlon.length || !window.L || !navigator.onLine) {
    $("tilenote").textContent = "street map: offline (or the index has no UTM zone)";
    return;
  }
  const probe = new Image();
  const timer = setTimeout(() => { probe.src = ""; }, 4000);
  probe.onload = () => { clearTimeout(timer); tileLayerOk = true; showLeaflet(); };
  probe.onerror = () => { clearTimeout(timer); $("tilenote").textContent = "street map: tile server unreachable"; };
  probe.src = "https://tile.openstreetmap.org/0/0/0.png";
}

function showLeaflet() {
  $("tilemap").hidden = false;
  leafletMap = L.map("tilemap");
  L.tileLayer("https://tile.openstreetmap.org/{z}/{x}/{y}.png", {
    maxZoom: 19, attribution: "&copy; OpenStreetMap contributors" }).addTo(leafletMap);
  leafletMap.fitBounds(L.latLngBounds(points.latlon));
  leafletMap.overlay = L.layerGroup().addTo(leafletMap);
  for (const p of points.latlon) L.circleMarker(p, { radius: 2, color: "#888", weight: 1 }).addTo(leafletMap);
  if (lastResult) drawLeaflet(lastResult);
}

function drawLeaflet(res) {
  if (!leafletMap) return;
  leafletMap.overlay.clearLayers();
  for (const m of res.results) {
    if (!m.latlon) continue;
    L.circleMarker(m.latlon, { radius: m.rank === 1 ? 9 : 6, color: COLOURS[(m.rank - 1) % COLOURS.length] })
      .bindTooltip(`#${m.rank} ${m.name}`).addTo(leafletMap.overlay);
  }
  if (res.location_latlon) {
    L.marker(res.location_latlon, { icon: L.icon({ iconUrl: "/static/leaflet/images/marker-icon.png",
      iconSize: [25, 41], iconAnchor: [12, 41] }) }).addTo(leafletMap.overlay);
    leafletMap.setView(res.location_latlon, Math.max(leafletMap.getZoom(), 16));
  }
}

// ---------------------------------------------------------------- asking
function showResults(res) {
  lastResult = res;
  const box = $("results");
  box.replaceChildren();
  for (const m of res.results) {
    const card = document.createElement("div");
    card.className = "match";
    if (info.thumbnails) {
      const img = document.createElement("img");
      img.src = `/thumb/${m.id}`;
      img.alt = m.name;
      card.appendChild(img);
    }
    const where = m.latlon ? `${fmt(m.latlon[0], 6)}, ${fmt(m.latlon[1], 6)}`
      : m.utm ? `E ${fmt(m.utm[0], 1)} N ${fmt(m.utm[1], 1)}` : "";
    card.insertAdjacentHTML("beforeend", `<div><span class="rank">#${m.rank}</span> score ` +
      `<span class="score">${fmt(m.score, 3)}</span></div><div class="name"></div><div>${where}</div>`);
    card.querySelector(".name").textContent = m.name;
    box.appendChild(card);
  }
  const est = res.location_latlon ? `lat ${fmt(res.location_latlon[0], 6)}, lon ${fmt(res.location_latlon[1], 6)}`
    : res.location ? `easting ${fmt(res.location[0], 1)}, northing ${fmt(res.location[1], 1)}`
    : res.prior ? "no database image within the prior's gate" : "the index holds no coordinates";
  $("estimate").textContent = `Estimated location: ${est}`;
  drawMap(res);
  drawLeaflet(res);
}

async function ask(file) {
  if (!file) return;
  $("query").src = URL.createObjectURL(file);
  $("query").hidden = false;
  setStatus(`localising ${file.name}…`);
  const form = new FormData();
  form.append("image", file, file.name);
  form.append("k", $("k").value);
  for (const [id, name] of [["lat", "lat"], ["lon", "lon"], ["radius", "radius_m"]]) {
    if ($(id).value !== "") form.append(name, $(id).value);
  }
  const t0 = performance.now();
  try {
    const r = await fetch("/localize", { method: "POST", body: form, credentials: "same-origin" });
    const body = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
    if (!r.ok) {
      setStatus(`${file.name}: ${body.error}${body.id ? " (error id " + body.id + ")" : ""}`, true);
      return;
    }
    setStatus(`${file.name}: ${body.results.length} matches in ${fmt(performance.now() - t0, 0)} ms`);
    showResults(body);
  } catch (e) {
    setStatus(String(e), true);
  }
}

$("file").addEventListener("change", (e) => ask(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  ask(e.dataTransfer.files[0]);
});
init();
