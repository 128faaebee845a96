// emovec dashboard: one websocket, replies drawn token by token as their scores arrive.
"use strict";

const PALETTE = ["#d62728", "#9467bd", "#e6a100", "#1f77b4", "#2ca02c", "#17becf",
  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#ff7f0e", "#393b79", "#637939", "#843c39",
  "#7b4173", "#3182bd"];
const $ = (id) => document.getElementById(id);
const state = { info: null, socket: null, busy: false, replies: {}, turn: null };
// The per-launch secret the server printed in the page's URL; every API call presents it.
const TOKEN = new URLSearchParams(location.search).get("token") || "";
const api = (path, options = {}) =>
  fetch(path, { ...options, headers: { ...(options.headers || {}), "X-Emovec-Token": TOKEN } });

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

function colourOf(emotion) {  // one colour per emotion of the vector file, everywhere
  const all = state.info ? state.info.emotions : [];
  return PALETTE[Math.max(0, all.indexOf(emotion)) % PALETTE.length];
}

function heat(z) {  // red above the baseline, blue below; full colour at |z| = 4
  const a = Math.min(1, Math.abs(z) / 4).toFixed(2);
  return z >= 0 ? `rgba(214,39,40,${a})` : `rgba(31,119,180,${a})`;
}

function setStatus(text, cls) { const s = $("status"); s.textContent = text; s.className = "status " + cls; }

function setBusy(busy) {
  state.busy = busy; $("send").disabled = busy; $("replay").disabled = busy;
  setStatus(busy ? "generating…" : "ready", busy ? "busy" : "ready");
}

// ---- controls --------------------------------------------------------------------------

function emotionSelect(value) {
  const select = el("select");
  for (const e of state.info.emotions) select.append(el("option", { value: e, text: e }));
  select.value = value;
  return select;
}

function addSteerRow(emotion = "calm", strength = 0) {
  const value = el("span", { text: Number(strength).toFixed(2) });
  const range = el("input", { type: "range", min: "-1", max: "1", step: "0.05",
    value: String(strength), class: "steer-strength" });
  range.addEventListener("input", () => { value.textContent = Number(range.value).toFixed(2); });
  const remove = el("button", { type: "button", text: "×", title: "remove" });
  const row = el("div", { class: "steer-row" }, emotionSelect(
    state.info.emotions.includes(emotion) ? emotion : state.info.emotions[0]), range, value, remove);
  remove.addEventListener("click", () => row.remove());
  $("steer-rows").append(row);
}

function addRuleRow(emotion, kind = "level", threshold = 3, action = "") {
  const kindSel = el("select");
  for (const k of state.info.rule_kinds) kindSel.append(el("option", { value: k, text: k }));
  kindSel.value = kind;
  const thr = el("input", { type: "number", step: "0.5", value: String(threshold), title: "z threshold" });
  const act = el("select", { class: "rule-action" });
  for (const [v, t] of [["", "record"], ["stop", "stop"], ["steer", "steer"]]) {
    act.append(el("option", { value: v, text: t }));
  }
  act.value = action;
  // The counter-steer a "steer" action applies from the token after the firing.
  const counterEmotion = emotionSelect(state.info.emotions.includes("calm") ? "calm" : state.info.emotions[0]);
  counterEmotion.classList.add("counter-emotion");
  const counterStrength = el("input", { type: "number", step: "0.05", value: "0.3",
    class: "counter-strength", title: "counter-steer strength" });
  const counter = el("span", { class: "counter-steer" }, "on firing, steer", counterEmotion, "+", counterStrength);
  const showCounter = () => { counter.hidden = act.value !== "steer"; };
  act.addEventListener("change", showCounter);
  showCounter();
  const remove = el("button", { type: "button", text: "×", title: "remove" });
  const row = el("div", { class: "rule-row" }, emotionSelect(emotion), kindSel, thr, act, remove, counter);
  remove.addEventListener("click", () => row.remove());
  $("rule-rows").append(row);
}

function watched() {
  return [...document.querySelectorAll("#watch-list input:checked")].map((i) => i.value);
}

function steering() {
  const out = {};
  for (const row of document.querySelectorAll(".steer-row")) {
    const s = Number(row.querySelector("input").value);
    if (s) out[row.querySelector("select").value] = (out[row.querySelector("select").value] || 0) + s;
  }
  return out;
}

function rules() {
  return [...document.querySelectorAll(".rule-row")].map((row) => {
    const [emotion, kind] = row.querySelectorAll("select");
    const action = row.querySelector(".rule-action").value || null;
    const rule = { emotion: emotion.value, kind: kind.value,
      threshold: Number(row.querySelector("input").value), window: 6, action };
    if (action === "steer") {
      rule.steer = { [row.querySelector(".counter-emotion").value]:
        Number(row.querySelector(".counter-strength").value) };
    }
    return rule;
  });
}

// ---- drawing replies ---------------------------------------------------------------------

function newTurn(prompt, sideBySide) {
  const turn = el("div", { class: "turn" }, el("div", { class: "user-message", text: prompt }));
  const replies = el("div", { class: "replies" + (sideBySide ? " side-by-side" : "") });
  turn.append(replies);
  $("turns").append(turn);
  $("turns").scrollTop = $("turns").scrollHeight;
  state.turn = replies;
  return replies;
}

function startReply(label, emotions, steer) {
  const tokens = el("div", { class: "tokens" });
  const names = el("div", { class: "heatmap-names" });
  names.style.gridTemplateRows = `repeat(${emotions.length}, 10px)`;
  for (const e of emotions) names.append(el("div", { text: e, style: `color:${colourOf(e)}` }));
  const grid = el("div", { class: "heatmap" });
  grid.style.gridTemplateRows = `repeat(${emotions.length}, 10px)`;
  const canvas = el("canvas", { class: "timeline", width: "600", height: "140" });
  const legend = el("div", { class: "timeline-legend" });
  for (const e of emotions) {
    legend.append(el("span", { class: "key", style: `color:${colourOf(e)}` },
      el("i", { style: `background:${colourOf(e)}` }), e));
  }
  legend.append(el("span", { class: "key threshold" }, el("i"), "z = 3"));
  const steerText = Object.entries(steer || {}).map(([e, s]) => `${e} ${s >= 0 ? "+" : ""}${s}`).join(", ");
  const box = el("div", { class: "reply", "data-label": label },
    el("div", { class: "reply-label", text: label + (steerText ? ` (steered: ${steerText})` : "") }),
    tokens, el("div", { class: "heatmap-wrap" }, names, grid), canvas, legend,
    el("div", { class: "reply-foot" }));
  (state.turn || newTurn("(replay)", false)).append(box);
  const reply = { box, tokens, grid, canvas, emotions, z: [], spans: [] };
  state.replies[label] = reply;
  return reply;
}

function addToken(reply, record) {
  const z = reply.emotions.map((e) => record.z[e]);
  let top = 0;
  z.forEach((v, i) => { if (v > z[top]) top = i; });
  const span = el("span", { class: "token", "data-index": String(record.index) });
  span.textContent = record.piece;
  const base = colourOf(reply.emotions[top]);
  const alpha = Math.max(0, Math.min(1, z[top] / 4));
  span.style.background = base + Math.round(alpha * 200).toString(16).padStart(2, "0");
  span.title = reply.emotions.map((e, i) => `${e} z ${z[i].toFixed(2)}`).join("\n");
  if (record.alerts && record.alerts.length) span.classList.add("fired");
  reply.tokens.append(span);
  reply.spans.push(span);
  reply.emotions.forEach((e, i) => {
    reply.grid.append(el("div", { class: "cell", style: `background:${heat(z[i])}`,
      title: `${JSON.stringify(record.piece)} ${e} z ${z[i].toFixed(2)}` }));
  });
  reply.z.push(z);
  drawTimeline(reply);
  $("turns").scrollTop = $("turns").scrollHeight;  // follow the newest token
  for (const alert of record.fired || []) logAlert(alert, record.label || "");
}

// Plot area inside the timeline canvas: room on the left and below for the axes' labels.
const PLOT = { left: 36, right: 8, top: 6, bottom: 28, lo: -2, hi: 6 };

function drawAxes(g, w, h, n, dx, y) {
  const { left, top } = PLOT;
  g.font = "10px system-ui, sans-serif"; g.fillStyle = "#6b6b70"; g.lineWidth = 1;
  g.textAlign = "right"; g.textBaseline = "middle";
  for (let v = PLOT.lo; v <= PLOT.hi; v += 2) {  // z ticks and faint grid lines
    g.strokeStyle = v === 0 ? "#bbb" : "#eee";
    g.beginPath(); g.moveTo(left, y(v)); g.lineTo(left + w, y(v)); g.stroke();
    g.fillText(String(v), left - 4, y(v));
  }
  g.setLineDash([4, 3]); g.strokeStyle = "#f3b0b0";  // the usual alert level
  g.beginPath(); g.moveTo(left, y(3)); g.lineTo(left + w, y(3)); g.stroke(); g.setLineDash([]);
  g.strokeStyle = "#999";
  g.beginPath(); g.moveTo(left, top); g.lineTo(left, top + h); g.lineTo(left + w, top + h); g.stroke();
  const step = Math.max(1, Math.ceil(n / 10 / 5) * 5);  // token ticks at multiples of 5
  g.textAlign = "center"; g.textBaseline = "top";
  for (let t = 0; t < n; t += step) g.fillText(String(t), left + t * dx + dx / 2, top + h + 3);
  g.fillText("token index", left + w / 2, top + h + 15);
  g.save(); g.translate(9, top + h / 2); g.rotate(-Math.PI / 2);
  g.textBaseline = "middle"; g.fillText("z-score", 0, 0); g.restore();
}

function drawTimeline(reply) {
  const c = reply.canvas, g = c.getContext("2d");
  if (c.clientWidth && c.width !== c.clientWidth) c.width = c.clientWidth;  // crisp text
  const w = c.width - PLOT.left - PLOT.right, h = c.height - PLOT.top - PLOT.bottom;
  const { lo, hi } = PLOT;
  const y = (v) => PLOT.top + h - ((Math.max(lo, Math.min(hi, v)) - lo) / (hi - lo)) * h;
  g.clearRect(0, 0, c.width, c.height);
  const n = Math.max(reply.z.length, 24), dx = w / n;
  drawAxes(g, w, h, n, dx, y);
  reply.emotions.forEach((e, i) => {
    g.strokeStyle = colourOf(e); g.lineWidth = 1.5; g.beginPath();
    reply.z.forEach((row, t) => {
      const px = PLOT.left + t * dx + dx / 2;
      t ? g.lineTo(px, y(row[i])) : g.moveTo(px, y(row[i]));
    });
    g.stroke();
  });
}

function finishReply(reply, record) {
  for (const h of record.hidden || []) {
    for (let t = h.start; t <= h.end && t < reply.spans.length; t++) reply.spans[t].classList.add("hidden-flag");
    $("hidden-log").append(el("li", { class: "hidden",
      text: `${record.label}: ${h.emotion} z ${h.peak_z.toFixed(1)} at tokens ${h.start}-${h.end}, text reads ${h.text_sentiment.toFixed(2)}` }));
  }
  reply.box.querySelector(".reply-foot").textContent =
    `${record.n_tokens} tokens, stopped by ${record.stopped_by}` +
    (record.sampling && record.sampling.temperature > 0
      ? ` · temperature ${record.sampling.temperature}, seed ${record.sampling.seed}` : "") +
    (record.trace ? ` · trace ${record.trace}` : "");
}

function logAlert(alert, label) {
  $("alert-log").append(el("li", { class: "alert",
    text: `${label}: ${alert.rule} at token ${alert.fired_at} (z ${alert.peak_z.toFixed(2)})` +
      (alert.action ? ` → ${alert.action}` : "") + counterSteerText(alert.steer) }));
}

function counterSteerText(steer) {
  const parts = Object.entries(steer || {}).map(([e, s]) => ` ${e} ${s >= 0 ? "+" : ""}${s}`);
  return parts.join(",");
}

function showError(text) {
  const target = state.turn || $("turns");
  target.append(el("div", { class: "error", text: "error: " + text }));
}

// ---- server traffic ----------------------------------------------------------------------

function onMessage(event) {
  const msg = JSON.parse(event.data);
  if (msg.type === "start") startReply(msg.label, msg.emotions, msg.steering);
  else if (msg.type === "token") addToken(state.replies[msg.label], msg);
  else if (msg.type === "reply") { finishReply(state.replies[msg.label], msg); refreshTraces(); }
  else if (msg.type === "done") setBusy(false);
  else if (msg.type === "error") { showError(msg.message); setBusy(false); }
}

function connect() {
  const ws = new WebSocket(
    `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws?token=${encodeURIComponent(TOKEN)}`);
  ws.onopen = () => setBusy(false);
  ws.onmessage = onMessage;
  ws.onclose = () => { setStatus("offline: reconnecting", ""); setTimeout(connect, 1500); };
  state.socket = ws;
}

function send(event) {
  event.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt || state.busy || !state.socket || state.socket.readyState !== 1) return;
  const steer = steering();
  const compare = $("compare").checked && Object.keys(steer).length > 0;
  newTurn(prompt, compare);
  state.replies = {};
  setBusy(true);
  state.socket.send(JSON.stringify({ type: "generate", prompt, max_new_tokens: Number($("max-tokens").value),
    emotions: watched(), steering: steer, positions: $("steer-positions").value, rules: rules(),
    chat: $("chat-mode").checked, compare,
    temperature: Number($("temperature").value) || 0, seed: Math.trunc(Number($("seed").value)) || 0 }));
}

async function refreshTraces() {
  const res = await api("/api/traces");
  const { traces } = await res.json();
  const list = $("trace-list"), keep = list.value;
  list.replaceChildren(...traces.map((t) => el("option", { value: t, text: t })));
  if (traces.includes(keep)) list.value = keep;
}

async function replay() {
  const name = $("trace-list").value;
  if (!name) return;
  const res = await api(`/api/traces/${encodeURIComponent(name)}`);
  const data = await res.json();
  if (data.error) { showError(data.error); return; }
  const replyInfo = data.replies[0] || {};
  newTurn(`replay of ${name}` + (replyInfo.prompt ? `: ${replyInfo.prompt}` : ""), false);
  state.replies = {};
  const reply = startReply("replay", data.meta.emotions, replyInfo.steering);
  for (const record of data.tokens.filter((t) => t.row === 0)) {
    addToken(reply, { ...record, fired: [] });
    await new Promise((r) => setTimeout(r, 25));
  }
  for (const a of replyInfo.alerts || []) logAlert(a, "replay");
  if (replyInfo.text !== undefined) finishReply(reply, { ...replyInfo, label: "replay", trace: name });
}

function showWatched(chip, box) {  // a ticked emotion stands out, and the header counts them
  chip.classList.toggle("on", box.checked);
  chip.title = box.checked ? "watched: untick to stop" : "not watched: tick to watch";
  $("watch-count").textContent = `(${watched().length} on)`;
}

async function init() {
  state.info = await (await api("/api/info")).json();
  const info = state.info;
  $("model-info").textContent = `${info.model} · reading layer ${info.layer} · steering layer ${info.steer_layer} · baseline: ${info.baseline.source}`;
  for (const e of info.emotions) {
    const box = el("input", { type: "checkbox", value: e });
    box.checked = info.watch.includes(e);
    const chip = el("label", { style: `color:${colourOf(e)}` }, box, " " + e);
    box.addEventListener("change", () => showWatched(chip, box));
    $("watch-list").append(chip);
    showWatched(chip, box);
  }
  for (const p of info.positions) $("steer-positions").append(el("option", { value: p, text: p }));
  addSteerRow(info.emotions.includes("calm") ? "calm" : info.emotions[0], 0);
  addRuleRow(info.watch[0], "level", 3, "");
  $("add-steer").addEventListener("click", () => addSteerRow(info.emotions[0], 0));
  $("add-rule").addEventListener("click", () => addRuleRow(info.watch[0]));
  $("chat-form").addEventListener("submit", send);
  $("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) send(e); });
  $("replay").addEventListener("click", replay);
  $("refresh-traces").addEventListener("click", refreshTraces);
  await refreshTraces();
  connect();
}

init();
