// OpsTwin dashboard: reads /whoami and follows /subscribe like any agent.
// SSE needs an Authorization header, which EventSource can't send, so the stream is read with
// fetch() and parsed here; every frame's id is kept and sent back as Last-Event-ID on reconnect,
// so the page neither loses nor repeats a change.

const KEY = "opstwin.key";
const MAX_ROWS = 200;
const $ = (id) => document.getElementById(id);

let controller = null;
let lastId = null;
let received = 0;
const counts = new Map();

function authHeaders() {
  return { Authorization: `Bearer ${sessionStorage.getItem(KEY)}` };
}

async function problemText(response) {
  try {
    const problem = await response.json();
    return problem.detail || problem.title || `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

async function signIn(key) {
  sessionStorage.setItem(KEY, key);
  const response = await fetch("/whoami", { headers: authHeaders() });
  if (!response.ok) {
    sessionStorage.removeItem(KEY);
    throw new Error(await problemText(response));
  }
  const me = await response.json();
  $("who").textContent = `${me.name} · ${me.role} · tenant ${me.tenant_id}`;
  $("signin").hidden = true;
  $("live").hidden = false;
  follow();
}

function setStatus(text, cls) {
  const pill = $("status");
  pill.textContent = text;
  pill.className = `pill ${cls || ""}`;
}

function addEvent(event) {
  received += 1;
  $("received").textContent = received.toLocaleString();
  $("head").textContent = Number(event.sequence).toLocaleString();
  counts.set(event.type, (counts.get(event.type) || 0) + 1);
  const list = $("types");
  list.replaceChildren(
    ...[...counts.entries()].sort((a, b) => b[1] - a[1]).map(([type, n]) => {
      const li = document.createElement("li");
      const name = document.createElement("span");
      name.textContent = type;
      const count = document.createElement("span");
      count.textContent = n.toLocaleString();
      li.append(name, count);
      return li;
    }),
  );
  const row = document.createElement("tr");
  row.className = "fresh";
  for (const [text, cls] of [
    [Number(event.sequence).toString(), ""],
    [(event.time || "").replace("T", " ").slice(0, 23), ""],
    [event.type, ""],
    [event.subject || "", ""],
    [JSON.stringify(event.data), "data"],
  ]) {
    const cell = document.createElement("td");
    cell.textContent = text; // never innerHTML: event data is untrusted
    if (cls) cell.className = cls;
    row.append(cell);
  }
  const body = $("events");
  body.prepend(row);
  while (body.rows.length > MAX_ROWS) body.deleteRow(-1);
}

function handleFrame(frame) {
  if (frame.id) lastId = frame.id;
  if (frame.event === "bookmark") {
    const mark = JSON.parse(frame.data);
    $("head").textContent = Number(mark.sequence).toLocaleString();
  } else if (frame.event === "message" && frame.data) {
    addEvent(JSON.parse(frame.data));
  }
}

async function readStream(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let frame = { event: "message", id: null, data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, newline).replace(/\r$/, "");
      buffer = buffer.slice(newline + 1);
      if (line === "") {
        handleFrame({ event: frame.event, id: frame.id, data: frame.data.join("\n") });
        frame = { event: "message", id: null, data: [] };
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        const data = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (name === "data") frame.data.push(data);
        else if (name === "id") frame.id = data;
        else if (name === "event") frame.event = data;
      }
    }
  }
}

async function follow() {
  if (controller) controller.abort();
  controller = new AbortController();
  const signal = controller.signal;
  const params = new URLSearchParams();
  const types = $("types-filter").value.trim();
  const twin = $("twin-filter").value.trim();
  if (types) params.set("types", types);
  if (twin) params.set("twin_id", twin);
  if (!lastId) params.set("since", "now");
  $("filter-note").textContent = types || twin ? `(${[types, twin].filter(Boolean).join(", ")})` : "";
  let delay = 500;
  while (!signal.aborted) {
    try {
      const headers = authHeaders();
      if (lastId) headers["Last-Event-ID"] = lastId;
      const response = await fetch(`/subscribe?${params}`, { headers, signal });
      if (!response.ok) {
        setStatus("refused", "");
        $("filter-note").textContent = await problemText(response);
        return;
      }
      setStatus("live", "live");
      delay = 500;
      await readStream(response);
    } catch (error) {
      if (signal.aborted) return;
    }
    setStatus("reconnecting", "retrying");
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 15000);
  }
}

$("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("signin-error").hidden = true;
  try {
    await signIn($("key").value.trim());
  } catch (error) {
    $("signin-error").textContent = error.message;
    $("signin-error").hidden = false;
  }
});

$("filter-form").addEventListener("submit", (event) => {
  event.preventDefault();
  lastId = null; // a new filter starts from now
  follow();
});

$("signout").addEventListener("click", () => {
  if (controller) controller.abort();
  sessionStorage.removeItem(KEY);
  location.reload();
});

// `/dashboard#key=otk_…` (what `opstwin demo` prints): a URL fragment never reaches the server;
// move the key into this tab's storage and out of the address bar and history.
if (location.hash.startsWith("#key=")) {
  sessionStorage.setItem(KEY, decodeURIComponent(location.hash.slice(5)));
  history.replaceState(null, "", location.pathname);
}

if (sessionStorage.getItem(KEY)) {
  signIn(sessionStorage.getItem(KEY)).catch(() => {});
}
