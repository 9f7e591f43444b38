"use strict";
// The kvs dashboard: plain DOM code, no framework, nothing loaded from elsewhere (the page's
// Content-Security-Policy allows only this node). Every text that comes from the store is
// inserted with textContent / Text nodes, never as HTML.

const POLL_MS = 2000;
const STATUS_TIMEOUT_MS = 3000;
const KEY_TIMEOUT_MS = 30000;
// add-member and reshard return once data has moved: allow them minutes.
const ADMIN_TIMEOUT_MS = 600000;
const PAGE_SIZE = 50;
const METADATA_ITEM = "kvs-dashboard.causal-metadata";
const TOKEN_ITEM = "kvs-dashboard.admin-token";

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------
// DOM helpers

/** An element with attributes and children; strings become Text nodes (never markup). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) node.setAttribute(name, String(value));
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function badge(text, kind) {
  return el("span", { class: `badge ${kind}` }, text);
}

/** Shows `text` in a result paragraph, styled as success or error. */
function showResult(target, text, ok) {
  target.textContent = text;
  target.className = `result ${ok ? "ok" : "error"}`;
  target.dataset.ok = String(ok);
  target.hidden = false;
}

// ---------------------------------------------------------------------------------------
// Session state (sessionStorage: it ends with the tab, and is never shared with another one)

function sessionMetadata() {
  return sessionStorage.getItem(METADATA_ITEM) || "";
}

/** Keeps the causal metadata of an answer. An answer without any (a 404, an error) leaves
 *  the session's as it is: the contract says the client keeps the one it had. */
function remember(data) {
  const metadata = data && data["causal-metadata"];
  if (typeof metadata === "string" && metadata !== "") {
    sessionStorage.setItem(METADATA_ITEM, metadata);
    showSession();
  }
}

function showSession() {
  const metadata = sessionMetadata();
  $("session-metadata").textContent = metadata || "(none yet)";
  $("session-metadata").title = metadata;
}

function adminToken() {
  return sessionStorage.getItem(TOKEN_ITEM) || "";
}

// ---------------------------------------------------------------------------------------
// HTTP

/**
 * One request to this node. Resolves to {status, ok, data, text}, data being the parsed
 * JSON body (or null); rejects only when no answer came (network error, timeout).
 * - body: an object sent as JSON.
 * - metadata: send the session's causal metadata and keep the answer's. It goes in the body,
 *   as the contract has it, except on a GET: browsers cannot send a GET with a body, so
 *   there it goes in a `Causal-Metadata` header (which a store that does not read it
 *   ignores, answering as to a client without metadata).
 * - admin: send the admin token, if one is set.
 */
async function request(method, path, { body, metadata = false, admin = false, timeoutMs }) {
  const headers = { Accept: "application/json" };
  let payload = body;
  if (metadata) {
    const token = sessionMetadata();
    if (method === "GET") {
      if (token) headers["Causal-Metadata"] = token;
    } else {
      payload = { ...(body || {}), "causal-metadata": token };
    }
  }
  if (admin && adminToken()) headers.Authorization = `Bearer ${adminToken()}`;
  if (payload !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: payload === undefined ? undefined : JSON.stringify(payload),
    cache: "no-store",
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await response.text();
  let data = null;
  try {
    data = JSON.parse(text);
  } catch {
    data = null;
  }
  if (metadata) remember(data);
  return { status: response.status, ok: response.ok, data, text };
}

/** A readable line for an answer: the store's `error`, else its `message`. */
function describe(answer) {
  const data = answer.data || {};
  let line;
  if (typeof data.error === "string") {
    line = `${answer.status}: ${data.error}`;
    if (typeof data.message === "string") line += ` (${data.message})`;
  } else if (typeof data.message === "string") {
    line = `${answer.status}: ${data.message}`;
  } else {
    line = `${answer.status}: ${answer.text.slice(0, 200) || "no body"}`;
  }
  if (data.error === "Invalid causal metadata") {
    line += " — the session's metadata is from another store: press Forget under Causal session.";
  }
  return line;
}

function describeFailure(err) {
  if (err && err.name === "TimeoutError") return "No answer from the node in time";
  return `No answer from the node: ${err && err.message ? err.message : err}`;
}

/** Runs a request, writing a failure to `target`; resolves to the answer or null. */
async function attempt(target, method, path, options) {
  try {
    return await request(method, path, options);
  } catch (err) {
    showResult(target, describeFailure(err), false);
    return null;
  }
}

// ---------------------------------------------------------------------------------------
// Cluster view

/** Fetches /kvs/status once and shows it (or why it is stale); never throws. */
async function refreshStatus() {
  try {
    const answer = await request("GET", "/kvs/status", { timeoutMs: STATUS_TIMEOUT_MS });
    if (answer.ok && answer.data) {
      renderCluster(answer.data);
      setPollState(true, "");
    } else {
      setPollState(false, `/kvs/status answered ${describe(answer)}`);
    }
  } catch (err) {
    setPollState(false, describeFailure(err));
  }
}

/** One status request at a time: the next starts POLL_MS after the last one ended, so a
 *  slow node never piles requests up. */
async function poll() {
  await refreshStatus();
  setTimeout(poll, POLL_MS);
}

/** The header badge: live, or the data shown is stale and why. */
function setPollState(live, problem) {
  const state = $("poll-state");
  state.textContent = live ? "live" : "stale";
  state.className = `badge ${live ? "up" : "down"}`;
  state.dataset.state = live ? "live" : "stale";
  $("poll-error").hidden = live;
  $("poll-error").textContent = problem;
  if (live) $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

function renderCluster(status) {
  const nodes = Array.isArray(status.nodes) ? status.nodes : [];
  const shards = Array.isArray(status.shards) ? status.shards : [];
  const byAddress = new Map(nodes.map((n) => [n.address, n]));
  $("this-node").textContent = status.node || "?";
  $("epoch").textContent = String(status.epoch ?? "?");
  renderSummary(nodes, shards);
  $("shards").replaceChildren(...shards.map((s) => shardCard(s, byAddress, status.node)));
  const unassigned = nodes.filter((n) => n["shard-id"] === null || n["shard-id"] === undefined);
  $("unassigned").hidden = unassigned.length === 0;
  $("unassigned-nodes").replaceChildren(nodeTable(unassigned, status.node));
  fillDatalist($("shard-ids"), shards.map((s) => s["shard-id"]));
  fillDatalist($("free-nodes"), unassigned.map((n) => n.address));
}

function renderSummary(nodes, shards) {
  const up = nodes.filter((n) => n.up).length;
  const summary = $("cluster-summary");
  summary.dataset.nodes = String(nodes.length);
  summary.dataset.up = String(up);
  summary.dataset.shards = String(shards.length);
  const down = nodes.length - up;
  summary.replaceChildren(
    `${nodes.length} nodes, ${up} up`,
    down > 0 ? el("strong", { class: "down-text" }, `, ${down} down`) : "",
    `, ${shards.length} shard${shards.length === 1 ? "" : "s"}`,
  );
}

function shardCard(shard, byAddress, self) {
  const members = Array.isArray(shard.members) ? shard.members : [];
  const nodes = members.map((a) => byAddress.get(a) || { address: a, unknown: true });
  const up = nodes.filter((n) => n.up).length;
  const keys = nodes.find((n) => n.up && typeof n.keys === "number");
  return el(
    "article",
    { class: "shard", "data-shard": shard["shard-id"] },
    el(
      "h3",
      {},
      `Shard ${shard["shard-id"]}`,
      el("span", { class: "meta" }, ` ${up} of ${members.length} members up`),
      keys ? el("span", { class: "meta" }, ` · ${keys.keys} keys`) : "",
    ),
    nodeTable(nodes, self),
  );
}

function nodeTable(nodes, self) {
  const head = el(
    "tr",
    {},
    ...["Node", "State", "Keys", "Replication lag", "Ready", "Failure"].map((h) => el("th", {}, h)),
  );
  return el(
    "table",
    { class: "nodes" },
    el("thead", {}, head),
    el("tbody", {}, ...nodes.map((n) => nodeRow(n, self))),
  );
}

function nodeRow(node, self) {
  const up = node.up === true;
  // A down node keeps what it last published: shown, but greyed as stale.
  const stale = up ? "" : " stale";
  return el(
    "tr",
    {
      class: `node ${up ? "is-up" : "is-down"}`,
      "data-node": node.address,
      "data-up": String(up),
      "data-shard": node["shard-id"] ?? "",
      "data-ready": String(node.ready === true),
      "data-failed": String(node.failed === true),
    },
    el(
      "td",
      { class: "address" },
      el("code", {}, node.address),
      node.address === self ? el("span", { class: "meta" }, " (this node)") : "",
    ),
    el("td", { class: "state" }, node.unknown ? badge("unknown", "pending") : badge(up ? "up" : "down", up ? "up" : "down")),
    el("td", { class: `keys${stale}` }, node.keys === null || node.keys === undefined ? "–" : String(node.keys)),
    el("td", { class: `lag${stale}` }, lagText(node.lag)),
    el("td", { class: "ready" }, node.ready ? "ready" : badge("not ready", "pending")),
    el("td", { class: "failed" }, node.failed ? badge("failed", "down") : "–"),
  );
}

/** The largest lag, with each peer's in the cell's title. */
function lagText(lag) {
  if (!lag || typeof lag !== "object") return "–";
  const entries = Object.entries(lag);
  if (entries.length === 0) return "–";
  const max = Math.max(...entries.map(([, v]) => Number(v) || 0));
  const span = el("span", { title: entries.map(([p, v]) => `${p}: ${v}`).join("\n") }, max === 0 ? "0 (caught up)" : `${max} write${max === 1 ? "" : "s"} behind`);
  span.dataset.lag = String(max);
  return span;
}

function fillDatalist(list, values) {
  list.replaceChildren(...values.map((v) => el("option", { value: v })));
}

// ---------------------------------------------------------------------------------------
// Key browser

let listing = { prefix: "", next: null };

function keyPath(key) {
  return `/key-value-store/${encodeURIComponent(key)}`;
}

/** Lists from the start (`more` false) or the next page of the current listing. */
async function listKeys(more) {
  if (!more) listing = { prefix: $("prefix").value, next: null };
  const params = new URLSearchParams({ prefix: listing.prefix, limit: String(PAGE_SIZE) });
  if (more && listing.next !== null) params.set("after", listing.next);
  // Its own line for the listing's errors: a put or delete refreshes the listing, and the
  // write's answer must stay readable if the listing fails.
  const status = $("list-status");
  const answer = await attempt(status, "GET", `/key-value-store?${params}`, {
    metadata: true,
    timeoutMs: KEY_TIMEOUT_MS,
  });
  if (!answer) return;
  if (!answer.ok || !answer.data || !Array.isArray(answer.data.keys)) {
    showResult(status, `Listing failed: ${describe(answer)}`, false);
    return;
  }
  status.className = "meta";
  const items = answer.data.keys.map((k) => el("li", {}, keyButton(k)));
  if (more) $("key-list").append(...items);
  else $("key-list").replaceChildren(...items);
  listing.next = typeof answer.data.next === "string" ? answer.data.next : null;
  $("more-keys").hidden = listing.next === null;
  const shown = $("key-list").children.length;
  $("list-status").textContent = `${shown} key${shown === 1 ? "" : "s"}${listing.next === null ? "" : ", more…"}`;
}

function keyButton(key) {
  const button = el("button", { type: "button", class: "key", "data-key": key }, key);
  button.addEventListener("click", () => showKey(key));
  return button;
}

async function showKey(key) {
  const answer = await attempt($("kv-result"), "GET", keyPath(key), {
    metadata: true,
    timeoutMs: KEY_TIMEOUT_MS,
  });
  if (!answer) return;
  if (!answer.ok) {
    showResult($("kv-result"), `GET ${key}: ${describe(answer)}`, false);
    $("key-view").hidden = true;
    return;
  }
  $("view-key").textContent = key;
  $("view-value").textContent = String(answer.data.value);
  $("key-view").dataset.key = key;
  $("key-view").hidden = false;
  $("put-key").value = key;
}

async function putKey(event) {
  event.preventDefault();
  const key = $("put-key").value;
  const answer = await attempt($("kv-result"), "PUT", keyPath(key), {
    body: { value: $("put-value").value },
    metadata: true,
    timeoutMs: KEY_TIMEOUT_MS,
  });
  if (!answer) return;
  if (answer.ok) {
    showResult($("kv-result"), `PUT ${key}: ${answer.data.message} (shard ${answer.data["shard-id"]})`, true);
    await listKeys(false);
    await showKey(key);
  } else {
    showResult($("kv-result"), `PUT ${key}: ${describe(answer)}`, false);
  }
}

async function deleteKey() {
  const key = $("key-view").dataset.key;
  if (key === undefined) return;
  const answer = await attempt($("kv-result"), "DELETE", keyPath(key), {
    metadata: true,
    timeoutMs: KEY_TIMEOUT_MS,
  });
  if (!answer) return;
  showResult($("kv-result"), `DELETE ${key}: ${answer.ok ? answer.data.message : describe(answer)}`, answer.ok);
  if (answer.ok) {
    $("key-view").hidden = true;
    delete $("key-view").dataset.key;
    await listKeys(false);
  }
}

// ---------------------------------------------------------------------------------------
// Admin: every change goes through a confirmation step

let pending = null;

function askConfirmation(text, action) {
  pending = action;
  $("confirm-text").textContent = text;
  $("confirm").hidden = false;
  $("confirm-yes").focus();
}

function closeConfirmation() {
  pending = null;
  $("confirm").hidden = true;
}

async function confirmed() {
  const action = pending;
  closeConfirmation();
  if (!action) return;
  for (const b of document.querySelectorAll("#admin button")) b.disabled = true;
  showResult($("admin-result"), "Working… (the store answers once the data has moved)", true);
  try {
    await action();
  } finally {
    for (const b of document.querySelectorAll("#admin button")) b.disabled = false;
  }
}

async function adminPut(what, path, body) {
  const answer = await attempt($("admin-result"), "PUT", path, {
    body,
    admin: true,
    timeoutMs: ADMIN_TIMEOUT_MS,
  });
  if (!answer) return;
  showResult($("admin-result"), `${what}: ${answer.ok ? answer.data.message : describe(answer)}`, answer.ok);
  // Shows the new shard map at once rather than at the next poll.
  refreshStatus();
}

function addMember(event) {
  event.preventDefault();
  const shard = $("add-shard").value.trim();
  const address = $("add-address").value.trim();
  askConfirmation(
    `Add ${address} to shard ${shard}? It receives a copy of every key of the shard.`,
    () => adminPut(`Add ${address} to shard ${shard}`, `/key-value-store-shard/add-member/${encodeURIComponent(shard)}`, {
      "socket-address": address,
    }),
  );
}

function reshard(event) {
  event.preventDefault();
  const count = Number($("shard-count").value);
  askConfirmation(
    `Reshard the store into ${count} shard${count === 1 ? "" : "s"}? Keys move between nodes while it runs.`,
    () => adminPut(`Reshard to ${count}`, "/key-value-store-shard/reshard", { "shard-count": count }),
  );
}

// ---------------------------------------------------------------------------------------

function start() {
  $("list-form").addEventListener("submit", (e) => {
    e.preventDefault();
    listKeys(false);
  });
  $("more-keys").addEventListener("click", () => listKeys(true));
  $("put-form").addEventListener("submit", putKey);
  $("delete-key").addEventListener("click", deleteKey);
  $("forget-metadata").addEventListener("click", () => {
    sessionStorage.removeItem(METADATA_ITEM);
    showSession();
  });
  $("admin-token").value = adminToken();
  $("admin-token").addEventListener("input", (e) => sessionStorage.setItem(TOKEN_ITEM, e.target.value));
  $("add-member-form").addEventListener("submit", addMember);
  $("reshard-form").addEventListener("submit", reshard);
  $("confirm-yes").addEventListener("click", confirmed);
  $("confirm-no").addEventListener("click", closeConfirmation);
  showSession();
  poll();
  listKeys(false);
}

document.addEventListener("DOMContentLoaded", start);
