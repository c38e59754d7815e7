// The dashboard page: a device table, active alerts and a chart per sensor, kept live by
// the server's event stream (/api/stream), with each chart's history read from the table
// (/api/history). Every text from a device goes in with textContent, never as HTML.
"use strict";
(function () {
  const RENDER_MS = 200;       // charts and rows are redrawn at most this often
  const AGE_MS = 1000;         // ages tick this often
  const SLIDE_MS = 5000;       // every chart's window slides this often, readings or not
  // History requests in flight at once: with the event stream, 5 of the 6 connections
  // Chromium allows a host, so a second tab still gets one.
  const HISTORY_WORKERS = 4;
  const MAX_POINTS_KEPT = 4000;  // per chart; beyond it older points are thinned
  const STALE_MIN_MS = 15000;  // never called stale sooner than this

  const dash = {
    devices: new Map(),  // id -> {id, status, status_ms, reading, health}
    series: new Map(),   // id -> {ts: [ms...], t: [°C...]}, oldest first
    charts: new Map(),   // id -> uPlot
    dirtyCharts: new Set(),
    dirtyRows: new Set(),
    rangeMin: 60,
    generation: 0,       // bumped when the range changes: late history answers are dropped
    offsetMs: 0,         // the server's clock minus this page's
    sources: { broker: null, table: null },
    streamDown: null,
    historyProblem: null,
    alerts: [],
    readings: 0,         // readings taken in from the stream
    renders: 0,          // chart redraws
    ready: false,        // the first snapshot and its histories are in
    readyAtMs: null,     // when it was, on the page's clock (performance.now())
    lagsMs: [],          // the newest readings' age when drawn (bench/dashboard.py reads them)
    pendingTs: [],
    stream: null,
  };
  window.dashboard = dash;
  // What a chart holds now, for tests and the benchmark: [[ms...], [°C...]].
  dash.chartData = function (id) {
    const chart = dash.charts.get(id);
    return chart ? [chart.data[0].map(function (s) { return Math.round(s * 1000); }),
      Array.from(chart.data[1])] : null;
  };

  const $ = function (id) { return document.getElementById(id); };
  const now = function () { return Date.now() + dash.offsetMs; };

  // -- series ------------------------------------------------------------------------

  function seriesOf(id) {
    let s = dash.series.get(id);
    if (!s) { s = { ts: [], t: [] }; dash.series.set(id, s); }
    return s;
  }

  function lowerBound(list, value) {
    let lo = 0, hi = list.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (list[mid] < value) lo = mid + 1; else hi = mid; }
    return lo;
  }

  function addPoint(id, ts, t) {
    const s = seriesOf(id);
    const n = s.ts.length;
    if (n === 0 || ts > s.ts[n - 1]) {
      s.ts.push(ts); s.t.push(t);
    } else {  // an older reading (a device's outbox catching up) or one already here
      const i = lowerBound(s.ts, ts);
      if (s.ts[i] === ts) return;
      s.ts.splice(i, 0, ts); s.t.splice(i, 0, t);
    }
    dash.dirtyCharts.add(id);
  }

  function trim(s) {
    const cutoff = now() - dash.rangeMin * 60000;
    const k = lowerBound(s.ts, cutoff);
    if (k > 0) { s.ts.splice(0, k); s.t.splice(0, k); }
    if (s.ts.length > MAX_POINTS_KEPT) {  // every other point of the older half goes
      const half = s.ts.length >> 1;
      const ts = [], t = [];
      for (let i = 0; i < s.ts.length; i++) {
        if (i >= half || i % 2 === 0) { ts.push(s.ts[i]); t.push(s.t[i]); }
      }
      s.ts = ts; s.t = t;
    }
  }

  // -- charts ------------------------------------------------------------------------

  function insertSorted(parent, node, id) {
    for (const child of parent.children) {
      if (child.dataset.id > id) { parent.insertBefore(node, child); return; }
    }
    parent.appendChild(node);
  }

  function ensureChart(id) {
    if (dash.charts.has(id)) return;
    const box = document.createElement("div");
    box.className = "chart";
    box.id = "chart-" + id;
    box.dataset.id = id;
    const title = document.createElement("h3");
    title.textContent = id;
    box.appendChild(title);
    insertSorted($("charts"), box, id);
    const chart = new uPlot({
      width: Math.max(300, box.clientWidth - 12),
      height: 170,
      legend: { show: false },
      // The whole range chosen, ending now, however few readings it holds yet.
      scales: { x: { time: true, range: function () {
        const end = now() / 1000;
        return [end - dash.rangeMin * 60, end];
      } } },
      series: [{}, { label: "°C", stroke: "#1d6fb8", width: 1.5, points: { show: false } }],
      axes: [{}, { size: 48, values: function (u, vals) { return vals.map(function (v) { return v + "°"; }); } }],
    }, [[], []], box);
    dash.charts.set(id, chart);
  }

  function drawCharts() {
    const drawnAt = now();
    for (const ts of dash.pendingTs) dash.lagsMs.push(drawnAt - ts);
    dash.pendingTs = [];
    if (dash.lagsMs.length > 5000) dash.lagsMs.splice(0, dash.lagsMs.length - 5000);
    for (const id of dash.dirtyCharts) {
      const chart = dash.charts.get(id);
      if (!chart) continue;
      const s = seriesOf(id);
      trim(s);
      chart.setData([s.ts.map(function (ms) { return ms / 1000; }), s.t.slice()]);
      dash.renders++;
    }
    dash.dirtyCharts.clear();
  }

  window.addEventListener("resize", function () {
    for (const [id, chart] of dash.charts) {
      const box = $("chart-" + id);
      chart.setSize({ width: Math.max(300, box.clientWidth - 12), height: 170 });
    }
  });

  // -- the device table --------------------------------------------------------------

  const COLUMNS = ["id", "status", "temperature", "age", "outbox", "dropped", "reconnects", "clock"];

  function ensureRow(id) {
    let row = $("row-" + id);
    if (row) return row;
    row = document.createElement("tr");
    row.id = "row-" + id;
    row.dataset.id = id;
    for (const name of COLUMNS) {
      const cell = document.createElement("td");
      cell.className = name;
      row.appendChild(cell);
    }
    row.querySelector(".id").textContent = id;
    insertSorted(document.querySelector("#devices tbody"), row, id);
    $("no-devices").hidden = true;
    return row;
  }

  // A device is stale when it is online but has said nothing for three of its intervals.
  function staleAfter(id) {
    const s = dash.series.get(id);
    if (!s || s.ts.length < 2) return STALE_MIN_MS;
    const n = Math.min(5, s.ts.length - 1);
    const interval = (s.ts[s.ts.length - 1] - s.ts[s.ts.length - 1 - n]) / n;
    return Math.max(STALE_MIN_MS, 3 * interval);
  }

  function shownStatus(device) {
    if (device.status !== "online") return device.status;
    const reading = device.reading;
    if (reading && now() - reading.ts > staleAfter(device.id)) return "stale";
    return "online";
  }

  function age(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 120) return s + " s";
    if (s < 7200) return Math.round(s / 60) + " min";
    return Math.round(s / 3600) + " h";
  }

  function setText(row, name, text) {
    const cell = row.querySelector("." + name);
    if (cell.textContent !== text) cell.textContent = text;
  }

  function drawRow(id) {
    const device = dash.devices.get(id);
    const row = ensureRow(id);
    const status = shownStatus(device);
    const reading = device.reading, health = device.health;
    setText(row, "status", status);
    row.querySelector(".status").className = "status status-" + status;
    row.classList.toggle("offline", status === "offline");
    setText(row, "temperature", reading ? reading.temperature.toFixed(2) + " °C" : "–");
    setText(row, "age", reading ? age(now() - reading.ts) : "–");
    setText(row, "outbox", health ? String(health.outbox_depth) : "–");
    setText(row, "dropped", health ? String(health.dropped) : "–");
    setText(row, "reconnects", health ? String(health.reconnects) : "–");
    setText(row, "clock", !health || health.clock_synced === null ? "–" : (health.clock_synced ? "synced" : "not synced"));
  }

  function drawSummary() {
    let online = 0, offline = 0, stale = 0;
    for (const device of dash.devices.values()) {
      const status = shownStatus(device);
      if (status === "online") online++;
      else if (status === "offline") offline++;
      else if (status === "stale") stale++;
    }
    const parts = [dash.devices.size + " devices", online + " online"];
    if (offline) parts.push(offline + " offline");
    if (stale) parts.push(stale + " stale");
    $("summary").textContent = parts.join(" · ");
  }

  // -- alerts and the banner ---------------------------------------------------------

  function drawAlerts() {
    const list = $("alert-list");
    list.replaceChildren();
    if (dash.alerts.length === 0) {
      const none = document.createElement("li");
      none.className = "none";
      none.textContent = "none";
      list.appendChild(none);
      return;
    }
    for (const alert of dash.alerts) {
      const item = document.createElement("li");
      item.className = "active";
      // The watcher's message says since when, in its own words.
      item.textContent = alert.rule + " · " + alert.sensor_id + ": " + alert.message;
      item.title = alert.kind + ", since " + new Date(alert.since_ms).toLocaleString();
      list.appendChild(item);
    }
  }

  function drawBanner() {
    const lines = [];
    if (dash.streamDown) lines.push(dash.streamDown);
    if (dash.sources.broker) lines.push("Live readings unavailable: " + dash.sources.broker);
    if (dash.sources.table) lines.push("Readings history unavailable: " + dash.sources.table);
    else if (dash.historyProblem) lines.push("Readings history unavailable: " + dash.historyProblem);
    const banner = $("banner");
    banner.replaceChildren();
    for (const line of lines) {
      const p = document.createElement("p");
      p.textContent = line;
      banner.appendChild(p);
    }
    banner.hidden = lines.length === 0;
  }

  // -- history -----------------------------------------------------------------------

  async function loadHistory(id, generation) {
    let response, body;
    try {
      response = await fetch("/api/history?id=" + encodeURIComponent(id) + "&minutes=" + dash.rangeMin);
      body = await response.json();
    } catch (err) {
      dash.historyProblem = "the dashboard server did not answer";
      drawBanner();
      return;
    }
    if (generation !== dash.generation) return;
    if (!response.ok) {
      dash.historyProblem = body.error || response.statusText;
      drawBanner();
      return;
    }
    if (dash.historyProblem) { dash.historyProblem = null; drawBanner(); }
    for (let i = 0; i < body.ts.length; i++) addPoint(id, body.ts[i], body.temperature[i]);
    dash.dirtyCharts.add(id);
  }

  async function loadHistories(ids) {
    const generation = dash.generation;
    const queue = ids.slice();
    async function worker() {
      // A range changed meanwhile: the rest of these are for the old one.
      while (queue.length && generation === dash.generation) {
        await loadHistory(queue.shift(), generation);
      }
    }
    const workers = [];
    for (let i = 0; i < HISTORY_WORKERS; i++) workers.push(worker());
    await Promise.all(workers);
  }

  function resetSeries() {
    dash.generation++;
    dash.series.clear();
    for (const id of dash.charts.keys()) dash.dirtyCharts.add(id);
  }

  // -- the stream --------------------------------------------------------------------

  function upsert(device) {
    const known = dash.devices.get(device.id);
    const isNew = !known;
    // Keep the newer reading: the stream's may be ahead of a snapshot's.
    if (known && known.reading && (!device.reading || device.reading.ts < known.reading.ts)) {
      device.reading = known.reading;
    }
    dash.devices.set(device.id, device);
    ensureChart(device.id);
    dash.dirtyRows.add(device.id);
    return isNew;
  }

  function takeReading(id, reading) {
    dash.readings++;
    let device = dash.devices.get(id);
    if (!device) {
      device = { id: id, status: "unknown", status_ms: null, reading: null, health: null };
      upsert(device);
      loadHistories([id]);
    }
    if (!device.reading || reading.ts >= device.reading.ts) device.reading = reading;
    addPoint(id, reading.ts, reading.temperature);
    dash.pendingTs.push(reading.ts);
    dash.dirtyRows.add(id);
  }

  function handle(message) {
    switch (message.type) {
      case "snapshot": {
        dash.offsetMs = message.now_ms - Date.now();
        dash.sources = message.sources;
        dash.alerts = message.alerts;
        resetSeries();
        for (const device of message.devices) upsert(device);
        drawAlerts();
        drawBanner();
        loadHistories(message.devices.map(function (d) { return d.id; })).then(function () {
          if (!dash.ready) dash.readyAtMs = performance.now();
          dash.ready = true;
        });
        break;
      }
      case "batch":
        for (const inner of message.messages) handle(inner);
        break;
      case "reading":
        takeReading(message.id, message.reading);
        break;
      case "device":
        if (upsert(message.device)) loadHistories([message.device.id]);
        break;
      case "sources":
        dash.sources = message.sources;
        drawBanner();
        break;
      case "alerts":
        dash.alerts = message.active;
        drawAlerts();
        break;
      case "resync":  // this page fell behind: start again from a snapshot
        dash.stream.close();
        connect();
        break;
    }
  }

  function connect() {
    const stream = new EventSource("/api/stream");
    dash.stream = stream;
    stream.onmessage = function (event) { handle(JSON.parse(event.data)); };
    stream.onopen = function () {
      if (dash.streamDown) { dash.streamDown = null; drawBanner(); }
    };
    stream.onerror = function () {
      // EventSource tries again by itself; say so meanwhile.
      dash.streamDown = "The dashboard server is not answering; trying again.";
      drawBanner();
    };
  }

  $("range").addEventListener("change", function (event) {
    dash.rangeMin = Number(event.target.value);
    resetSeries();
    loadHistories(Array.from(dash.devices.keys()));
  });

  setInterval(function () {
    drawCharts();
    for (const id of dash.dirtyRows) drawRow(id);
    dash.dirtyRows.clear();
  }, RENDER_MS);

  setInterval(function () {
    for (const id of dash.devices.keys()) drawRow(id);
    drawSummary();
  }, AGE_MS);

  // A silent sensor's chart moves on too: its time axis ends now, its old points go.
  setInterval(function () {
    for (const id of dash.charts.keys()) dash.dirtyCharts.add(id);
  }, SLIDE_MS);

  connect();
})();
