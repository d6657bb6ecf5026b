// tierwise's dashboard: reads /admin/api/* with the admin key and draws what it reads. Every value
// from the ledger or the config is set as text (never as markup): route and tier names are the
// operator's, but they are data here.
'use strict';

const REFRESH_MS = 10000;
const DAY_MS = 86400000;
const PALETTE = ['#3b6fd1', '#e08a2c', '#2f9e77', '#c0392b', '#8e5cc2', '#7f8c8d', '#d4a017', '#16a2b8'];
const SVG = 'http://www.w3.org/2000/svg';

let key = sessionStorage.getItem('tierwise-admin-key') || '';

// A key passed as /#key=... is taken once and removed from the address bar; a fragment never
// reaches the server or its logs.
(function keyFromFragment() {
  const match = location.hash.match(/key=([^&]+)/);
  if (match) {
    key = decodeURIComponent(match[1]);
    sessionStorage.setItem('tierwise-admin-key', key);
    history.replaceState(null, '', location.pathname);
  }
})();

class Refused extends Error {}

async function api(path) {
  const response = await fetch(path, { headers: key ? { Authorization: 'Bearer ' + key } : {} });
  if (response.status === 401 || response.status === 403) {
    const body = await response.json().catch(() => ({}));
    throw new Refused((body.error && body.error.message) || 'the admin key was refused');
  }
  if (!response.ok) {
    throw new Error(path + ': HTTP ' + response.status);
  }
  return response.json();
}

function $(id) { return document.getElementById(id); }

function text(id, value) { $(id).textContent = value; }

function usd(value) {
  const n = Number(value);
  if (!isFinite(n)) return '-';
  // The sign before the dollar, as the report writes it: -$0.0000077, not $-0.0000077.
  const sign = n < 0 ? '-' : '';
  const a = Math.abs(n);
  if (a !== 0 && a < 0.01) return sign + '$' + a.toPrecision(2);
  return sign + '$' + a.toLocaleString('en-US', { minimumFractionDigits: 2, maximumFractionDigits: 2 });
}

function pct(value) { return (100 * value).toFixed(1) + '%'; }

function dayLabel(day) { return new Date(day * DAY_MS).toISOString().slice(5, 10); }

// A bucket's label in the unit the series was cut in: a day as MM-DD, an hour or minute as HH:MM (UTC).
function bucketLabel(startMs, unit) {
  const iso = new Date(startMs).toISOString();
  return unit === 'day' ? iso.slice(5, 10) : iso.slice(11, 16);
}

function plural(n, one, many) { return `${n.toLocaleString('en-US')} ${n === 1 ? one : many}`; }

function el(tag, attrs, content) {
  const node = tag.startsWith('svg:') ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  if (content !== undefined) node.textContent = content;
  return node;
}

function fillTable(id, rows) {
  const body = $(id).querySelector('tbody');
  body.replaceChildren(...rows.map((cells) => {
    const tr = el('tr');
    for (const cell of cells) {
      const td = el('td', {}, cell === null || cell === undefined ? '-' : String(cell));
      if (typeof cell === 'number') td.className = 'num';
      tr.append(td);
    }
    return tr;
  }));
}

function svg(width, height) {
  return el('svg:svg', { viewBox: `0 0 ${width} ${height}`, role: 'img' });
}

// Stacked bars: one per bucket (a minute, an hour or a day, as the gateway chose for the ledger's
// age), one segment per route/tier, each with its figures as a tooltip.
function drawCost(costs) {
  const days = [];
  for (let start = costs.from_ms; start <= costs.to_ms; start += costs.bucket_ms) days.push(start);
  text('cost-title', `Cost per ${costs.unit} by route and tier` + (costs.unit === 'day' ? '' : ' (UTC)'));
  const series = [...new Set(costs.rows.map((r) => (r.route || '(no route)') + ' / ' + (r.tier || 'not served')))].sort();
  const color = (name) => PALETTE[series.indexOf(name) % PALETTE.length];
  const totals = days.map((d) => costs.rows.filter((r) => r.start_ms === d).reduce((sum, r) => sum + Number(r.cost_usd), 0));
  const max = Math.max(...totals, 1e-9);
  const W = 800, H = 220, left = 50, bottom = 20, top = 10;
  const chart = svg(W, H);
  const band = (W - left) / days.length;
  chart.append(el('svg:text', { x: 2, y: top + 10 }, usd(max)));
  chart.append(el('svg:line', { x1: left, x2: W, y1: H - bottom, y2: H - bottom, stroke: '#e3e6ec' }));
  days.forEach((day, i) => {
    let y = H - bottom;
    for (const row of costs.rows.filter((r) => r.start_ms === day)) {
      const name = (row.route || '(no route)') + ' / ' + (row.tier || 'none');
      const h = (Number(row.cost_usd) / max) * (H - bottom - top);
      y -= h;
      const rect = el('svg:rect', {
        x: left + i * band + band * 0.15, y, width: band * 0.7, height: Math.max(h, 0),
        fill: color(name), 'data-series': name, 'data-cost': row.cost_usd,
      });
      rect.append(el('svg:title', {}, `${bucketLabel(day, costs.unit)} ${name}: ${usd(row.cost_usd)} for ${plural(row.calls, 'call', 'calls')}`));
      chart.append(rect);
    }
    const every = Math.max(1, Math.ceil(days.length / 16));
    if (i % every === 0) {
      chart.append(el('svg:text', { x: left + i * band + band / 2, y: H - 4, 'text-anchor': 'middle' }, bucketLabel(day, costs.unit)));
    }
  });
  $('cost-chart').replaceChildren(chart);
  $('cost-legend').replaceChildren(...series.map((name) => {
    const total = costs.rows.filter((r) => (r.route || '(no route)') + ' / ' + (r.tier || 'not served') === name)
      .reduce((sum, r) => sum + Number(r.cost_usd), 0);
    const item = el('span', { 'data-series': name }, `${name} ${usd(total)}`);
    item.style.setProperty('--swatch', color(name));
    return item;
  }));
}

// One line per route: agreement per day, the route's bar dashed, alerts as red marks.
function drawAgreement(quality) {
  const W = 800, H = 220, left = 40, bottom = 20, top = 10;
  const chart = svg(W, H);
  const routes = quality.routes;
  // An empty chart says why: nothing is checked, or nothing has been sampled yet.
  const samples = routes.reduce((sum, r) => sum + r.days.reduce((s, d) => s + d.samples, 0), 0);
  const note = $('agreement-note');
  if (!routes.length) {
    note.textContent = 'No route has a shadow check, so nothing compares a cheaper tier with the API. '
      + 'Add shadow = { reference = "<api tier>", sample_rate = 0.02 } to a route to start.';
  } else if (!samples) {
    note.textContent = `No shadow sample scored yet on ${plural(routes.length, 'checked route', 'checked routes')}: `
      + 'samples arrive as sampled requests are answered.';
  } else {
    note.textContent = '';
  }
  note.hidden = !note.textContent;
  const allDays = routes.flatMap((r) => r.days.map((d) => d.day));
  const today = Math.floor(Date.now() / DAY_MS);
  const first = Math.min(today - 13, ...allDays);
  const span = Math.max(today - first, 1);
  const low = Math.min(0.8, ...routes.flatMap((r) => r.days.map((d) => d.agreement_ppm / 1e6)), ...routes.map((r) => r.min_agreement)) - 0.02;
  const x = (day) => left + ((day - first) / span) * (W - left - 10);
  const y = (value) => top + (1 - (value - low) / (1 - low)) * (H - top - bottom);
  for (const tick of [low + 0.02, 1]) {
    chart.append(el('svg:text', { x: 2, y: y(tick) + 4 }, pct(tick)));
  }
  routes.forEach((route, i) => {
    const color = PALETTE[i % PALETTE.length];
    chart.append(el('svg:line', {
      x1: left, x2: W - 10, y1: y(route.min_agreement), y2: y(route.min_agreement),
      stroke: color, 'stroke-dasharray': '4 4', 'stroke-width': 1,
    }));
    const points = route.days.map((d) => `${x(d.day)},${y(d.agreement_ppm / 1e6)}`).join(' ');
    if (route.days.length) {
      chart.append(el('svg:polyline', { points, fill: 'none', stroke: color, 'stroke-width': 2, 'data-route': route.route }));
    }
    for (const d of route.days) {
      const dot = el('svg:circle', { cx: x(d.day), cy: y(d.agreement_ppm / 1e6), r: 3, fill: color });
      dot.append(el('svg:title', {}, `${route.route} ${dayLabel(d.day)}: ${pct(d.agreement_ppm / 1e6)} over ${d.samples} samples`));
      chart.append(dot);
    }
    for (const event of route.events.filter((e) => e.event === 'alert_fired')) {
      const day = Math.floor(event.ts_ms / DAY_MS);
      const mark = el('svg:rect', { x: x(day) - 3, y: top, width: 6, height: H - top - bottom, fill: '#c0392b', opacity: 0.25, 'data-alert': route.route });
      mark.append(el('svg:title', {}, `${route.route}: alert at ${new Date(event.ts_ms).toLocaleString()}, agreement ${pct(event.agreement_ppm / 1e6)}`));
      chart.append(mark);
    }
  });
  $('agreement-chart').replaceChildren(chart);
  fillTable('quality', routes.map((r) => [
    r.route, `${r.candidate} (${r.candidate_model})`,
    r.agreement === null ? null : pct(r.agreement),
    r.interval ? `${pct(r.interval.low)} to ${pct(r.interval.high)}` : null,
    r.samples, pct(r.min_agreement),
    r.alerting ? (r.demoted ? 'ALERT, demoted' : 'ALERT') : (r.demoted ? 'demoted' : 'ok'),
  ]));
  for (const [i, r] of routes.entries()) {
    const state = $('quality').querySelectorAll('tbody tr')[i].lastChild;
    state.className = r.alerting ? 'state-alert' : 'state-ok';
  }
}

// How long a window is, as a reader would say it.
function spanText(ms) {
  const s = ms / 1000;
  if (s < 120) return plural(Math.round(s), 'second', 'seconds');
  if (s < 7200) return plural(Math.round(s / 60), 'minute', 'minutes');
  if (s < 172800) return `${(s / 3600).toFixed(1)} hours`;
  return `${(s / 86400).toFixed(1)} days`;
}

function render(report, costs, quality, providers, requests) {
  const t = report.totals;
  const held = spanText(report.window.to_ms - report.window.from_ms);
  // Below the minimum the report projects nothing, and the page shows what the window saw.
  if (report.projected) {
    text('window', `${held} of traffic, projected to a month`);
    text('saving', `${usd(t.monthly_saving_usd)}/mo`);
    text('saving-detail', `${t.saving_pct.toFixed(1)}% of the all-API baseline, ${usd(t.monthly_baseline_usd)}/mo`);
    text('spend', `${usd(t.monthly_actual_usd)}/mo`);
    text('spend-detail', `API ${usd(t.monthly_api_usd)}, fixed ${usd(t.monthly_fixed_usd)}, checks ${usd(t.monthly_checks_usd)}`);
    text('checks', `${usd(t.monthly_checks_usd)}/mo`);
  } else {
    text('window', `${held} of traffic, not projected: ${report.not_projected_because}`);
    text('saving', usd(t.saving_usd));
    text('saving-detail', `in ${held}: ${t.saving_pct.toFixed(1)}% of the all-API baseline, ${usd(t.baseline_usd)}`);
    text('spend', usd(t.actual_usd));
    text('spend-detail', `in ${held}: API ${usd(t.api_usd)}, fixed ${usd(t.fixed_usd)}, checks ${usd(t.checks_usd)}`);
    text('checks', usd(t.checks_usd));
  }
  // Apart from the net saving, which compares product calls with their baseline.
  text('cache-saved', report.projected && t.monthly_saved_by_cache_usd != null
    ? `${usd(t.monthly_saved_by_cache_usd)}/mo` : usd(t.saved_by_cache_usd));
  text('cache-detail', `${plural(t.cache_hits, 'request', 'requests')} answered from a route's cache, apart from the net saving`);
  const calls = report.routes.reduce((sum, r) => sum + r.calls, 0);
  const local = report.routes.reduce((sum, r) => sum + r.local_share * r.calls, 0);
  text('local-share', calls ? pct(local / calls) : '-');
  const alerting = quality.routes.filter((r) => r.alerting).map((r) => r.route);
  const checked = quality.routes.length === 1 ? '1 route checked' : `${quality.routes.length} routes checked`;
  text('alerts', alerting.length ? `alert on ${alerting.join(', ')}` : `${checked}, no alert`);
  $('alerts').className = alerting.length ? 'state-alert' : 'muted';

  drawCost(costs);
  drawAgreement(quality);
  const headings = report.projected ? ['calls/day', 'cost/mo', 'baseline/mo'] : ['calls', 'cost', 'baseline'];
  $('routes').querySelectorAll('th.volume').forEach((th, i) => { th.textContent = headings[i]; });
  fillTable('routes', report.routes.map((r) => [
    r.route,
    report.projected ? Number(r.calls_per_day.toFixed(1)) : r.calls,
    r.errors, r.models.join(', '), pct(r.local_share), r.fallbacks,
    Number(r.p50_ms.toFixed(1)), Number(r.p95_ms.toFixed(1)),
    report.projected ? usd(r.monthly_cost_usd) : usd(Number(r.api_cost_usd) + Number(r.fixed_cost_usd)),
    report.projected ? usd(r.monthly_baseline_usd) : usd(r.baseline_usd),
  ]));
  // The same calls by the endpoint the clients called, as the ledger names them (whatever
  // endpoints it holds), in the window's exact figures, and the line they add up to: the totals
  // the cards are made of.
  const endpointRow = (name, calls, share, errors, spend, monthly) => [
    name, calls, pct(share), errors, usd(spend), monthly === null ? null : usd(monthly),
  ];
  fillTable('endpoints', report.endpoints.map((e) => endpointRow(
    e.endpoint, e.calls, e.share, e.errors, e.api_cost_usd, e.monthly_api_usd)));
  const total = el('tr');
  if (report.endpoints.length) {
    for (const cell of endpointRow('all endpoints', t.calls, 1, t.errors, t.api_usd, t.monthly_api_usd)) {
      total.append(el('td', {}, cell === null ? '-' : String(cell)));
    }
  }
  $('endpoints').querySelector('tfoot').replaceChildren(...(report.endpoints.length ? [total] : []));
  // A provider of several servers is followed by a row per server: its own state, load and
  // calls since start, which add up: answered + failed (through its fault) + unfinished (the
  // client left mid-stream, or cut off at shutdown) = calls.
  fillTable('providers', providers.providers.flatMap((p) => [
    [p.name, p.up ? 'up' : 'down', p.breaker.state, p.in_flight, p.breaker.last_error],
    ...(p.servers.length > 1 ? p.servers.map((s) => [
      `↳ ${s.name}`, s.up ? 'up' : 'down', s.breaker.state, s.in_flight,
      `${s.calls} calls: ${s.answered} answered, ${s.failed} failed, ${s.unfinished} unfinished${s.breaker.last_error ? `; last ${s.breaker.last_error}` : ''}`,
    ]) : []),
  ]));
  fillTable('requests', requests.requests.map((r) => [
    new Date(r.ts_ms).toLocaleTimeString(), r.route, r.tier, r.status, Number(r.latency_ms.toFixed(1)),
    r.cost_usd === null ? 'unpriced' : usd(r.cost_usd), r.fallback,
  ]));
}

// Each budget's month: spend against it, what requests in flight hold, and the month-end spend
// where enough of the month has been seen to project it (else why not). A budget past its
// alert_at share is marked.
function renderBudgets(budgets) {
  const rows = budgets.budgets;
  $('budgets-note').hidden = rows.length > 0;
  text('budgets-note', 'No budget is configured ([budget], routes.<name>.budget, keys.<name>.budget).');
  fillTable('budgets', rows.map((b) => [
    b.name === null ? 'all API spend' : `${b.scope} ${b.name}`,
    b.month,
    usd(b.spent_usd),
    usd(b.monthly_usd),
    b.share === null ? null : pct(b.share),
    b.reserved_usd === null ? null : usd(b.reserved_usd),
    b.projected_usd === null ? `not projected: ${b.projection}` : usd(b.projected_usd),
    b.on_exhausted,
  ]));
  $('budgets').querySelectorAll('tbody tr').forEach((tr, i) => {
    const b = rows[i];
    if (b.share !== null && b.share >= b.alert_at) tr.className = 'state-alert';
  });
}

async function refresh() {
  try {
    const [report, costs, quality, providers, requests, budgets] = await Promise.all([
      api('/admin/api/report?since=14d'),
      api('/admin/api/costs?since=14d'),
      api('/admin/api/quality'),
      api('/admin/api/providers'),
      api('/admin/api/requests?limit=25'),
      api('/admin/api/budgets'),
    ]);
    render(report, costs, quality, providers, requests);
    renderBudgets(budgets);
    $('login').hidden = true;
    $('error').hidden = true;
    $('main').hidden = false;
    text('updated', 'updated ' + new Date().toLocaleTimeString());
    document.body.dataset.state = 'ready';
  } catch (error) {
    if (error instanceof Refused) {
      $('main').hidden = true;
      $('login').hidden = false;
      text('login-error', key ? error.message : '');
      document.body.dataset.state = 'login';
    } else {
      $('error').hidden = false;
      text('error', 'Cannot read the gateway: ' + error.message);
      document.body.dataset.state = 'error';
    }
  }
}

$('login').addEventListener('submit', (event) => {
  event.preventDefault();
  key = $('key').value;
  sessionStorage.setItem('tierwise-admin-key', key);
  refresh();
});

refresh();
setInterval(refresh, REFRESH_MS);
