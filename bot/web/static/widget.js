/*
 * tuneloop chat widget. Embed on any page with one tag:
 *
 *   <script src="https://YOUR-TUNELOOP-HOST/widget.js"></script>
 *
 * Plain JavaScript, no build step, no dependencies. Everything lives in an open shadow
 * root, so the host page's CSS cannot reach it (and its CSS cannot leak out).
 * The API base is the folder this script was loaded from.
 *
 * Test hooks (data-testid): tl-bubble, tl-panel, tl-close, tl-new, tl-log, tl-error,
 * tl-input, tl-send, tl-turn, tl-prompt, tl-answer (data-response-id, data-state
 * "streaming"|"done"|"failed", data-position, data-index), tl-answer-text, tl-feedback,
 * tl-thumb-up, tl-thumb-down (aria-pressed), tl-star-1..5 (aria-pressed up to the rating),
 * tl-down-form, tl-reason, tl-comment, tl-down-submit, tl-down-cancel, tl-ab (data-state
 * "streaming"|"choosing"|"chosen", data-choice = the button pressed, by display label,
 * data-winner = the stored winner, by generation index), tl-choose-a, tl-choose-b,
 * tl-choose-tie, tl-choose-both_bad ("A"/"B" are the answers shown first/second),
 * tl-ab-note, tl-ab-reopen.
 */
(function () {
  "use strict";

  if (window.__tuneloopWidget) return; // embedded twice: keep the first
  var script = document.currentScript;
  if (!script || !script.src) {
    console.error("tuneloop widget: load it with <script src=...>, not inline or as a module");
    return;
  }
  var BASE = new URL(".", script.src).href.replace(/\/$/, "");
  var KEYS = { token: "tuneloop.token@" + BASE, conversation: "tuneloop.conversation@" + BASE };
  var REASONS = [
    ["incorrect", "Incorrect"], ["unhelpful", "Unhelpful"], ["unsafe", "Unsafe"],
    ["off_topic", "Off topic"], ["too_long", "Too long"], ["too_short", "Too short"], ["other", "Other"]
  ];
  var LABELS = ["A", "B"]; // by display position
  var CHOICES = [["a", "A is better"], ["b", "B is better"], ["tie", "Tie"], ["both_bad", "Both bad"]];

  // ------------------------------------------------------------------ storage

  var memory = {};
  var store = {
    get: function (key) {
      try { return window.localStorage.getItem(key); } catch (e) { return memory[key] || null; }
    },
    set: function (key, value) {
      try { window.localStorage.setItem(key, value); } catch (e) { memory[key] = value; }
    },
    remove: function (key) {
      try { window.localStorage.removeItem(key); } catch (e) { delete memory[key]; }
    }
  };

  function randomKey() {
    var c = window.crypto;
    if (c && c.randomUUID) return c.randomUUID(); // secure contexts only
    var bytes = new Uint8Array(16);
    c.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }

  // ------------------------------------------------------------------ HTTP

  function ApiError(status, detail) {
    this.status = status;
    this.message = detail;
  }

  function sleep(ms) { return new Promise(function (resolve) { setTimeout(resolve, ms); }); }

  async function errorFrom(response) {
    var detail = "Request failed (" + response.status + ")";
    try {
      var body = await response.json();
      if (body && body.detail) detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (e) { /* not JSON */ }
    return new ApiError(response.status, detail);
  }

  function headers(extra) {
    var h = { "Content-Type": "application/json" };
    if (state.token) h.Authorization = "Bearer " + state.token;
    for (var k in extra || {}) h[k] = extra[k];
    return h;
  }

  /** JSON request. With `idempotent`, network errors and 5xx are retried with the same key. */
  async function api(method, path, body, idempotent) {
    var extra = idempotent ? { "Idempotency-Key": randomKey() } : {};
    var tries = idempotent ? 3 : 1;
    for (var attempt = 1; ; attempt++) {
      var response;
      try {
        response = await fetch(BASE + path, {
          method: method, headers: headers(extra), body: body === undefined ? undefined : JSON.stringify(body)
        });
      } catch (e) {
        if (attempt < tries) { await sleep(400 * attempt); continue; }
        throw new ApiError(0, "Cannot reach the assistant. Check your connection.");
      }
      if (response.status >= 500 && attempt < tries) { await sleep(400 * attempt); continue; }
      if (!response.ok) throw await errorFrom(response);
      return response.status === 204 ? null : response.json();
    }
  }

  /** Parse a text/event-stream body, calling onEvent(name, data) per event. */
  async function readEvents(response, onEvent) {
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    function flush(block) {
      var name = "message", data = [];
      block.split("\n").forEach(function (line) {
        if (!line || line[0] === ":") return;
        var colon = line.indexOf(":");
        var field = colon < 0 ? line : line.slice(0, colon);
        var value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") name = value;
        else if (field === "data") data.push(value);
      });
      if (!data.length) return;
      var parsed;
      try { parsed = JSON.parse(data.join("\n")); } catch (e) { return; }
      onEvent(name, parsed);
    }
    for (;;) {
      var chunk = await reader.read();
      if (chunk.done) break;
      buffer += decoder.decode(chunk.value, { stream: true }).replace(/\r\n?/g, "\n");
      var end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        flush(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
    buffer += decoder.decode();
    if (buffer.trim()) flush(buffer);
  }

  // ------------------------------------------------------------------ state

  var state = {
    token: store.get(KEYS.token),
    conversationId: store.get(KEYS.conversation),
    turns: [],
    ready: null, // promise of a loaded conversation
    busy: false
  };

  async function newSession() {
    var session = await api("POST", "/api/session");
    state.token = session.token;
    store.set(KEYS.token, session.token);
  }

  async function newConversation() {
    if (!state.token) await newSession();
    var conversation;
    try {
      conversation = await api("POST", "/api/conversations", {});
    } catch (e) {
      if (e.status !== 401) throw e;
      await newSession(); // the server forgot our token: start over as a new visitor
      conversation = await api("POST", "/api/conversations", {});
    }
    state.conversationId = conversation.id;
    store.set(KEYS.conversation, conversation.id);
    state.turns = [];
    renderAll();
  }

  async function loadConversation() {
    if (state.token && state.conversationId) {
      try {
        var conversation = await api("GET", "/api/conversations/" + encodeURIComponent(state.conversationId));
        state.turns = conversation.turns.map(turnFromServer);
        renderAll();
        return;
      } catch (e) {
        if (e.status === 401) { state.token = null; store.remove(KEYS.token); }
        else if (e.status !== 404 && e.status !== 422) throw e;
      }
    }
    await newConversation();
  }

  function ensureReady() {
    if (!state.ready) {
      state.ready = loadConversation().catch(function (e) {
        state.ready = null; // try again on the next open or send
        throw e;
      });
    }
    return state.ready;
  }

  function turnFromServer(t) {
    var answers = t.answers.map(function (a) {
      return { id: a.response_id, index: a.index, position: a.position, text: a.text, status: "done",
               rating: a.rating || {} };
    });
    var turn = { prompt: t.prompt, promptMessageId: t.prompt_message_id, ab: answers.length > 1,
                 answers: answers, winner: t.winner, chosenId: t.chosen_response_id, expanded: false };
    if (turn.ab && turn.winner) turn.choice = displayChoice(turn, turn.winner);
    return turn;
  }

  // A/B bookkeeping. The API names answers by generation index (a = index 0, b = index 1);
  // the user sees them by position (A = shown first). These two convert between the views.
  function byIndex(turn, index) { return turn.answers.filter(function (a) { return a.index === index; })[0]; }
  function byPosition(turn, position) { return turn.answers.filter(function (a) { return a.position === position; })[0]; }

  function storedWinner(turn, choice) {
    if (choice !== "a" && choice !== "b") return choice;
    return byPosition(turn, choice === "a" ? 0 : 1).index === 0 ? "a" : "b";
  }

  function displayChoice(turn, winner) {
    if (winner !== "a" && winner !== "b") return winner;
    return byIndex(turn, winner === "a" ? 0 : 1).position === 0 ? "a" : "b";
  }

  function chosenAnswer(turn) {
    if (turn.choice === "a" || turn.choice === "b") return byPosition(turn, turn.choice === "a" ? 0 : 1);
    return byPosition(turn, 0); // tie or both bad: the conversation goes on with the one shown first
  }

  // ------------------------------------------------------------------ DOM helpers

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    for (var name in attrs || {}) {
      var value = attrs[name];
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = value;
      else if (name === "class") node.className = value;
      else if (name.slice(0, 2) === "on") node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : value);
    }
    (children || []).forEach(function (child) { if (child) node.appendChild(child); });
    return node;
  }

  var ICONS = {
    chat: '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 5.5A2.5 2.5 0 0 1 6.5 3h11A2.5 2.5 0 0 1 20 5.5v8a2.5 2.5 0 0 1-2.5 2.5H10l-4.2 3.6c-.5.4-1.3.1-1.3-.6V16A2.5 2.5 0 0 1 4 13.5z"/></svg>',
    close: '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M6 6l12 12M18 6L6 18" stroke="currentColor" stroke-width="2.2" stroke-linecap="round" fill="none"/></svg>',
    send: '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M3.4 20.4l17.4-7.5c.8-.4.8-1.5 0-1.8L3.4 3.6c-.7-.3-1.4.3-1.2 1l1.9 6.4 8.4 1-8.4 1-1.9 6.4c-.2.7.5 1.3 1.2 1z"/></svg>',
    plus: '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M12 5v14M5 12h14" stroke="currentColor" stroke-width="2.2" stroke-linecap="round" fill="none"/></svg>',
    up: '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M7 10v10H4a1 1 0 0 1-1-1v-8a1 1 0 0 1 1-1zm2 10h8.3a2 2 0 0 0 2-1.6l1.4-7A2 2 0 0 0 18.7 9H14l.7-3.6A2 2 0 0 0 12.8 3L9 10z"/></svg>',
    down: '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M7 14V4H4a1 1 0 0 0-1 1v8a1 1 0 0 0 1 1zm2-10h8.3a2 2 0 0 1 2 1.6l1.4 7a2 2 0 0 1-2 2.4H14l.7 3.6a2 2 0 0 1-1.9 2.4L9 14z"/></svg>',
    star: '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M12 2.8l2.8 5.8 6.3.9-4.6 4.4 1.1 6.3L12 17.2l-5.6 3 1.1-6.3L2.9 9.5l6.3-.9z"/></svg>'
  };

  function iconButton(icon, attrs) {
    var button = el("button", Object.assign({ type: "button" }, attrs));
    button.innerHTML = ICONS[icon]; // our own constant markup, never user or model text
    return button;
  }

  // ------------------------------------------------------------------ styles

  var CSS = [
    ":host{all:initial}",
    "*{box-sizing:border-box}",
    ".tl-root{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;color:#1f2330;-webkit-font-smoothing:antialiased}",
    "button{font:inherit;color:inherit;cursor:pointer}",
    "button:disabled{cursor:default;opacity:.45}",
    "button:focus-visible,textarea:focus-visible,select:focus-visible,input:focus-visible{outline:2px solid #5b5bd6;outline-offset:2px}",
    "svg{width:18px;height:18px;fill:currentColor;display:block}",
    ".tl-bubble{position:fixed;right:20px;bottom:20px;width:56px;height:56px;border-radius:50%;border:0;background:linear-gradient(135deg,#5b5bd6,#8e4ec6);color:#fff;box-shadow:0 8px 24px rgba(40,30,90,.35);display:flex;align-items:center;justify-content:center;transition:transform .15s}",
    ".tl-bubble:hover{transform:scale(1.06)}",
    ".tl-bubble svg{width:26px;height:26px}",
    ".tl-panel{position:fixed;right:20px;bottom:88px;width:420px;max-width:calc(100vw - 24px);height:600px;max-height:calc(100vh - 110px);background:#fff;border-radius:16px;box-shadow:0 16px 48px rgba(20,20,50,.28);display:flex;flex-direction:column;overflow:hidden;border:1px solid #e4e4ef}",
    ".tl-panel[hidden]{display:none}",
    ".tl-head{display:flex;align-items:center;gap:8px;padding:12px 12px 12px 16px;background:linear-gradient(135deg,#5b5bd6,#8e4ec6);color:#fff}",
    ".tl-title{flex:1;font-weight:650;font-size:15px}",
    ".tl-title small{display:block;font-weight:400;font-size:12px;opacity:.85}",
    ".tl-head button{background:rgba(255,255,255,.16);border:0;border-radius:8px;width:32px;height:32px;display:flex;align-items:center;justify-content:center;color:#fff}",
    ".tl-head button:hover{background:rgba(255,255,255,.28)}",
    ".tl-log{flex:1;overflow-y:auto;padding:16px 14px;background:#f7f7fb;display:flex;flex-direction:column;gap:14px}",
    ".tl-empty{margin:auto;text-align:center;color:#6b6f80;max-width:260px}",
    ".tl-empty strong{display:block;color:#1f2330;font-size:15px;margin-bottom:4px}",
    ".tl-turn{display:flex;flex-direction:column;gap:8px}",
    ".tl-user{align-self:flex-end;max-width:85%;background:#5b5bd6;color:#fff;padding:8px 12px;border-radius:14px 14px 4px 14px;white-space:pre-wrap;overflow-wrap:anywhere}",
    ".tl-answer{align-self:flex-start;max-width:92%;background:#fff;border:1px solid #e4e4ef;padding:9px 12px;border-radius:14px 14px 14px 4px;box-shadow:0 1px 2px rgba(0,0,0,.04)}",
    ".tl-text{white-space:pre-wrap;overflow-wrap:anywhere;min-height:1.45em}",
    ".tl-answer[data-state=streaming] .tl-text:empty::before{content:'';display:inline-block;width:28px;height:8px;background:radial-gradient(circle,#9a9db0 3px,transparent 3.5px) 0 0/10px 8px repeat-x;animation:tl-pulse 1s infinite}",
    ".tl-answer[data-state=streaming] .tl-text:not(:empty)::after{content:'\\258D';color:#8e4ec6;animation:tl-pulse 1s infinite}",
    ".tl-answer[data-state=failed]{border-color:#f0b4b4}",
    "@keyframes tl-pulse{50%{opacity:.3}}",
    ".tl-label{display:inline-block;font-size:11px;font-weight:700;letter-spacing:.04em;color:#5b5bd6;background:#ececfb;border-radius:6px;padding:1px 7px;margin-bottom:6px}",
    ".tl-ab{align-self:stretch;display:flex;flex-direction:column;gap:8px}",
    ".tl-pair{display:grid;grid-template-columns:1fr 1fr;gap:8px}",
    ".tl-pair .tl-answer{max-width:none;align-self:stretch}",
    ".tl-ab-hint{font-size:12px;color:#6b6f80}",
    ".tl-choices{display:grid;grid-template-columns:repeat(4,auto);gap:6px;justify-content:start}",
    ".tl-choices button{border:1px solid #d4d4e6;background:#fff;border-radius:999px;padding:4px 11px;font-size:12.5px}",
    ".tl-choices button:hover:not(:disabled){border-color:#5b5bd6;color:#5b5bd6}",
    ".tl-choices button[aria-pressed=true]{background:#5b5bd6;border-color:#5b5bd6;color:#fff}",
    ".tl-ab-note{font-size:12px;color:#6b6f80;display:flex;gap:8px;align-items:center}",
    ".tl-link{border:0;background:none;padding:0;color:#5b5bd6;text-decoration:underline;font-size:12px}",
    ".tl-feedback{display:flex;align-items:center;gap:2px;margin-top:6px;padding-top:6px;border-top:1px solid #f0f0f5}",
    ".tl-feedback button{border:0;background:none;border-radius:6px;padding:4px;color:#9a9db0;display:flex}",
    ".tl-feedback button:hover:not(:disabled){color:#5b5bd6;background:#f1f1fb}",
    ".tl-feedback svg{width:16px;height:16px}",
    ".tl-thumb[aria-pressed=true]{color:#5b5bd6}",
    ".tl-thumb-down[aria-pressed=true]{color:#d1455b}",
    ".tl-sep{width:1px;height:16px;background:#e4e4ef;margin:0 6px}",
    ".tl-stars{display:flex}",
    ".tl-stars button{padding:3px 1px}",
    ".tl-star.tl-on{color:#f0a020}",
    ".tl-feedback button.tl-star:hover{background:none;color:#f0a020}",
    ".tl-down-form{margin-top:8px;display:flex;flex-direction:column;gap:6px;background:#fbf6f7;border:1px solid #f1dde1;border-radius:10px;padding:8px}",
    ".tl-down-form label{font-size:12px;color:#6b6f80}",
    ".tl-down-form select,.tl-down-form textarea{font:inherit;font-size:13px;border:1px solid #d4d4e6;border-radius:8px;padding:5px 8px;background:#fff;color:#1f2330;width:100%}",
    ".tl-down-form textarea{resize:vertical;min-height:52px}",
    ".tl-row{display:flex;gap:6px;justify-content:flex-end}",
    ".tl-btn{border:1px solid #d4d4e6;background:#fff;border-radius:8px;padding:4px 12px;font-size:13px}",
    ".tl-btn.tl-primary{background:#5b5bd6;border-color:#5b5bd6;color:#fff}",
    ".tl-error{margin:0 14px;padding:7px 10px;border-radius:8px;background:#fdecee;color:#a4243b;font-size:12.5px;display:flex;gap:8px;align-items:flex-start}",
    ".tl-error[hidden]{display:none}",
    ".tl-error span{flex:1}",
    ".tl-error button{border:0;background:none;color:inherit;padding:0 2px;font-size:14px;line-height:1}",
    ".tl-form{display:flex;gap:8px;padding:10px 12px 12px;border-top:1px solid #ececf3;background:#fff;align-items:flex-end}",
    ".tl-input{flex:1;resize:none;font:inherit;border:1px solid #d4d4e6;border-radius:12px;padding:9px 12px;max-height:120px;min-height:40px;color:#1f2330;background:#fff}",
    ".tl-input:focus,.tl-input:focus-visible{outline:none;border-color:#5b5bd6;box-shadow:0 0 0 3px rgba(91,91,214,.15)}",
    ".tl-input:disabled{background:#f4f4f8}",
    ".tl-send{width:40px;height:40px;border:0;border-radius:12px;background:#5b5bd6;color:#fff;display:flex;align-items:center;justify-content:center;flex:none}",
    ".tl-foot{font-size:11px;color:#9a9db0;text-align:center;padding:0 0 8px;background:#fff}",
    ".tl-sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}",
    "@media (max-width:520px){.tl-panel{right:8px;left:8px;width:auto;max-width:none;bottom:84px;height:calc(100vh - 100px)}.tl-pair{grid-template-columns:1fr}.tl-choices{grid-template-columns:1fr 1fr}}",
    "@media (prefers-reduced-motion:reduce){*{animation:none!important;transition:none!important}}"
  ].join("\n");

  // ------------------------------------------------------------------ shell

  var ui = {};

  function build() {
    var host = document.createElement("tuneloop-widget");
    host.setAttribute("style", "all:initial!important;position:fixed!important;right:0!important;bottom:0!important;" +
      "width:0!important;height:0!important;z-index:2147483000!important;display:block!important");
    var root = host.attachShadow({ mode: "open" });
    root.appendChild(el("style", { text: CSS }));

    ui.root = root;
    ui.log = el("div", { class: "tl-log", role: "log", "aria-live": "polite", tabindex: "0", "aria-label": "Conversation",
                         "data-testid": "tl-log" });
    ui.errorText = el("span");
    ui.error = el("div", { class: "tl-error", role: "alert", "data-testid": "tl-error", hidden: true }, [
      ui.errorText, el("button", { type: "button", "aria-label": "Dismiss", text: "\u00d7", onclick: hideError })
    ]);
    ui.input = el("textarea", {
      class: "tl-input", rows: "1", placeholder: "Ask anything\u2026", "aria-label": "Message", maxlength: "8000",
      "data-testid": "tl-input", onkeydown: onInputKey, oninput: autosize
    });
    ui.send = iconButton("send", { class: "tl-send", "aria-label": "Send message", "data-testid": "tl-send",
                                   onclick: function () { send(); } });
    ui.newButton = iconButton("plus", { "aria-label": "New conversation", title: "New conversation",
                                        "data-testid": "tl-new", onclick: startOver });
    ui.panel = el("div", { class: "tl-panel", id: "tl-panel", role: "dialog", "aria-label": "tuneloop chat",
                           "data-testid": "tl-panel", hidden: true, onkeydown: onPanelKey }, [
      el("div", { class: "tl-head" }, [
        el("div", { class: "tl-title" }, [document.createTextNode("tuneloop"),
          el("small", { text: "Rate answers to help it learn" })]),
        ui.newButton,
        iconButton("close", { "aria-label": "Close chat", "data-testid": "tl-close", onclick: function () { toggle(false); } })
      ]),
      ui.log,
      ui.error,
      el("div", { class: "tl-form" }, [ui.input, ui.send]),
      el("div", { class: "tl-foot", text: "Enter to send \u00b7 Shift+Enter for a new line" })
    ]);
    ui.bubble = iconButton("chat", { class: "tl-bubble", "aria-label": "Open chat", "aria-expanded": "false",
                                     "aria-controls": "tl-panel", "data-testid": "tl-bubble",
                                     onclick: function () { toggle(); } });
    root.appendChild(el("div", { class: "tl-root" }, [ui.panel, ui.bubble]));
    document.body.appendChild(host);
    renderAll();
  }

  function toggle(open) {
    if (open === undefined) open = ui.panel.hidden;
    ui.panel.hidden = !open;
    ui.bubble.setAttribute("aria-expanded", String(open));
    ui.bubble.setAttribute("aria-label", open ? "Close chat" : "Open chat");
    if (!open) { ui.bubble.focus(); return; }
    ui.input.focus();
    ensureReady().then(function () { scrollDown(true); }, showError);
  }

  function onPanelKey(event) {
    if (event.key === "Escape") { event.stopPropagation(); toggle(false); }
  }

  function onInputKey(event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  }

  function autosize() {
    ui.input.style.height = "auto";
    ui.input.style.height = Math.min(ui.input.scrollHeight + 2, 120) + "px";
  }

  function setBusy(busy) {
    state.busy = busy;
    ui.input.disabled = busy;
    ui.send.disabled = busy;
    ui.newButton.disabled = busy;
    ui.log.setAttribute("aria-busy", String(busy));
    if (!busy && !ui.panel.hidden) ui.input.focus();
  }

  function showError(error) {
    ui.errorText.textContent = (error && error.message) || String(error);
    ui.error.hidden = false;
  }

  function hideError() { ui.error.hidden = true; }

  function scrollDown(force) {
    var log = ui.log;
    if (force || log.scrollHeight - log.scrollTop - log.clientHeight < 80) log.scrollTop = log.scrollHeight;
  }

  // ------------------------------------------------------------------ rendering

  function renderAll() {
    if (!ui.log) return;
    ui.log.textContent = "";
    if (!state.turns.length) {
      ui.log.appendChild(el("div", { class: "tl-empty", "data-testid": "tl-empty" }, [
        el("strong", { text: "Hi! Ask me anything." }),
        document.createTextNode("Thumbs, stars and A/B picks on my answers teach me to do better.")
      ]));
    }
    state.turns.forEach(function (turn) { ui.log.appendChild(renderTurn(turn)); });
    scrollDown(true);
  }

  function rerender(turn) {
    var old = turn.node;
    var fresh = renderTurn(turn);
    if (old && old.parentNode) swap(old, fresh);
    else ui.log.appendChild(fresh);
  }

  /** Replace a node; if it held the keyboard focus, give it to the same control in the new one. */
  function swap(old, fresh) {
    var active = ui.root.activeElement;
    var had = active && old.contains(active);
    var id = had && active.getAttribute("data-testid");
    old.parentNode.replaceChild(fresh, old);
    if (!had) return;
    var target = (id && fresh.querySelector('[data-testid="' + id + '"]')) || ui.log;
    target.focus();
  }

  function renderTurn(turn) {
    var node = el("div", { class: "tl-turn", "data-testid": "tl-turn" }, [
      el("div", { class: "tl-user", "data-testid": "tl-prompt", text: turn.prompt })
    ]);
    if (!turn.answers) {
      node.appendChild(answerShell({ id: "", status: "streaming", text: "" }, null));
    } else if (!turn.answers.length) {
      node.appendChild(el("div", { class: "tl-answer", "data-state": "failed", text: "No answer was stored for this message." }));
    } else if (!turn.ab) {
      node.appendChild(answerShell(turn.answers[0], null));
    } else {
      node.appendChild(renderPair(turn));
    }
    turn.node = node;
    return node;
  }

  function renderPair(turn) {
    var allDone = turn.answers.every(function (a) { return a.status === "done"; });
    var chosen = turn.choice && !turn.expanded;
    var box = el("div", { class: "tl-ab", "data-testid": "tl-ab",
                          "data-state": !allDone ? "streaming" : turn.choice ? "chosen" : "choosing",
                          "data-choice": turn.choice || null, "data-winner": turn.winner || null });
    if (chosen) {
      var answer = chosenAnswer(turn);
      box.appendChild(answerShell(answer, LABELS[answer.position]));
      var what = { a: "You preferred A.", b: "You preferred B.", tie: "You called it a tie; going on with A.",
                   both_bad: "You found both bad; going on with A." }[turn.choice];
      box.appendChild(el("div", { class: "tl-ab-note", "data-testid": "tl-ab-note" }, [
        el("span", { text: what }),
        el("button", { type: "button", class: "tl-link", "data-testid": "tl-ab-reopen", text: "Change",
                       onclick: function () { turn.expanded = true; rerender(turn); } })
      ]));
      return box;
    }
    var ordered = turn.answers.slice().sort(function (x, y) { return x.position - y.position; });
    box.appendChild(el("div", { class: "tl-ab-hint", text: "Two answers this time \u2014 which one is better?" }));
    box.appendChild(el("div", { class: "tl-pair" }, ordered.map(function (a) {
      return answerShell(a, LABELS[a.position], true);
    })));
    box.appendChild(el("div", { class: "tl-choices", role: "group", "aria-label": "Which answer is better?" },
      CHOICES.map(function (c) {
        return el("button", { type: "button", "data-testid": "tl-choose-" + c[0], text: c[1], disabled: !allDone,
                              "aria-pressed": String(turn.choice === c[0]),
                              onclick: function () { choose(turn, c[0]); } });
      })));
    return box;
  }

  function shown(text) { return text.replace(/^\s+/, ""); } // models often open with a newline

  /** One answer; its text node is kept on the answer so streamed deltas append in place. */
  function answerShell(answer, label, inPair) {
    answer.textNode = el("div", { class: "tl-text", "data-testid": "tl-answer-text", text: shown(answer.text) });
    var node = el("div", { class: "tl-answer", "data-testid": "tl-answer", "data-response-id": answer.id || null,
                           "data-state": answer.status, "data-position": answer.position, "data-index": answer.index,
                           "aria-busy": String(answer.status === "streaming") }, [
      label ? el("span", { class: "tl-label", text: "Answer " + label }) : null,
      answer.textNode
    ]);
    answer.node = node;
    if (answer.status === "done" && !inPair) node.appendChild(renderFeedback(answer));
    return node;
  }

  function renderFeedback(answer) {
    var rating = answer.rating || {};
    var up = iconButton("up", { class: "tl-thumb tl-thumb-up", "aria-label": "Good answer", title: "Good answer",
                                "aria-pressed": String(rating.thumb === "up"), "data-testid": "tl-thumb-up",
                                onclick: function () { thumb(answer, "up"); } });
    var down = iconButton("down", { class: "tl-thumb tl-thumb-down", "aria-label": "Bad answer", title: "Bad answer",
                                    "aria-pressed": String(rating.thumb === "down"), "data-testid": "tl-thumb-down",
                                    onclick: function () { thumb(answer, "down"); } });
    var stars = el("div", { class: "tl-stars", role: "group", "aria-label": "Rate this answer" });
    for (var n = 1; n <= 5; n++) {
      (function (n) {
        stars.appendChild(iconButton("star", {
          class: "tl-star" + (rating.stars >= n ? " tl-on" : ""), "aria-label": n + " of 5 stars",
          title: n + " of 5", "aria-pressed": String(rating.stars >= n), "data-testid": "tl-star-" + n,
          onclick: function () { rate(answer, { stars: n }, { stars: n }); }
        }));
      })(n);
    }
    var bar = el("div", { class: "tl-feedback", "data-testid": "tl-feedback" }, [up, down, el("span", { class: "tl-sep" }), stars]);
    var wrap = el("div", {}, [bar]);
    // The open form survives redraws of the bar, so text being typed is never lost.
    if (answer.formOpen) wrap.appendChild(answer.formNode || (answer.formNode = downForm(answer)));
    else answer.formNode = null;
    return wrap;
  }

  function downForm(answer) {
    var rating = answer.rating || {};
    var select = el("select", { "data-testid": "tl-reason", "aria-label": "Reason" },
      [el("option", { value: "", text: "Choose a reason (optional)" })].concat(REASONS.map(function (r) {
        return el("option", { value: r[0], text: r[1], selected: rating.reason === r[0] });
      })));
    var comment = el("textarea", { "data-testid": "tl-comment", "aria-label": "Comment (optional)", maxlength: "2000",
                                   placeholder: "What was wrong? (optional)", text: rating.comment || "" });
    var form = el("form", { class: "tl-down-form", "data-testid": "tl-down-form", onsubmit: function (event) {
      event.preventDefault();
      var body = { thumb: "down" };
      if (select.value) body.reason = select.value;
      if (comment.value.trim()) body.comment = comment.value.trim();
      answer.formOpen = false;
      rate(answer, body, body);
    } }, [
      el("label", { text: "What went wrong?" }), select, comment,
      el("div", { class: "tl-row" }, [
        el("button", { type: "button", class: "tl-btn", "data-testid": "tl-down-cancel", text: "Cancel",
                       onclick: function () { answer.formOpen = false; redrawAnswer(answer); } }),
        el("button", { type: "submit", class: "tl-btn tl-primary", "data-testid": "tl-down-submit", text: "Submit" })
      ])
    ]);
    setTimeout(function () { select.focus(); }, 0);
    return form;
  }

  function redrawAnswer(answer) {
    var old = answer.node;
    if (!old || !old.parentNode) return;
    var label = old.querySelector(".tl-label");
    var fresh = answerShell(answer, label ? label.textContent.replace("Answer ", "") : null);
    swap(old, fresh);
  }

  // ------------------------------------------------------------------ feedback

  function thumb(answer, value) {
    if (value === "down") answer.formOpen = true;
    if ((answer.rating || {}).thumb === value) { redrawAnswer(answer); return; } // already so: nothing to send
    rate(answer, { thumb: value }, { thumb: value, reason: null });
  }

  /** Send a rating; show it at once, roll back if the server refuses. */
  async function rate(answer, body, change) {
    var before = Object.assign({}, answer.rating || {});
    answer.rating = Object.assign({}, before, change);
    redrawAnswer(answer);
    try {
      var saved = await api("POST", "/api/feedback/ratings", Object.assign({ response_id: answer.id }, body), true);
      answer.rating = { thumb: saved.thumb, reason: saved.reason, comment: saved.comment, stars: saved.stars };
      hideError();
    } catch (e) {
      answer.rating = before;
      showError(e);
    }
    redrawAnswer(answer);
  }

  async function choose(turn, choice) {
    var a = byIndex(turn, 0), b = byIndex(turn, 1);
    var before = { choice: turn.choice, winner: turn.winner, expanded: turn.expanded };
    var winner = storedWinner(turn, choice);
    turn.choice = choice;
    turn.winner = winner;
    turn.expanded = false;
    rerender(turn);
    try {
      await api("POST", "/api/feedback/comparisons", {
        response_a_id: a.id, response_b_id: b.id, winner: winner, a_position: a.position
      }, true);
      turn.chosenId = chosenAnswer(turn).id;
      hideError();
    } catch (e) {
      Object.assign(turn, before);
      showError(e);
    }
    rerender(turn);
  }

  // ------------------------------------------------------------------ sending

  async function startOver() {
    if (state.busy) return;
    hideError();
    try {
      setBusy(true);
      await newConversation();
      state.ready = Promise.resolve();
    } catch (e) {
      showError(e);
    } finally {
      setBusy(false);
    }
  }

  async function send() {
    var text = ui.input.value.trim();
    if (!text || state.busy) return;
    hideError();
    setBusy(true);
    var turn = { prompt: text, answers: null, ab: false };
    try {
      await ensureReady();
      ui.input.value = "";
      autosize();
      var empty = ui.log.querySelector(".tl-empty");
      if (empty) empty.remove();
      state.turns.push(turn);
      ui.log.appendChild(renderTurn(turn));
      scrollDown(true);
      var response = await fetch(BASE + "/api/conversations/" + encodeURIComponent(state.conversationId) + "/messages", {
        method: "POST", headers: headers({ Accept: "text/event-stream" }), body: JSON.stringify({ content: text })
      }).catch(function () { throw new ApiError(0, "Cannot reach the assistant. Check your connection."); });
      if (!response.ok) throw await errorFrom(response);
      await readEvents(response, function (name, data) { onEvent(turn, name, data); });
      if (!turn.answers) throw new ApiError(0, "The assistant did not answer. Please try again.");
      turn.answers.forEach(function (a) { if (a.status === "streaming") a.status = "failed"; });
      if (turn.answers.some(function (a) { return a.status === "failed"; })) {
        rerender(turn);
        if (ui.error.hidden) showError(new ApiError(0, "The answer was cut off. Please try again."));
      }
    } catch (e) {
      if (!turn.answers) { // nothing was answered: take the message back so it can be sent again
        state.turns = state.turns.filter(function (t) { return t !== turn; });
        if (turn.node) turn.node.remove();
        if (!ui.input.value) ui.input.value = text;
        if (!state.turns.length) renderAll();
      }
      if (e.status === 401 || e.status === 404) { // the session or conversation is gone: start afresh
        if (e.status === 401) { state.token = null; store.remove(KEYS.token); }
        state.conversationId = null;
        store.remove(KEYS.conversation);
        state.ready = null;
        e = new ApiError(e.status, "This conversation is no longer available; starting a new one. Please send again.");
        ensureReady().catch(showError);
      }
      showError(e);
    } finally {
      setBusy(false);
      scrollDown(false);
    }
  }

  function onEvent(turn, name, data) {
    if (name === "turn") {
      turn.promptMessageId = data.prompt_message_id;
      turn.ab = !!data.ab;
      turn.answers = data.answers.map(function (a) {
        return { id: a.response_id, index: a.index, position: a.position, text: "", status: "streaming", rating: {} };
      });
      rerender(turn);
    } else if (name === "delta" || name === "done") {
      var answer = (turn.answers || []).filter(function (a) { return a.id === data.response_id; })[0];
      if (!answer) return;
      if (name === "delta") {
        answer.text += data.text;
        answer.textNode.textContent = shown(answer.text);
      } else {
        answer.text = data.text;
        answer.status = "done";
        if (turn.ab) rerender(turn); else redrawAnswer(answer);
      }
    } else if (name === "error") {
      (turn.answers || []).forEach(function (a) { if (a.status === "streaming") a.status = "failed"; });
      if (turn.answers) rerender(turn);
      showError(new ApiError(0, data.message || "The answer failed."));
      return;
    }
    scrollDown(false);
  }

  // ------------------------------------------------------------------ start

  window.__tuneloopWidget = { base: BASE, open: function () { toggle(true); }, close: function () { toggle(false); } };
  if (document.body) build();
  else document.addEventListener("DOMContentLoaded", build);
  // A stored conversation is drawn as soon as the page loads; new visitors get a session only when they open the chat.
  if (state.token && state.conversationId) ensureReady().catch(function () { /* shown when the panel opens */ });
})();
