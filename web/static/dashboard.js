// Live charts of one devicestream worker, drawn as plain SVG (no library, nothing from a CDN).
// Every REFRESH_MS it reads /dashboard/data (the figures of /pipeline/throughput, the lag
// totals of /pipeline/lag and the sample of /pipeline/db in one small answer), appends one
// sample to each chart's history and redraws.
(function () {
  "use strict";

  var REFRESH_MS = 3000;
  var HISTORY = 200; // samples kept per chart (10 minutes at 3 s)
  var SVG = "http://www.w3.org/2000/svg";
  var WIDTH = 600, HEIGHT = 170, LEFT = 52, RIGHT = 8, TOP = 8, BOTTOM = 18;

  function number(value, digits) {
    if (value === null || value === undefined) return "–";
    if (Math.abs(value) >= 1e6) return (value / 1e6).toFixed(1) + "M";
    if (Math.abs(value) >= 1e4) return (value / 1e3).toFixed(1) + "k";
    return Number(value).toFixed(digits === undefined ? 0 : digits);
  }
  function bytes(value) {
    if (value === null || value === undefined) return "–";
    var units = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (Math.abs(value) >= 1024 && i < units.length - 1) { value /= 1024; i++; }
    return value.toFixed(i ? 1 : 0) + " " + units[i];
  }
  function seconds(value) {
    if (value === null || value === undefined) return "–";
    return value < 1 ? (value * 1000).toFixed(1) + " ms" : value.toFixed(2) + " s";
  }

  // Each chart: its series (label, how to read the value from a sample) and a formatter.
  var charts = {
    throughput: { format: function (v, digits) { return number(v, digits === undefined ? 1 : digits) + "/s"; }, series: [
      { label: "points/s", read: function (s) { return s.throughput && s.throughput.points_per_second; } },
      { label: "rows/s", read: function (s) { return s.throughput && s.throughput.rows_per_second; } }] },
    lag: { format: number, integer: true, series: [
      { label: "this worker", read: function (s) { return s.lag && s.lag.worker; } },
      { label: "group", read: function (s) { return s.lag && s.lag.group; } }] },
    lag_seconds: { format: seconds, series: [
      { label: "this worker", read: function (s) { return s.lag && s.lag.worker_seconds; } },
      { label: "group", read: function (s) { return s.lag && s.lag.group_seconds; } }] },
    freshness: { format: seconds, series: [
      { label: "p50", read: function (s) { return s.throughput && s.throughput.freshness_p50_seconds; } },
      { label: "p99", read: function (s) { return s.throughput && s.throughput.freshness_p99_seconds; } }] },
    dead_letters: { format: number, integer: true, series: [
      { label: "dead letters total", read: function (s) { return s.throughput && s.throughput.dead_letters_total; } }] },
    latency: { format: seconds, series: [
      { label: "p50", read: function (s) { return s.throughput && s.throughput.write_latency_p50_seconds; } },
      { label: "p99", read: function (s) { return s.throughput && s.throughput.write_latency_p99_seconds; } }] },
    db_size: { format: bytes, series: [
      { label: "hypertables", read: function (s) { return hypertableBytes(s.db); } },
      { label: "database", read: function (s) { return s.db && s.db.postgres ? s.db.postgres.database_bytes : null; } }] }
  };
  var history = []; // samples: {time, throughput, lag, db}

  function hypertableBytes(db) {
    if (!db || !Array.isArray(db.hypertables)) return null;
    return db.hypertables.reduce(function (sum, t) { return sum + (t.total_bytes || 0); }, 0);
  }

  // A round axis step of at least ``raw``: 1, 2, 2.5 or 5 times a power of ten (of a
  // power of 1024 for bytes, so that the labels read 200 MiB rather than 190.7 MiB).
  function niceStep(raw, integer, binary) {
    if (!(raw > 0)) return integer ? 1 : 0.25;
    var unit = 1;
    while (binary && raw / unit >= 1024) unit *= 1024;
    raw /= unit;
    var power = Math.pow(10, Math.floor(Math.log10(raw)));
    var step = [1, 2, 2.5, 5, 10].map(function (m) { return m * power; })
      .filter(function (candidate) { return candidate >= raw; })[0] * unit;
    return integer ? Math.max(1, Math.ceil(step)) : step;
  }

  function el(name, attrs, text) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function draw(name) {
    var chart = charts[name], svg = document.getElementById("chart-" + name);
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    svg.setAttribute("viewBox", "0 0 " + WIDTH + " " + HEIGHT);
    svg.setAttribute("preserveAspectRatio", "none");
    var values = [];
    chart.series.forEach(function (series) {
      history.forEach(function (s) { var v = series.read(s); if (typeof v === "number") values.push(v); });
    });
    var min = Math.min.apply(null, values.concat([0]));
    var step = niceStep((Math.max.apply(null, values.concat([0])) - min) / 4, chart.integer,
                        chart.format === bytes);
    var max = min + 4 * step;
    var t0 = history.length ? history[0].time : 0;
    var t1 = history.length ? history[history.length - 1].time : 1;
    var span = Math.max(t1 - t0, REFRESH_MS * 10);
    function x(t) { return LEFT + (WIDTH - LEFT - RIGHT) * (t - (t1 - span)) / span; }
    function y(v) { return TOP + (HEIGHT - TOP - BOTTOM) * (1 - (v - min) / (max - min)); }
    var digits = step >= 1 ? 0 : Math.ceil(-Math.log10(step) - 1e-9);
    for (var i = 0; i <= 4; i++) {
      var v = min + step * i;
      svg.appendChild(el("line", { "class": "grid", x1: LEFT, x2: WIDTH - RIGHT, y1: y(v), y2: y(v) }));
      svg.appendChild(el("text", { "class": "axis", x: LEFT - 4, y: y(v) + 3, "text-anchor": "end" },
                         chart.format(v, digits)));
    }
    svg.appendChild(el("text", { "class": "axis", x: LEFT, y: HEIGHT - 4 },
                       "last " + Math.round(span / 1000) + " s"));
    var drawn = 0;
    chart.series.forEach(function (series, index) {
      var points = [];
      history.forEach(function (s) {
        var v = series.read(s);
        if (typeof v === "number") points.push(x(s.time).toFixed(1) + "," + y(v).toFixed(1));
      });
      if (points.length === 1) points.push((WIDTH - RIGHT) + "," + points[0].split(",")[1]);
      if (points.length) {
        svg.appendChild(el("polyline", { "class": "s" + index, points: points.join(" "),
                                         "data-series": series.label }));
        drawn += points.length;
      }
    });
    if (!drawn) {
      svg.appendChild(el("text", { "class": "empty", x: WIDTH / 2, y: HEIGHT / 2, "text-anchor": "middle" },
                         "no data yet"));
    }
    svg.setAttribute("data-points", String(drawn));
    var legend = document.querySelector('[data-legend="' + name + '"]');
    var last = history[history.length - 1];
    legend.innerHTML = "";
    chart.series.forEach(function (series, index) {
      var span = document.createElement("span"), swatch = document.createElement("i");
      swatch.style.background = index ? "var(--s1)" : "var(--s0)";
      span.appendChild(swatch);
      span.appendChild(document.createTextNode(series.label + " " + chart.format(last ? series.read(last) : null)));
      legend.appendChild(span);
    });
  }

  function setText(id, text, bad) {
    var node = document.getElementById(id);
    node.textContent = text;
    node.classList.toggle("bad", !!bad);
  }

  function row(table, cells, header) {
    var tr = document.createElement("tr");
    cells.forEach(function (cell) {
      var td = document.createElement(header ? "th" : "td");
      td.textContent = cell;
      if (!header && typeof cell === "string" && /^[\d.,\s]+([kM%]|[KMGT]?i?B|ms|s)?$/.test(cell)) td.className = "n";
      tr.appendChild(td);
    });
    table.appendChild(tr);
  }

  function tables(db) {
    var body = document.querySelector("#hypertables tbody");
    body.innerHTML = "";
    row(body, ["hypertable", "size", "rows (est.)", "chunks"], true);
    (db && Array.isArray(db.hypertables) ? db.hypertables : []).forEach(function (t) {
      row(body, [t.schema + "." + t.name, bytes(t.total_bytes), number(t.approximate_rows), String(t.chunks)]);
    });
    var compression = db && db.compression ? db.compression.state : null;
    document.getElementById("compression").textContent = "compression: " + (compression || "–");
    var reads = db && db.reads;
    var replicas = (db && Array.isArray(db.replicas) ? db.replicas : []).map(function (r) {
      return (r.application_name || r.client_addr) + " " + r.state + ", replay lag " +
        seconds(r.replay_lag_seconds) + " / " + bytes(r.replay_lag_bytes);
    });
    document.getElementById("replicas").textContent = "reads from: " +
      (reads ? reads.target + (reads.fallback_reason ? " (" + reads.fallback_reason + ")" : "") : "–") +
      "; streaming replicas: " + (replicas.length ? replicas.join(", ") : "none");
    body = document.querySelector("#pgbouncer tbody");
    body.innerHTML = "";
    row(body, ["database", "clients active", "waiting", "servers active", "idle"], true);
    var bouncer = db && db.pgbouncer;
    ((bouncer && bouncer.pools) || []).forEach(function (p) {
      row(body, [p.database, String(p.cl_active), String(p.cl_waiting), String(p.sv_active), String(p.sv_idle)]);
    });
    var pools = db && db.pools ? Object.keys(db.pools).map(function (name) {
      var p = db.pools[name];
      return name + ": " + p.in_use + " in use / " + p.size + " open / " + p.max + " max";
    }) : [];
    document.getElementById("pools").textContent = bouncer && bouncer.error
      ? "pgBouncer admin console: " + bouncer.error
      : "worker pools — " + (pools.join("; ") || "none");
  }

  // Absolute from the origin: a page opened as http://user:token@host/dashboard (HTTP
  // Basic, READ_TOKEN) has the credentials in its URL, and fetch refuses relative URLs that
  // inherit them. The browser's own cache of the credentials answers the 401 challenge.
  function url(path) { return location.origin + path; }

  function getJSON(path) {
    return fetch(url(path), { cache: "no-store" }).then(function (response) {
      return response.json().then(function (body) { return response.ok ? body : null; },
                                  function () { return null; });
    }, function () { return null; });
  }

  // /health/ready answers 503 with the failing checks: its body counts either way.
  function getHealth() {
    return fetch(url("/health/ready"), { cache: "no-store" }).then(function (response) {
      return response.json().catch(function () { return null; });
    }, function () { return null; });
  }

  function readiness(health) {
    if (!health) return;
    var failing = health.failing || [];
    setText("t-ready", failing.length ? "not ready" : "ready", failing.length > 0);
    document.getElementById("t-ready").title = failing.map(function (name) {
      return name + ": " + health.checks[name].detail;
    }).join("\n");
  }

  function refresh() {
    getHealth().then(readiness);
    return getJSON("/dashboard/data").then(function (data) {
      var sample = { time: Date.now(), throughput: data && data.throughput,
                     lag: data && data.lag, db: data && data.db };
      if (data) {
        history.push(sample);
        if (history.length > HISTORY) history.shift();
      }
      var t = sample.throughput, db = sample.db, lag = sample.lag;
      setText("status", data ? "updated " + new Date(sample.time).toLocaleTimeString()
                             : "worker unreachable", !data);
      setText("t-points", t ? number(t.points_per_second, 1) : "–");
      setText("t-messages", t ? number(t.messages_total) : "–");
      setText("t-lag", lag ? number(lag.worker) : "–");
      setText("t-group-lag", lag ? number(lag.group) : "–");
      setText("t-lag-seconds", lag ? seconds(lag.worker_seconds) : "–", lag && lag.worker_seconds > 60);
      setText("t-freshness", t ? seconds(t.freshness_p99_seconds) : "–");
      setText("t-dead", t ? number(t.dead_letters_total) : "–", t && t.dead_letters_total > 0);
      setText("t-p99", t ? seconds(t.write_latency_p99_seconds) : "–");
      setText("t-size", bytes(hypertableBytes(db)));
      setText("t-db", db ? (db.available ? "up" : "down") : "–", db && !db.available);
      Object.keys(charts).forEach(draw);
      tables(db);
    });
  }

  function loop() {
    refresh().then(function () { window.setTimeout(loop, REFRESH_MS); },
                   function (error) { console.warn("dashboard refresh failed", error);
                                      window.setTimeout(loop, REFRESH_MS); });
  }

  window.devicestreamDashboard = { history: history, charts: charts, refreshMs: REFRESH_MS };
  Object.keys(charts).forEach(draw);
  loop();
})();
