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

function render(results, label, metric = "cosine") {
  $("grid").replaceChildren();
  $("status").textContent = results.length ? `${results.length} results for ${label}` : `No results for ${label}`;
  for (const r of results) {
    const card = document.createElement("div");
    card.className = "card";
    card.dataset.id = r.id;
    const img = document.createElement("img");
    img.alt = shown(r.path);
    showImage(img, r.thumbnail);
    const caption = document.createElement("div");
    caption.innerHTML = `<span class="score"></span><span class="relevance"></span><span class="name"></span>`;
    caption.querySelector(".score").textContent = fixed(r.score, 3);
    caption.querySelector(".score").title = MEASURES[metric] || metric;
    caption.querySelector(".relevance").textContent = r.relevance == null ? "" : `${fixed(r.relevance, 1)} σ`;
    caption.querySelector(".relevance").title = "relevance: standard deviations above an unrelated image's score";
    if (r.duplicates > 0) {
      const more = document.createElement("span");
      more.className = "duplicates";
      more.textContent = `+${r.duplicates}`;
      more.title = `${r.duplicates} duplicate(s) of this image not shown`;
      caption.insertBefore(more, caption.querySelector(".name"));
    }
    caption.querySelector(".name").textContent = fileName(r.path);
    if (r.matched && r.matched.length) {
      // Why a keyword or hybrid result matched: the query's words it holds, and its ranks in the title.
      const words = document.createElement("span");
      words.className = "matched";
      words.textContent = r.matched.join(" ");
      words.title = `words matched; keyword rank ${r.keyword_rank ?? "-"}, vector rank ${r.vector_rank ?? "-"}`;
      caption.append(words);
    }
    card.append(img, caption);
    card.addEventListener("click", () => details(r.id));
    $("grid").append(card);
  }
}

async function run(label, request) {
  $("status").textContent = "Searching…";
  try {
    const data = await (await request()).json();
    render(data.results, label, data.metric);
  } catch (error) {
    $("grid").replaceChildren();
    $("status").textContent = error.message;
  }
}

function searchText() {
  const q = $("q").value.trim();
  if (!q) return;
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
  } catch (error) {
    $("status").textContent = error.message;
  }
}

$("search").addEventListener("submit", (event) => { event.preventDefault(); searchText(); });
$("file").addEventListener("change", () => { if ($("file").files[0]) searchFile($("file").files[0]); });
$("close").addEventListener("click", () => $("details").close());
for (const id of ["collection", "after", "before", "sort", "metric", "min-relevance", "collapse", "hybrid"]) $(id).addEventListener("change", searchText);
$("min-relevance").addEventListener("input", showMinRelevance);
document.addEventListener("dragover", (event) => { event.preventDefault(); document.body.classList.add("dragging"); });
document.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
document.addEventListener("drop", (event) => {
  event.preventDefault();
  document.body.classList.remove("dragging");
  if (event.dataTransfer.files[0]) searchFile(event.dataTransfer.files[0]);
});
loadCollections();
