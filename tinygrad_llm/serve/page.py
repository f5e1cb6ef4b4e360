"""The chat page served at ``/``: one self-contained HTML file (inline CSS and JavaScript, nothing fetched from
elsewhere). It keeps the conversation in the browser, posts it to ``/v1/chat/completions`` with ``stream: true``
and appends each server-sent ``data:`` chunk to the answer as it arrives. ``__MODEL__`` is replaced by the served
model's name. Element ids (``#input``, ``#send``, ``#log``, ``.msg.assistant``) are stable for scripted use; an
answer's bubble counts the streamed pieces it showed (``data-chunks``) and is marked ``data-done`` at the end
(and ``data-stopped`` when the Stop button, the Send button while an answer streams, cut it short).
"""

__all__ = ["PAGE"]

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tinygrad-llm chat: __MODEL__</title>
<style>
  :root { --bg: #f6f7f9; --fg: #1d2330; --user: #dbe8ff; --bot: #ffffff; --line: #d5d9e0; --accent: #3b6fd8; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; background: var(--bg);
         color: var(--fg); display: flex; flex-direction: column; height: 100vh; }
  header { padding: 10px 16px; border-bottom: 1px solid var(--line); background: #fff; display: flex;
           gap: 16px; align-items: center; flex-wrap: wrap; }
  header h1 { font-size: 16px; margin: 0; }
  header label { font-size: 13px; color: #555; }
  header input { width: 64px; }
  #log { flex: 1; overflow-y: auto; padding: 16px; display: flex; flex-direction: column; gap: 10px; }
  .msg { max-width: 80%; padding: 8px 12px; border-radius: 10px; white-space: pre-wrap; word-wrap: break-word;
         border: 1px solid var(--line); }
  .msg.user { align-self: flex-end; background: var(--user); }
  .msg.assistant { align-self: flex-start; background: var(--bot); }
  .msg.error { align-self: center; background: #ffe3e3; border-color: #e99; }
  .msg.assistant.streaming::after { content: "\\u258d"; color: var(--accent); }
  form { display: flex; gap: 8px; padding: 12px 16px; border-top: 1px solid var(--line); background: #fff; }
  textarea { flex: 1; resize: none; height: 48px; font: inherit; padding: 8px; border: 1px solid var(--line);
             border-radius: 8px; }
  button { padding: 0 18px; border: 0; border-radius: 8px; background: var(--accent); color: #fff; font: inherit;
           cursor: pointer; }
</style>
</head>
<body>
<header>
  <h1>Chat with <span id="model">__MODEL__</span></h1>
  <label>temperature <input id="temperature" type="number" min="0" max="2" step="0.1" value="0"></label>
  <label>max tokens <input id="max_tokens" type="number" min="1" step="1" value="128"></label>
  <button id="clear" type="button">New chat</button>
</header>
<div id="log" aria-live="polite"></div>
<form id="form">
  <textarea id="input" placeholder="Type a message, Enter to send (Shift+Enter: new line)"></textarea>
  <button id="send" type="submit">Send</button>
</form>
<script>
"use strict";
const log = document.getElementById("log"), input = document.getElementById("input");
const send = document.getElementById("send"), form = document.getElementById("form");
let history = [], controller = null;        // controller: the answer being streamed (Stop aborts it)

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  log.appendChild(div);
  log.scrollTop = log.scrollHeight;
  return div;
}

async function ask(text) {
  history.push({role: "user", content: text});
  bubble("user", text);
  const out = bubble("assistant streaming", "");
  controller = new AbortController();
  send.textContent = "Stop";
  let answer = "";
  try {
    const body = {model: document.getElementById("model").textContent, messages: history, stream: true,
                  temperature: Number(document.getElementById("temperature").value),
                  max_tokens: Number(document.getElementById("max_tokens").value)};
    const resp = await fetch("/v1/chat/completions", {method: "POST", headers: {"Content-Type": "application/json"},
                                                     body: JSON.stringify(body), signal: controller.signal});
    if (!resp.ok) {
      const err = await resp.json().catch(() => ({error: {message: resp.statusText}}));
      throw new Error(err.error ? err.error.message : resp.statusText);
    }
    const reader = resp.body.getReader(), decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\\n\\n")) >= 0) {
        const line = buffer.slice(0, cut).trim();
        buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        const delta = chunk.choices[0].delta || {};
        if (delta.content) {
          answer += delta.content;
          out.dataset.chunks = String(Number(out.dataset.chunks || 0) + 1);
          out.textContent = answer;
          log.scrollTop = log.scrollHeight;
        }
      }
    }
    history.push({role: "assistant", content: answer});
  } catch (e) {
    if (e.name === "AbortError") {           // Stop: the server sees the connection close and stops generating
      out.dataset.stopped = "1";
      history.push({role: "assistant", content: answer});
    } else {
      history.pop();
      bubble("error", "Error: " + e.message);
    }
  } finally {
    out.classList.remove("streaming");
    out.dataset.done = "1";
    controller = null;
    send.textContent = "Send";
    input.focus();
  }
}

form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  if (controller) { controller.abort(); return; }
  const text = input.value.trim();
  if (!text) return;
  input.value = "";
  ask(text);
});
input.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); if (!controller) form.requestSubmit(); }
});
document.getElementById("clear").addEventListener("click", () => { history = []; log.textContent = ""; });
input.focus();
</script>
</body>
</html>
"""
