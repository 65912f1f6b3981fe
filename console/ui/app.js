// The ztgate console: one page per hash route, all data from the admin API
// with the console session's cookie. The page is served under a CSP of
// default-src 'self', so there is no inline script or style, and every
// value from the API is put in the page as text (textContent, attribute
// values), never as markup: device names, topics, labels and audit details
// are chosen by devices and operators, not by this page.

const MAX_DENIALS = 200;
const MAX_AUDIT = 500;
const AUDIT_PAGE = 1000;
const AUDIT_MAX_PAGES = 50;
const DEVICE_PAGE = 1000;
const DEVICE_MAX_PAGES = 10;
const REFRESH_MS = { overview: 10000, sessions: 5000 };

const state = {
  csrf: '',
  signedOut: false,
  page: '',
  timer: 0,
  stream: null,
  denials: 0,
};

const $ = (id) => document.getElementById(id);

// el builds an element; props are set as attributes (or textContent for
// "text", a listener for "on..."), children are nodes or text.
function el(tag, props = {}, ...children) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') n.textContent = String(v);
    else if (k === 'class') n.className = v;
    else if (k.startsWith('on')) n.addEventListener(k.slice(2), v);
    else n.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    n.append(c instanceof Node ? c : String(c));
  }
  return n;
}

const svgNS = 'http://www.w3.org/2000/svg';
function svg(tag, attrs = {}, text) {
  const n = document.createElementNS(svgNS, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
  if (text !== undefined) n.textContent = String(text);
  return n;
}

// ---- API -----------------------------------------------------------------

class APIError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// api calls the admin API as the console session. State changes carry the
// session's CSRF token; a 401 anywhere means the session is gone.
async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  const init = { method, headers, credentials: 'same-origin', cache: 'no-store', redirect: 'error' };
  if (method !== 'GET' && method !== 'HEAD') headers['X-CSRF-Token'] = state.csrf;
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    throw new APIError(0, `the gateway did not answer (${err.message})`);
  }
  if (res.status === 401) {
    signedOut();
    throw new APIError(401, 'signed out');
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!res.ok) {
    const msg = data && typeof data.error === 'string' ? data.error : `${res.status} ${res.statusText}`;
    throw new APIError(res.status, msg);
  }
  return data;
}

const enc = encodeURIComponent;

// ---- shared UI -------------------------------------------------------------

function signedOut() {
  if (state.signedOut) return;
  state.signedOut = true;
  clearTimeout(state.timer);
  if (state.stream) {
    state.stream.close();
    state.stream = null;
  }
  document.body.classList.add('is-signed-out');
  $('signed-out').hidden = false;
  $('main').hidden = true;
  $('whoami').textContent = '';
  $('logout').hidden = true;
  for (const d of document.querySelectorAll('dialog')) if (d.open) d.close('cancel');
}

let toastTimer = 0;
function toast(message, kind = 'info') {
  const t = $('toast');
  t.textContent = message;
  t.dataset.kind = kind;
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, kind === 'error' ? 10000 : 5000);
}

function fail(err) {
  if (err instanceof APIError && err.status === 401) return;
  toast(err.message || String(err), 'error');
}

// confirm asks in the page's own dialog; resolves true only on Confirm.
function confirmAction(title, message, okLabel) {
  const d = $('confirm');
  $('confirm-title').textContent = title;
  $('confirm-message').textContent = message;
  $('confirm-ok').textContent = okLabel;
  d.returnValue = 'cancel';
  return new Promise((resolve) => {
    d.addEventListener('close', () => resolve(d.returnValue === 'ok'), { once: true });
    d.showModal();
    $('confirm-cancel').focus();
  });
}

function time(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toISOString().replace('T', ' ').replace(/\.\d+Z$|Z$/, ' UTC');
}

// clock is the time of day (UTC) of iso, for a stream of recent events.
function clock(iso) {
  const t = time(iso);
  const m = /\d\d:\d\d:\d\d/.exec(t);
  return m ? m[0] : t;
}

function ago(iso) {
  const s = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  if (!Number.isFinite(s)) return '';
  if (s < 60) return `${Math.max(s, 0)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

function badge(text, kind) {
  return el('span', { class: `badge ${kind || text}`, text });
}

function labelChips(labels) {
  const keys = Object.keys(labels || {}).sort();
  if (keys.length === 0) return el('span', { class: 'muted', text: 'none' });
  return el('span', { class: 'chips' }, keys.map((k) => el('span', { class: 'chip', text: `${k}=${labels[k]}` })));
}

function emptyRow(tbody, cols, text) {
  tbody.replaceChildren(el('tr', { class: 'empty' }, el('td', { colspan: cols, text })));
}

function shortRev(rev) {
  return rev ? rev.slice(0, 12) : '–';
}

// ---- overview ----------------------------------------------------------------

async function loadOverview() {
  const ov = await api('GET', '/v1/overview');
  $('ov-sessions').textContent = ov.sessions;
  const dv = ov.devices || {};
  $('ov-active').textContent = dv.active ?? 0;
  $('ov-suspended').textContent = dv.suspended ?? 0;
  $('ov-revoked').textContent = dv.revoked ?? 0;
  const pol = ov.policy || {};
  $('ov-revision').textContent = shortRev(pol.revision);
  $('ov-revision').title = pol.revision || '';
  $('ov-activated').textContent = pol.activated_at ? `activated ${time(pol.activated_at)}` : '';
  const lr = $('ov-last-refused');
  if (pol.last_error) {
    lr.replaceChildren(badge('refused', 'deny'), ` ${time(pol.last_error_at)}: `, el('span', { class: 'error-text', text: pol.last_error }));
  } else {
    lr.textContent = 'none since start';
  }
  const pts = Array.isArray(ov.decisions) ? ov.decisions : [];
  drawChart($('decisions-chart'), pts);
  let a = 0;
  let d = 0;
  for (const p of pts) { a += p.allowed || 0; d += p.denied || 0; }
  const secs = pts.length * 10;
  const span = secs >= 600 ? 'in the last 10 minutes' : `in the ${secs < 60 ? `${secs} s` : `${Math.floor(secs / 60)} min`} sampled since the gateway started`;
  $('ov-totals').textContent = pts.length === 0
    ? 'No sample yet: the gateway counts decisions every 10 s.'
    : `${a} allowed, ${d} denied ${span}`;
  $('ov-updated').textContent = `updated ${time(new Date().toISOString())}`;
}

function niceMax(v) {
  if (v <= 4) return 4;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

// drawChart draws stacked bars (allowed below, denied above) per point.
function drawChart(root, points) {
  const W = 960;
  const H = 220;
  const L = 48;
  const R = 8;
  const T = 10;
  const B = 26;
  const slots = Math.max(points.length, 60);
  const max = niceMax(Math.max(0, ...points.map((p) => (p.allowed || 0) + (p.denied || 0))));
  const ph = H - T - B;
  const bw = (W - L - R) / slots;
  const y = (v) => T + ph - (v / max) * ph;
  const nodes = [];
  for (const f of [0, 0.5, 1]) {
    const yy = y(max * f);
    nodes.push(svg('line', { x1: L, x2: W - R, y1: yy, y2: yy, class: 'gridline' }));
    nodes.push(svg('text', { x: L - 6, y: yy + 4, 'text-anchor': 'end', class: 'axis' }, Math.round(max * f)));
  }
  const first = slots - points.length;
  points.forEach((p, i) => {
    const x = L + (first + i) * bw + 1;
    const w = Math.max(bw - 2, 1);
    const a = p.allowed || 0;
    const d = p.denied || 0;
    const g = svg('g', { class: 'bar' });
    g.append(svg('title', {}, `${time(p.t)}: ${a} allowed, ${d} denied`));
    if (a > 0) g.append(svg('rect', { x, y: y(a), width: w, height: y(0) - y(a), class: 'allowed' }));
    if (d > 0) g.append(svg('rect', { x, y: y(a + d), width: w, height: y(a) - y(a + d), class: 'denied' }));
    // An invisible full-height target so the tooltip works on empty slots.
    g.append(svg('rect', { x, y: T, width: w, height: ph, class: 'hit' }));
    nodes.push(g);
  });
  const labels = [[0, '−10 min'], [0.5, '−5 min'], [1, 'now']];
  for (const [f, text] of labels) {
    const anchor = f === 0 ? 'start' : f === 1 ? 'end' : 'middle';
    nodes.push(svg('text', { x: L + f * (W - L - R), y: H - 6, 'text-anchor': anchor, class: 'axis' }, text));
  }
  root.replaceChildren(...nodes);
}

// ---- devices -------------------------------------------------------------------

async function listAllDevices(selector, status) {
  const out = [];
  let after = '';
  for (let i = 0; i < DEVICE_MAX_PAGES; i++) {
    const q = new URLSearchParams({ limit: String(DEVICE_PAGE) });
    if (selector) q.set('selector', selector);
    if (status) q.set('status', status);
    if (after) q.set('after', after);
    const page = await api('GET', `/v1/devices?${q}`);
    out.push(...(page.devices || []));
    if (!page.next) return { devices: out, more: false };
    after = page.next;
  }
  return { devices: out, more: true };
}

async function loadDevices() {
  const name = $('device-search-name').value.trim().toLowerCase();
  const selector = $('device-search-selector').value.trim();
  const status = $('device-search-status').value;
  const { devices, more } = await listAllDevices(selector, status);
  const shown = name ? devices.filter((d) => d.name.toLowerCase().includes(name)) : devices;
  const tbody = $('devices-body');
  $('devices-count').textContent = `${shown.length} shown` + (more ? ` (first ${devices.length} searched; narrow the selector)` : '');
  if (shown.length === 0) {
    emptyRow(tbody, 6, 'No device matches.');
    return;
  }
  tbody.replaceChildren(...shown.map(deviceRow));
}

function deviceRow(d) {
  const actions = el('td', { class: 'actions' });
  const btn = (action, label, cls) => el('button', {
    type: 'button', class: cls || 'small', 'data-action': action, 'data-testid': `device-${action}`,
    text: label, onclick: () => deviceAction(d, action),
  });
  if (d.status === 'active') actions.append(btn('suspend', 'Suspend', 'small warn'));
  if (d.status === 'suspended') actions.append(btn('resume', 'Resume', 'small'));
  if (d.status !== 'revoked') actions.append(btn('revoke', 'Revoke', 'small danger'));
  actions.append(btn('labels', 'Labels', 'small ghost'));
  actions.append(btn('delete', 'Delete', 'small ghost danger-text'));
  const sessions = el('a', { href: `#/sessions?device=${enc(d.name)}`, class: 'small', text: 'sessions' });
  return el('tr', { 'data-device': d.name },
    el('td', {}, el('strong', { text: d.name }), ' ', sessions),
    el('td', {}, el('code', { class: 'id', text: d.spiffe_id })),
    el('td', {}, labelChips(d.labels)),
    el('td', { 'data-testid': 'device-status' }, badge(d.status)),
    el('td', { title: time(d.updated_at), text: ago(d.updated_at) }),
    actions);
}

const deviceActions = {
  suspend: {
    title: 'Suspend device',
    message: (n) => `Suspend "${n}"? Its live MQTT sessions end now and it cannot connect until it is resumed.`,
    ok: 'Suspend',
    run: (n) => api('POST', `/v1/devices/${enc(n)}/suspend`),
    done: (n) => `${n} suspended`,
  },
  resume: {
    title: 'Resume device',
    message: (n) => `Resume "${n}"? It may connect again, as the policy allows.`,
    ok: 'Resume',
    run: (n) => api('POST', `/v1/devices/${enc(n)}/resume`),
    done: (n) => `${n} resumed`,
  },
  revoke: {
    title: 'Revoke device',
    message: (n) => `Revoke "${n}"? This is final: its sessions end now and it can never connect or be resumed again.`,
    ok: 'Revoke',
    run: (n) => api('POST', `/v1/devices/${enc(n)}/revoke`),
    done: (n) => `${n} revoked`,
  },
  delete: {
    title: 'Delete device',
    message: (n) => `Delete "${n}" from the registry? Its sessions end now and its identity is no longer enrolled.`,
    ok: 'Delete',
    run: (n) => api('DELETE', `/v1/devices/${enc(n)}`),
    done: (n) => `${n} deleted`,
  },
};

async function deviceAction(d, action) {
  if (action === 'labels') {
    editLabels(d);
    return;
  }
  const a = deviceActions[action];
  if (!(await confirmAction(a.title, a.message(d.name), a.ok))) return;
  try {
    await a.run(d.name);
    toast(a.done(d.name));
  } catch (err) {
    fail(err);
  }
  await loadDevices().catch(fail);
}

function editLabels(d) {
  const dlg = $('labels-dialog');
  $('labels-device').textContent = d.name;
  const orig = d.labels || {};
  $('labels-text').value = Object.keys(orig).sort().map((k) => `${k}=${orig[k]}`).join('\n');
  dlg.returnValue = 'cancel';
  dlg.addEventListener('close', async () => {
    if (dlg.returnValue !== 'ok') return;
    const change = labelChange(orig, $('labels-text').value);
    if (change.error) {
      toast(change.error, 'error');
      return;
    }
    if (Object.keys(change.set).length === 0 && change.remove.length === 0) {
      toast('labels unchanged');
      return;
    }
    try {
      await api('PATCH', `/v1/devices/${enc(d.name)}/labels`, change);
      toast(`labels of ${d.name} saved`);
    } catch (err) {
      fail(err);
    }
    await loadDevices().catch(fail);
  }, { once: true });
  dlg.showModal();
}

// labelChange turns the edited k=v lines into the PATCH body: the keys set
// or changed, and the keys that are gone. The server checks key and value.
function labelChange(orig, text) {
  const next = {};
  for (const [i, raw] of text.split('\n').entries()) {
    const line = raw.trim();
    if (line === '') continue;
    const eq = line.indexOf('=');
    if (eq <= 0) return { error: `line ${i + 1} is not key=value` };
    const k = line.slice(0, eq).trim();
    if (k in next) return { error: `label ${k} appears twice` };
    next[k] = line.slice(eq + 1).trim();
  }
  const set = {};
  for (const [k, v] of Object.entries(next)) if (orig[k] !== v) set[k] = v;
  const remove = Object.keys(orig).filter((k) => !(k in next));
  return { set, remove };
}

// ---- sessions ------------------------------------------------------------------

function protocolName(v) {
  return { 3: 'MQTT 3.1', 4: 'MQTT 3.1.1', 5: 'MQTT 5' }[v] || `v${v}`;
}

async function loadSessions(params) {
  const input = $('session-search-device');
  if (params) input.value = params.get('device') || '';
  const device = input.value.trim();
  const list = await api('GET', device ? `/v1/sessions?device=${enc(device)}` : '/v1/sessions');
  const sessions = Array.isArray(list) ? list : [];
  sessions.sort((a, b) => (a.device || '').localeCompare(b.device || '') || a.client_id.localeCompare(b.client_id));
  $('sessions-count').textContent = `${sessions.length} live`;
  const tbody = $('sessions-body');
  if (sessions.length === 0) {
    emptyRow(tbody, 8, device ? `No live session of ${device}.` : 'No live session.');
    return;
  }
  tbody.replaceChildren(...sessions.map(sessionRow));
}

function sessionRow(s) {
  const subs = Array.isArray(s.subscriptions) ? s.subscriptions : [];
  const who = s.device
    ? el('td', {}, el('strong', { text: s.device }))
    : el('td', {}, el('span', { class: 'muted', text: 'not enrolled ' }), el('code', { class: 'id', text: s.spiffe_id }));
  const actions = el('td', { class: 'actions' });
  if (s.device) {
    actions.append(el('button', {
      type: 'button', class: 'small warn', 'data-action': 'kick', 'data-testid': 'session-kick',
      text: 'Kick', title: 'end every live session of this device', onclick: () => kick(s.device),
    }));
  }
  return el('tr', { 'data-device': s.device || '', 'data-client-id': s.client_id },
    who,
    el('td', {}, el('code', { text: s.client_id })),
    // In a cluster, the node the connection is on.
    el('td', { text: s.node ? `${s.remote_addr} on ${s.node}` : s.remote_addr }),
    el('td', { text: protocolName(s.protocol_version) }),
    el('td', { title: time(s.connected_at), text: ago(s.connected_at) }),
    el('td', { 'data-testid': 'session-subscriptions' }, subs.length === 0
      ? el('span', { class: 'muted', text: 'none' })
      : el('span', { class: 'chips' }, subs.map((f) => el('span', { class: 'chip', text: `${f.filter} (QoS ${f.qos})` })))),
    el('td', { class: 'num', 'data-testid': 'session-queue', text: s.queue_depth ?? 0 }),
    actions);
}

async function kick(device) {
  const ok = await confirmAction('Kick sessions',
    `End every live MQTT session of "${device}"? Its status does not change: it may reconnect at once.`, 'Kick');
  if (!ok) return;
  try {
    const r = await api('DELETE', `/v1/devices/${enc(device)}/sessions`);
    toast(`${r.kicked} session(s) of ${r.device} ended`);
  } catch (err) {
    fail(err);
  }
  await loadSessions().catch(fail);
}

// ---- denials -------------------------------------------------------------------

function setStreamState(s, text) {
  const b = $('denials-state');
  b.dataset.state = s;
  b.className = `badge stream-${s}`;
  b.textContent = text;
}

// openStream keeps one EventSource for the console's lifetime, so denials
// are collected while other pages are shown.
function openStream() {
  if (state.stream || state.signedOut) return;
  setStreamState('connecting', 'connecting…');
  const es = new EventSource('/v1/denials/stream', { withCredentials: true });
  state.stream = es;
  es.addEventListener('open', () => setStreamState('open', 'live'));
  es.addEventListener('denial', (ev) => {
    let d;
    try { d = JSON.parse(ev.data); } catch { return; }
    addDenial(d);
  });
  es.addEventListener('error', () => {
    if (es.readyState === EventSource.CLOSED) {
      // A refused stream is not retried by the browser: learn whether the
      // session ended (401) or the gateway failed.
      state.stream = null;
      setStreamState('closed', 'disconnected');
      api('GET', '/v1/console/session').then(() => {
        setTimeout(openStream, 5000);
      }).catch(fail);
    } else {
      setStreamState('connecting', 'reconnecting…');
    }
  });
}

function addDenial(d) {
  const tbody = $('denials-body');
  if (state.denials === 0) tbody.replaceChildren();
  const list = (Array.isArray(d.reasons) ? d.reasons : []).map((r) => el('li', { text: r }));
  if (d.error) list.push(el('li', { class: 'error-text', text: `evaluation failed: ${d.error}` }));
  const reasons = list.length > 0
    ? el('ul', { class: 'reasons' }, list)
    : el('span', { class: 'muted', text: 'no reason given' });
  const who = el('td', {},
    d.device ? el('strong', { text: d.device }) : el('span', { class: 'muted', text: 'not enrolled' }),
    el('br'), el('code', { class: 'id', text: d.spiffe_id || '' }));
  const row = el('tr', { 'data-decision-id': d.decision_id || '', 'data-device': d.device || '', class: 'fresh' },
    el('td', { class: 'nowrap', title: time(d.time), text: clock(d.time) }),
    el('td', {}, badge(d.action || '', 'action')),
    who,
    el('td', {}, el('code', { class: 'nowrap', text: d.client_id || '' })),
    el('td', {}, el('code', { class: 'topic', 'data-testid': 'denial-topic', text: d.topic || '' })),
    el('td', { 'data-testid': 'denial-reasons' }, reasons),
    el('td', {}, el('code', { class: 'id', 'data-testid': 'denial-id', text: d.decision_id || '' }),
      el('br'), el('span', { class: 'muted small', text: d.revision ? `rev ${shortRev(d.revision)}` : '' })));
  tbody.prepend(row);
  state.denials++;
  while (tbody.rows.length > MAX_DENIALS) tbody.deleteRow(-1);
  setTimeout(() => row.classList.remove('fresh'), 2000);
}

function clearDenials() {
  state.denials = 0;
  emptyRow($('denials-body'), 7, 'Waiting for denials…');
}

// ---- policy --------------------------------------------------------------------

async function loadPolicy() {
  const [st, devs] = await Promise.all([api('GET', '/v1/policy'), api('GET', `/v1/devices?limit=${DEVICE_PAGE}`)]);
  $('policy-revision').textContent = st.revision || '–';
  $('policy-activated').textContent = st.activated_at ? `${time(st.activated_at)} (${ago(st.activated_at)})` : '–';
  // The engine activates a revision only once it compiles and its own Rego
  // tests pass, so the revision in force has passed them.
  $('policy-tests').replaceChildren(badge('passed', 'allow'), ' the revision in force passed its Rego tests before activation');
  const mods = Array.isArray(st.modules) ? st.modules : [];
  $('policy-modules').replaceChildren(...(mods.length ? mods.map((m) => el('li', {}, el('code', { text: m }))) : [el('li', { class: 'muted', text: 'none' })]));
  $('policy-last-error').textContent = st.last_error || 'none';
  $('policy-last-error').classList.toggle('has-error', Boolean(st.last_error));
  $('policy-last-error-at').textContent = st.last_error_at ? `refused ${time(st.last_error_at)}; the revision above stayed in force` : '';

  const sel = $('pg-device');
  const keep = sel.value;
  sel.replaceChildren(...(devs.devices || []).map((d) => el('option', { value: d.name, text: `${d.name} (${d.status})` })));
  if (keep && [...sel.options].some((o) => o.value === keep)) sel.value = keep;
}

async function evaluate(ev) {
  ev.preventDefault();
  const body = { device: $('pg-device').value, action: $('pg-action').value, topic: $('pg-topic').value };
  if (!body.device) {
    toast('pick a device', 'error');
    return;
  }
  let r;
  try {
    r = await api('POST', '/v1/policy/eval', body);
  } catch (err) {
    fail(err);
    return;
  }
  $('pg-result').hidden = false;
  const dec = $('pg-decision');
  dec.textContent = r.allow ? 'allow' : 'deny';
  dec.className = `badge ${r.allow ? 'allow' : 'deny'}`;
  $('pg-revision').textContent = shortRev(r.revision);
  $('pg-error').hidden = !r.error;
  $('pg-error').textContent = r.error ? `evaluation failed (a deny at enforcement): ${r.error}` : '';
  const reasons = Array.isArray(r.reasons) ? r.reasons : [];
  $('pg-reasons').replaceChildren(...(reasons.length
    ? reasons.map((x) => el('li', { text: x }))
    : [el('li', { class: 'muted', text: r.allow ? 'none (allowed)' : 'none given by the policy' })]));
  $('pg-input').textContent = JSON.stringify(r.input ?? null, null, 2);
}

// ---- audit ---------------------------------------------------------------------

// loadAudit pages through the log (oldest first, as the API serves it)
// and shows the newest MAX_AUDIT entries, newest first.
async function loadAudit() {
  let after = 0;
  let entries = [];
  let pages = 0;
  for (; pages < AUDIT_MAX_PAGES; pages++) {
    const q = new URLSearchParams({ limit: String(AUDIT_PAGE) });
    if (after) q.set('after', String(after));
    const page = await api('GET', `/v1/audit?${q}`);
    entries = entries.concat(page.entries || []).slice(-MAX_AUDIT);
    if (!page.next) break;
    after = page.next;
  }
  entries.reverse();
  $('audit-count').textContent = `newest ${entries.length}` + (pages === AUDIT_MAX_PAGES ? ' (log longer than the console reads)' : '');
  const tbody = $('audit-body');
  if (entries.length === 0) {
    emptyRow(tbody, 7, 'The audit log is empty.');
    return;
  }
  tbody.replaceChildren(...entries.map((e) => el('tr', { 'data-audit-id': e.id, 'data-action': e.action },
    el('td', { class: 'num', text: e.id }),
    el('td', { class: 'nowrap', text: time(e.time) }),
    el('td', {}, el('code', { class: 'nowrap', text: e.actor })),
    el('td', {}, el('code', { class: 'nowrap', text: e.action })),
    el('td', { class: 'nowrap', text: e.target }),
    el('td', {}, badge(e.result, e.result === 'ok' ? 'allow' : e.result === 'denied' ? 'deny' : 'error')),
    el('td', { class: 'detail', text: e.detail }))));
}

// ---- router --------------------------------------------------------------------

const pages = {
  overview: { load: loadOverview, refresh: REFRESH_MS.overview },
  devices: { load: loadDevices },
  sessions: { load: loadSessions, refresh: REFRESH_MS.sessions },
  denials: { load: async () => openStream() },
  policy: { load: loadPolicy },
  audit: { load: loadAudit },
};

function parseHash() {
  const h = location.hash.replace(/^#\/?/, '');
  const q = h.indexOf('?');
  const name = q < 0 ? h : h.slice(0, q);
  return { name: pages[name] ? name : 'overview', params: new URLSearchParams(q < 0 ? '' : h.slice(q + 1)) };
}

async function route() {
  if (state.signedOut) return;
  const { name, params } = parseHash();
  clearTimeout(state.timer);
  state.page = name;
  for (const [p] of Object.entries(pages)) $(`page-${p}`).hidden = p !== name;
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.page === name);
  document.title = `${name[0].toUpperCase()}${name.slice(1)} · ztgate console`;
  await refresh(name, params);
}

async function refresh(name, params) {
  const page = pages[name];
  const section = $(`page-${name}`);
  section.setAttribute('aria-busy', 'true');
  try {
    await page.load(params);
    section.dataset.loaded = String(Date.now());
  } catch (err) {
    fail(err);
  } finally {
    section.removeAttribute('aria-busy');
  }
  if (page.refresh && !state.signedOut && state.page === name) {
    clearTimeout(state.timer);
    state.timer = setTimeout(() => {
      // A modal dialog open over the page waits for the next tick.
      if (document.querySelector('dialog[open]')) state.timer = setTimeout(() => refresh(name), page.refresh);
      else refresh(name);
    }, page.refresh);
  }
}

async function logout() {
  try {
    const res = await fetch('/ui/logout', {
      method: 'POST', credentials: 'same-origin', headers: { 'X-CSRF-Token': state.csrf }, redirect: 'manual',
    });
    if (!res.ok && res.type !== 'opaqueredirect' && res.status !== 401) throw new Error(`sign out: ${res.status}`);
  } catch (err) {
    fail(err);
    return;
  }
  signedOut();
}

async function start() {
  $('denials-max').textContent = MAX_DENIALS;
  clearDenials();
  $('device-search').addEventListener('submit', (ev) => { ev.preventDefault(); loadDevices().catch(fail); });
  $('session-search').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const d = $('session-search-device').value.trim();
    const target = d ? `#/sessions?device=${enc(d)}` : '#/sessions';
    if (location.hash !== target) location.hash = target;
    else loadSessions().catch(fail);
  });
  $('sessions-refresh').addEventListener('click', () => refresh('sessions'));
  $('audit-refresh').addEventListener('click', () => loadAudit().catch(fail));
  $('denials-clear').addEventListener('click', clearDenials);
  $('toast').addEventListener('click', () => { $('toast').hidden = true; });
  $('playground').addEventListener('submit', evaluate);
  $('logout').addEventListener('click', logout);
  window.addEventListener('hashchange', route);

  let sess;
  try {
    sess = await api('GET', '/v1/console/session');
  } catch (err) {
    $('loading').hidden = true;
    if (!(err instanceof APIError && err.status === 401)) {
      // Without a console session (a client certificate instead, or an
      // error) the console cannot make state changes.
      toast(`no console session: ${err.message}`, 'error');
      signedOut();
    }
    return;
  }
  state.csrf = sess.csrf_token;
  $('whoami').textContent = sess.spiffe_id;
  $('whoami').title = `signed in as ${sess.spiffe_id} until ${time(sess.expires_at)}`;
  $('loading').hidden = true;
  document.body.dataset.ready = 'true';
  openStream();
  await route();
}

start();
