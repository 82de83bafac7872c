// Forgehall's own page behaviour. Every page works without it; this adds live updates,
// drag-and-drop on the board, the streaming transcript and @mention completion.
"use strict";

(function () {
  const body = document.body;
  const workspace = body.dataset.workspace;

  // --- small helpers ------------------------------------------------------------------
  function fragment(url, options) {
    const init = Object.assign({ credentials: "same-origin", headers: {} }, options || {});
    init.headers["HX-Request"] = "true";
    return fetch(url, init);
  }

  function replaceWith(element, html) {
    const holder = document.createElement("template");
    holder.innerHTML = html.trim();
    const next = holder.content.firstElementChild;
    if (!next) return null;
    element.replaceWith(next);
    if (window.htmx) window.htmx.process(next);
    wire(next);
    return next;
  }

  function flash(message, kind) {
    let box = document.getElementById("flash");
    if (!box) {
      box = document.createElement("p");
      box.id = "flash";
      box.setAttribute("role", "alert");
      document.getElementById("main").prepend(box);
    }
    box.className = "flash" + (kind ? " " + kind : "");
    box.textContent = message;
  }

  // --- live regions ---------------------------------------------------------------------
  // An element with data-live="issue.updated comment." (types or prefixes) and
  // data-live-url is fetched again when a matching event arrives; data-live-issue /
  // data-live-task narrow it to one issue or task.
  const pending = new Map();
  let dragging = false;

  function matches(element, event) {
    const kinds = (element.dataset.live || "").split(/\s+/).filter(Boolean);
    const type = event.type || "";
    if (!kinds.some((k) => (k.endsWith(".") ? type.startsWith(k) : type === k))) return false;
    const data = event.data || {};
    if (element.dataset.liveIssue && data.issue_id && data.issue_id !== element.dataset.liveIssue) return false;
    if (element.dataset.liveIssue && !data.issue_id && !data.task_id) return false;
    if (element.dataset.liveTask && data.task_id !== element.dataset.liveTask) return false;
    return true;
  }

  function refresh(element) {
    if (!element.id) return;
    if (pending.has(element.id)) return;
    pending.set(element.id, setTimeout(async function run() {
      const current = document.getElementById(element.id);
      pending.delete(element.id);
      if (!current || !current.dataset.liveUrl) return;
      if (dragging || current.contains(document.activeElement) && document.activeElement.matches("input, textarea, select")) {
        pending.set(element.id, setTimeout(run, 400));  // never yank a field from under the user
        return;
      }
      try {
        const response = await fragment(current.dataset.liveUrl);
        if (response.ok) replaceWith(current, await response.text());
      } catch (_) { /* the next event or reconnect resyncs */ }
    }, 120));
  }

  function refreshAll(event) {
    document.querySelectorAll("[data-live]").forEach((element) => {
      if (!event || matches(element, event)) refresh(element);
    });
    document.querySelectorAll("[data-transcript]").forEach((element) => {
      if (!event || (event.type === "task.message" && event.data && event.data.task_id === element.dataset.task)) {
        appendTranscript(element);
      }
    });
  }

  // --- the live connection: reconnects with backoff and resumes from the last event --------
  // Resume from the newest event the page was rendered after: nothing between the render
  // and the connection is lost.
  let lastId = body.dataset.lastEvent ? Number(body.dataset.lastEvent) : null;
  let backoff = 1000;
  let everConnected = false;
  const banner = document.getElementById("live-banner");

  function connect() {
    if (!workspace || !("WebSocket" in window)) return;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    let url = scheme + "//" + location.host + "/api/v1/ws?workspace=" + encodeURIComponent(workspace);
    if (lastId !== null) url += "&last_event_id=" + lastId;
    const socket = new WebSocket(url);
    let opened = false;
    socket.onopen = function () {
      opened = true;
      backoff = 1000;
      if (banner) banner.classList.remove("shown");
      if (everConnected) refreshAll(null);  // whatever happened while we were away
      everConnected = true;
      body.dataset.live = "connected";
    };
    socket.onmessage = function (message) {
      let event;
      try { event = JSON.parse(message.data); } catch (_) { return; }
      if (event.type === "resync") { refreshAll(null); return; }
      if (typeof event.id === "number") lastId = event.id;
      refreshAll(event);
    };
    socket.onclose = function () {
      body.dataset.live = "disconnected";
      if (banner && (opened || everConnected)) banner.classList.add("shown");
      setTimeout(connect, backoff + Math.random() * 250);
      backoff = Math.min(backoff * 2, 30000);
    };
  }

  // --- transcript -------------------------------------------------------------------------
  async function appendTranscript(element) {
    if (element.dataset.busy) { element.dataset.again = "1"; return; }
    element.dataset.busy = "1";
    try {
      const nearBottom = element.scrollHeight - element.scrollTop - element.clientHeight < 60;
      const url = element.dataset.url + "?after=" + (element.dataset.after || "0");
      const response = await fragment(url);
      if (response.ok) {
        const html = (await response.text()).trim();
        if (html) {
          const empty = element.querySelector(".empty");
          if (empty) empty.remove();
          element.insertAdjacentHTML("beforeend", html);
          const last = element.querySelector("[data-seq]:last-of-type") || Array.from(element.querySelectorAll("[data-seq]")).pop();
          if (last) element.dataset.after = last.dataset.seq;
          if (nearBottom) element.scrollTop = element.scrollHeight;
        }
      }
    } finally {
      delete element.dataset.busy;
      if (element.dataset.again) { delete element.dataset.again; appendTranscript(element); }
    }
  }

  // --- board drag-and-drop (the Move form on each card is the keyboard way) ------------------
  function wireBoard(root) {
    root.querySelectorAll(".issue-card[draggable=true]").forEach((card) => {
      if (!once(card)) return;
      card.addEventListener("dragstart", (e) => {
        dragging = true;
        card.classList.add("dragging");
        e.dataTransfer.effectAllowed = "move";
        e.dataTransfer.setData("text/plain", card.dataset.key);
      });
      card.addEventListener("dragend", () => {
        dragging = false;
        card.classList.remove("dragging");
        document.querySelectorAll(".drop-target").forEach((c) => c.classList.remove("drop-target"));
      });
    });
    root.querySelectorAll(".column[data-status]").forEach((column) => {
      if (!once(column)) return;
      const list = column.querySelector(".cards");
      column.addEventListener("dragover", (e) => {
        const card = document.querySelector(".issue-card.dragging");
        if (!card) return;
        e.preventDefault();
        column.classList.add("drop-target");
        const after = cardAfter(list, e.clientY);
        if (after) list.insertBefore(card, after); else list.appendChild(card);
      });
      column.addEventListener("dragleave", (e) => {
        if (!column.contains(e.relatedTarget)) column.classList.remove("drop-target");
      });
      column.addEventListener("drop", async (e) => {
        e.preventDefault();
        column.classList.remove("drop-target");
        const card = document.querySelector(".issue-card.dragging");
        if (!card) return;
        dragging = false;
        await move(card, column.dataset.status);
      });
    });
  }

  function cardAfter(list, y) {
    const cards = Array.from(list.querySelectorAll(".issue-card:not(.dragging)"));
    return cards.find((c) => { const box = c.getBoundingClientRect(); return y < box.top + box.height / 2; }) || null;
  }

  async function move(card, statusId) {
    const prev = card.previousElementSibling;
    const next = card.nextElementSibling;
    const form = new FormData();
    form.set("status_id", statusId);
    form.set("revision", card.dataset.revision);
    if (prev && prev.dataset.position) form.set("after", prev.dataset.key);
    if (next && next.dataset.position) form.set("before", next.dataset.key);
    const response = await fragment(card.dataset.moveUrl, { method: "POST", body: form });
    if (!response.ok) {
      let detail = "The issue could not be moved.";
      try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
      flash(detail, "error");
    }
    const board = document.getElementById("board");
    if (board) refresh(board);
  }

  // --- @mention completion ----------------------------------------------------------------
  function wireMentions(root) {
    root.querySelectorAll("textarea[data-mentions]").forEach((area) => {
      if (!once(area)) return;
      let menu = null;
      let items = [];
      let selected = 0;
      const hide = () => { if (menu) menu.remove(); menu = null; };
      const close = () => { hide(); items = []; };
      const query = () => {
        const before = area.value.slice(0, area.selectionStart);
        const found = /(^|\s)@([\w.+-]*)$/.exec(before);
        return found ? found[2] : null;
      };
      const choose = (item) => {
        const before = area.value.slice(0, area.selectionStart).replace(/@([\w.+-]*)$/, "@" + item.handle + " ");
        area.value = before + area.value.slice(area.selectionStart);
        area.selectionStart = area.selectionEnd = before.length;
        close();
        area.focus();
      };
      const show = () => {
        hide();
        if (!items.length) return;
        menu = document.createElement("ul");
        menu.className = "mention-menu";
        menu.setAttribute("role", "listbox");
        items.forEach((item, i) => {
          const li = document.createElement("li");
          li.setAttribute("role", "option");
          li.setAttribute("aria-selected", String(i === selected));
          li.textContent = item.label + " (@" + item.handle + ")";
          li.addEventListener("mousedown", (e) => { e.preventDefault(); choose(item); });
          menu.appendChild(li);
        });
        area.parentElement.style.position = "relative";
        area.insertAdjacentElement("afterend", menu);
      };
      let asked = 0;
      area.addEventListener("input", async () => {
        const q = query();
        if (q === null) { close(); return; }
        const ticket = ++asked;
        const response = await fetch(area.dataset.mentions + "?q=" + encodeURIComponent(q), { credentials: "same-origin" });
        if (!response.ok || ticket !== asked) return;  // a newer keystroke's answer wins
        const found = await response.json();
        if (ticket !== asked) return;
        items = found;
        selected = 0;
        show();
      });
      area.addEventListener("keydown", (e) => {
        if (!menu) return;
        if (e.key === "ArrowDown" || e.key === "ArrowUp") {
          e.preventDefault();
          selected = (selected + (e.key === "ArrowDown" ? 1 : items.length - 1)) % items.length;
          show();
        } else if (e.key === "Enter" || e.key === "Tab") {
          e.preventDefault();
          choose(items[selected]);
        } else if (e.key === "Escape") {
          close();
        }
      });
      area.addEventListener("blur", () => setTimeout(close, 150));
    });
  }

  // --- wiring ---------------------------------------------------------------------------
  // Each element is wired once, whether it came with the page, from a live refresh or
  // from an htmx swap (boosted links and forms replace <main>).
  const wired = new WeakSet();
  function once(element) {
    if (wired.has(element)) return false;
    wired.add(element);
    return true;
  }

  function wire(root) {
    root.querySelectorAll("[data-autosubmit]").forEach((select) => {
      if (once(select)) select.addEventListener("change", () => select.form.requestSubmit ? select.form.requestSubmit() : select.form.submit());
    });
    root.querySelectorAll("[data-transcript]").forEach((element) => {
      if (once(element)) element.scrollTop = element.scrollHeight;
    });
    wireBoard(root);
    wireMentions(root);
  }

  document.addEventListener("htmx:load", (event) => wire(event.detail.elt.parentElement || document));
  wire(document);
  connect();
})();
