// The cs chat client shared by the visitor widget and the agent console:
// one WebSocket that reconnects by itself, resumes every followed
// conversation from the last seq it has (so nothing is missed and nothing is
// shown twice), resends unacknowledged messages with their client_msg_id
// (so a retry is stored once), and renders messages as text only (a bot's
// "did you mean…?" with quick-reply buttons under it).
"use strict";

(function () {
  // Where the desk is nested (`/support`, or "" at the root), from this
  // script's own address: `PREFIX/widget.js` or `PREFIX/assets/chat.js`.
  const script = document.currentScript;
  const PREFIX = script && script.src
    ? new URL(script.src, location.href).pathname.replace(/\/(widget\.js|assets\/chat\.js)$/, "")
    : "";
  const escaped = PREFIX.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const FILE_URL = new RegExp("^" + escaped + "\\/files\\/[0-9a-f]{32}$");

  class Conversation {
    constructor(id) {
      this.id = id;
      this.messages = new Map(); // seq -> message
      this.contiguous = 0; // every seq up to here is held
      this.readUpTo = { visitor: 0, agent: 0 }; // from read receipts
    }

    // Adds a message; answers whether it was new.
    add(message) {
      if (this.messages.has(message.seq)) return false;
      this.messages.set(message.seq, message);
      while (this.messages.has(this.contiguous + 1)) this.contiguous += 1;
      const body = message.body;
      if (body.type === "event" && body.event === "read") {
        const kind = message.sender.kind;
        if (kind in this.readUpTo) this.readUpTo[kind] = Math.max(this.readUpTo[kind], body.up_to);
      }
      return true;
    }

    ordered() {
      return [...this.messages.values()].sort((a, b) => a.seq - b.seq);
    }
  }

  class Connection {
    // `url` is a function giving the socket address (it carries the token);
    // `on` holds callbacks: open, message, typing, ack, error, host, status,
    // and `renew`, awaited before reconnecting when a socket was refused
    // before it opened (a retired or expired token).
    constructor(url, on) {
      this.url = url;
      this.on = on;
      this.conversations = new Map();
      this.followed = new Set();
      this.pending = new Map(); // client_msg_id -> frame, until acked
      this.ws = null;
      this.backoff = 500;
      this.counter = 0;
      this.stopped = false;
    }

    conversation(id) {
      let c = this.conversations.get(id);
      if (!c) {
        c = new Conversation(id);
        this.conversations.set(id, c);
      }
      return c;
    }

    start() {
      this.stopped = false;
      this.connect();
      this.pinger = setInterval(() => this.raw({ type: "ping" }), 25000);
    }

    stop() {
      this.stopped = true;
      clearInterval(this.pinger);
      if (this.ws) this.ws.close();
    }

    connect() {
      const scheme = location.protocol === "https:" ? "wss://" : "ws://";
      const ws = new WebSocket(scheme + location.host + PREFIX + this.url());
      this.ws = ws;
      let opened = false;
      ws.onopen = () => {
        opened = true;
      };
      this.status("connecting");
      ws.onmessage = (event) => {
        let frame;
        try {
          frame = JSON.parse(event.data);
        } catch (_) {
          return;
        }
        this.handle(frame);
      };
      ws.onclose = () => {
        if (this.ws !== ws) return;
        this.ws = null;
        this.status("offline");
        if (this.stopped) return;
        // Back off, so a server that is restarting is not hammered.
        const again = () => setTimeout(() => this.connect(), this.backoff);
        this.backoff = Math.min(this.backoff * 2, 10000);
        if (!opened && this.on.renew) {
          Promise.resolve()
            .then(() => this.on.renew())
            .catch(() => {})
            .finally(again);
        } else {
          again();
        }
      };
    }

    status(state) {
      if (this.on.status) this.on.status(state);
    }

    raw(frame) {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) {
        this.ws.send(JSON.stringify(frame));
        return true;
      }
      return false;
    }

    // Joins a conversation: replays what this client lacks, then goes live.
    follow(id) {
      this.followed.add(id);
      this.conversation(id);
      this.resume(id);
    }

    resume(id) {
      this.raw({ type: "resume", conversation: id, last_seq: this.conversation(id).contiguous });
    }

    send(conversation, body) {
      this.counter += 1;
      const id = "m-" + Date.now().toString(36) + "-" + this.counter + "-" + Math.random().toString(36).slice(2, 8);
      const frame = { type: "send", conversation, client_msg_id: id, body };
      this.pending.set(id, frame);
      this.raw(frame);
      return id;
    }

    typing(conversation, active) {
      this.raw({ type: "typing", conversation, active });
    }

    read(conversation, upTo) {
      this.raw({ type: "read", conversation, up_to: upTo });
    }

    handle(frame) {
      switch (frame.type) {
        case "welcome":
          this.backoff = 500;
          this.status("online");
          for (const id of this.followed) this.resume(id);
          // Whatever was not acknowledged before the drop goes again; the
          // server stores a client_msg_id once, however often it arrives.
          for (const pending of this.pending.values()) this.raw(pending);
          if (this.on.open) this.on.open(frame);
          break;
        case "message": {
          const m = frame.message;
          const c = this.conversation(m.conversation);
          const before = c.contiguous;
          if (c.add(m) && this.on.message) this.on.message(m, c);
          // A seq past the next one means this socket missed some (it joined
          // late, or a network blip): fetch the gap.
          if (m.seq > before + 1 && c.contiguous < m.seq) this.resume(m.conversation);
          break;
        }
        case "replayed":
          if (!frame.complete) this.resume(frame.conversation);
          break;
        case "ack":
          this.pending.delete(frame.client_msg_id);
          if (this.on.ack) this.on.ack(frame);
          break;
        case "typing":
          if (this.on.typing) this.on.typing(frame);
          break;
        case "error":
          this.onError(frame);
          break;
        case "close":
          this.status("offline");
          break;
        case "pong":
          break;
        default:
          // Frames of the host (desk, queue, agents): not part of the protocol.
          if (this.on.host) this.on.host(frame);
      }
    }

    onError(frame) {
      const retry = ["overloaded", "rate_limited", "unavailable", "shutting_down"];
      const pending = frame.client_msg_id && this.pending.get(frame.client_msg_id);
      if (pending && retry.includes(frame.code)) {
        // The same client_msg_id again, when the server says it can take it.
        const wait = frame.retry_after_ms > 0 ? Math.min(frame.retry_after_ms, 30000) : 1000;
        setTimeout(() => this.raw(pending), wait);
      } else if (pending) {
        this.pending.delete(frame.client_msg_id);
      }
      if (this.on.error) this.on.error(frame);
    }
  }

  // --- rendering: text only, never HTML ----------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function time(ms) {
    const d = new Date(ms);
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function partyName(party, names) {
    if (!party) return "";
    if (party.kind === "bot") return "Bot";
    if (party.kind === "system") return "";
    if (party.kind === "agent") return (names && names[party.id]) || party.id;
    return (names && names[party.id]) || "Visitor";
  }

  // A line for an event message, or null when it shows nothing.
  function eventText(body, names) {
    switch (body.event) {
      case "assigned":
        return (partyName({ kind: "agent", id: body.agent }, names)) + " joined the chat";
      case "transfer":
        return "Transferred from " + partyName({ kind: "agent", id: body.from }, names) +
          " to " + partyName({ kind: "agent", id: body.to }, names);
      case "handoff":
        return "Waiting for a person" + (body.reason ? " (" + body.reason + ")" : "");
      case "close":
        return "Chat closed" + (body.reason ? " (" + body.reason + ")" : "");
      case "reopen":
        return "Chat reopened";
      case "rating":
        return "Rated " + body.score + "/5" + (body.comment ? ": " + body.comment : "");
      default:
        return null;
    }
  }

  // A message's quick-reply buttons. A tap calls `onPick(label)` (the
  // widget sends the label as the visitor's message) and retires the row;
  // without `onPick` (the console) they show what was offered, disabled.
  function quickReplies(replies, onPick) {
    const row = el("div", "quick-replies");
    for (const reply of replies) {
      const button = el("button", "quick-reply", reply.label);
      button.type = "button";
      button.disabled = !onPick;
      if (onPick) {
        button.addEventListener("click", () => {
          for (const b of row.querySelectorAll("button")) b.disabled = true;
          button.classList.add("picked");
          onPick(reply.label);
        });
      }
      row.appendChild(button);
    }
    return row;
  }

  // One message as a DOM node. `mine` is whether this side sent it;
  // `onQuickReply(label)`, if given, makes its quick replies tappable.
  function renderMessage(m, opts) {
    const body = m.body;
    if (body.type === "event") {
      const text = eventText(body, opts.names);
      if (text === null) return null;
      const row = el("div", "msg event", text);
      row.dataset.seq = m.seq;
      return row;
    }
    const row = el("div", "msg " + (opts.mine ? "mine" : "theirs") + " from-" + m.sender.kind);
    row.dataset.seq = m.seq;
    const who = partyName(m.sender, opts.names);
    if (who && !opts.mine) row.appendChild(el("div", "who", who));
    const bubble = el("div", "bubble");
    if (body.type === "text") {
      bubble.appendChild(el("span", "text", body.text));
      if (Array.isArray(body.quick_replies) && body.quick_replies.length) {
        row.appendChild(quickReplies(body.quick_replies, opts.onQuickReply));
      }
    } else if (body.type === "image" && FILE_URL.test(body.url)) {
      const img = el("img", "attachment");
      img.src = body.url;
      img.alt = "image";
      bubble.appendChild(img);
    } else if (body.type === "file" && FILE_URL.test(body.url)) {
      const link = el("a", "file", "📎 " + body.name + " (" + Math.ceil(body.bytes / 1024) + " KB)");
      link.href = body.url;
      link.rel = "noopener";
      bubble.appendChild(link);
    } else {
      bubble.appendChild(el("span", "text", "[attachment]"));
    }
    row.appendChild(bubble);
    row.appendChild(el("div", "meta", time(m.created_at)));
    return row;
  }

  // Puts `node` into `list` in seq order.
  function insertBySeq(list, node) {
    const seq = Number(node.dataset.seq);
    for (const child of list.children) {
      if (Number(child.dataset.seq) > seq) {
        list.insertBefore(node, child);
        return;
      }
    }
    list.appendChild(node);
  }

  async function api(method, path, token, body, contentType) {
    const headers = {};
    if (token) headers.Authorization = "Bearer " + token;
    let payload;
    if (body instanceof Blob) {
      payload = body;
      headers["Content-Type"] = contentType || body.type || "application/octet-stream";
    } else if (body !== undefined) {
      payload = JSON.stringify(body);
      headers["Content-Type"] = "application/json";
    }
    const response = await fetch(PREFIX + path, { method, headers, body: payload, credentials: "same-origin" });
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const message = (data && data.message) || response.statusText;
      const error = new Error(message);
      error.status = response.status;
      throw error;
    }
    return data;
  }

  // Uploads a file and answers the message body to send.
  async function upload(file, token, conversation) {
    let path = "/api/upload?name=" + encodeURIComponent(file.name);
    if (conversation) path += "&conversation=" + encodeURIComponent(conversation);
    const data = await api("POST", path, token, file, file.type);
    return data.body;
  }

  window.CsChat = { PREFIX, Connection, renderMessage, insertBySeq, el, api, upload, eventText, partyName };
})();
