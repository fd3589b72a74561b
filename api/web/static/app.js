/* Masterplan's page script: the API key, the new-job form, the job page's live updates, the
 * interview's chat.
 *
 * The key is entered once and kept in this tab's sessionStorage; it travels only as an
 * `Authorization: Bearer` header, never in a URL. The server renders all HTML (escaped); this
 * script fetches it and swaps it in, and never builds markup from data itself.
 * Live updates read the job's event stream with fetch() (EventSource cannot send a header),
 * fetch the job's fragment again at each event, and resume a dropped stream with back-off and
 * Last-Event-ID. A finished job opens no stream.
 * The interview page is the same: its fragment is rendered by the server and fetched again after
 * each turn; meanwhile the interviewer's text streams into its bubble as text (textContent), and
 * the founder's answer shows in a bubble cloned from the fragment's <template>.
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

  /** Read SSE frames from a fetch() body; `onEvent` gets {event, data, id}. True once the
   *  stream's last event (`last`) arrived, false when the body ended before it. */
  async function readEvents(stream, onEvent, last = "done") {
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
            if (ev.event === last) { reader.cancel().catch(() => {}); return true; }
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
    const interview = $("interview-start");
    form.addEventListener("input", () => { idempotency = newIdempotencyKey(); });
    interview.addEventListener("click", async () => {
      error.hidden = true;
      const idea = form.elements.idea;
      if (!idea.reportValidity()) return undefined;
      if (needsKey && !storedKey()) return showKeyState("Enter your API key first.");
      interview.disabled = true;
      try {
        const res = await request("/v1/interviews", {
          method: "POST", body: JSON.stringify({ idea: idea.value }),
          headers: { "Content-Type": "application/json" },
        });
        const started = await res.json();
        location.assign(`/interviews/${encodeURIComponent(started.id)}`);
      } catch (e) {
        fail(e.message);
        interview.disabled = false;
      }
      return undefined;
    });
    interview.disabled = false;
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

  // -- the interview page ---------------------------------------------------------------------
  /** Make `old` like `fresh` (the same element, rendered again), keeping every node that stays:
   *  focus, what is typed in a textarea, live regions and the scores' transitions survive.
   *  Children are matched by id, else by position. */
  function sync(old, fresh) {
    for (const a of Array.from(old.attributes)) {
      if (!fresh.hasAttribute(a.name)) old.removeAttribute(a.name);
    }
    for (const a of Array.from(fresh.attributes)) {
      if (old.getAttribute(a.name) !== a.value) old.setAttribute(a.name, a.value);
    }
    if (old.tagName === "TEXTAREA" || old.tagName === "TEMPLATE") return;
    const before = Array.from(old.childNodes);
    const byId = new Map(before.filter((n) => n.id).map((n) => [n.id, n]));
    const after = Array.from(fresh.childNodes).map((n, i) => {
      const match = n.id ? byId.get(n.id) : before[i];
      if (match && match.nodeName === n.nodeName && (match.id || "") === (n.id || "")) {
        if (n.nodeType === Node.ELEMENT_NODE) sync(match, n);
        else if (match.nodeValue !== n.nodeValue) match.nodeValue = n.nodeValue;
        return match;
      }
      return document.adoptNode(n);
    });
    after.forEach((n, i) => {
      if (old.childNodes[i] !== n) old.insertBefore(n, old.childNodes[i] || null);
    });
    while (old.childNodes.length > after.length) old.lastChild.remove();
  }

  function initInterview() {
    const root = $("interview-root");
    const id = root.dataset.interviewId;
    const api = `/v1/interviews/${encodeURIComponent(id)}`;
    const live = $("live");
    const say = (text) => { live.textContent = text; };
    let streaming = null; // the turn being read, while one is (the controls wait for it)
    let building = false;

    const state = () => ($("interview") ? $("interview").dataset : {});
    const loaded = () => Boolean(state().status);
    const isOpen = () => state().status === "open";
    const turnEl = (n) => $(`turn-${n}`);
    const textOf = (n) => { const t = turnEl(n); return t && t.querySelector(".them .text"); };

    /** A message in the element `elId` (an error line of the fragment), or in the live line. */
    function show(elId, message) {
      const el = $(elId);
      if (!el) { say(message || ""); return; }
      el.textContent = message || "";
      el.hidden = !message;
    }

    /** Enable what can be used now. The server renders the buttons disabled (without this
     *  script they could do nothing); while a turn streams, answering and building wait. */
    function applyState() {
      const open = isOpen();
      const busy = streaming !== null;
      const form = $("answer-form");
      if (form) {
        form.elements.answer.disabled = !open;
        form.querySelector("button[type=submit]").disabled = !open || busy;
      }
      for (const b of root.querySelectorAll("button.choice")) b.disabled = !open || busy;
      const build = $("build-button");
      if (build) build.disabled = busy || building;
    }

    /** The interview as the server has it, put in place. */
    async function refresh() {
      try {
        const res = await request(`/fragments/interviews/${encodeURIComponent(id)}`);
        const fresh = parse(await res.text()).querySelector("#interview");
        const current = $("interview");
        if (fresh && current) {
          if (loaded()) sync(current, fresh);
          else current.replaceWith(document.adoptNode(fresh));
        }
        applyState();
        return true;
      } catch (e) {
        if (e.status === 401) withKey(start);
        else show("interview-message", e.status === 404 ? "No such interview for this API key."
          : `Could not load the interview: ${e.message}`);
        return false;
      }
    }

    /** The founder's answer and an empty interviewer's bubble, from the fragment's template. */
    function addTurn(n, answer) {
      const li = document.importNode($("turn-template").content, true).firstElementChild;
      li.id = `turn-${n}`;
      li.querySelector(".you .text").textContent = answer;
      $("chat-log").append(li);
      li.scrollIntoView({ block: "nearest" });
      return li;
    }

    /** A note under turn `n` while it streams (the next refresh shows the server's). */
    function turnNote(n, kind, text) {
      const li = turnEl(n);
      if (!li) return;
      let note = li.querySelector("p.note.live");
      if (!text) { if (note) note.remove(); return; }
      if (!note) { note = document.createElement("p"); li.append(note); }
      note.className = `note live ${kind}`;
      note.textContent = text;
    }

    function onTurnEvent(n, ev) {
      let d = {};
      try { d = JSON.parse(ev.data || "{}") || {}; } catch { d = {}; }
      const text = textOf(n);
      if (ev.event === "token") {
        turnNote(n, "", null); // a wait for a provider is over
        if (text && typeof d.text === "string") {
          const first = !text.textContent;
          text.textContent += d.text;
          if (first) turnEl(n).scrollIntoView({ block: "nearest" });
        }
      } else if (ev.event === "wait") {
        const s = Math.max(1, Math.round((Number(d.wait_ms) || 0) / 1000));
        turnNote(n, "waiting", `Waiting for a provider (about ${s} s)${d.reason ? `: ${d.reason}` : ""}.`);
      } else if (ev.event === "turn") {
        if (text && typeof d.question === "string") text.textContent = d.question;
        if (!d.structured) {
          turnNote(n, "unscored", `No evaluation this turn${d.error ? ` (${d.error})` : ""}; the conversation goes on.`);
        }
      } else if (ev.event === "error") {
        if (text && d.partial && !text.textContent) text.textContent = d.partial;
        turnNote(n, "failed", `This turn failed: ${d.error || "the interviewer's text did not arrive"}. Answer again to go on.`);
      }
    }

    async function stillStreaming(n) {
      try {
        const body = await (await request(api)).json();
        const turn = (body.turns || []).find((t) => t.n === n);
        return Boolean(turn && turn.status === "streaming");
      } catch {
        return true;
      }
    }

    /** Read turn `n`'s events (from `first`, the answer's own response, when given), resume a
     *  dropped stream with back-off and Last-Event-ID, then show the turn as stored. */
    async function follow(n, first) {
      streaming = n;
      applyState();
      let res = first;
      let lastId = null;
      let delay = 1000;
      for (;;) {
        if (res === undefined) {
          const headers = { Accept: "text/event-stream" };
          if (lastId) headers["Last-Event-ID"] = lastId;
          else if (textOf(n)) textOf(n).textContent = ""; // told from the start again
          try {
            res = await fetch(`${api}/turns/${n}/events`, { headers: authHeaders(headers), cache: "no-store" });
          } catch { res = null; } // the network is away: retry below
        }
        if (res && res.ok && res.body) {
          say("");
          let got = 0;
          let ended = false;
          try {
            ended = await readEvents(res.body, (ev) => {
              got += 1;
              if (ev.id) lastId = ev.id;
              delay = 1000;
              onTurnEvent(n, ev);
            }, "end");
          } catch { /* the connection dropped mid-stream: resume below */ }
          // An empty stream: its events may have expired; the stored turn says if it is over.
          if (ended || (got === 0 && !(await stillStreaming(n)))) break;
        } else if (res && (res.status === 401 || res.status === 404)) {
          const why = await detail(res);
          streaming = null;
          if (res.status === 401 && needsKey) {
            forgetKey(`The server refused the key: ${why}`);
            withKey(() => follow(n));
            return;
          }
          await refresh(); // a turn the server does not have goes from the log
          show("answer-error", why);
          return;
        } else if (res && res.status === 429) {
          delay = Math.max(delay, 1000 * (Number(res.headers.get("Retry-After")) || 5));
        }
        say(`connection lost; reconnecting in ${Math.round(delay / 1000)} s`);
        await sleep(delay * (0.8 + Math.random() * 0.4));
        delay = Math.min(delay * 2, 30000);
        res = undefined;
      }
      streaming = null;
      say("");
      await refresh();
    }

    /** Send an answer (typed in `box`, or a quick reply's text) and read the next turn. */
    async function send(answer, box) {
      const text = answer.trim();
      if (!text || streaming !== null || !isOpen()) return;
      if (needsKey && !storedKey()) { withKey(() => send(answer, box)); return; }
      show("answer-error", "");
      const n = Number(state().last) + 1;
      streaming = n;
      applyState();
      addTurn(n, text);
      let res = null;
      try {
        res = await fetch(`${api}/turns`, {
          method: "POST", body: JSON.stringify({ answer: text }), cache: "no-store",
          headers: authHeaders({ "Content-Type": "application/json", Accept: "text/event-stream" }),
        });
      } catch { res = null; } // it may have been stored: following the turn finds out
      if (res && !res.ok) {
        const why = await detail(res);
        streaming = null;
        turnEl(n).remove();
        if (res.status === 401 && needsKey) forgetKey(`The server refused the key: ${why}`);
        else await refresh(); // the interview as stored: finished, or answered elsewhere
        show("answer-error", `Not sent: ${why}`);
        return;
      }
      if (res && box) box.value = "";
      await follow(n, res);
      const next = $("answer");
      if (next && !next.disabled) next.focus();
    }

    async function build() {
      if (building || streaming !== null) return;
      if (needsKey && !storedKey()) { withKey(build); return; }
      building = true;
      applyState();
      show("build-error", "");
      try {
        const job = await (await request(`${api}/masterplan`, { method: "POST" })).json();
        location.assign(`/jobs/${encodeURIComponent(job.id)}`);
      } catch (e) {
        building = false;
        await refresh();
        show("build-error", `Could not build the masterplan: ${e.message}`);
      }
    }

    root.addEventListener("click", (ev) => {
      const choice = ev.target.closest("button.choice");
      if (choice) send(choice.dataset.answer || choice.textContent, null);
      else if (ev.target.closest("#build-button")) build();
    });
    root.addEventListener("submit", (ev) => {
      if (ev.target.id !== "answer-form") return;
      ev.preventDefault();
      send($("answer").value, $("answer"));
    });
    root.addEventListener("keydown", (ev) => {
      // Enter sends, Shift+Enter is a new line (and an input method's Enter is its own).
      if (ev.target.id !== "answer" || ev.key !== "Enter" || ev.shiftKey || ev.isComposing) return;
      ev.preventDefault();
      $("answer-form").requestSubmit();
    });

    async function start() {
      if (!loaded() && !(await refresh())) return;
      applyState();
      const n = Number(state().streaming);
      if (n) follow(n);
    }

    withKey(start);
  }

  setUpKeyForm();
  const page = document.body.dataset.page;
  if (page === "index") initIndex();
  else if (page === "job") initJob();
  else if (page === "interview") initInterview();
})();
