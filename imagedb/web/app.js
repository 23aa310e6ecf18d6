// imagedb's page: one file, no framework, no network beyond this server.
"use strict";
const $ = (id) => document.getElementById(id);
let token = localStorage.getItem("imagedb-token") || "";

async function api(path, options = {}) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    token = prompt("This imagedb server needs its token:") || "";
    localStorage.setItem("imagedb-token", token);
    if (token) return api(path, options);
  }
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail || response.statusText);
    throw new Error(detail);
  }
  return response;
}

// A file name as the CLI prints it (imagedb/display.py escape): control characters and bidirectional controls
// shown as escapes. A right-to-left override in "report_\u202efdp.jpg" would otherwise display as "report_gpj.pdf".
const UNSAFE = /[\\\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\udc80-\udcff]/gu;
const NAMED = { "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r" };
function shown(text) {
  return String(text).replace(UNSAFE, (char) => {
    if (char in NAMED) return NAMED[char];
    const code = char.charCodeAt(0);
    const hex = (n, width) => n.toString(16).padStart(width, "0");
    if (code >= 0xdc80 && code <= 0xdcff) return `\\x${hex(code - 0xdc00, 2)}`; // a byte that was not UTF-8
    return code < 0x80 ? `\\x${hex(code, 2)}` : `\\u${hex(code, 4)}`;
  });
}
const fileName = (path) => shown(path.split("/").pop());

// A number for the page, or a dash where the server gave none (null): a score a stored vector left undefined.
const fixed = (value, digits) => (typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "—");

async function showImage(img, url) {
  // Through fetch, so that the token travels with image requests too.
  const blob = await (await api(url)).blob();
  img.src = URL.createObjectURL(blob);
}

// The facet values chosen that have no control of their own; a year fills After and Before, a collection the
// collection list, a DICOM code its field.
const chosen = { format: "", camera: "" };

function params() {
  const p = new URLSearchParams({ collection: $("collection").value || "default", sort: $("sort").value, limit: 48 });
  if ($("metric").value !== "cosine") p.set("metric", $("metric").value);
  if ($("after").value) p.set("after", $("after").value + "T00:00:00");
  if ($("before").value) p.set("before", $("before").value + "T00:00:00");
  // 0 is "off": every result, however weakly it stands out.
  if (Number($("min-relevance").value) > 0) p.set("min_relevance", $("min-relevance").value);
  if ($("collapse").checked) p.set("collapse_duplicates", "true");
  if ($("hybrid").checked) p.set("hybrid", "true");
  if ($("modality").value.trim()) p.set("modality", $("modality").value.trim());
  if ($("body_part").value.trim()) p.set("body_part", $("body_part").value.trim());
  for (const [name, value] of Object.entries(chosen)) if (value) p.set(name, value);
  return p;
}

// What a listing and the facets take: the collection and the filters, none of a search's own settings.
function filterParams() {
  const p = params();
  for (const name of ["sort", "metric", "min_relevance", "collapse_duplicates", "limit"]) p.delete(name);
  return p;
}

function showMinRelevance() {
  const value = Number($("min-relevance").value);
  $("min-relevance-value").textContent = value > 0 ? `${value.toFixed(1)} σ` : "off";
}

// What a score measures, by the response's metric: a distance reads the other way round from a similarity.
const MEASURES = {
  cosine: "cosine similarity (higher is better)",
  euclidean: "Euclidean distance (lower is better)",
  pearson: "Pearson correlation (higher is better)",
  inner: "inner product (higher is better)",
};

function card(r) {
  const card = document.createElement("div");
  card.className = "card";
  card.dataset.id = r.id;
  const img = document.createElement("img");
  img.alt = shown(r.path);
  showImage(img, r.thumbnail);
  const caption = document.createElement("div");
  caption.className = "caption";
  card.append(img, caption);
  card.addEventListener("click", () => details(r.id));
  return [card, caption];
}

function label(caption, className, text, title) {
  const span = document.createElement("span");
  span.className = className;
  span.textContent = text;
  if (title) span.title = title;
  caption.append(span);
}

function render(results, what, metric = "cosine") {
  browsing = null;
  $("next-page").hidden = true;
  $("grid").replaceChildren();
  $("status").textContent = results.length ? `${results.length} results for ${what}` : `No results for ${what}`;
  for (const r of results) {
    const [element, caption] = card(r);
    label(caption, "score", fixed(r.score, 3), MEASURES[metric] || metric);
    if (r.relevance != null) {
      label(caption, "relevance", `${fixed(r.relevance, 1)} σ`, "relevance: standard deviations above an unrelated image's score");
    }
    if (r.duplicates > 0) label(caption, "duplicates", `+${r.duplicates}`, `${r.duplicates} duplicate(s) of this image not shown`);
    label(caption, "name", fileName(r.path), shown(r.path));
    if (r.matched && r.matched.length) {
      // Why a keyword or hybrid result matched: the query's words it holds, and its ranks in the title.
      label(caption, "matched", r.matched.join(" "), `words matched; keyword rank ${r.keyword_rank ?? "-"}, vector rank ${r.vector_rank ?? "-"}`);
    }
    $("grid").append(element);
  }
}

async function run(what, request) {
  $("status").textContent = "Searching…";
  try {
    const data = await (await request()).json();
    render(data.results, what, data.metric);
  } catch (error) {
    $("grid").replaceChildren();
    $("status").textContent = error.message;
  }
}

// Browsing, with no query: the collection newest first, a page at a time (the API's keyset cursor), and the
// counts by facet; a facet value filters both.
let browsing = null; // the listing shown: its query string and the cursor of its next page

const FACET_NAMES = { format: "Format", camera: "Camera", year: "Year", collection: "Collection", modality: "Modality", body_part: "Body part" };

const yearStart = (year) => `${String(year).padStart(4, "0")}-01-01`;

// The year After and Before hold when they span exactly one, as a year facet sets them; else null.
function yearOf() {
  const year = Number($("after").value.slice(0, 4));
  return $("after").value === yearStart(year) && $("before").value === yearStart(year + 1) ? year : null;
}

function isChosen(name, value) {
  if (name === "year") return yearOf() === value;
  if (name === "collection") return $("collection").value === value;
  if (name in chosen) return chosen[name] === value;
  return $(name).value.trim().toUpperCase() === String(value).toUpperCase();
}

function choose(name, value) {
  const off = isChosen(name, value) && name !== "collection";
  if (name === "year") {
    $("after").value = off ? "" : yearStart(value);
    $("before").value = off || value >= 9999 ? "" : yearStart(value + 1);
  } else if (name === "collection") {
    $("collection").value = value;
  } else if (name in chosen) {
    chosen[name] = off ? "" : value;
  } else {
    $(name).value = off ? "" : value;
  }
  refresh();
}

function renderFacets(data) {
  $("dicom").hidden = !("modality" in data.facets || "body_part" in data.facets || $("modality").value || $("body_part").value);
  const groups = Object.entries(data.facets).filter(([, values]) => values.length).map(([name, values]) => {
    const group = document.createElement("div");
    group.className = "facet";
    group.dataset.facet = name;
    const title = document.createElement("h2");
    title.textContent = FACET_NAMES[name] || name;
    group.append(title);
    for (const { value, count } of values) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = isChosen(name, value) ? "value chosen" : "value";
      button.dataset.value = value;
      button.title = isChosen(name, value) && name !== "collection" ? "click again to show all" : `only ${shown(value)}`;
      label(button, "text", shown(value));
      label(button, "count", String(count));
      button.addEventListener("click", () => choose(name, value));
      group.append(button);
    }
    return group;
  });
  $("facets").replaceChildren(...groups);
}

async function loadFacets() {
  try {
    renderFacets(await (await api(`/api/facets?${filterParams()}`)).json());
  } catch (error) {
    $("facets").replaceChildren();
  }
}

function describe(listing) {
  if (listing.total == null) return `${listing.shown} images`;
  if (!listing.total) return "No images match these filters";
  return `${listing.total} images, newest first` + (listing.shown < listing.total ? ` (${listing.shown} shown)` : "");
}

async function nextPage() {
  const listing = browsing;
  if (!listing || listing.loading) return;
  listing.loading = true;
  try {
    const p = new URLSearchParams(listing.query);
    if (listing.next) p.set("cursor", listing.next);
    const data = await (await api(`/api/browse?${p}`)).json();
    if (browsing !== listing) return; // another listing replaced this one meanwhile
    for (const r of data.results) {
      const [element, caption] = card(r);
      label(caption, "date", r.date.slice(0, 10), `taken (else the file's time) ${r.date}`);
      label(caption, "name", fileName(r.path), shown(r.path));
      $("grid").append(element);
    }
    listing.next = data.next;
    listing.shown += data.results.length;
    $("next-page").hidden = !data.next;
    $("status").textContent = describe(listing);
  } catch (error) {
    $("status").textContent = error.message;
  } finally {
    listing.loading = false;
  }
}

async function browse() {
  const p = filterParams();
  p.set("limit", 48);
  browsing = { query: p.toString(), next: null, shown: 0, total: null, loading: false };
  const listing = browsing;
  $("grid").replaceChildren();
  $("status").textContent = "Loading…";
  const counted = api(`/api/facets?${filterParams()}`).then((r) => r.json());
  await nextPage();
  try {
    const data = await counted;
    if (browsing !== listing) return; // counts for filters changed meanwhile
    renderFacets(data);
    listing.total = data.total;
    $("status").textContent = describe(listing);
  } catch (error) {
    if (browsing === listing) $("facets").replaceChildren();
  }
}

// With a query, a search (and the counts of the collection under the same filters); without one, the listing.
function refresh() {
  if ($("q").value.trim()) {
    loadFacets();
    searchText();
  } else {
    browse();
  }
}

function searchText() {
  const q = $("q").value.trim();
  if (!q) return browse();
  const p = params();
  p.set("q", q);
  run(`“${q}”`, () => api(`/api/search?${p}`));
}

function searchFile(file) {
  // An image query on its own; the API also takes a text to add to it (form field q).
  const form = new FormData();
  form.append("file", file);
  $("q").value = "";
  run(shown(file.name), () => api(`/api/search/image?${params()}`, { method: "POST", body: form }));
}

async function details(id) {
  const info = await (await api(`/api/images/${id}`)).json();
  showImage($("large"), `/api/images/${id}/thumbnail`);
  const rows = [
    ["id", info.id], ["path", shown(info.path)], ["size", `${info.width} × ${info.height}, ${info.format}, ${info.size_bytes} bytes`],
    ["taken", info.taken_at || "—"], ["camera", [info.camera_make, info.camera_model].filter(Boolean).join(" ") || "—"],
    ["collection", info.collection], ["attributes", JSON.stringify(info.attributes)], ["sha256", info.sha256],
  ];
  $("meta").replaceChildren(...rows.map(([k, v]) => {
    const tr = document.createElement("tr");
    tr.innerHTML = "<td></td><td></td>";
    tr.children[0].textContent = k;
    tr.children[1].textContent = v;
    return tr;
  }));
  $("original").onclick = async (event) => {
    event.preventDefault();
    // Downloaded, never opened as a page of this origin: whatever the file holds, it cannot run here.
    try {
      const blob = await (await api(`/api/images/${id}/original`)).blob();
      const link = document.createElement("a");
      link.href = URL.createObjectURL(blob);
      link.download = info.path.split("/").pop() || `image-${id}`;
      link.click();
      setTimeout(() => URL.revokeObjectURL(link.href), 60000);
    } catch (error) { alert(error.message); }
  };
  $("more").onclick = () => {
    $("details").close();
    run(`images like ${fileName(info.path)}`, () => api(`/api/images/${id}/similar?${params()}`));
  };
  $("details").showModal();
}

async function loadCollections() {
  try {
    const collections = await (await api("/api/collections")).json();
    $("collection").replaceChildren(...collections.map((c) => new Option(`${c.collection} (${c.images})`, c.collection)));
    if (collections.length) browse();
    else $("status").textContent = "No images yet: imagedb ingest FOLDER";
  } catch (error) {
    $("status").textContent = error.message;
  }
}

$("search").addEventListener("submit", (event) => { event.preventDefault(); refresh(); });
$("file").addEventListener("change", () => { if ($("file").files[0]) searchFile($("file").files[0]); });
$("close").addEventListener("click", () => $("details").close());
for (const id of ["collection", "after", "before", "modality", "body_part"]) $(id).addEventListener("change", refresh);
for (const id of ["sort", "metric", "min-relevance", "collapse", "hybrid"]) $(id).addEventListener("change", () => { if ($("q").value.trim()) searchText(); });
$("q").addEventListener("search", () => { if (!$("q").value.trim()) browse(); }); // the field's clear button
$("next-page").addEventListener("click", nextPage);
// The next page loads as the end of the list comes into view.
new IntersectionObserver((seen) => { if (seen.some((e) => e.isIntersecting) && !$("next-page").hidden) nextPage(); }).observe($("next-page"));
$("min-relevance").addEventListener("input", showMinRelevance);
document.addEventListener("dragover", (event) => { event.preventDefault(); document.body.classList.add("dragging"); });
document.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
document.addEventListener("drop", (event) => {
  event.preventDefault();
  document.body.classList.remove("dragging");
  if (event.dataTransfer.files[0]) searchFile(event.dataTransfer.files[0]);
});
loadCollections();
