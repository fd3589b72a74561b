/* Masterplan's page script: the API key, the new-job form, the job page's live updates.
 *
 * The key is entered once and kept in this tab's sessionStorage; it travels only as an
 * `Authorization: Bearer` header, never in a URL. The server renders all HTML (escaped); this
 * script fetches it and swaps it in, and never builds markup from data itself.
 * Live updates read the job's event stream with fetch() (EventSource cannot send a header),
 * fetch the job's fragment again at each event, and resume a dropped stream with back-off and
 * Last-Event-ID. A finished job opens no stream.
 */
"use strict";
(() => {
  const KEY = "masterplan.apiKey";
  const needsKey = document.body.dataset.auth === "required";
  const $ = (id) => document.getElementById(id);
  let pending = null; // what to run once a key is set

  // -- the key ------------------------------------------------------------------------------
  const storedKey = () => {
    try { return sessionStorage.getItem(KEY); } catch { return null; }
  };

  function showKeyState(message) {
    const form = $("key-form");
    if (!form) return;
    const has = Boolean(storedKey());
    form.hidden = has;
    $("key-set").hidden = !has;
    const error = $("key-error");
    error.textContent = message || "";
    error.hidden = !message;
    if (!has && message) $("api-key").focus();
  }

  function forgetKey(message) {
    try { sessionStorage.removeItem(KEY); } catch { /* storage is off: nothing was kept */ }
    showKeyState(message);
  }

  /** Run `fn` now if no key is needed or one is set; otherwise once one is entered. */
  function withKey(fn) {
    if (!needsKey || storedKey()) return fn();
    pending = fn;
    showKeyState();
    return undefined;
  }

  function setUpKeyForm() {
    const form = $("key-form");
    if (!form) return;
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const input = $("api-key");
      const key = input.value.trim();
      if (!key) return;
      try { sessionStorage.setItem(KEY, key); } catch { /* private mode: the key lives in memory only */ }
      input.value = "";
      showKeyState();
      const fn = pending;
      pending = null;
      if (fn) fn();
    });
    $("key-forget").addEventListener("click", () => { forgetKey(); location.reload(); });
    showKeyState();
  }

  // -- requests -----------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, detail) { super(detail); this.status = status; }
  }

  function authHeaders(extra) {
    const headers = new Headers(extra || {});
    const key = storedKey();
    if (needsKey && key) headers.set("Authorization", `Bearer ${key}`);
    return headers;
  }

  async function detail(res) {
    try {
      const problem = await res.json();
      return problem.detail || `${res.status} ${res.statusText}`;
    } catch {
      return `${res.status} ${res.statusText}`;
    }
  }

  async function request(path, init = {}) {
    const res = await fetch(path, { ...init, headers: authHeaders(init.headers), cache: "no-store" });
    if (!res.ok) {
      const why = await detail(res);
      if (res.status === 401 && needsKey) forgetKey(`The server refused the key: ${why}`);
      throw new ApiError(res.status, why);
    }
    return res;
  }

  const parse = (html) => new DOMParser().parseFromString(html, "text/html").body;
  const adopt = (nodes) => Array.from(nodes, (n) => document.adoptNode(n));
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // -- the front page -------------------------------------------------------------------------
  function newIdempotencyKey() {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function initIndex() {
    const form = $("job-form");
    const button = form.querySelector("button[type=submit]");
    const error = $("form-error");
    let idempotency = newIdempotencyKey(); // a double submission is one job
    const fail = (message, field) => {
      error.textContent = message;
      error.hidden = false;
      button.disabled = false;
      if (field) form.elements[field].focus();
    };
    form.addEventListener("input", () => { idempotency = newIdempotencyKey(); });
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      error.hidden = true;
      const body = { idea: form.elements.idea.value };
      const context = form.elements.context.value.trim();
      if (context) {
        try { body.context = JSON.parse(context); } catch (e) { return fail(`The context is not valid JSON: ${e.message}`, "context"); }
        if (body.context === null || typeof body.context !== "object" || Array.isArray(body.context)) {
          return fail("The context must be a JSON object ({...}).", "context");
        }
      }
      if (needsKey && !storedKey()) return showKeyState("Enter your API key first.");
      button.disabled = true;
      try {
        const res = await request("/v1/jobs", {
          method: "POST", body: JSON.stringify(body),
          headers: { "Content-Type": "application/json", "Idempotency-Key": idempotency },
        });
        const job = await res.json();
        location.assign(`/jobs/${encodeURIComponent(job.id)}`);
      } catch (e) {
        fail(e.message);
      }
      return undefined;
    });
    button.disabled = false;

    const recent = $("recent");
    const refresh = $("recent-refresh");
    const load = async () => {
      try {
        const res = await request("/fragments/jobs");
        recent.replaceChildren(...adopt(parse(await res.text()).childNodes));
        refresh.hidden = false;
      } catch (e) {
        if (e.status === 401) return withKey(load);
        recent.textContent = `Could not load your jobs: ${e.message}`;
      }
      return undefined;
    };
    refresh.addEventListener("click", load);
    if (needsKey) withKey(load);
    else refresh.hidden = false;
  }

  // -- the job page ---------------------------------------------------------------------------
  const OPEN = new Set(["queued", "running"]);

  /** Put a freshly rendered #job in place: each changed part in its element (so the cards'
   *  live regions stay the same nodes), or the whole of it when its parts are not the same. */
  function morph(html) {
    const fresh = parse(html).querySelector("#job");
    const current = $("job");
    if (!fresh || !current) return;
    const parts = (el) => Array.from(el.querySelectorAll("[data-part]"), (p) => p.id).join(" ");
    if (parts(fresh) !== parts(current)) {
      current.replaceWith(document.adoptNode(fresh));
      return;
    }
    for (const part of fresh.querySelectorAll("[data-part]")) {
      const old = $(part.id);
      if (old.innerHTML === part.innerHTML && old.className === part.className) continue;
      for (const attr of Array.from(part.attributes)) old.setAttribute(attr.name, attr.value);
      old.replaceChildren(...adopt(part.childNodes));
    }
    current.dataset.status = fresh.dataset.status;
  }

  function initJob() {
    const id = $("job-root").dataset.jobId;
    const live = $("live");
    const say = (text) => { live.textContent = text; };
    const problem = (message) => {
      const box = $("job-message");
      if (box) box.textContent = message; else say(message);
    };

    let inFlight = null;
    let again = false;
    /** Fetch the fragment and swap it in; calls while one runs make one more, not many. */
    function refresh() {
      if (inFlight) { again = true; return inFlight; }
      inFlight = (async () => {
        try {
          do {
            again = false;
            const res = await request(`/fragments/jobs/${encodeURIComponent(id)}`);
            morph(await res.text());
          } while (again);
          return true;
        } catch (e) {
          if (e.status === 401) withKey(start);
          else problem(e.status === 404 ? "No such job for this API key." : `Could not load the job: ${e.message}`);
          return false;
        } finally {
          inFlight = null;
        }
      })();
      return inFlight;
    }

    /** Read SSE frames from a fetch() body; `onEvent` gets {event, data, id}. True once `done`. */
    async function readEvents(stream, onEvent) {
      const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let frame = { event: "message", data: [], id: null };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return false;
        buffer += value;
        const lines = buffer.split("\n");
        buffer = lines.pop();
        for (const raw of lines) {
          const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
          if (line === "") {
            if (frame.data.length || frame.id !== null) {
              const ev = { event: frame.event, data: frame.data.join("\n"), id: frame.id };
              onEvent(ev);
              if (ev.event === "done") { reader.cancel().catch(() => {}); return true; }
            }
            frame = { event: "message", data: [], id: null };
          } else if (!line.startsWith(":")) { // a comment (keep-alive) is skipped
            const at = line.indexOf(":");
            const field = at < 0 ? line : line.slice(0, at);
            let val = at < 0 ? "" : line.slice(at + 1);
            if (val.startsWith(" ")) val = val.slice(1);
            if (field === "event") frame.event = val;
            else if (field === "data") frame.data.push(val);
            else if (field === "id") frame.id = val;
          }
        }
      }
    }

    async function follow() {
      let lastId = null;
      let delay = 1000;
      for (;;) {
        let res = null;
        try {
          const headers = { Accept: "text/event-stream" };
          if (lastId) headers["Last-Event-ID"] = lastId;
          res = await fetch(`/v1/jobs/${encodeURIComponent(id)}/events`,
            { headers: authHeaders(headers), cache: "no-store" });
        } catch { res = null; } // the network is away: retry below
        if (res && res.ok && res.body) {
          say("live");
          let finished = false;
          try {
            finished = await readEvents(res.body, (ev) => {
              if (ev.id) lastId = ev.id;
              delay = 1000;
              if (ev.event !== "done") refresh(); // `done`: the last fetch is below
            });
          } catch { /* the connection dropped mid-stream: resume below */ }
          if (finished) {
            await refresh();
            say("");
            return;
          }
        } else if (res && (res.status === 401 || res.status === 404)) {
          const why = await detail(res);
          if (res.status === 401 && needsKey) { forgetKey(`The server refused the key: ${why}`); withKey(follow); }
          else problem(why);
          return;
        } else if (res && res.status === 429) {
          delay = Math.max(delay, 1000 * (Number(res.headers.get("Retry-After")) || 5));
        }
        say(`connection lost; reconnecting in ${Math.round(delay / 1000)} s`);
        await sleep(delay * (0.8 + Math.random() * 0.4));
        delay = Math.min(delay * 2, 30000);
      }
    }

    async function start() {
      if (!$("job").dataset.status && !(await refresh())) return;
      if (OPEN.has($("job").dataset.status)) follow();
    }

    withKey(start);
  }

  setUpKeyForm();
  const page = document.body.dataset.page;
  if (page === "index") initIndex();
  else if (page === "job") initJob();
})();
