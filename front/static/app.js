// ARR-COC web page: choose an image, ask a question, stream the answer from
// /answer_stream and show the relevance heatmap from /relevance side by side.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "arr-coc-api-key";
const USER_STORAGE = "arr-coc-user";
const DEFAULT_VARIANT = "arr-coc-25"; // until /v1/models names the deployment's own
let image = null; // the chosen File (or pasted Blob)

// A refused request: {status, kind, field, detail} from the service's error body.
class ApiError extends Error {
  constructor(status, body) {
    super(body.detail || body.error || `HTTP ${status}`);
    Object.assign(this, { status, kind: body.error || "error", field: body.field || null, detail: body.detail || "" });
  }
}

async function failure(response) {
  const text = await response.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = { error: response.statusText || "error", detail: text.slice(0, 300) };
  }
  if (body.error && typeof body.error === "object") { // OpenAI's shape, from /v1/...
    body = { error: body.error.code || body.error.type, detail: body.error.message };
  }
  return new ApiError(response.status, body);
}

// This browser's id for the traffic split (sticky per caller when there is no API key).
function browserId() {
  let id = localStorage.getItem(USER_STORAGE);
  if (!id) {
    id = self.crypto?.randomUUID?.() || `${Date.now()}-${Math.random().toString(16).slice(2)}`;
    localStorage.setItem(USER_STORAGE, id);
  }
  return id;
}

function headers() {
  const key = $("api-key").value.trim();
  const user = { "X-Arr-Coc-User": browserId() };
  return key ? { ...user, Authorization: `Bearer ${key}` } : user;
}

// --- errors ---------------------------------------------------------------
function clearError() { $("error").hidden = true; $("error").replaceChildren(); }

function showError(error, where) {
  const line = document.createElement("p");
  const key = error instanceof ApiError ? `${error.status} ${error.kind}` : String(error.message);
  if ([...$("error").children].some((p) => p.dataset.key === key)) return; // both routes refused alike
  line.dataset.key = key;
  if (error instanceof ApiError) {
    const field = error.field ? ` (field: ${error.field})` : "";
    line.textContent = `${where}: ${error.status} ${error.kind}${field}: ${error.detail}`;
  } else {
    line.textContent = `${where}: ${error.message || error}`;
  }
  $("error").append(line);
  $("error").hidden = false;
}

// --- the image: file input, drop, paste ---------------------------------------
function setImage(file) {
  if (!file || !file.type.startsWith("image/")) {
    clearError();
    return showError(new Error("that is not an image file"), "image");
  }
  image = file;
  const preview = $("preview");
  if (preview.src.startsWith("blob:")) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  const size = file.size < 10240 ? `${file.size} bytes` : `${Math.round(file.size / 1024)} KiB`;
  $("preview-caption").textContent = `${file.name || "pasted image"} (${size})`;
}

$("image-input").addEventListener("change", (e) => setImage(e.target.files[0]));
document.addEventListener("dragover", (e) => { e.preventDefault(); $("drop-zone").classList.add("over"); });
document.addEventListener("dragleave", () => $("drop-zone").classList.remove("over"));
document.addEventListener("drop", (e) => {
  e.preventDefault(); // keep the browser from opening the file
  $("drop-zone").classList.remove("over");
  if (e.dataTransfer.files.length) setImage(e.dataTransfer.files[0]);
});
document.addEventListener("paste", (e) => {
  const item = [...(e.clipboardData?.items || [])].find((i) => i.kind === "file" && i.type.startsWith("image/"));
  if (item) { e.preventDefault(); setImage(item.getAsFile()); }
});

// --- the API key, kept for this tab only ----------------------------------------
$("api-key").value = sessionStorage.getItem(KEY_STORAGE) || "";
$("variant").addEventListener("change", showVariantBudget);
$("api-key").addEventListener("change", () => {
  const key = $("api-key").value.trim();
  key ? sessionStorage.setItem(KEY_STORAGE, key) : sessionStorage.removeItem(KEY_STORAGE);
  loadVariants();
});

// --- variants from /v1/models ------------------------------------------------
let budgets = {}; // variant id -> its own budget (a count, a ratio or "auto")

// An arr-coc variant of a model with no trained scorer selects with random weights: its option says so.
function optionLabel(model) {
  return model.arr_coc?.scorer === "untrained" ? `${model.id} (untrained scorer)` : model.id;
}

// The deployment's notice (no trained scorer, and the command that trains one), above the form.
function showNotice(text) {
  $("notice").textContent = text || "";
  $("notice").hidden = !text;
}

// A deployment with a traffic split: requests that name no variant get their caller's side of it.
function splitLabel(traffic) {
  return Object.entries(traffic).map(([id, share]) => `${id} ${(100 * share).toFixed(0)}%`).join(" · ");
}

function showTraffic(traffic) {
  $("traffic").textContent = traffic
    ? `Traffic split for requests that name no variant: ${splitLabel(traffic)} (sticky per API key, else per browser).`
    : "";
  $("traffic").hidden = !traffic;
}

function showVariantBudget() {
  const own = budgets[$("variant").value];
  $("budget").placeholder = own === undefined ? "variant's own" : `variant's own: ${own}`;
}

async function loadVariants() {
  clearError();
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    if (!response.ok) throw await failure(response);
    const list = await response.json();
    const models = list.data;
    const ids = models.map((model) => model.id);
    budgets = Object.fromEntries(models.map((model) => [model.id, model.arr_coc?.budget]));
    const current = $("variant").value;
    const traffic = list.arr_coc?.traffic || null;
    const options = models.map((model) => new Option(optionLabel(model), model.id));
    if (traffic) options.unshift(new Option(`traffic split (${splitLabel(traffic)})`, "")); // names no variant
    const fallback = traffic ? "" : list.arr_coc?.default_variant || DEFAULT_VARIANT;
    $("variant").replaceChildren(...options);
    const known = [...(traffic ? [""] : []), ...ids];
    $("variant").value = known.includes(current) ? current : known.includes(fallback) ? fallback : ids[0];
    showVariantBudget();
    showNotice(list.arr_coc?.notice);
    showTraffic(traffic);
  } catch (error) {
    showError(error, "loading the variants");
  }
}

// --- asking -----------------------------------------------------------------
function form(extra = {}) {
  const data = new FormData();
  data.append("image", image, image.name || "pasted.png");
  data.append("question", $("question").value.trim());
  if ($("variant").value) data.append("variant", $("variant").value);
  if ($("budget").value.trim()) data.append("budget", $("budget").value.trim());
  for (const [name, value] of Object.entries(extra)) data.append(name, value);
  return data;
}

// One server-sent event block -> {event, data}.
function parseEvent(block) {
  let event = "message";
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  return { event, data: data.length ? JSON.parse(data.join("\n")) : null };
}

async function streamAnswer() {
  const body = form({ max_new_tokens: 32 });
  const response = await fetch("/answer_stream", { method: "POST", body, headers: headers() });
  if (!response.ok) throw await failure(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value, { stream: !done });
    const blocks = buffer.split(/\r?\n\r?\n/);
    buffer = blocks.pop(); // an incomplete event waits for the next chunk
    for (const block of blocks) {
      if (!block.trim()) continue;
      const { event, data } = parseEvent(block);
      if (event === "error") throw new ApiError("mid-stream", data); // the status was 200 already
      if (event === "done") return showDone(data);
      if (data && typeof data.delta === "string") $("answer").textContent += data.delta;
    }
    if (done) throw new Error("the stream ended before the answer was done");
  }
}

function showDone(result) {
  const ratio = (100 * result.kept_ratio).toFixed(1);
  const kept = `kept ${result.kept_tokens} / ${result.total_tokens} visual tokens (${ratio}%)`;
  const reason = result.finish_reason ? `, stopped by ${result.finish_reason}` : "";
  const scorer = result.scorer === "untrained" ? ", chosen by an untrained scorer (random weights)" : "";
  const cost = result.cost ? `; cost $${(1000 * result.cost.dollars).toFixed(4)} per 1,000 such answers` : "";
  $("kept").textContent = `${result.variant}: ${kept}${reason}${scorer}${cost}`;
  const rows = Object.entries(result.timings_ms).map(([stage, ms]) => {
    const row = document.createElement("tr");
    row.innerHTML = "<td></td><td class=ms></td>";
    row.cells[0].textContent = stage;
    row.cells[1].textContent = ms.toFixed(1);
    return row;
  });
  $("timings").tBodies[0].replaceChildren(...rows);
  $("timings").hidden = false;
}

async function loadRelevance() {
  const response = await fetch("/relevance", { method: "POST", body: form(), headers: headers() });
  if (!response.ok) throw await failure(response);
  const result = await response.json();
  $("heatmap").src = `data:image/png;base64,${result.heatmap_png}`;
  $("heatmap").hidden = false;
  const grid = result.grid.join(" × ");
  $("heatmap-caption").textContent =
    `${result.variant}: ${result.kept_tokens} of ${result.total_tokens} tokens kept (grid ${grid}), outlined in cyan`;
}

function reset() {
  clearError();
  $("answer").textContent = "";
  $("kept").textContent = "";
  $("timings").hidden = true;
  $("heatmap").hidden = true;
  $("heatmap").removeAttribute("src");
  $("heatmap-caption").textContent = "Scoring…";
}

$("ask-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  reset();
  if (!image) return showError(new Error("choose an image first (drop, paste or pick a file)"), "image");
  if (!$("question").value.trim()) return showError(new Error("type a question first"), "question");
  $("ask").disabled = true;
  $("answer").classList.add("streaming");
  await Promise.all([
    streamAnswer().catch((error) => showError(error, "answer")),
    loadRelevance().catch((error) => {
      $("heatmap-caption").textContent = "No heatmap.";
      showError(error, "heatmap");
    }),
  ]);
  $("answer").classList.remove("streaming");
  $("ask").disabled = false;
});

loadVariants();
