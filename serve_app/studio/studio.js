// The studio: a client of the public API, nothing more. Progress comes from each job's Server-Sent Events, read
// with fetch (an EventSource cannot send the API key); the service worker adds the key to media requests.
"use strict";

const BASE = location.pathname.replace(/\/studio\/.*$/, "");  // the app's route prefix, if any
const KEY_STORE = "wan-api-key";
const ACTIVE = new Set(["queued", "in_progress"]);
const $ = (selector, root = document) => root.querySelector(selector);
const cards = new Map();  // video id -> its card
let key = localStorage.getItem(KEY_STORE) || "";

function authorized(extra = {}) {
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

class APIError extends Error {
  constructor(message, status, param) { super(message); this.status = status; this.param = param; }
}

async function api(method, path, body) {
  const init = { method, headers: authorized() };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
  const response = await fetch(BASE + path, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = data?.error?.message || `HTTP ${response.status}`;
    throw new APIError(response.status === 401 ? `${message}: enter an API key above` : message,
                       response.status, data?.error?.param);
  }
  return data;
}

async function saveKey(value) {
  key = value.trim();
  localStorage.setItem(KEY_STORE, key);
  if (window.caches) await (await caches.open("wan-studio")).put(`${BASE}/studio/key`, new Response(key));
  $("#key-state").textContent = key ? "key saved in this browser" : "no key";
}

// --- progress over SSE ------------------------------------------------------------------------------------------

function* parseEvents(buffer) {  // complete events in the buffer; what is left stays for the next chunk
  let end;
  while ((end = buffer.text.indexOf("\n\n")) >= 0) {
    const block = buffer.text.slice(0, end);
    buffer.text = buffer.text.slice(end + 2);
    const event = { event: "message", data: "", id: null };
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue;  // a keepalive comment
      const at = line.indexOf(":");
      const [field, value] = at < 0 ? [line, ""] : [line.slice(0, at), line.slice(at + 1).replace(/^ /, "")];
      if (field === "data") event.data += value;
      else if (field === "event" || field === "id") event[field] = value;
    }
    if (event.data) yield event;
  }
}

async function follow(id) {
  let lastId = null;
  for (let failures = 0; failures < 5 && cards.has(id);) {
    try {
      const response = await fetch(`${BASE}/v1/videos/${id}/events`,
                                   { headers: authorized(lastId ? { "Last-Event-ID": lastId } : {}) });
      if (response.status === 204 || response.status === 404) return;
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      const buffer = { text: "" };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer.text = (buffer.text + value).replace(/\r\n?/g, "\n");
        for (const event of parseEvents(buffer)) {
          lastId = event.id || lastId;
          failures = 0;
          const data = JSON.parse(event.data);
          if (event.event.endsWith(".progress")) showProgress(id, data);
          else { render(data); return; }
        }
      }
    } catch (error) {
      failures += 1;
      await new Promise((resolve) => setTimeout(resolve, 500 * 2 ** failures));  // back off, then resume
    }
  }
}

// --- the gallery ------------------------------------------------------------------------------------------------

function contentURL(id, variant = "video") {
  return `${BASE}/v1/videos/${id}/content${variant === "video" ? "" : `?variant=${variant}`}`;
}

function card(id) {
  if (!cards.has(id)) {
    const node = $("#card").content.firstElementChild.cloneNode(true);
    node.dataset.id = id;
    $(".thumb img", node).addEventListener("error", (e) => e.target.removeAttribute("src"));
    $(".play", node).addEventListener("click", () => play(id));
    $(".download", node).addEventListener("click", (e) => { e.preventDefault(); download(id); });
    $(".cancel", node).addEventListener("click", () => act(id, "POST", `/v1/videos/${id}/cancel`));
    $(".delete", node).addEventListener("click", () => act(id, "DELETE", `/v1/videos/${id}`, true));
    cards.set(id, node);
  }
  return cards.get(id);
}

function showProgress(id, p) {
  const node = card(id);
  node.className = `card ${p.status}`;
  $(".badge", node).className = `badge ${p.status}`;
  $(".badge", node).textContent = p.status === "queued" && p.queue_position ? `queued #${p.queue_position}`
    : p.status.replace("_", " ");
  $(".bar div", node).style.width = `${p.progress}%`;
  $(".stage", node).textContent = p.total_steps
    ? `step ${p.step} of ${p.total_steps}${p.stage ? ` · ${p.stage}` : ""}` : (p.stage || "");
}

function render(video) {
  const node = card(video.id);
  const done = video.status === "completed";
  showProgress(video.id, video);
  $(".prompt", node).textContent = video.prompt || "";
  $(".prompt", node).title = video.prompt || "";
  $(".meta", node).textContent = `${video.model} · ${video.task} · ${video.size} · ${video.seconds} s · seed ${video.seed}`;
  if (done) $(".stage", node).textContent = `${video.num_frames} frames at ${video.fps} fps`
    + (video.processing_time ? ` · made in ${video.processing_time.toFixed(1)} s` : "");
  const error = $(".error", node);
  error.hidden = !video.error;
  error.textContent = video.error ? video.error.message : "";
  const img = $(".thumb img", node);
  if (done && !img.getAttribute("src")) img.src = contentURL(video.id, "thumbnail");
  $(".play", node).hidden = !done;
  $(".download", node).hidden = !done;
  $(".cancel", node).hidden = !ACTIVE.has(video.status);
  return node;
}

async function act(id, method, path, remove = false) {
  try {
    const video = await api(method, path);
    if (remove) { cards.get(id)?.remove(); cards.delete(id); } else render(video);
  } catch (error) {
    const node = $(".error", card(id));
    node.hidden = false;
    node.textContent = error.message;
  }
}

function play(id) {
  const video = $("#player-video");
  video.src = contentURL(id);  // the browser asks for byte ranges; the service worker adds the key
  $("#player").showModal();
  video.play().catch(() => {});
}

async function download(id) {
  const response = await fetch(contentURL(id), { headers: authorized() });
  const link = Object.assign(document.createElement("a"),
                             { href: URL.createObjectURL(await response.blob()), download: `${id}.mp4` });
  link.click();
  URL.revokeObjectURL(link.href);
}

async function loadGallery() {
  const shown = $("#gallery-error");
  try {
    const { data } = await api("GET", "/v1/videos?limit=50");
    shown.hidden = true;
    $("#gallery").replaceChildren(...data.map(render));
    data.filter((v) => ACTIVE.has(v.status)).forEach((v) => follow(v.id));
  } catch (error) {
    shown.hidden = false;
    shown.textContent = error.message;
  }
}

// --- the form ---------------------------------------------------------------------------------------------------

let models = [];

async function loadModels() {
  try {
    models = (await api("GET", "/v1/models")).data;
  } catch { return; }
  const select = $("#model");
  select.replaceChildren(new Option("auto", ""), ...models.map((m) => new Option(`${m.id} (${m.tasks.join(", ")})`, m.id)));
  showSizes();
}

function showSizes() {
  const chosen = models.find((m) => m.id === $("#model").value) || models[0];
  const sizes = chosen ? Object.entries(chosen.sizes) : [];
  $("#sizes").replaceChildren(...sizes.map(([name, wh]) => new Option(`${name} (${wh})`, wh)));
}

function formData() {
  const form = new FormData();
  for (const [name, value] of new FormData($("#create"))) {
    if (value instanceof File ? value.size > 0 : value.trim() !== "") form.append(name, value);
  }
  return form;
}

function showFormError(error) {
  const shown = $("#form-error");
  shown.hidden = false;
  shown.textContent = error.message;
  const field = error.param && $(`#create [name="${error.param.split(/[.[]/)[0]}"]`);
  if (field) {
    (field.type === "file" ? field.closest(".drop") : field).classList.add("invalid");
    field.focus?.();
  }
}

async function submit(event) {
  event.preventDefault();
  document.querySelectorAll("#create .invalid").forEach((n) => n.classList.remove("invalid"));
  $("#form-error").hidden = true;
  const button = $("#submit");
  button.disabled = true;
  try {
    const video = await api("POST", "/v1/videos", formData());
    $("#gallery").prepend(render(video));
    follow(video.id);
  } catch (error) {
    showFormError(error);
  } finally {
    button.disabled = false;
  }
}

function setUpDrops() {
  for (const zone of document.querySelectorAll(".drop")) {
    const input = $("input", zone);
    const show = () => {
      zone.classList.toggle("has", input.files.length > 0);
      $("span", zone).textContent = input.files[0]?.name || (input.accept.startsWith("image") ? "drop an image" : "drop a clip");
    };
    input.addEventListener("change", show);
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      input.files = e.dataTransfer.files;
      show();
    });
  }
}

async function start() {
  if ("serviceWorker" in navigator) {
    await navigator.serviceWorker.register(`${BASE}/studio/sw.js`).catch(() => {});
  }
  $("#api-key").value = key;
  await saveKey(key);
  $("#key-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    await saveKey($("#api-key").value);
    await Promise.all([loadModels(), loadGallery()]);
  });
  $("#create").addEventListener("submit", submit);
  $("#model").addEventListener("change", showSizes);
  $("#refresh").addEventListener("click", loadGallery);
  setUpDrops();
  await Promise.all([loadModels(), loadGallery()]);
  document.body.dataset.ready = "true";
}

start();
