// The run dashboard: polls /api/state and draws it. Every text from the database (dataset names,
// hosts, errors) goes in through textContent, never as HTML.
"use strict";

const COLOURS = { pending: "#d6d6d6", running: "#f0ad4e", done: "#2e8b57", failed: "#d9534f" };
const LETTERS = { p: "pending", r: "running", d: "done", f: "failed" };
const SVG_LIMIT = 20000; // tiles drawn as SVG rectangles (each clickable, each in the DOM); more on a canvas
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  seconds = Math.floor(seconds);
  if (seconds < 60) return seconds + "s";
  if (seconds < 3600) return Math.floor(seconds / 60) + "m" + String(seconds % 60).padStart(2, "0") + "s";
  return Math.floor(seconds / 3600) + "h" + String(Math.floor((seconds % 3600) / 60)).padStart(2, "0") + "m";
}

function bar(share) {
  const outer = el("span", { class: "bar" });
  const fill = el("span", { class: "fill" });
  fill.style.display = "block";
  fill.style.width = (100 * Math.max(0, Math.min(1, share))).toFixed(1) + "%";
  outer.appendChild(fill);
  return outer;
}

async function showTile(dataset, tile) {
  const info = document.getElementById("tile-info");
  const url = "api/tile?dataset=" + encodeURIComponent(dataset) + "&tile=" + encodeURIComponent(tile);
  try {
    const response = await fetch(url);
    info.textContent = JSON.stringify(await response.json(), null, 1);
    info.dataset.tile = dataset + "/" + tile;
  } catch (e) {
    info.textContent = "could not read the tile: " + e;
  }
}

function tileMap(name, grid) {
  const count = grid.rows * grid.cols;
  if (count <= SVG_LIMIT) {
    const svg = svgEl("svg", { class: "tilemap", viewBox: `0 0 ${grid.cols} ${grid.rows}`,
      width: Math.min(600, Math.max(120, grid.cols * 24)), "data-dataset": name });
    svg.setAttribute("preserveAspectRatio", "xMinYMin meet");
    for (let r = 0; r < grid.rows; r++) {
      for (let c = 0; c < grid.cols; c++) {
        const letter = grid.states[r * grid.cols + c];
        if (letter === ".") continue;
        const state = LETTERS[letter];
        const id = "r" + String(grid.row0 + r).padStart(4, "0") + "_c" + String(grid.col0 + c).padStart(4, "0");
        const rect = svgEl("rect", { x: c, y: r, width: 1, height: 1, "data-tile": id, "data-state": state });
        const title = svgEl("title");
        title.textContent = `${id}: ${state}` + (state === "running" ? ` ${Math.round(100 * grid.running[id])} %` : "");
        rect.appendChild(title);
        rect.addEventListener("click", () => showTile(name, id));
        svg.appendChild(rect);
        if (state === "running") {
          // A running tile fills from the bottom as its chunks are written.
          const p = Math.max(0, Math.min(1, grid.running[id] || 0));
          svg.appendChild(svgEl("rect", { class: "progress", x: c, y: r + 1 - p, width: 1, height: p }));
        }
      }
    }
    return svg;
  }
  // Too many tiles for the DOM: one pixel per tile on a canvas; a click still finds its tile.
  const canvas = el("canvas", { class: "tilemap", width: grid.cols, height: grid.rows, "data-dataset": name });
  canvas.style.width = Math.min(900, grid.cols * Math.max(1, Math.floor(900 / grid.cols))) + "px";
  canvas.style.imageRendering = "pixelated";
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(grid.cols, grid.rows);
  for (let i = 0; i < count; i++) {
    const state = LETTERS[grid.states[i]];
    const hex = state ? COLOURS[state] : "#ffffff";
    image.data[4 * i] = parseInt(hex.slice(1, 3), 16);
    image.data[4 * i + 1] = parseInt(hex.slice(3, 5), 16);
    image.data[4 * i + 2] = parseInt(hex.slice(5, 7), 16);
    image.data[4 * i + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
  canvas.addEventListener("click", (event) => {
    const box = canvas.getBoundingClientRect();
    const c = Math.floor((event.clientX - box.left) / box.width * grid.cols);
    const r = Math.floor((event.clientY - box.top) / box.height * grid.rows);
    const id = "r" + String(grid.row0 + r).padStart(4, "0") + "_c" + String(grid.col0 + c).padStart(4, "0");
    showTile(name, id);
  });
  return canvas;
}

function legend() {
  const p = el("p", { class: "legend" });
  for (const [state, colour] of Object.entries(COLOURS)) {
    const span = el("span");
    const swatch = el("i");
    swatch.style.background = colour;
    span.appendChild(swatch);
    span.appendChild(document.createTextNode(state));
    p.appendChild(span);
  }
  return p;
}

function drawDatasets(data) {
  const box = document.getElementById("datasets");
  box.replaceChildren();
  box.appendChild(legend());
  for (const d of data.report.datasets) {
    const section = el("div", { class: "dataset", "data-dataset": d.name });
    section.appendChild(el("h3", {}, d.name));
    const line = el("div");
    line.appendChild(bar(d.work_share));
    line.appendChild(el("span", { class: "share" }, " " + (100 * d.work_share).toFixed(1) + " % of the work"));
    section.appendChild(line);
    const figures = el("div", { class: "figures" });
    for (const [key, label] of [["done", "done"], ["running", "running"], ["failed", "failed"],
      ["pending", "pending"], ["total", "total"]]) {
      const span = el("span", { "data-figure": key });
      span.appendChild(el("b", {}, d[key]));
      span.appendChild(document.createTextNode(" " + label));
      figures.appendChild(span);
    }
    figures.appendChild(el("span", { "data-figure": "eta" }, "eta " + (d.done === d.total ? "done" : duration(d.eta_seconds))));
    section.appendChild(figures);
    if (d.error) {
      // Its register job failed: what the log says, as text.
      section.appendChild(el("p", { class: "error", "data-figure": "dataset-error" }, "could not be registered: " + d.error));
    }
    const grid = data.grids[d.name];
    if (grid) section.appendChild(tileMap(d.name, grid));
    box.appendChild(section);
  }
}

function drawThroughput(t) {
  const svg = document.getElementById("throughput");
  svg.replaceChildren();
  const n = t.tiles.length;
  const label = document.getElementById("throughput-label");
  if (!n) { label.textContent = "no tile finished yet"; return; }
  const top = Math.max(1, ...t.tiles);
  const w = 600 / n;
  t.tiles.forEach((count, i) => {
    const h = 110 * count / top;
    svg.appendChild(svgEl("rect", { x: i * w, y: 115 - h, width: Math.max(w - 1, 1), height: h, fill: "#4a7ab5",
      "data-count": count }));
  });
  label.textContent = `tiles finished per ${duration(t.seconds)} since the run started (highest: ${top})`;
}

function drawJobs(jobs) {
  const body = document.querySelector("#jobs tbody");
  body.replaceChildren();
  for (const j of jobs) {
    const row = el("tr", { "data-batch": j.batch });
    row.appendChild(el("td", {}, j.dataset));
    row.appendChild(el("td", {}, j.batch));
    row.appendChild(el("td", {}, j.host + (j.external_job_id ? " job " + j.external_job_id : "")));
    const cell = el("td");
    cell.appendChild(bar(j.progress));
    row.appendChild(cell);
    row.appendChild(el("td", { "data-figure": "tiles" }, (j.done + j.running_progress).toFixed(1) + " of " + j.tiles));
    row.appendChild(el("td", { "data-figure": "memory" },
      j.rss_mb === null ? "-" : `${Math.round(j.rss_mb)} of ${j.mem_mb} MB`));
    row.appendChild(el("td", {}, duration(j.age_seconds)));
    body.appendChild(row);
  }
  if (!jobs.length) body.appendChild(el("tr", {}, "")).appendChild(el("td", { colspan: 7, class: "muted" }, "none"));
}

function drawFailed(failed) {
  const list = document.getElementById("failed");
  list.replaceChildren();
  for (const f of failed) {
    const item = el("li", { "data-tile": f.dataset + "/" + f.tile });
    const link = el("a", { href: "#" }, f.dataset + "/" + f.tile);
    link.addEventListener("click", (e) => { e.preventDefault(); showTile(f.dataset, f.tile); });
    item.appendChild(link);
    item.appendChild(el("span", { class: "error-text" }, " (attempt " + f.attempt + "): " + (f.error || "")));
    list.appendChild(item);
  }
  if (!failed.length) list.appendChild(el("li", { class: "muted" }, "none"));
}

function draw(data) {
  const run = document.getElementById("run");
  if (!data.ready) {
    run.textContent = "no run recorded yet in " + data.database;
    return;
  }
  const r = data.report.run;
  run.textContent = r ? `run ${r.id.slice(0, 12)} ${r.status} on ${r.host} by ${r.user}, ` +
    duration((r.ended_at || data.generated_at) - r.started_at) : "no run yet";
  run.dataset.status = r ? r.status : "";
  const overall = document.getElementById("overall");
  const missing = data.report.missing || [];
  overall.textContent = data.report.complete ? "all datasets complete" :
    missing.length ? "the run ended, but outputs are missing (run the workflow again): " + missing.join(", ") :
    `${(100 * data.report.work_share).toFixed(1)} % of the estimated work done, eta ${duration(data.report.eta_seconds)}`;
  drawDatasets(data);
  drawThroughput(data.throughput);
  drawJobs(data.report.jobs);
  drawFailed(data.report.failed);
  document.getElementById("updated").textContent = "Updated " + new Date(data.generated_at * 1000).toLocaleTimeString() + ".";
}

async function refresh() {
  const error = document.getElementById("error");
  try {
    const response = await fetch("api/state", { cache: "no-store" });
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || response.statusText);
    draw(data);
    error.hidden = true;
    document.body.dataset.generatedAt = String(data.generated_at);
    document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
  } catch (e) {
    error.textContent = "cannot read the status: " + e.message;
    error.hidden = false;
  }
}

refresh();
setInterval(refresh, Number(document.body.dataset.refreshMs) || 3000);
