// The PMT map: every PMT of a run on an Aitoff projection of the detector sphere, coloured
// by its fired fraction or its class, with the cuts editable on the page.
//
// Data: GET <data-src> (web/pmt_api.py): arrays indexed by PMT id (theta, phi in degrees,
// fraction, class code), counts per class, the cuts, the class changes since the previous
// good run; ?dead=&hot=&normal_low=&normal_high= reclassifies on the server.
//
// Drawing writes the pixels of an ImageData directly (one square per PMT, no path per
// point), so 17,612 PMTs draw in a few milliseconds. Hover finds the PMT under the mouse
// in a grid of cells built once per layout (a handful of PMTs to test, not 17,612).

const CLASS_COLOURS = {
  normal: [120, 190, 120],
  other: [240, 160, 40],
  dead: [30, 60, 200],
  hot: [220, 30, 30],
  unknown: [185, 185, 185],
};
const PRESETS = {
  run: { label: "this run's cuts" },
  default: { label: "JUNO default", dead: 0.01, hot: 0.99, normal_low: 0.05, normal_high: 0.15 },
  test: { label: "JUNO test", dead: 0.06, hot: 0.13, normal_low: 0.0932, normal_high: 0.0942 },
};
const CUTS = ["dead", "hot", "normal_low", "normal_high"];
const CUT_LABELS = { dead: "dead below", hot: "hot above", normal_low: "normal from", normal_high: "normal to" };
// Viridis, sampled: the fraction scale, dark (low) to yellow (high).
const RAMP = [
  [68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
  [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37],
];

function rampColour(t) {
  const x = Math.min(Math.max(t, 0), 1) * (RAMP.length - 1);
  const i = Math.min(Math.floor(x), RAMP.length - 2);
  const f = x - i;
  return RAMP[i].map((c, k) => Math.round(c + f * (RAMP[i + 1][k] - c)));
}

function packed([r, g, b]) {
  return (255 << 24) | (b << 16) | (g << 8) | r; // ImageData is RGBA in memory (little-endian)
}

// Aitoff projection of (theta from +z, phi) in degrees -> x in [-pi, pi], y in [-pi/2, pi/2].
function aitoff(thetaDeg, phiDeg) {
  const lat = ((90 - thetaDeg) * Math.PI) / 180;
  let lon = ((((phiDeg + 180) % 360) + 360) % 360) - 180;
  lon = (lon * Math.PI) / 180;
  const alpha = Math.acos(Math.cos(lat) * Math.cos(lon / 2));
  const sinc = alpha < 1e-9 ? 1 : Math.sin(alpha) / alpha;
  return [(2 * Math.cos(lat) * Math.sin(lon / 2)) / sinc, Math.sin(lat) / sinc];
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const child of children) node.append(child);
  return node;
}

function percent(fraction, digits = 2) {
  return fraction === null || fraction === undefined ? "—" : (100 * fraction).toFixed(digits) + " %";
}

class PmtMap {
  constructor(root) {
    this.root = root;
    this.src = root.dataset.src;
    this.mode = "fraction";
    this.cuts = null; // null: the run's own
    this.data = null;
    this.build();
    this.reload();
    new ResizeObserver(() => this.layout()).observe(this.frame);
  }

  build() {
    const r = this.root;
    r.classList.add("pmt-map");
    r.textContent = "";
    this.controls = el("form", { class: "pmt-controls" });
    this.controls.addEventListener("submit", (e) => {
      e.preventDefault();
      this.applyCuts();
    });
    const modes = el("fieldset", { class: "pmt-mode" }, el("legend", {}, "Colour by"));
    for (const [value, label] of [["fraction", "fired fraction"], ["class", "class"]]) {
      const input = el("input", { type: "radio", name: "mode", value, checked: value === this.mode });
      input.addEventListener("change", () => {
        this.mode = value;
        this.draw();
      });
      modes.append(el("label", {}, input, " " + label));
    }
    const cuts = el("fieldset", { class: "pmt-cuts" }, el("legend", {}, "Cuts (%)"));
    this.preset = el("select", { name: "preset" });
    for (const [key, p] of Object.entries(PRESETS)) this.preset.append(el("option", { value: key }, p.label));
    this.preset.addEventListener("change", () => this.choosePreset(this.preset.value));
    cuts.append(el("label", {}, "preset ", this.preset));
    this.inputs = {};
    for (const name of CUTS) {
      const input = el("input", { type: "number", name, step: "any", min: "0", max: "100", size: 6 });
      this.inputs[name] = input;
      cuts.append(el("label", {}, CUT_LABELS[name] + " ", input));
    }
    cuts.append(el("button", { type: "submit" }, "Apply"));
    this.message = el("span", { class: "pmt-message", role: "status" });
    cuts.append(this.message);
    this.controls.append(modes, cuts);
    this.counts = el("div", { class: "pmt-counts" });
    this.canvas = el("canvas", { class: "pmt-canvas" });
    this.tooltip = el("div", { class: "pmt-tooltip", hidden: true });
    this.frame = el("div", { class: "pmt-frame" }, this.canvas, this.tooltip);
    this.legend = el("div", { class: "pmt-legend" });
    this.lists = el("div", { class: "pmt-lists" });
    r.append(this.controls, this.counts, this.frame, this.legend, this.lists);
    this.canvas.addEventListener("mousemove", (e) => this.hover(e));
    this.canvas.addEventListener("mouseleave", () => (this.tooltip.hidden = true));
  }

  async reload() {
    const query = this.cuts ? "?" + new URLSearchParams(this.cuts).toString() : "";
    const response = await fetch(this.src + query, { headers: { Accept: "application/json" } });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      this.message.textContent = body.detail ? String(body.detail) : "cannot load the PMT map";
      this.root.dataset.state = "error";
      return;
    }
    this.message.textContent = "";
    const samePmts = this.data && this.data.n_pmt === body.n_pmt && this.data.detector === body.detector;
    this.data = body;
    this.scaleCache = null;
    if (!samePmts) this.project();
    this.showCuts();
    this.showCounts();
    this.showLists();
    this.layout();
    this.root.dataset.state = "ready";
  }

  project() {
    const d = this.data;
    const n = d.n_pmt;
    this.ax = new Float32Array(n);
    this.ay = new Float32Array(n);
    this.hasPosition = new Uint8Array(n);
    if (!d.theta) {
      this.message.textContent = d.problem || "no PMT positions";
      return;
    }
    for (let i = 0; i < n; i++) {
      if (d.theta[i] === null || d.phi[i] === null) continue;
      const [x, y] = aitoff(d.theta[i], d.phi[i]);
      this.ax[i] = x;
      this.ay[i] = y;
      this.hasPosition[i] = 1;
    }
  }

  showCuts() {
    for (const name of CUTS) this.inputs[name].value = +(100 * this.data.cuts[name]).toPrecision(6);
  }

  choosePreset(key) {
    const preset = PRESETS[key];
    if (key === "run") {
      this.cuts = null;
    } else {
      this.cuts = Object.fromEntries(CUTS.map((c) => [c, preset[c]]));
    }
    this.reload();
  }

  applyCuts() {
    this.cuts = Object.fromEntries(CUTS.map((c) => [c, Number(this.inputs[c].value) / 100]));
    this.preset.value = Object.keys(PRESETS).find(
      (k) => k !== "run" && CUTS.every((c) => Math.abs(PRESETS[k][c] - this.cuts[c]) < 1e-9),
    ) || "run";
    this.reload();
  }

  showCounts() {
    const d = this.data;
    this.counts.textContent = "";
    for (const name of d.classes) {
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = `rgb(${CLASS_COLOURS[name].join(",")})`;
      this.counts.append(
        el("span", { class: "pmt-count " + name, "data-class": name }, swatch, ` ${name} `,
          el("strong", { "data-count": name }, d.counts[name].toLocaleString("en-US"))),
      );
    }
    this.counts.append(el("span", { class: "muted" }, ` · ${d.n_pmt.toLocaleString("en-US")} PMTs, ${d.n_events.toLocaleString("en-US")} events`));
  }

  showLists() {
    const d = this.data;
    this.lists.textContent = "";
    for (const name of ["dead", "hot"]) {
      const ids = [];
      for (let i = 0; i < d.class.length; i++) if (d.classes[d.class[i]] === name) ids.push(i);
      const list = el("p", { class: "pmt-ids", "data-ids": name }, ids.join(", ") || "none");
      this.lists.append(el("details", {}, el("summary", {}, `${ids.length} ${name} PMTs`), list));
    }
    const c = d.changed;
    if (!c) {
      this.lists.append(el("p", { class: "muted" }, "No previous good run to compare the classes with."));
      return;
    }
    const rows = c.ids.slice(0, 500).map((id, k) =>
      el("tr", {}, el("td", {}, String(id)), el("td", {}, d.classes[c.old[k]]), el("td", { class: d.classes[c.new[k]] }, d.classes[c.new[k]])),
    );
    const table = el("table", { class: "pmt-changed" },
      el("thead", {}, el("tr", {}, el("th", {}, "PMT"), el("th", {}, "was"), el("th", {}, "now"))),
      el("tbody", {}, ...rows));
    const more = c.ids.length > rows.length ? ` (first ${rows.length} shown)` : "";
    this.lists.append(el("details", { "data-changed": String(c.ids.length) },
      el("summary", {}, `${c.ids.length} PMTs changed class since run ${c.previous_run}${more}`), table));
  }

  layout() {
    if (!this.data) return;
    const width = Math.max(200, this.frame.clientWidth);
    const height = Math.round(width / 2);
    const dpr = window.devicePixelRatio || 1;
    this.canvas.style.width = width + "px";
    this.canvas.style.height = height + "px";
    this.canvas.width = Math.round(width * dpr);
    this.canvas.height = Math.round(height * dpr);
    this.dpr = dpr;
    const w = this.canvas.width;
    const h = this.canvas.height;
    const margin = 4 * dpr;
    // The ellipse |x| <= pi, |y| <= pi/2 fills the canvas less a margin.
    this.scale = Math.min((w - 2 * margin) / (2 * Math.PI), (h - 2 * margin) / Math.PI);
    const n = this.data.n_pmt;
    // A square per PMT about the size of its share of the ellipse's area.
    const area = (Math.PI * (Math.PI * this.scale) * ((Math.PI / 2) * this.scale)) / Math.max(n, 1);
    this.size = Math.max(2, Math.floor(Math.sqrt(area) * 1.05));
    this.px = new Int32Array(n);
    this.py = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      this.px[i] = Math.round(w / 2 + this.ax[i] * this.scale);
      this.py[i] = Math.round(h / 2 - this.ay[i] * this.scale);
    }
    this.buildGrid();
    this.draw();
  }

  buildGrid() {
    // Cells of 2 squares; counting sort of the PMTs into them.
    const cell = (this.cell = this.size * 2);
    this.cols = Math.ceil(this.canvas.width / cell) + 1;
    this.rows = Math.ceil(this.canvas.height / cell) + 1;
    const n = this.data.n_pmt;
    const start = new Int32Array(this.cols * this.rows + 1);
    const cellOf = new Int32Array(n).fill(-1);
    for (let i = 0; i < n; i++) {
      if (!this.hasPosition[i]) continue;
      const c = Math.floor(this.py[i] / cell) * this.cols + Math.floor(this.px[i] / cell);
      cellOf[i] = c;
      start[c + 1]++;
    }
    for (let c = 0; c < this.cols * this.rows; c++) start[c + 1] += start[c];
    const fill = start.slice(0, -1);
    const items = new Int32Array(n);
    for (let i = 0; i < n; i++) if (cellOf[i] >= 0) items[fill[cellOf[i]]++] = i;
    this.gridStart = start;
    this.gridItems = items;
  }

  colourScale() {
    // Linear from 0 to a top that keeps the normal band readable: twice its upper cut,
    // or the 99th percentile if higher, at most 1. Hot PMTs above it take the top colour.
    const d = this.data;
    const sorted = Float32Array.from(d.fraction.filter((f) => f !== null)).sort();
    const p99 = sorted.length ? sorted[Math.floor(0.99 * (sorted.length - 1))] : 1;
    const top = Math.min(1, Math.max(2 * d.cuts.normal_high, p99, 1e-6));
    const table = new Uint32Array(256);
    for (let k = 0; k < 256; k++) table[k] = packed(rampColour(k / 255));
    return { top, table };
  }

  draw() {
    if (!this.data || !this.px) return;
    const t0 = performance.now();
    const d = this.data;
    const w = this.canvas.width;
    const h = this.canvas.height;
    const ctx = this.canvas.getContext("2d");
    const image = ctx.createImageData(w, h);
    const pixels = new Uint32Array(image.data.buffer);
    const classColour = d.classes.map((name) => packed(CLASS_COLOURS[name]));
    const none = packed([230, 230, 230]);
    const scale = this.mode === "fraction" ? (this.scaleCache ??= this.colourScale()) : null;
    const s = this.size;
    const normal = d.classes.indexOf("normal");
    // Two passes: normal PMTs first, then the others one pixel larger on top of them.
    for (const pass of [0, 1]) {
      const grow = pass === 1 ? Math.max(1, Math.round(this.dpr)) : 0;
      for (let i = 0; i < d.n_pmt; i++) {
        if (!this.hasPosition[i] || (d.class[i] === normal) === (pass === 1)) continue;
        let colour;
        if (scale) {
          const f = d.fraction[i];
          colour = f === null ? none : scale.table[Math.min(255, Math.max(0, Math.round((255 * f) / scale.top)))];
        } else {
          colour = classColour[d.class[i]];
        }
        const x0 = Math.max(0, this.px[i] - (s >> 1) - grow);
        const y0 = Math.max(0, this.py[i] - (s >> 1) - grow);
        const x1 = Math.min(w, x0 + s + 2 * grow);
        const y1 = Math.min(h, y0 + s + 2 * grow);
        for (let y = y0; y < y1; y++) pixels.fill(colour, y * w + x0, y * w + x1);
      }
    }
    ctx.putImageData(image, 0, 0);
    this.drawOutline(ctx);
    const ms = performance.now() - t0;
    this.root.dataset.drawMs = ms.toFixed(2);
    this.drawLegend(scale);
  }

  drawOutline(ctx) {
    ctx.save();
    ctx.strokeStyle = "#999";
    ctx.lineWidth = this.dpr;
    ctx.beginPath();
    ctx.ellipse(this.canvas.width / 2, this.canvas.height / 2, Math.PI * this.scale, (Math.PI / 2) * this.scale, 0, 0, 2 * Math.PI);
    ctx.stroke();
    ctx.restore();
  }

  drawLegend(scale) {
    this.legend.textContent = "";
    if (!scale) {
      for (const name of this.data.classes) {
        const swatch = el("span", { class: "swatch" });
        swatch.style.background = `rgb(${CLASS_COLOURS[name].join(",")})`;
        this.legend.append(el("span", { class: "legend-item" }, swatch, " " + name));
      }
      return;
    }
    const bar = el("span", { class: "legend-bar" });
    bar.style.background = `linear-gradient(to right, ${RAMP.map((c) => `rgb(${c.join(",")})`).join(",")})`;
    this.legend.append("fired fraction: 0 % ", bar, ` ${percent(scale.top, 1)}${scale.top < 1 ? " and above" : ""}`);
  }

  hover(event) {
    if (!this.gridStart) return;
    const rect = this.canvas.getBoundingClientRect();
    const x = (event.clientX - rect.left) * this.dpr;
    const y = (event.clientY - rect.top) * this.dpr;
    const i = this.nearest(x, y);
    if (i < 0) {
      this.tooltip.hidden = true;
      return;
    }
    const d = this.data;
    this.tooltip.textContent =
      `PMT ${i} · θ ${d.theta[i].toFixed(2)}° φ ${d.phi[i].toFixed(2)}° · ` +
      `${percent(d.fraction[i], 3)} fired · ${d.classes[d.class[i]]}`;
    this.tooltip.hidden = false;
    this.tooltip.style.left = event.clientX - rect.left + 12 + "px";
    this.tooltip.style.top = event.clientY - rect.top + 12 + "px";
    this.root.dataset.hover = String(i);
  }

  nearest(x, y) {
    const cell = this.cell;
    const cx = Math.floor(x / cell);
    const cy = Math.floor(y / cell);
    let best = -1;
    let bestDistance = (this.size * 1.5) ** 2;
    for (let r = cy - 1; r <= cy + 1; r++) {
      if (r < 0 || r >= this.rows) continue;
      for (let c = cx - 1; c <= cx + 1; c++) {
        if (c < 0 || c >= this.cols) continue;
        const k = r * this.cols + c;
        for (let j = this.gridStart[k]; j < this.gridStart[k + 1]; j++) {
          const i = this.gridItems[j];
          const distance = (this.px[i] - x) ** 2 + (this.py[i] - y) ** 2;
          if (distance < bestDistance) {
            best = i;
            bestDistance = distance;
          }
        }
      }
    }
    return best;
  }
}

export function mountPmtMap(root) {
  const map = new PmtMap(root);
  const api = {
    reload: () => {
      map.scaleCache = null;
      return map.reload();
    },
    map,
  };
  root.pmtMap = api;
  return api;
}
