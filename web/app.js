// TikMatrix Lite dashboard: plain JavaScript, no build step, no other host.
// Data comes from /api/v1 (with the API key when the server has one); updates arrive
// through the event stream /api/v1/events, read with fetch so the key can be sent.
"use strict";

const API = "/api/v1";
const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];
const STATUS = ["pending", "running", "completed", "failed"];
const state = {
  key: localStorage.getItem("tmlite-key") || "",
  devices: new Map(), scripts: [], accounts: [], view: "phones",
  tasks: { page: 1, pageSize: 50, total: 0, rows: new Map(), selected: new Set() },
  opened: null, lastEvent: null,
};

// -- requests ---------------------------------------------------------------------
class ApiError extends Error {
  constructor(code, message) { super(message); this.code = code; }
  get field() { const m = /^([\w.\[\]]+): /.exec(this.message); return m ? m[1] : ""; }
}

function headers(extra = {}) {
  return state.key ? { ...extra, "X-API-Key": state.key } : extra;
}

async function api(method, path, body) {
  const init = { method, headers: headers() };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const resp = await fetch(API + path, init);
  let json;
  try { json = await resp.json(); } catch (e) { throw new ApiError(50001, `HTTP ${resp.status}`); }
  if (json.code === 40101) { askKey(json.message); throw new ApiError(40101, json.message); }
  if (json.code !== 0) throw new ApiError(json.code, json.message);
  return json.data;
}

async function blobUrl(url) {           // <img> cannot send the key: fetch, then show
  const resp = await fetch(url, { headers: headers() });
  if (!resp.ok) throw new ApiError(resp.status * 100, `HTTP ${resp.status}`);
  return { url: URL.createObjectURL(await resp.blob()), resp };
}

function toast(text, bad = false) {
  const el = $("#toast");
  el.textContent = text; el.className = "toast" + (bad ? " bad" : ""); el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, bad ? 6000 : 2500);
}

function esc(text) {
  return String(text ?? "").replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function h(html) { const t = document.createElement("template"); t.innerHTML = html.trim(); return t.content.firstElementChild; }

// -- the API key ------------------------------------------------------------------
let keyWaiters = [];
function askKey(message) {
  $("#key-panel").hidden = false;
  $("#key-error").textContent = state.key ? message : "";
  $("#key-form [name=key]").focus();
}
function keyReady() {
  return new Promise(resolve => keyWaiters.push(resolve));
}
$("#key-form").addEventListener("submit", async ev => {
  ev.preventDefault();
  state.key = ev.target.key.value.trim();
  try {
    await api("GET", "/health");
  } catch (e) { return; }
  localStorage.setItem("tmlite-key", state.key);
  $("#key-panel").hidden = true;
  keyWaiters.splice(0).forEach(resolve => resolve());
});

// -- views --------------------------------------------------------------------------
function show(view) {
  state.view = view;
  $$("#tabs a").forEach(a => a.classList.toggle("on", a.dataset.view === view));
  $$(".view").forEach(s => { s.hidden = s.id !== "view-" + view; });
  if (view === "tasks") loadTasks();
  if (view === "new") renderNewTask();
  if (view === "accounts") loadAccounts();
  if (view === "materials") loadMaterials();
  screens.refresh();
}
window.addEventListener("hashchange", () => show(location.hash.slice(1) || "phones"));

// -- stats --------------------------------------------------------------------------
const loadStats = debounce(async () => {
  const s = await api("GET", "/task/stats");
  $("#stats").innerHTML = ["pending", "running", "completed", "failed"].map(k =>
    `<span title="${k}">${k} <b>${s[k]}</b></span>`).join("");
}, 300);

function debounce(fn, ms) {
  let timer = null;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args).catch(() => {}), ms); };
}

// -- phones ---------------------------------------------------------------------------
async function loadDevices() {
  const data = await api("GET", "/device");
  state.devices = new Map(data.items.map(d => [d.serial, d]));
  renderGrid();
  fillDeviceSelects();
}

function deviceName(d) { return d.alias || d.model || d.serial; }

function renderGrid() {
  const grid = $("#grid");
  const filter = $("#phone-filter").value.trim().toLowerCase();
  const group = $("#group-filter").value;
  const groups = new Set();
  let shown = 0;
  for (const d of state.devices.values()) d.groups.forEach(g => groups.add(g));
  const select = $("#group-filter");
  const current = select.value;
  select.innerHTML = `<option value="">All groups</option>` +
    [...groups].sort().map(g => `<option ${g === current ? "selected" : ""}>${esc(g)}</option>`).join("");
  const seen = new Set();
  for (const d of state.devices.values()) {
    const text = [d.alias, d.model, d.serial, ...d.groups].join(" ").toLowerCase();
    const visible = (!filter || text.includes(filter)) && (!group || d.groups.includes(group));
    let tile = grid.querySelector(`[data-serial="${CSS.escape(d.serial)}"]`);
    if (!tile) {
      tile = h(`<div class="tile" data-serial="${esc(d.serial)}"><div class="screen"><span>no screen</span></div><div class="meta"></div></div>`);
      tile.addEventListener("click", () => openPhone(d.serial));
      grid.appendChild(tile);
      screens.observe(tile);
    }
    tile.hidden = !visible;
    if (visible) shown++;
    seen.add(d.serial);
    fillTile(tile, d);
  }
  for (const tile of $$(".tile", grid)) if (!seen.has(tile.dataset.serial)) { screens.unobserve(tile); tile.remove(); }
  $("#grid-empty").hidden = state.devices.size > 0;
  $("#phone-count").textContent = `${shown} of ${state.devices.size} phones, ` +
    `${[...state.devices.values()].filter(d => d.state === "device").length} online`;
}

function fillTile(tile, d) {
  const online = d.state === "device";
  tile.classList.toggle("off", !online);
  const task = d.running_task_id ? state.runningTasks?.get(d.running_task_id) || state.tasks.rows.get(d.running_task_id) : null;
  const progress = d.running_task_id ? progressBar(task || { status: 1, progress: 0, message: "" },
    `#${d.running_task_id} ${task ? task.script_name || "" : ""}`) : "";
  const battery = d.battery == null ? "" : `<span class="battery ${d.battery < 20 ? "low" : ""}" title="battery"><b><i style="width:${d.battery}%"></i></b>${d.battery}%</span>`;
  tile.querySelector(".meta").innerHTML = `
    <div class="name" title="${esc(d.serial)}">${esc(deviceName(d))}</div>
    <div class="serial">${esc(d.serial)}</div>
    <div class="line"><span class="badge ${esc(d.state)}">${esc(d.state)}</span>${battery}
      ${d.pending_count ? `<span title="pending tasks">${d.pending_count} queued</span>` : ""}</div>
    ${progress}
    <div class="groups">${d.groups.map(g => `<span class="chip">${esc(g)}</span>`).join("")}</div>`;
  if (!online) tile.querySelector(".screen").innerHTML = `<span>${esc(d.state)}</span>`;
}

function progressBar(t, label) {
  const cls = STATUS[t.status] || "";
  const pct = t.status === 2 ? 100 : (t.progress || 0);
  const text = label !== undefined ? `${label} ${t.message || ""}` : `${pct}% ${t.message || ""}`;
  return `<div class="progress ${cls}" data-progress="${pct}"><i style="width:${pct}%"></i><span>${esc(text)}</span></div>`;
}

function fillDeviceSelects() {
  const options = [...state.devices.values()].map(d => `<option value="${esc(d.serial)}">${esc(deviceName(d))}${d.alias ? " · " + esc(d.serial) : ""}</option>`).join("");
  const filter = $("#task-filters [name=serial]");
  const current = filter.value;
  filter.innerHTML = `<option value="">Any phone</option>` + options;
  filter.value = current;
  $("#new-account [name=serial]").innerHTML = options;
}

$("#phone-filter").addEventListener("input", renderGrid);
$("#group-filter").addEventListener("change", renderGrid);

// -- live screens: only what is visible, paced by the server's budget -----------------
const screens = {
  visible: new Set(), loops: new Map(), observer: null,
  init() {
    this.observer = new IntersectionObserver(entries => {
      for (const e of entries) {
        const serial = e.target.dataset.serial;
        if (e.isIntersecting) this.visible.add(serial); else this.visible.delete(serial);
      }
      this.refresh();
    });
    document.addEventListener("visibilitychange", () => this.refresh());
  },
  observe(tile) { this.observer.observe(tile); },
  unobserve(tile) { this.observer.unobserve(tile); this.visible.delete(tile.dataset.serial); },
  wanted(serial) {
    if (document.hidden) return false;
    if (state.opened === serial) return true;
    const d = state.devices.get(serial);
    return state.view === "phones" && !state.opened && this.visible.has(serial) && d && d.state === "device";
  },
  refresh() {
    const want = new Set([...state.devices.keys()].filter(s => this.wanted(s)));
    for (const serial of want) if (!this.loops.has(serial)) this.loop(serial);
  },
  async loop(serial) {
    const token = {};
    this.loops.set(serial, token);
    let failures = 0;
    while (this.wanted(serial) && this.loops.get(serial) === token) {
      const focus = state.opened === serial;
      let wait = 1000;
      try {
        const { url, resp } = await blobUrl(`${API}/device/${encodeURIComponent(serial)}/screenshot?format=jpeg&view=${focus ? "focus" : "grid"}`);
        const img = focus ? $("#pp-img") : this.tileImage(serial);
        if (img) { const old = img.src; img.src = url; if (old.startsWith("blob:")) URL.revokeObjectURL(old); }
        else URL.revokeObjectURL(url);
        wait = Math.max(150, +(resp.headers.get("X-Next-Frame-Ms") || 1000));
        failures = 0;
      } catch (e) {
        failures++;
        wait = Math.min(30000, 1000 * 2 ** failures);
      }
      await new Promise(r => setTimeout(r, wait));
    }
    if (this.loops.get(serial) === token) this.loops.delete(serial);
  },
  tileImage(serial) {
    const tile = $(`#grid [data-serial="${CSS.escape(serial)}"] .screen`);
    if (!tile) return null;
    let img = tile.querySelector("img");
    if (!img) { tile.innerHTML = ""; img = document.createElement("img"); img.alt = "screen"; tile.appendChild(img); }
    return img;
  },
};

// -- one phone opened -----------------------------------------------------------------
function openPhone(serial) {
  state.opened = serial;
  $("#phone-panel").hidden = false;
  $("#pp-img").removeAttribute("src");
  $("#pp-error").textContent = "";
  fillPhonePanel();
  screens.loops.delete(serial);            // restart its loop as the focused phone
  screens.refresh();
}

function fillPhonePanel() {
  const d = state.devices.get(state.opened);
  if (!d) return;
  $("#pp-title").textContent = deviceName(d);
  const badge = $("#pp-state");
  badge.textContent = d.state; badge.className = "badge " + d.state;
  const task = d.running_task_id ? state.tasks.rows.get(d.running_task_id) : null;
  $("#pp-task").innerHTML = d.running_task_id ? `Task <b>#${d.running_task_id}</b> ${esc(task ? task.script_name : "")} is running here: input will ask to take over.` +
    (task ? progressBar(task) : "") : "";
  const apps = Object.entries(d.apps || {}).map(([p, v]) => `${p} ${v}`).join(", ") || "—";
  $("#pp-info").innerHTML = [["Serial", d.serial], ["Model", d.model], ["Android", d.android_version],
    ["Battery", d.battery == null ? "—" : d.battery + "%"], ["Screen", d.screen || "—"],
    ["Keyboard", d.ime || "none (ASCII only)"], ["Apps", apps], ["Connection", `${d.connection} via ${d.adb_server}`],
    ["Pending", d.pending_count], ["Last seen", d.last_seen || "—"], ["Last error", d.last_error || "—"]]
    .map(([k, v]) => `<dt>${k}</dt><dd>${esc(v)}</dd>`).join("");
  $("#pp-disconnect").hidden = !(d.connection === "tcp" && d.state !== "disconnected");
  const form = $("#pp-edit");
  if (document.activeElement?.form !== form) {
    form.alias.value = d.alias;
    form.groups.value = d.groups.join(", ");
  }
}

function closePhone() {
  const serial = state.opened;
  state.opened = null;
  $("#phone-panel").hidden = true;
  screens.loops.delete(serial);
  screens.refresh();
}
$("#pp-close").addEventListener("click", closePhone);
$("#phone-panel").addEventListener("click", ev => { if (ev.target.id === "phone-panel") closePhone(); });
document.addEventListener("keydown", ev => {
  if (ev.key === "Escape") { if (!$("#task-panel").hidden) $("#task-panel").hidden = true; else if (state.opened) closePhone(); }
});

async function sendInput(body) {
  const serial = state.opened;
  const d = state.devices.get(serial);
  $("#pp-error").textContent = "";
  try {
    await api("POST", `/device/${encodeURIComponent(serial)}/input`, body);
  } catch (e) {
    if (e.field === "take_over") {
      if (confirm(`${e.message.replace(/^take_over: /, "")}\n\nStop that task and take over the phone?`)) {
        return sendInput({ ...body, take_over: true });
      }
      return;
    }
    $("#pp-error").textContent = e.message;
  }
}

function phonePoint(ev) {
  const img = $("#pp-img");
  const rect = img.getBoundingClientRect();
  const d = state.devices.get(state.opened);
  const [sw, sh] = (d && /^\d+x\d+$/.test(d.screen || "")) ? d.screen.split("x").map(Number)
    : [img.naturalWidth || 1080, img.naturalHeight || 2400];
  // object-fit: contain leaves bars: map through the drawn picture only
  const ratio = Math.min(rect.width / sw, rect.height / sh);
  const dx = (rect.width - sw * ratio) / 2, dy = (rect.height - sh * ratio) / 2;
  const x = Math.round((ev.clientX - rect.left - dx) / ratio);
  const y = Math.round((ev.clientY - rect.top - dy) / ratio);
  return { x: Math.max(0, Math.min(sw - 1, x)), y: Math.max(0, Math.min(sh - 1, y)) };
}

let drag = null;
$("#pp-img").addEventListener("pointerdown", ev => { ev.preventDefault(); drag = { ...phonePoint(ev), t: performance.now() }; });
$("#pp-img").addEventListener("pointerup", ev => {
  if (!drag) return;
  const end = phonePoint(ev);
  const ms = Math.round(performance.now() - drag.t);
  if (Math.hypot(end.x - drag.x, end.y - drag.y) < 20) sendInput({ action: "tap", x: drag.x, y: drag.y });
  else sendInput({ action: "swipe", x1: drag.x, y1: drag.y, x2: end.x, y2: end.y, duration_ms: Math.max(100, Math.min(2000, ms)) });
  drag = null;
});
$$("#phone-panel [data-key]").forEach(b => b.addEventListener("click", () => sendInput({ action: "key", key: b.dataset.key })));
$("#pp-text").addEventListener("submit", async ev => {
  ev.preventDefault();
  const text = ev.target.text.value;
  if (!text) return;
  await sendInput({ action: "text", text });
  if (!$("#pp-error").textContent) ev.target.text.value = "";
});
$("#pp-edit").addEventListener("submit", async ev => {
  ev.preventDefault();
  const f = ev.target;
  try {
    const d = await api("PUT", `/device/${encodeURIComponent(state.opened)}`, {
      alias: f.alias.value, groups: f.groups.value.split(",").map(s => s.trim()).filter(Boolean) });
    state.devices.set(d.serial, d); renderGrid(); fillPhonePanel(); toast("Saved");
  } catch (e) { $("#pp-error").textContent = e.message; }
});
$("#pp-disconnect").addEventListener("click", async () => {
  try { await api("POST", "/device/disconnect", { address: state.opened }); toast("Disconnected"); }
  catch (e) { $("#pp-error").textContent = e.message; }
});
$("#pp-forget").addEventListener("click", async () => {
  const serial = state.opened;
  if (!confirm(`Forget ${serial}? It comes back when it connects again.`)) return;
  try { await api("DELETE", `/device/${encodeURIComponent(serial)}`); closePhone(); state.devices.delete(serial); renderGrid(); }
  catch (e) { $("#pp-error").textContent = e.message; }
});

// -- tasks --------------------------------------------------------------------------
function taskQuery() {
  const f = new FormData($("#task-filters"));
  const q = new URLSearchParams({ page: state.tasks.page, page_size: state.tasks.pageSize });
  for (const k of ["status", "serial", "script_name", "source"]) if (f.get(k)) q.set(k, f.get(k));
  if (f.get("username").trim()) q.set("username", f.get("username").trim());
  if (f.get("from")) q.set("start_timestamp", Math.floor(new Date(f.get("from")) / 1000));
  if (f.get("to")) q.set("end_timestamp", Math.floor(new Date(f.get("to")) / 1000));
  return q;
}

async function loadTasks() {
  const data = await api("GET", "/task?" + taskQuery());
  state.tasks.total = data.total;
  state.tasks.rows = new Map(data.items.map(t => [t.id, t]));
  const body = $("#task-rows");
  body.innerHTML = "";
  for (const t of data.items) body.appendChild(taskRow(t));
  if (!data.items.length) body.innerHTML = `<tr><td colspan="9" class="empty">No task matches.</td></tr>`;
  const pages = Math.max(1, Math.ceil(data.total / state.tasks.pageSize));
  $("#page-info").textContent = `page ${state.tasks.page} of ${pages} · ${data.total} tasks`;
  $("#prev").disabled = state.tasks.page <= 1;
  $("#next").disabled = state.tasks.page >= pages;
  updateSelection();
}
const reloadTasks = debounce(() => state.view === "tasks" ? loadTasks() : Promise.resolve(), 400);

function taskRow(t) {
  const d = state.devices.get(t.serial);
  const row = h(`<tr class="clickable" data-id="${t.id}">
    <td><input type="checkbox" class="sel" ${state.tasks.selected.has(t.id) ? "checked" : ""}></td>
    <td class="mono hide-sm">${t.id}</td>
    <td title="${esc(t.serial)}">${esc(d ? deviceName(d) : t.serial)}</td>
    <td>${esc(t.script_name)}</td>
    <td class="hide-sm">${t.username ? "@" + esc(t.username) : '<span class="muted">—</span>'}</td>
    <td class="hide-sm"><span class="badge ${STATUS[t.status]}">${STATUS[t.status]}</span></td>
    <td class="wide">${progressBar(t, t.status === 3 ? t.error : undefined)}</td>
    <td class="muted hide-sm">${esc(t.created_at || "")}</td>
    <td><div class="acts">
      ${t.status <= 1 ? `<button data-act="stop">Stop</button>` : ""}
      ${t.status === 3 ? `<button data-act="retry">Retry</button>` : ""}
      <button data-act="delete" class="danger" title="delete">✕</button></div></td></tr>`);
  row.addEventListener("click", ev => {
    const act = ev.target.dataset.act;
    if (ev.target.classList.contains("sel")) {
      ev.target.checked ? state.tasks.selected.add(t.id) : state.tasks.selected.delete(t.id);
      updateSelection();
    } else if (act) taskAction(act, t.id);
    else openTask(t.id);
  });
  return row;
}

function updateTaskRow(ev) {
  const old = state.tasks.rows.get(ev.id);
  if (!old) return false;
  const t = { ...old, ...ev };
  state.tasks.rows.set(t.id, t);
  const row = $(`#task-rows tr[data-id="${t.id}"]`);
  if (row) row.replaceWith(taskRow(t));
  return true;
}

async function taskAction(act, id) {
  try {
    if (act === "delete") {
      if (!confirm(`Delete task ${id}?`)) return;
      await api("DELETE", `/task/${id}`);
    } else await api("POST", `/task/${id}/${act}`);
    toast(`Task ${id}: ${act === "stop" ? "stopped" : act === "retry" ? "back to pending" : "deleted"}`);
  } catch (e) { toast(e.message, true); }
  reloadTasks();
}

function updateSelection() {
  const ids = [...state.tasks.rows.keys()];
  $("#selected-count").textContent = `${state.tasks.selected.size} selected`;
  $("#select-all").checked = ids.length > 0 && ids.every(id => state.tasks.selected.has(id));
}
$("#select-all").addEventListener("change", ev => {
  for (const id of state.tasks.rows.keys()) ev.target.checked ? state.tasks.selected.add(id) : state.tasks.selected.delete(id);
  $$("#task-rows .sel").forEach(c => { c.checked = ev.target.checked; });
  updateSelection();
});
$$("[data-batch]").forEach(b => b.addEventListener("click", async () => {
  const ids = [...state.tasks.selected];
  if (!ids.length) return toast("Select tasks first", true);
  const act = b.dataset.batch;
  if (act === "delete" && !confirm(`Delete ${ids.length} task(s)?`)) return;
  try {
    const data = act === "delete" ? await api("DELETE", "/task/batch", { task_ids: ids })
      : await api("POST", `/task/batch/${act}`, { task_ids: ids });
    const done = data.done ? data.done.length : data.deleted_count;
    const errors = Object.entries(data.errors || {});
    toast(`${act}: ${done} done` + (errors.length ? `, ${errors.length} refused (${errors[0][0]}: ${errors[0][1]})` : ""), errors.length > 0);
    state.tasks.selected.clear();
  } catch (e) { toast(e.message, true); }
  loadTasks();
}));
$("#retry-all").addEventListener("click", async () => {
  const d = await api("POST", "/task/retry-all"); toast(`${d.retried_count} task(s) back to pending`); loadTasks();
});
$("#clear-done").addEventListener("click", async () => {
  if (!confirm("Delete every completed task?")) return;
  const d = await api("POST", "/task/clear", { status: [2] }); toast(`${d.deleted_count} deleted`); loadTasks();
});
$("#task-filters").addEventListener("change", () => { state.tasks.page = 1; loadTasks(); });
$("#task-filters").addEventListener("submit", ev => { ev.preventDefault(); loadTasks(); });
$("#prev").addEventListener("click", () => { state.tasks.page--; loadTasks(); });
$("#next").addEventListener("click", () => { state.tasks.page++; loadTasks(); });

async function openTask(id) {
  const t = await api("GET", `/task/${id}`);
  $("#tp-title").textContent = `Task #${t.id} · ${t.script_name}`;
  const badge = $("#tp-state"); badge.textContent = t.status_text; badge.className = "badge " + t.status_text;
  const d = state.devices.get(t.serial);
  const info = [["Phone", d ? `${deviceName(d)} (${t.serial})` : t.serial], ["Account", t.username ? "@" + t.username : "—"],
    ["Source", t.source], ["Priority", t.priority], ["Start", t.start_time], ["Started", t.started_at || "—"],
    ["Ended", t.end_time || "—"], ["Retries", `${t.retry_count} / ${t.max_retry_count}${t.auto_retry ? " (auto)" : ""}`],
    ["Error", t.error || "—"]].map(([k, v]) => `<dt>${k}</dt><dd>${esc(v)}</dd>`).join("");
  const body = $("#tp-body");
  body.innerHTML = `${progressBar(t)}<dl class="info">${info}</dl>
    <div><h3>Parameters</h3><pre>${esc(JSON.stringify(t.script_config, null, 2))}</pre></div>
    ${t.result != null ? `<div><h3>Result</h3><pre>${esc(JSON.stringify(t.result, null, 2))}</pre></div>` : ""}
    <div><h3>Log</h3><pre class="log">${esc(t.log.join("\n")) || "(empty)"}</pre></div>
    <div id="tp-artifacts"></div>`;
  $("#task-panel").hidden = false;
  const box = $("#tp-artifacts");
  for (const url of t.artifacts) {
    if (url.endsWith(".png")) {
      const { url: src } = await blobUrl(url);
      box.appendChild(h(`<div><h3>Screen at the failure</h3><img class="shot" alt="failure screenshot" src="${src}"></div>`));
    } else {
      const resp = await fetch(url, { headers: headers() });
      box.appendChild(h(`<div><h3>UI dump</h3><pre class="dump">${esc(await resp.text())}</pre></div>`));
    }
  }
}
$("#tp-close").addEventListener("click", () => { $("#task-panel").hidden = true; });
$("#task-panel").addEventListener("click", ev => { if (ev.target.id === "task-panel") $("#task-panel").hidden = true; });

// -- new task: a form made from the scripts' PARAMS ------------------------------------
function renderNewTask() {
  const select = $("#script-select");
  if (!select.options.length) {
    select.innerHTML = state.scripts.map(s => `<option value="${esc(s.name)}">${esc(s.name)}</option>`).join("");
    select.addEventListener("change", renderParams);
    $$("#target-mode input").forEach(r => r.addEventListener("change", renderTargets));
  }
  renderParams();
  renderTargets();
}

function renderParams() {
  const script = state.scripts.find(s => s.name === $("#script-select").value);
  if (!script) return;
  $("#script-desc").textContent = `${script.description} (${script.platforms.join(", ")})`;
  const box = $("#params");
  box.innerHTML = "";
  for (const [name, decl] of Object.entries(script.params)) box.appendChild(paramField(name, decl));
  clearErrors();
}

function paramField(name, decl) {
  const types = [].concat(decl.type);
  const label = name.replace(/_/g, " ");
  const hint = [decl.description, decl.min != null || decl.max != null ? `${decl.min ?? ""}–${decl.max ?? ""}` : ""].filter(Boolean).join(" · ");
  let input;
  const def = decl.default;
  if (decl.choices) {
    input = `<select data-param="${name}" data-type="${types[0]}">${decl.choices.map(c => `<option value="${esc(JSON.stringify(c))}" ${JSON.stringify(c) === JSON.stringify(def) ? "selected" : ""}>${esc(c)}</option>`).join("")}</select>`;
  } else if (types[0] === "bool") {
    return h(`<label class="check"><input type="checkbox" data-param="${name}" data-type="bool" ${def ? "checked" : ""}> ${esc(label)} <small>${esc(hint)}</small><div class="field-error" data-error-for="script_config.${name}"></div></label>`);
  } else if (types[0] === "int" || types[0] === "float") {
    input = `<input type="number" data-param="${name}" data-type="${types[0]}" value="${esc(def ?? "")}" ${decl.min != null ? `min="${decl.min}"` : ""} ${decl.max != null ? `max="${decl.max}"` : ""} step="${types[0] === "int" ? 1 : "any"}">`;
  } else if (types[0] === "list") {
    input = `<textarea data-param="${name}" data-type="list" placeholder="one per line">${esc((def || []).join("\n"))}</textarea>`;
  } else if (types[0] === "dict") {
    input = `<textarea data-param="${name}" data-type="dict">${esc(JSON.stringify(def ?? {}))}</textarea>`;
  } else if ((decl.max_length || 0) > 300) {
    input = `<textarea data-param="${name}" data-type="str">${esc(def ?? "")}</textarea>`;
  } else {
    input = `<input data-param="${name}" data-type="str" value="${esc(def ?? "")}">`;
  }
  return h(`<label>${esc(label)}${decl.required ? " *" : ""}${input}<small>${esc(hint)}</small><div class="field-error" data-error-for="script_config.${name}"></div></label>`);
}

function renderTargets() {
  const mode = $("#target-mode input:checked").value;
  const box = $("#targets");
  $("#multi-wrap").hidden = mode !== "serials";
  let items = [];
  if (mode === "serials") items = [...state.devices.values()].map(d => [d.serial, `${deviceName(d)} <span class="badge ${d.state}">${d.state}</span>`]);
  if (mode === "groups") items = [...new Set([...state.devices.values()].flatMap(d => d.groups))].sort().map(g => [g, esc(g)]);
  if (mode === "usernames") items = state.accounts.filter(a => a.enabled).map(a => [a.username, `@${esc(a.username)} <span class="muted">${esc(a.platform)}</span>`]);
  box.innerHTML = items.length ? items.map(([v, text]) => `<label><input type="checkbox" name="target" value="${esc(v)}"> ${text}</label>`).join("")
    : `<span class="muted">None yet.</span>`;
}

function clearErrors(root = document) {
  $$(".field-error", root).forEach(e => { if (e.dataset.errorFor) e.textContent = ""; });
  $$(".invalid", root).forEach(e => e.classList.remove("invalid"));
}

function showFieldError(form, err) {
  const field = err.field.replace(/\[\d+\]$/, "");
  const slot = $(`[data-error-for="${CSS.escape(field)}"]`, form) || $(`[data-error-for="${CSS.escape(field.split(".")[0])}"]`, form) || $(`[data-error-for="_"]`, form);
  slot.textContent = err.message;
  const input = slot.closest("label")?.querySelector("input, select, textarea");
  if (input) { input.classList.add("invalid"); input.focus(); }
}

$("#new-task").addEventListener("submit", async ev => {
  ev.preventDefault();
  const form = ev.target;
  clearErrors(form);
  $("#new-result").textContent = "";
  const config = {};
  try {
    for (const el of $$("[data-param]", form)) {
      const type = el.dataset.type, name = el.dataset.param;
      if (el.tagName === "SELECT") config[name] = JSON.parse(el.value);
      else if (type === "bool") config[name] = el.checked;
      else if (type === "int" || type === "float") { if (el.value !== "") config[name] = Number(el.value); }
      else if (type === "list") config[name] = el.value.split("\n").map(s => s.trim()).filter(Boolean);
      else if (type === "dict") config[name] = JSON.parse(el.value || "{}");
      else config[name] = el.value;
    }
  } catch (e) { return showFieldError(form, new ApiError(40001, "script_config: " + e.message)); }
  const mode = $("#target-mode input:checked").value;
  const body = { script_name: form.script_name.value, script_config: config, source: "ui",
    [mode]: $$("#targets input:checked").map(i => i.value) };
  if (mode === "serials" && form.enable_multi_account.checked) body.enable_multi_account = true;
  if (form.start_time.value.trim()) body.start_time = form.start_time.value.trim();
  for (const k of ["min_interval", "max_interval", "priority", "max_retry_count"]) if (form[k].value !== "") body[k] = Number(form[k].value);
  body.auto_retry = form.auto_retry.checked;
  try {
    const data = await api("POST", "/task", body);
    $("#new-result").textContent = `Created ${data.created_count} task(s): ${data.task_ids.slice(0, 10).join(", ")}${data.task_ids.length > 10 ? "…" : ""}`;
    toast(`${data.created_count} task(s) created`);
  } catch (e) {
    if (e.code === 40002 || e.code === 40003) e = new ApiError(40001, "script_name: " + e.message);
    showFieldError(form, e);
  }
});

// -- accounts -------------------------------------------------------------------------
async function loadAccounts() {
  state.accounts = (await api("GET", "/account")).items;
  if (state.view !== "accounts") return;
  const body = $("#account-rows");
  body.innerHTML = state.accounts.map(a => {
    const d = state.devices.get(a.serial);
    return `<tr data-user="${esc(a.username)}"><td>@${esc(a.username)}</td>
      <td><select class="bind">${[...state.devices.values()].map(x => `<option value="${esc(x.serial)}" ${x.serial === a.serial ? "selected" : ""}>${esc(deviceName(x))}</option>`).join("")}${d ? "" : `<option selected>${esc(a.serial)}</option>`}</select></td>
      <td>${esc(a.platform)}</td><td class="mono">${esc(a.package)}</td>
      <td><label class="check"><input type="checkbox" class="enabled" ${a.enabled ? "checked" : ""}> <span class="badge ${a.enabled ? "enabled" : ""}">${a.enabled ? "enabled" : "disabled"}</span></label></td>
      <td><button class="danger del">Delete</button></td></tr>`;
  }).join("") || `<tr><td colspan="6" class="empty">No account yet.</td></tr>`;
  $$("#account-rows tr[data-user]").forEach(row => {
    const user = row.dataset.user;
    row.querySelector(".bind").addEventListener("change", ev => putAccount(user, { serial: ev.target.value }));
    row.querySelector(".enabled").addEventListener("change", ev => putAccount(user, { enabled: ev.target.checked }));
    row.querySelector(".del").addEventListener("click", async () => {
      if (!confirm(`Delete @${user}?`)) return;
      await api("DELETE", `/account/${encodeURIComponent(user)}`); loadAccounts();
    });
  });
}
async function putAccount(user, body) {
  try { await api("PUT", `/account/${encodeURIComponent(user)}`, body); toast("Saved"); }
  catch (e) { toast(e.message, true); }
  loadAccounts();
}
$("#new-account").addEventListener("submit", async ev => {
  ev.preventDefault();
  const f = ev.target;
  clearErrors(f);
  try {
    await api("POST", "/account", { username: f.username.value, serial: f.serial.value, platform: f.platform.value });
    f.username.value = ""; toast("Account added"); loadAccounts();
  } catch (e) { $("[data-error-for=account]", f).textContent = e.message; }
});

// -- materials ------------------------------------------------------------------------
async function loadMaterials() {
  const q = new URLSearchParams({ page_size: 100 });
  if ($("#mat-kind").value) q.set("kind", $("#mat-kind").value);
  if ($("#mat-tag").value.trim()) q.set("tag", $("#mat-tag").value.trim());
  if ($("#mat-unused").checked) q.set("unused", "1");
  const [data, accounts] = await Promise.all([api("GET", "/material?" + q), api("GET", "/account")]);
  state.accounts = accounts.items;
  const users = state.accounts.map(a => a.username);
  $("#up-user").innerHTML = `<option value="">any account</option>` + users.map(u => `<option>${esc(u)}</option>`).join("");
  $("#mat-count").textContent = `${data.items.length} of ${data.total}`;
  const box = $("#materials");
  box.innerHTML = "";
  for (const m of data.items) box.appendChild(materialCard(m, users));
  if (!data.items.length) box.innerHTML = `<p class="empty">No material${q.toString().includes("&") ? " matches" : " yet: drop files above"}.</p>`;
}
const reloadMaterials = debounce(() => state.view === "materials" ? loadMaterials() : Promise.resolve(), 400);

function size(bytes) {
  return bytes < 1048576 ? `${Math.max(1, Math.round(bytes / 1024))} KB` : `${(bytes / 1048576).toFixed(1)} MB`;
}

function materialCard(m, users) {
  const card = h(`<div class="mat" data-id="${m.id}">
    <div class="thumb" title="preview">${m.kind === "video" ? "▶ video" : "image"}</div>
    <div class="meta"><div class="name" title="${esc(m.name)}">${esc(m.name)}</div>
      <div class="muted">${m.kind} · ${size(m.size)} · used ${m.used_count}×${m.reserved_by ? ` · held by task #${m.reserved_by}` : ""}</div>
      <input class="tags" value="${esc(m.tags.join(", "))}" placeholder="tags">
      <select class="user"><option value="">any account</option>${users.map(u => `<option ${u === m.username ? "selected" : ""}>${esc(u)}</option>`).join("")}</select>
      <input class="caption" value="${esc(m.caption)}" placeholder="caption">
      <div class="toolbar"><span class="spacer"></span><button class="danger del">Delete</button></div></div></div>`);
  const thumb = card.querySelector(".thumb");
  const preview = async () => {
    const { url } = await blobUrl(m.url);
    thumb.innerHTML = m.kind === "video" ? `<video src="${url}" controls muted></video>` : `<img src="${url}" alt="${esc(m.name)}">`;
  };
  if (m.kind === "image" && m.size < 4 * 1048576) preview().catch(() => {});
  else thumb.addEventListener("click", () => preview().catch(e => toast(e.message, true)), { once: true });
  const save = async body => {
    try { await api("PUT", `/material/${m.id}`, body); toast("Saved"); } catch (e) { toast(e.message, true); }
  };
  card.querySelector(".tags").addEventListener("change", ev => save({ tags: ev.target.value }));
  card.querySelector(".user").addEventListener("change", ev => save({ username: ev.target.value || null }));
  card.querySelector(".caption").addEventListener("change", ev => save({ caption: ev.target.value }));
  card.querySelector(".del").addEventListener("click", async () => {
    if (!confirm(`Delete ${m.name}?`)) return;
    try { await api("DELETE", `/material/${m.id}`); card.remove(); } catch (e) { toast(e.message, true); }
  });
  return card;
}

function uploadFiles(files) {
  if (!files.length) return;
  const form = new FormData();
  for (const f of files) form.append("file", f, f.name);
  form.append("tags", $("#up-tags").value);
  form.append("username", $("#up-user").value);
  form.append("caption", $("#up-caption").value);
  const bar = $("#up-progress");
  const err = $("[data-error-for=file]");
  err.textContent = "";
  bar.hidden = false; bar.className = "progress big";
  const xhr = new XMLHttpRequest();
  xhr.open("POST", API + "/material");
  if (state.key) xhr.setRequestHeader("X-API-Key", state.key);
  xhr.upload.onprogress = ev => {
    const pct = ev.lengthComputable ? Math.round(100 * ev.loaded / ev.total) : 0;
    bar.querySelector("i").style.width = pct + "%";
    bar.querySelector("span").textContent = `uploading ${files.length} file(s): ${pct}%`;
  };
  xhr.onload = () => {
    let json = {};
    try { json = JSON.parse(xhr.responseText); } catch (e) { json = { code: xhr.status * 100, message: `HTTP ${xhr.status}` }; }
    if (json.code === 0) {
      bar.className = "progress big completed";
      bar.querySelector("i").style.width = "100%";
      bar.querySelector("span").textContent = `${json.data.items.length} file(s) in the library`;
      loadMaterials();
    } else {
      bar.className = "progress big failed";
      bar.querySelector("span").textContent = "upload refused";
      err.textContent = json.message;
    }
  };
  xhr.onerror = () => { bar.className = "progress big failed"; err.textContent = "upload interrupted"; };
  xhr.send(form);
}
const drop = $("#drop");
drop.addEventListener("click", () => $("#file-input").click());
drop.addEventListener("keydown", ev => { if (ev.key === "Enter") $("#file-input").click(); });
$("#file-input").addEventListener("change", ev => { uploadFiles([...ev.target.files]); ev.target.value = ""; });
drop.addEventListener("dragover", ev => { ev.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", ev => { ev.preventDefault(); drop.classList.remove("over"); uploadFiles([...ev.dataTransfer.files]); });
["#mat-kind", "#mat-unused"].forEach(s => $(s).addEventListener("change", loadMaterials));
$("#mat-tag").addEventListener("change", loadMaterials);

// -- live events ----------------------------------------------------------------------
async function listen() {
  const live = $("#live");
  for (;;) {
    try {
      const q = state.lastEvent ? `?after=${state.lastEvent}` : "";
      const resp = await fetch(`${API}/events${q}`, { headers: headers() });
      if (resp.status === 401) { askKey("API key missing or wrong"); await keyReady(); continue; }
      if (!resp.ok || !resp.body) throw new Error("HTTP " + resp.status);
      live.classList.add("on"); live.querySelector("span").textContent = "live";
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          handleEvent(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
        }
      }
    } catch (e) { /* reconnect below */ }
    live.classList.remove("on"); live.querySelector("span").textContent = "reconnecting";
    await new Promise(r => setTimeout(r, 2000));
  }
}

function handleEvent(block) {
  const ev = {};
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const at = line.indexOf(": ");
    const [k, v] = at < 0 ? [line, ""] : [line.slice(0, at), line.slice(at + 2)];
    ev[k] = v;
  }
  if (!ev.event) return;
  if (ev.id) state.lastEvent = ev.id;
  const data = ev.data ? JSON.parse(ev.data) : {};
  if (ev.event === "reset") return reloadAll();
  if (ev.event === "task") onTaskEvent(data);
  if (ev.event === "device") onDeviceEvent(data);
  if (ev.event === "account") { if (state.view === "accounts") loadAccounts(); }
  if (ev.event === "material") reloadMaterials();
}

function onTaskEvent(t) {
  loadStats();
  if (!t.deleted) {
    state.runningTasks = state.runningTasks || new Map();
    if (t.status === 1) state.runningTasks.set(t.id, t); else state.runningTasks.delete(t.id);
  }
  if (state.view === "tasks" && (t.deleted || !updateTaskRow(t))) reloadTasks();
  const d = state.devices.get(t.serial);
  if (d && d.running_task_id === t.id) {
    const tile = $(`#grid [data-serial="${CSS.escape(t.serial)}"]`);
    if (tile) fillTile(tile, d);
    if (state.opened === t.serial) fillPhonePanel();
  }
}

function onDeviceEvent(data) {
  if (data.deleted) { state.devices.delete(data.serial); renderGrid(); return; }
  const d = state.devices.get(data.serial);
  if (!d) { loadDevices(); return; }
  Object.assign(d, data);
  renderGrid();
  screens.refresh();
  if (state.opened === data.serial) fillPhonePanel();
}

async function reloadAll() {
  await Promise.all([loadDevices(), loadStats(), api("GET", "/script").then(d => { state.scripts = d.items; })]);
  state.accounts = (await api("GET", "/account")).items;
  const running = await api("GET", "/task?status=1&page_size=100");
  state.runningTasks = new Map(running.items.map(t => [t.id, t]));
  renderGrid();
  show(state.view);
}

// -- start ----------------------------------------------------------------------------
async function start() {
  screens.init();
  for (;;) {
    try { await api("GET", "/health"); break; }
    catch (e) { if (e.code === 40101) await keyReady(); else { toast("Server not answering: " + e.message, true); await new Promise(r => setTimeout(r, 3000)); } }
  }
  state.view = location.hash.slice(1) || "phones";
  await reloadAll();
  listen();
}
start();
