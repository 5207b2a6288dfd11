// jaxchat web chat. Plain JS, no dependencies: keeps the conversation, streams replies from
// POST /chat/completions (Server-Sent Events over fetch), renders code blocks and calculator calls.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const app = $("app");
  const el = {
    messages: $("messages"), empty: $("empty"), input: $("input"), send: $("send"), form: $("composer"),
    newChat: $("new-chat"), settings: $("settings"), settingsToggle: $("settings-toggle"), error: $("error"),
    temperature: $("temperature"), temperatureValue: $("temperature-value"), topK: $("top-k"),
    maxTokens: $("max-tokens"), status: $("status"), model: $("model"),
  };

  // conversation: {role: "user", content: string} | {role: "assistant", parts: [{type, text}], state, note}
  const state = { conv: [], controller: null, editing: -1 };

  // ---------------------------------------------------------------------------------------------
  // settings (remembered in localStorage)
  const SETTINGS_KEY = "jaxchat.settings";
  function loadSettings() {
    try {
      const s = JSON.parse(localStorage.getItem(SETTINGS_KEY) || "{}");
      if (typeof s.temperature === "number") el.temperature.value = s.temperature;
      if (Number.isInteger(s.top_k)) el.topK.value = s.top_k;
      if (Number.isInteger(s.max_tokens)) el.maxTokens.value = s.max_tokens;
    } catch (e) { /* private mode or bad JSON: keep the defaults */ }
    el.temperatureValue.textContent = Number(el.temperature.value).toFixed(2);
  }
  // an integer input's value clamped to its min/max, or null when it is empty or not a number
  function readInt(input) {
    if (!input.value.trim()) return null;
    const v = Math.round(Number(input.value));
    if (!Number.isFinite(v)) return null;
    return Math.max(Number(input.min), Math.min(Number(input.max), v));
  }
  function normalize(input) {
    const v = readInt(input);
    input.value = v === null ? "" : v;
  }
  // the request's sampling options; max_tokens is left out when empty ("auto": the server's default,
  // lowered to what fits the model's context)
  function options() {
    const o = {
      temperature: Math.max(0, Math.min(2, Number(el.temperature.value))),
      top_k: readInt(el.topK) ?? Number(app.dataset.topK),
    };
    const mt = readInt(el.maxTokens);
    if (mt !== null) o.max_tokens = mt;
    return o;
  }
  function saveSettings() {
    try { localStorage.setItem(SETTINGS_KEY, JSON.stringify(options())); } catch (e) { /* ignore */ }
  }

  // ---------------------------------------------------------------------------------------------
  // rendering
  function node(tag, cls, text) {
    const n = document.createElement(tag);
    if (cls) n.className = cls;
    if (text !== undefined) n.textContent = text;
    return n;
  }

  // inline `code` spans inside prose
  function appendInline(parent, text) {
    const re = /`([^`\n]+)`/g;
    let last = 0, m;
    while ((m = re.exec(text)) !== null) {
      if (m.index > last) parent.appendChild(document.createTextNode(text.slice(last, m.index)));
      parent.appendChild(node("code", "inline", m[1]));
      last = re.lastIndex;
    }
    if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
  }

  // prose with ``` fenced code blocks (an unclosed fence while streaming is shown as code already)
  function appendText(parent, text) {
    const re = /```([^\n`]*)\n?([\s\S]*?)(?:```|$)/g;
    let last = 0, m;
    while ((m = re.exec(text)) !== null) {
      if (m[0] === "") { re.lastIndex++; continue; }
      if (m.index > last) appendInline(parent, text.slice(last, m.index));
      const pre = node("pre", "code");
      const lang = m[1].trim();
      if (lang) pre.dataset.lang = lang;
      pre.appendChild(node("code", "", m[2].replace(/\n$/, "")));
      parent.appendChild(pre);
      last = re.lastIndex;
    }
    if (last < text.length) appendInline(parent, text.slice(last));
  }

  // one calculator call: the expression the model wrote and the tool's result
  function toolBox(expr, result) {
    const box = node("span", "tool-call");
    box.appendChild(node("span", "tool-label", "calculator"));
    box.appendChild(node("code", "tool-expr", expr));
    box.appendChild(node("span", "tool-arrow", "→"));
    box.appendChild(node("code", "tool-result", result === null ? "" : result));
    return box;
  }

  function renderParts(body, parts) {
    body.textContent = "";
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i];
      if (p.type === "python") {
        const next = parts[i + 1];
        const result = next && next.type === "python_output" ? next.text : null;
        body.appendChild(toolBox(p.text, result));
        if (result !== null) i++;
      } else if (p.type === "python_output") {
        body.appendChild(toolBox("", p.text));
      } else {
        appendText(body, p.text);
      }
    }
  }

  function lastIndexOf(role) {
    for (let i = state.conv.length - 1; i >= 0; i--) if (state.conv[i].role === role) return i;
    return -1;
  }

  function messageElement(m, i) {
    const wrap = node("div", "msg " + m.role);
    wrap.dataset.role = m.role;
    wrap.dataset.index = i;
    const body = node("div", "body");
    const tools = node("div", "tools");
    const busy = !!state.controller;
    if (m.role === "user") {
      if (state.editing === i) {
        wrap.classList.add("editing");
        const ta = node("textarea", "edit");
        ta.value = m.content;
        ta.rows = Math.min(10, m.content.split("\n").length + 1);
        ta.addEventListener("keydown", (e) => {
          if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); commitEdit(i, ta.value); }
          if (e.key === "Escape") { state.editing = -1; render(); }
        });
        body.appendChild(ta);
        const save = node("button", "link save", "Save & send");
        save.type = "button";
        save.addEventListener("click", () => commitEdit(i, ta.value));
        const cancel = node("button", "link cancel", "Cancel");
        cancel.type = "button";
        cancel.addEventListener("click", () => { state.editing = -1; render(); });
        tools.append(cancel, save);
        setTimeout(() => ta.focus(), 0);
      } else {
        body.textContent = m.content;
        if (i === lastIndexOf("user") && !busy) {
          const edit = node("button", "link edit", "Edit");
          edit.type = "button";
          edit.title = "Edit this message and ask again";
          edit.addEventListener("click", () => { state.editing = i; render(); });
          tools.appendChild(edit);
        }
      }
    } else {
      wrap.dataset.state = m.state || "done";
      if (m.state === "streaming") wrap.classList.add("streaming");
      renderParts(body, m.parts);
      if (m.note) tools.appendChild(node("span", "note", m.note));
      if (i === state.conv.length - 1 && !busy) {
        const regen = node("button", "link regenerate", "Regenerate");
        regen.type = "button";
        regen.title = "Ask for another reply";
        regen.addEventListener("click", regenerate);
        tools.appendChild(regen);
      }
    }
    wrap.append(body, tools);
    m.el = wrap;
    return wrap;
  }

  function nearBottom() {
    const s = el.messages;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
  }
  function scrollDown() { el.messages.scrollTop = el.messages.scrollHeight; }

  function render() {
    const stick = nearBottom();
    el.messages.textContent = "";
    if (!state.conv.length) el.messages.appendChild(el.empty);
    state.conv.forEach((m, i) => el.messages.appendChild(messageElement(m, i)));
    const busy = !!state.controller;
    el.send.dataset.mode = busy ? "stop" : "send";
    el.send.textContent = busy ? "Stop" : "Send";
    el.send.title = busy ? "Stop the reply (Esc)" : "Send (Enter)";
    app.dataset.streaming = busy ? "true" : "false";
    if (stick) scrollDown();
  }

  // update only the streaming message (cheap per token)
  function renderStreaming(m) {
    if (!m.el) return render();
    const stick = nearBottom();
    renderParts(m.el.querySelector(".body"), m.parts);
    if (stick) scrollDown();
  }

  function showError(msg) {
    el.error.textContent = msg;
    el.error.hidden = !msg;
  }

  // ---------------------------------------------------------------------------------------------
  // the stream
  function applyEvent(m, ev) {
    if (typeof ev.part_start === "string") {
      m.parts.push({ type: ev.part_start, text: "" });
    } else if (typeof ev.part_end === "string") {
      const last = m.parts[m.parts.length - 1];
      if (last) last.closed = true;
    } else if (typeof ev.token === "string") {
      const type = ev.part || "text";
      let last = m.parts[m.parts.length - 1];
      if (!last || last.type !== type || (type !== "text" && last.closed)) {
        last = { type: type, text: "" };
        m.parts.push(last);
      }
      last.text += ev.token;
    }
    if (ev.done) {
      m.state = ev.error ? "error" : "done";
      m.usage = ev.usage || null;
      if (ev.error) m.note = "error: " + ev.error;
      else if (ev.finish_reason === "length") m.note = "stopped at the token limit";
    }
  }

  function apiMessages() {
    return state.conv.map((m) => {
      if (m.role === "user") return { role: "user", content: m.content };
      const parts = m.parts.filter((p) => p.text.length).map((p) => ({ type: p.type, text: p.text }));
      if (parts.every((p) => p.type === "text")) return { role: "assistant", content: parts.map((p) => p.text).join("") };
      return { role: "assistant", content: parts };
    });
  }

  function hasText(m) { return m.parts.some((p) => p.text.trim().length); }

  async function ask() {
    showError("");
    const body = JSON.stringify({ messages: apiMessages(), ...options() });
    const m = { role: "assistant", parts: [], state: "streaming", note: "" };
    state.conv.push(m);
    const controller = new AbortController();
    state.controller = controller;
    render();
    let finished = false;
    try {
      const resp = await fetch("chat/completions", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: body, signal: controller.signal,
      });
      if (!resp.ok) {
        let msg = resp.status + " " + resp.statusText;
        try { const j = await resp.json(); if (j.error) msg = j.error; } catch (e) { /* not JSON */ }
        if (resp.status === 503) msg += " (the server is busy; try again in a moment)";
        throw new Error(msg);
      }
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
          if (!data) continue;  // keep-alive comment
          const ev = JSON.parse(data);
          applyEvent(m, ev);
          if (ev.done) finished = true;
        }
        renderStreaming(m);
      }
      if (!finished) { m.state = "error"; m.note = "the connection closed early"; }
    } catch (err) {
      if (err.name === "AbortError") {
        m.state = "stopped";
        m.note = "stopped";
      } else {
        m.state = "error";
        m.note = "";
        showError(String(err.message || err));
      }
    } finally {
      if (state.controller === controller) state.controller = null;
      const i = state.conv.indexOf(m);
      if (i >= 0 && !hasText(m)) {
        // nothing came back: take the turn back so the conversation still ends with the user's message
        state.conv.splice(i, 1);
        const u = state.conv[i - 1];
        if (u && u.role === "user" && m.state !== "done") {
          state.conv.splice(i - 1, 1);
          if (!el.input.value) el.input.value = u.content;
          autosize();
        } else if (u && u.role === "user" && m.state === "done") {
          state.conv.push({ role: "assistant", parts: [{ type: "text", text: "(empty reply)" }], state: "done", note: "" });
        }
      }
      render();
      el.input.focus();
    }
  }

  function send() {
    if (state.controller) return;
    const text = el.input.value;
    if (!text.trim()) return;
    el.input.value = "";
    autosize();
    state.editing = -1;
    state.conv.push({ role: "user", content: text });
    ask();
  }

  function stop() {
    if (state.controller) state.controller.abort();
  }

  function regenerate() {
    if (state.controller) return;
    const last = state.conv[state.conv.length - 1];
    if (!last || last.role !== "assistant") return;
    state.conv.pop();
    ask();
  }

  function commitEdit(i, text) {
    if (state.controller || !text.trim()) return;
    state.editing = -1;
    state.conv = state.conv.slice(0, i + 1);
    state.conv[i] = { role: "user", content: text };
    ask();
  }

  function newChat() {
    stop();
    state.conv = [];
    state.editing = -1;
    showError("");
    el.input.value = "";
    autosize();
    render();
    el.input.focus();
  }

  // ---------------------------------------------------------------------------------------------
  // health
  async function checkHealth() {
    try {
      const r = await fetch("health");
      const h = await r.json();
      el.status.dataset.state = h.status;
      el.status.title = h.ready ? "ready" : (h.error || h.status);
      const mi = h.model || {};
      const params = mi.params ? (mi.params >= 1e6 ? (mi.params / 1e6).toFixed(1) + "M" : Math.round(mi.params / 1e3) + "k") : "";
      el.model.textContent = [mi.source, "d" + mi.depth, params && params + " params", mi.context + " ctx"]
        .filter(Boolean).join(" · ");
      if (!h.ready) setTimeout(checkHealth, 2000);
    } catch (e) {
      el.status.dataset.state = "down";
      el.status.title = "server unreachable";
      setTimeout(checkHealth, 5000);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // input
  function autosize() {
    el.input.style.height = "auto";
    el.input.style.height = Math.min(el.input.scrollHeight + 2, 192) + "px";
  }

  el.form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (state.controller) stop(); else send();
  });
  el.input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); if (!state.controller) send(); }
  });
  el.input.addEventListener("input", autosize);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && state.controller) stop(); });
  el.newChat.addEventListener("click", newChat);
  el.settingsToggle.addEventListener("click", () => {
    el.settings.hidden = !el.settings.hidden;
    el.settingsToggle.setAttribute("aria-expanded", String(!el.settings.hidden));
  });
  el.temperature.addEventListener("input", () => {
    el.temperatureValue.textContent = Number(el.temperature.value).toFixed(2);
    saveSettings();
  });
  el.topK.addEventListener("change", () => { normalize(el.topK); if (!el.topK.value) el.topK.value = app.dataset.topK; saveSettings(); });
  el.maxTokens.addEventListener("change", () => { normalize(el.maxTokens); saveSettings(); });

  loadSettings();
  render();
  checkHealth();
  el.input.focus();
  // for tests and the curious: the renderer and the live state
  window.jaxchat = { state: state, applyEvent: applyEvent, renderParts: renderParts, newChat: newChat };
})();
