// runwatch's pages: what needs JavaScript, added to server-rendered pages that work
// without it. Hooks (emitted by the templates):
//   <div class="hist" data-file data-object [data-reference-file] [data-verdict]>
//       drawn with JSROOT, loaded from /static/vendor/jsroot only when such a div exists;
//   <div id="pmt-map" data-src>  the PMT map (pmtmap.js);
//   <body data-live data-page data-run>  live updates over server-sent events;
//   [data-run-row="N"] [data-field="status|ended_at|events|files|progress|verdict"]
//       the cells a run event refreshes.
(function () {
  "use strict";

  const STATIC = "/static/";
  const JSROOT_MAIN = STATIC + "vendor/jsroot/modules/main.mjs";
  const VERDICT_COLOUR = { good: 417, warning: 800, bad: 632 }; // ROOT kGreen+1, kOrange, kRed
  const REFERENCE_COLOUR = 920; // kGray

  function addStyles() {
    const link = document.createElement("link");
    link.rel = "stylesheet";
    link.href = STATIC + "runwatch-ui.css";
    document.head.appendChild(link);
  }

  // -- histograms -------------------------------------------------------------------

  let jsroot = null;
  const files = new Map(); // url -> Promise of a JSROOT file

  function loadJsroot() {
    if (!jsroot) {
      jsroot = import(JSROOT_MAIN).then((mod) => {
        mod.settings.ToolBar = false; // the page has its own links; keep the pads clean
        return mod;
      });
    }
    return jsroot;
  }

  function openFile(mod, url) {
    if (!files.has(url)) files.set(url, mod.openFile(url));
    return files.get(url);
  }

  function integral(hist) {
    // fArray holds the underflow and overflow bins too: leave them out.
    const a = hist.fArray;
    if (!a || !hist.fXaxis) return 0;
    let sum = 0;
    if (hist._typename.startsWith("TH1")) {
      for (let i = 1; i <= hist.fXaxis.fNbins; i++) sum += a[i];
    } else {
      for (let i = 0; i < a.length; i++) sum += a[i];
    }
    return sum;
  }

  function scale(hist, factor) {
    for (let i = 0; i < hist.fArray.length; i++) hist.fArray[i] *= factor;
    if (hist.fSumw2 && hist.fSumw2.length) {
      for (let i = 0; i < hist.fSumw2.length; i++) hist.fSumw2[i] *= factor * factor;
    }
    hist.fEntries *= factor;
  }

  function withVersion(url, version) {
    if (!version) return url;
    return url + (url.includes("?") ? "&" : "?") + "v=" + encodeURIComponent(version);
  }

  async function drawHist(el, version) {
    const url = el.dataset.file;
    const name = el.dataset.object;
    if (!url || !name) return;
    el.classList.add("hist-loading");
    try {
      const mod = await loadJsroot();
      const file = await openFile(mod, withVersion(url, version));
      const obj = await file.readObject(name);
      const is2d = obj._typename.startsWith("TH2");
      const verdict = el.dataset.verdict;
      if (!is2d) {
        obj.fLineColor = VERDICT_COLOUR[verdict] ?? 602; // kBlue+2 when unchecked
        obj.fLineWidth = 2;
      }
      mod.cleanup(el);
      el.textContent = "";
      await mod.draw(el, obj, is2d ? "colz" : "hist");
      const refUrl = el.dataset.referenceFile;
      if (refUrl && !is2d) await overlayReference(mod, el, obj, refUrl, name);
      el.classList.remove("hist-loading", "hist-error");
      el.classList.add("hist-drawn");
    } catch (err) {
      el.classList.remove("hist-loading");
      el.classList.add("hist-error");
      el.textContent = "cannot draw " + name + ": " + (err && err.message ? err.message : err);
    }
  }

  async function overlayReference(mod, el, obj, refUrl, name) {
    const ref = await (await openFile(mod, refUrl)).readObject(name);
    const total = integral(obj);
    const refTotal = integral(ref);
    if (total > 0 && refTotal > 0) scale(ref, total / refTotal); // same integral as the run
    ref.fLineColor = REFERENCE_COLOUR;
    ref.fLineStyle = 2;
    ref.fLineWidth = 2;
    ref.fTitle = "reference";
    await mod.draw(el, ref, "same hist");
    el.dataset.referenceDrawn = "1";
  }

  function drawHistograms(root, version) {
    const hists = root.querySelectorAll(".hist[data-file]");
    for (const el of hists) {
      el.classList.add("hist-" + (el.dataset.verdict || "unchecked"));
      drawHist(el, version);
    }
  }

  // -- PMT map ----------------------------------------------------------------------

  let pmtMap = null;

  function mountPmtMap(root) {
    const el = root.querySelector("#pmt-map[data-src]");
    if (!el) return;
    import(STATIC + "pmtmap.js").then((mod) => {
      pmtMap = mod.mountPmtMap(el);
    });
  }

  function enhance(root, version) {
    drawHistograms(root, version);
    mountPmtMap(root);
  }

  // -- live updates -----------------------------------------------------------------

  function text(value) {
    return value === null || value === undefined ? "—" : String(value);
  }

  function escape(value) {
    const span = document.createElement("span");
    span.textContent = value;
    return span.innerHTML;
  }

  function time(iso) {
    if (!iso) return "—";
    return new Date(iso).toISOString().slice(0, 19).replace("T", " ");
  }

  function number(n) {
    return n === null || n === undefined ? "—" : n.toLocaleString("en-US");
  }

  // The same HTML as the templates' _macros.html, so a refreshed cell looks the same.
  const render = {
    status: (r) =>
      `<span class="status ${r.status.toLowerCase().replace(/ /g, "-")}">${escape(r.status)}</span>`,
    ended_at: (r) => time(r.ended_at),
    events: (r) => number(r.events),
    files: (r) => text(r.files),
    progress: (r) => {
      const p = r.progress;
      const percent = p.total ? Math.round((100 * p.done) / p.total) : 0;
      const failed = p.failed ? ` <span class="failed">(${p.failed} failed)</span>` : "";
      const title = `${p.done} of ${p.total} tasks done` + (p.failed ? `, ${p.failed} failed for good` : "");
      return `<span class="progress" title="${title}"><span class="bar"><span style="width: ${percent}%"></span></span> ${p.done}/${p.total}${failed}</span>`;
    },
    verdict: (r) => {
      if (!r.verdict) return '<span class="muted">—</span>';
      const provisional = r.verdict_final ? "" : " provisional";
      const title = r.verdict_final ? "final merge" : "live merge (provisional)";
      return `<span class="verdict ${escape(r.verdict)}${provisional}" title="${title}">${escape(r.verdict)}</span>`;
    },
  };

  function updateRun(row) {
    const holders = document.querySelectorAll(`[data-run-row="${row.number}"]`);
    for (const holder of holders) {
      for (const cell of holder.querySelectorAll("[data-field]")) {
        const field = cell.dataset.field;
        // The run page's files cell says more ("3 of 4 (… bytes)"): leave it to a refresh.
        if (!(field in render) || (field === "files" && holder.tagName !== "TR")) continue;
        const html = render[field](row);
        if (cell.innerHTML !== html) cell.innerHTML = html;
      }
      holder.dataset.status = row.status;
      flash(holder);
    }
    return holders.length > 0;
  }

  function flash(el) {
    el.classList.remove("live-changed");
    void el.offsetWidth; // restart the animation
    el.classList.add("live-changed");
  }

  const body = document.body;
  const page = body.dataset.page;
  const thisRun = body.dataset.run ? Number(body.dataset.run) : null;
  let refreshTimer = null;
  let newAlarms = 0;
  let lastMerge = null;

  // Fetch this page again and swap its main section: the server renders what changed
  // (a new merge's histograms and checks, the jobs table), JavaScript need not know how.
  // At most one refresh per `delay`: while one is pending, later events join it (a run
  // being processed sends an event a second; a reset timer would never fire).
  function refreshSection(selector, delay) {
    if (refreshTimer) return;
    refreshTimer = setTimeout(async () => {
      refreshTimer = null;
      const response = await fetch(location.href, { headers: { Accept: "text/html" } });
      if (!response.ok) return;
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = doc.querySelector(selector);
      const old = document.querySelector(selector);
      if (!fresh || !old) return;
      old.replaceWith(fresh);
      enhance(fresh, lastMerge);
    }, delay);
  }

  function onRun(row) {
    const shown = updateRun(row);
    if (page === "runs" && !shown) notice("runs", `Run ${row.number} (${row.stream}) is new: reload to see it`, location.href);
    // The Base and Jobs tabs show the run's tasks; the histogram tabs change with merges.
    const tab = document.querySelector("section.tab")?.id;
    if (page === "run" && row.number === thisRun && (tab === "tab-base" || tab === "tab-jobs")) {
      refreshSection("section.tab", 1000);
    }
  }

  function onMerge(merge) {
    if (page !== "run" || merge.run !== thisRun) return;
    lastMerge = merge.merge_id;
    if (pmtMap) {
      pmtMap.reload();
    } else {
      files.clear();
      refreshSection("section.tab", 200);
    }
  }

  function onAlarm(alarm) {
    if (alarm.action === "raised" || alarm.action === "re-raised") newAlarms += 1;
    if (page === "alarms") {
      refreshSection("main", 300);
    } else if (newAlarms) {
      const run = alarm.run ? ` (run ${alarm.run})` : "";
      notice("alarms", `${newAlarms} new alarm${newAlarms > 1 ? "s" : ""}: ${alarm.message}${run}`, "/alarms");
    }
  }

  function notice(key, message, href) {
    let bar = document.getElementById("live-notice-" + key);
    if (!bar) {
      bar = document.createElement("a");
      bar.id = "live-notice-" + key;
      bar.className = "live-notice live-notice-" + key;
      document.querySelector("main")?.prepend(bar);
    }
    bar.href = href;
    bar.textContent = message;
  }

  function indicator(state) {
    let dot = document.getElementById("live-indicator");
    if (!dot) {
      dot = document.createElement("span");
      dot.id = "live-indicator";
      (document.querySelector("header nav") || body).appendChild(dot);
    }
    dot.dataset.state = state;
    dot.title = { live: "live updates on", connecting: "connecting…", offline: "live updates off: retrying" }[state];
  }

  function startLive() {
    const url = body.dataset.live;
    if (!url || !window.EventSource) return;
    let backoff = 1000;
    const connect = () => {
      indicator("connecting");
      const source = new EventSource(url);
      const on = (kind, handler) =>
        source.addEventListener(kind, (e) => {
          try {
            handler(JSON.parse(e.data));
          } catch (err) {
            console.error("runwatch live", kind, err);
          }
        });
      on("run", onRun);
      on("merge", onMerge);
      on("alarm", onAlarm);
      source.onopen = () => {
        backoff = 1000;
        indicator("live");
      };
      source.onerror = () => {
        // The browser retries by itself unless the server refused (closed): then we do.
        if (source.readyState === EventSource.CLOSED) {
          indicator("offline");
          setTimeout(connect, backoff);
          backoff = Math.min(backoff * 2, 30000);
        } else {
          indicator("connecting");
        }
      };
    };
    connect();
  }

  addStyles();
  enhance(document, null);
  startLive();
})();
