// edge-agent status page: live updates over server-sent events (/events) and charts drawn on
// <canvas> by hand. Everything shown is set with textContent, never parsed as HTML: event
// messages and errors come from the device and its sensors.
'use strict';
(function () {
  const $ = (id) => document.getElementById(id);
  const historyLen = Number(document.body.dataset.history) || 300;
  let hist = [];

  // el builds an element; kids are nodes or text.
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else e.setAttribute(k, v);
    }
    for (const k of kids) {
      if (k === undefined || k === null) continue;
      e.append(k instanceof Node ? k : document.createTextNode(String(k)));
    }
    return e;
  }
  function setText(id, text) { const e = $(id); if (e) e.textContent = text; }
  function fill(tbody, rows, empty, cols) {
    tbody.replaceChildren(...(rows.length ? rows : [el('tr', {}, el('td', { colspan: cols, class: 'muted' }, empty))]));
  }

  // Formatting matches page.go so the first render and the updates agree.
  const count = (n) => Math.max(0, Math.floor(n || 0)).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  function bytes(n) {
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let v = n || 0, i = 0;
    while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
    return i === 0 ? `${v} B` : `${v.toFixed(1)} ${u[i]}`;
  }
  function dur(sec) {
    const s = Math.max(0, Math.floor(sec || 0));
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
    return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
  }
  const zeroTime = (t) => !t || t.startsWith('0001-');
  const age = (now, t) => (zeroTime(t) ? '—' : dur((Date.parse(now) - Date.parse(t)) / 1000));
  const clock = (t) => (zeroTime(t) ? '—' : new Date(t).toISOString().slice(11, 19));
  const ms = (v) => (v || 0).toFixed(2);
  const rate = (v) => (v || 0).toFixed(1);
  const num = (v) => String(Number((v || 0).toPrecision(4)));

  function abText(x) {
    if (x.mode === 'shadow') {
      let s = `shadow ${x.candidate_version}: ${count(x.compared)} compared`;
      if (x.top1_compared) s += `, top-1 agreement ${(100 * (x.top1_agreement || 0)).toFixed(1)}%`;
      return s;
    }
    return `split ${(100 * (x.weight || 0)).toFixed(0)}% → ${x.candidate_version} (a ${count(x.a.results)} · b ${count(x.b.results)})`;
  }
  function worst(conds) {
    if (!conds || !conds.length) return 'ok';
    const rank = { info: 0, warning: 1, error: 2 };
    return conds.reduce((w, c) => (rank[c.severity] > rank[w] ? c.severity : w), 'info');
  }
  const results = (o) => (o && o.streams || []).find((s) => s.name === 'results');

  function render(v) {
    const ready = $('ready');
    ready.textContent = v.ready ? 'ready' : 'not ready';
    ready.className = 'badge ' + (v.ready ? 'ok' : 'bad');
    ready.title = v.ready_reason || '';
    const reason = $('ready-reason');
    reason.hidden = !!v.ready;
    reason.textContent = v.ready_reason || '';
    const w = worst(v.health);
    const h = $('health');
    h.textContent = `health: ${w}`;
    h.className = `badge sev-${w}`;
    setText('device', v.device);
    setText('board', v.board);
    setText('version', v.version);
    setText('uptime', dur(v.uptime_s));
    setText('engine', v.engine);
    setText('hardware', v.hardware);
    setText('now', clock(v.now));

    const models = v.models || [];
    const rates = v.rates || {};
    setText('rate-total', rate(Object.values(rates).reduce((a, b) => a + b, 0)));
    setText('results-total', count(models.reduce((a, m) => a + m.results, 0)));
    fill($('models').tBodies[0], models.map((m) => el('tr', { 'data-model': m.name },
      el('td', { 'data-f': 'name' }, el('b', {}, m.name)),
      el('td', { 'data-f': 'version' }, m.version ? m.version : el('span', { class: 'muted' }, 'none loaded')),
      el('td', { 'data-f': 'ab' }, m.experiment ? abText(m.experiment) : el('span', { class: 'muted' }, '—')),
      el('td', { 'data-f': 'delegate' }, m.delegate || '', m.fallback ? ' ' : null,
        m.fallback ? el('span', { class: 'warn', title: m.fallback }, `fallback: ${m.fallback}`) : null),
      el('td', { 'data-f': 'results', class: 'n' }, count(m.results)),
      el('td', { 'data-f': 'rate', class: 'n' }, rate(rates[m.name])),
      el('td', { 'data-f': 'p50', class: 'n' }, ms(m.latency_p50_ms)),
      el('td', { 'data-f': 'p95', class: 'n' }, ms(m.latency_p95_ms)),
      el('td', { 'data-f': 'p99', class: 'n' }, ms(m.latency_p99_ms)),
      el('td', { 'data-f': 'errors', class: 'n' }, count(m.preprocess_errors + m.infer_errors + m.postprocess_errors + m.sink_errors + m.no_version)),
      el('td', { 'data-f': 'dropped', class: 'n' }, count(m.dropped)),
      el('td', { 'data-f': 'queue', class: 'n' }, String(m.queue_depth)),
      el('td', { 'data-f': 'last_error', class: 'err' }, m.last_error || ''),
    )), 'no models configured', 13);

    const o = v.outbox;
    const rs = results(o);
    setText('outbox-waiting', rs ? count(rs.count) : '—');
    setText('outbox-oldest', rs ? age(v.now, rs.oldest_ts) : '—');
    fill($('outbox').tBodies[0], o ? o.streams.map((s) => el('tr', { 'data-stream': s.name },
      el('td', {}, s.name), el('td', { class: 'n' }, count(s.count)), el('td', { class: 'n' }, bytes(s.bytes)),
      el('td', { class: 'n' }, age(v.now, s.oldest_ts)), el('td', { class: 'n' }, count(s.appended)),
      el('td', { class: 'n' }, count(s.acked)), el('td', { class: 'n' }, count(s.dropped_oldest + s.dropped_newest + s.dropped_age)),
      el('td', { class: 'n' }, count(s.refused_no_space + s.refused_failed)),
      el('td', { class: 'muted' }, `${count(s.max_count)} · ${bytes(s.max_bytes)} · ${s.policy}`),
    )) : [], 'no outbox (the fleet parts are off)', 9);
    setText('outbox-file', o ? `file ${bytes(o.file_bytes)} · ${count(o.commits)} commits · ${count(o.compactions)} compactions` +
      (o.disk_full ? ` · disk full since ${o.disk_full_since}: new results are refused` : '') : '');

    const q = v.mqtt;
    setText('mqtt-state', q ? q.state : 'off');
    setText('mqtt-broker', q ? (q.broker || '') : '');
    const dl = [];
    if (q) {
      const row = (k, val, cls) => dl.push(el('dt', {}, k), el('dd', { class: cls }, val));
      row('state', q.state);
      row('broker', q.broker || '');
      row('connected for', age(v.now, q.connected_since));
      row('connects / failures', `${count(q.connects)} / ${count(q.connect_failures)}`);
      row('last error', q.last_error || '', 'err');
      for (const s of q.streams || []) {
        row(`sent: ${s.name}`, `${count(s.records)} records in ${count(s.messages)} messages` + (s.resent ? `, ${count(s.resent)} resent` : ''));
      }
    } else {
      dl.push(el('dt', {}, 'state'), el('dd', {}, 'off'));
    }
    $('mqtt').replaceChildren(...dl);

    const conds = v.health || [];
    $('conditions').replaceChildren(...(conds.length ? conds.map((c) => el('li', { class: `sev-${c.severity}` },
      el('b', {}, c.code), ' ', el('span', { class: 'muted' }, `${c.component || ''} · since ${clock(c.since)}`), el('br'), c.message,
    )) : [el('li', { class: 'muted' }, 'no conditions: all is well')]));

    fill($('drift').tBodies[0], (v.drift || []).map((d) => el('tr', { class: d.alert ? 'alert' : null },
      el('td', {}, `${d.model} ${d.version}`), el('td', {}, d.feature), el('td', {}, d.statistic),
      el('td', { class: 'n' }, num(d.value)), el('td', { class: 'n' }, num(d.threshold)),
      el('td', { class: 'n' }, count(d.windows)), el('td', {}, d.alert ? 'ALERT' : 'ok'),
    )), 'no drift figures (drift monitoring off, or no window complete yet)', 7);

    fill($('sources').tBodies[0], (v.sources || []).map((s) => el('tr', {},
      el('td', {}, s.name), el('td', {}, s.kind), el('td', {}, s.state), el('td', { class: 'n' }, count(s.frames)),
      el('td', { class: 'n' }, count(s.errors)), el('td', { class: 'n' }, count(s.restarts)), el('td', { class: 'n' }, count(s.dropped)),
      el('td', { class: 'err' }, s.last_error || ''),
    )), 'no sources', 8);

    const events = (v.events || []).slice(-50).reverse();
    $('events').replaceChildren(...(events.length ? events.map((e) => el('li', { class: `sev-${e.severity}` },
      el('time', {}, clock(e.ts)), ' ', el('b', {}, e.type), ' ', e.message,
    )) : [el('li', { class: 'muted' }, 'no events yet')]));
    setText('events-dropped', v.events_dropped ? `${count(v.events_dropped)} dropped` : '');
  }

  // ---- charts ----
  const palette = ['#2563eb', '#16a34a', '#dc2626', '#9333ea', '#ea580c', '#0891b2', '#ca8a04', '#db2777', '#4b5563', '#65a30d'];
  const dashes = { solid: [], dash: [6, 4], dot: [2, 3] };

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  // chart draws series [{label, color, dash, pts: [[t, v]...]}] and fills the legend. With
  // log, the y axis is logarithmic (latencies of different models differ a thousandfold);
  // values ≤ 0 are then left out.
  function chart(canvas, legend, series, empty, log) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const g = canvas.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    g.font = '11px system-ui, sans-serif';
    legend.replaceChildren(...series.filter((s) => s.legend !== false).map((s) => {
      const swatch = el('i');
      swatch.style.background = s.color; // CSSOM, which the page's CSP allows
      return el('span', {}, swatch, s.label);
    }));
    if (log) series = series.map((s) => ({ ...s, pts: s.pts.filter(([, v]) => v > 0) }));
    const L = 44, R = 8, T = 8, B = 20;
    let tmin = Infinity, tmax = -Infinity, vmax = 0, vmin = Infinity;
    for (const s of series) for (const [t, v] of s.pts) {
      tmin = Math.min(tmin, t); tmax = Math.max(tmax, t); vmax = Math.max(vmax, v); vmin = Math.min(vmin, v);
    }
    if (!isFinite(tmin)) {
      g.fillStyle = '#94a3b8';
      g.fillText(empty, L, h / 2);
      return;
    }
    tmin = Math.min(tmin, tmax - 10000);
    const x = (t) => L + ((t - tmin) / (tmax - tmin)) * (w - L - R);
    let y, ticks;
    if (log) {
      const lo = Math.floor(Math.log10(vmin)), hi = Math.max(lo + 1, Math.ceil(Math.log10(vmax)));
      y = (v) => T + (1 - (Math.log10(v) - lo) / (hi - lo)) * (h - T - B);
      ticks = [];
      for (let e = lo; e <= hi; e++) ticks.push(Math.pow(10, e));
    } else {
      const top = niceMax(vmax * 1.1);
      y = (v) => T + (1 - v / top) * (h - T - B);
      ticks = [0, 1, 2, 3, 4].map((i) => (top * i) / 4);
    }
    g.strokeStyle = '#e2e8f0';
    g.fillStyle = '#64748b';
    g.lineWidth = 1;
    g.setLineDash([]);
    g.textAlign = 'right';
    g.textBaseline = 'middle';
    for (const v of ticks) {
      g.beginPath(); g.moveTo(L, Math.round(y(v)) + 0.5); g.lineTo(w - R, Math.round(y(v)) + 0.5); g.stroke();
      g.fillText(String(Number(v.toPrecision(3))), L - 4, y(v));
    }
    g.textAlign = 'center';
    g.textBaseline = 'top';
    for (let i = 0; i <= 3; i++) {
      const t = tmin + ((tmax - tmin) * i) / 3;
      g.fillText(new Date(t).toISOString().slice(11, 19), Math.min(Math.max(x(t), L + 24), w - R - 24), h - B + 4);
    }
    g.lineWidth = 1.6;
    for (const s of series) {
      if (!s.pts.length) continue;
      g.strokeStyle = s.color;
      g.setLineDash(dashes[s.dash || 'solid']);
      g.beginPath();
      s.pts.forEach(([t, v], i) => (i ? g.lineTo(x(t), y(v)) : g.moveTo(x(t), y(v))));
      g.stroke();
    }
  }

  function drawCharts() {
    const last = hist[hist.length - 1];
    const names = last ? last.m.map((m) => m.n) : [];
    const series = (key, dash, label) => names.map((n, i) => ({
      label: label(n), color: palette[i % palette.length], dash,
      pts: hist.flatMap((p) => { const m = p.m.find((x) => x.n === n); return m ? [[p.t, m[key]]] : []; }),
    }));
    chart($('chart-rate'), $('legend-rate'), series('r', 'solid', (n) => n), 'no results yet');
    chart($('chart-latency'), $('legend-latency'), [
      ...series('p50', 'solid', (n) => n),
      ...series('p95', 'dash', (n) => `${n} p95`).map((s) => ({ ...s, legend: false })),
      ...series('p99', 'dot', (n) => `${n} p99`).map((s) => ({ ...s, legend: false })),
    ], 'no inferences yet', true);
    const keys = last && last.d ? last.d.map((d) => d.k) : [];
    const drift = [];
    keys.forEach((k, i) => {
      const pts = (f) => hist.flatMap((p) => { const d = (p.d || []).find((x) => x.k === k); return d ? [[p.t, d[f]]] : []; });
      drift.push({ label: k, color: palette[i % palette.length], pts: pts('v') });
      drift.push({ label: `${k} threshold`, color: palette[i % palette.length], dash: 'dash', pts: pts('th'), legend: false });
    });
    chart($('chart-drift'), $('legend-drift'), drift, 'no drift figures');
  }

  // ---- live stream ----
  function connect() {
    const live = $('live');
    const es = new EventSource('events');
    es.onopen = () => { live.textContent = 'live'; live.className = 'badge on'; };
    es.onerror = () => { live.textContent = 'reconnecting…'; live.className = 'badge off'; };
    es.onmessage = (e) => {
      const v = JSON.parse(e.data);
      if (v.history) hist = v.history;
      else if (v.point) { hist.push(v.point); if (hist.length > historyLen) hist.splice(0, hist.length - historyLen); }
      render(v);
      drawCharts();
      document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
    };
  }
  window.addEventListener('resize', drawCharts);
  drawCharts();
  connect();
})();
