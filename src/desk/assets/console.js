// The agent console: sign in, see the desk (my chats, the queue, the bot's
// chats), answer, transfer, close, correct the bot, and look the visitor up
// in the shop's systems.
"use strict";

(function () {
  const { Connection, renderMessage, insertBySeq, el, api, upload } = window.CsChat;
  const $ = (id) => document.getElementById(id);
  let token = sessionStorage.getItem("cs.agent.token");
  let me = null;
  let connection = null;
  let intents = [];
  const chats = new Map(); // id -> summary
  const names = {}; // agent id -> display name
  const unread = new Set();
  let selected = null;
  let readSent = new Map();
  let typingUntil = 0;
  let typingTimer = null;
  let decisionsTimer = null;

  // --- sign-in ------------------------------------------------------------

  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const data = await api("POST", "/api/agent/login", null, {
        agent: $("login-agent").value.trim(),
        password: $("login-password").value,
      });
      token = data.token;
      sessionStorage.setItem("cs.agent.token", token);
      await start();
    } catch (error) {
      $("login-error").textContent = error.message;
    }
  });

  async function start() {
    const desk = await api("GET", "/api/agent/desk", token);
    me = desk.me;
    intents = desk.intents;
    updateAgents(desk.agents);
    for (const chat of desk.chats) chats.set(chat.id, chat);
    $("login").hidden = true;
    $("app").hidden = false;
    $("me-name").textContent = names[me] || me;
    renderLists();
    connection = new Connection(() => "/ws/agent?token=" + encodeURIComponent(token), {
      // A token that expired while the console stayed open: a fresh one, by cookie.
      renew: async () => {
        const data = await api("GET", "/api/agent/me", token);
        token = data.token;
        sessionStorage.setItem("cs.agent.token", token);
      },
      status: (state) => ($("conn").textContent = state),
      open: () => {
        for (const chat of chats.values()) if (isMine(chat)) connection.follow(chat.id);
        if (selected) connection.follow(selected);
      },
      message: onMessage,
      typing: onTyping,
      host: onHostFrame,
      error: (frame) => notice(frame.message),
    });
    connection.start();
  }

  // --- the desk -----------------------------------------------------------

  // An amount in minor units in the order's own currency (Intl knows the
  // symbols and decimals); a code it does not know is shown as it is.
  function money(minor, currency) {
    try {
      return new Intl.NumberFormat(undefined, { style: "currency", currency: currency }).format(minor / 100);
    } catch (e) {
      return (minor / 100).toFixed(2) + " " + currency;
    }
  }

  function isMine(chat) {
    return chat.state === "assigned" && chat.agent === me;
  }

  function updateAgents(agents) {
    const list = $("agents");
    list.replaceChildren();
    const select = $("transfer-to");
    select.replaceChildren();
    for (const agent of agents) {
      names[agent.id] = agent.name;
      const item = el("li", "agent " + agent.presence);
      item.textContent = agent.name + " · " + agent.presence + " · " + agent.active + "/" + agent.capacity;
      list.appendChild(item);
      if (agent.id !== me) {
        const option = el("option", null, agent.name + " (" + agent.presence + ")");
        option.value = agent.id;
        select.appendChild(option);
      }
      if (agent.id === me) $("presence").value = agent.presence === "away" ? "away" : "online";
    }
  }

  function renderLists() {
    const lists = { mine: $("list-mine"), queued: $("list-queued"), bot: $("list-bot") };
    for (const list of Object.values(lists)) list.replaceChildren();
    const ordered = [...chats.values()].sort((a, b) => (b.last_at || b.opened_at) - (a.last_at || a.opened_at));
    for (const chat of ordered) {
      const key = isMine(chat) ? "mine" : chat.state === "queued" ? "queued" : chat.state === "bot" ? "bot" : null;
      if (!key) continue;
      const item = el("li", "chat-item" + (chat.id === selected ? " selected" : "") + (unread.has(chat.id) ? " unread" : ""));
      item.dataset.id = chat.id;
      const title = (chat.visitor_name || chat.visitor) + (chat.queue_position ? " · #" + chat.queue_position : "");
      item.appendChild(el("div", "chat-title", title));
      item.appendChild(el("div", "chat-preview", chat.last_text || (chat.handoff_reason || "")));
      item.addEventListener("click", () => select(chat.id));
      lists[key].appendChild(item);
    }
  }

  // Desk frames are coalesced: each carries every row that changed since
  // the last one, and the conversations that left the desk.
  function onHostFrame(frame) {
    if (frame.type === "desk") {
      for (const chat of frame.chats || []) {
        const was = chats.get(chat.id);
        chats.set(chat.id, chat);
        // A conversation just given to me: follow it, and flag it.
        if (isMine(chat) && !(was && isMine(was))) {
          connection.follow(chat.id);
          if (chat.id !== selected) unread.add(chat.id);
        }
      }
      for (const id of frame.closed || []) {
        chats.delete(id);
        unread.delete(id);
      }
      renderLists();
      if (selected) renderHeader();
    } else if (frame.type === "queue_summary") {
      $("queue-count").textContent = frame.waiting ? "(" + frame.waiting + ")" : "";
    } else if (frame.type === "agents") {
      updateAgents(frame.agents);
      renderLists();
    }
  }

  // --- a conversation -----------------------------------------------------

  function select(id) {
    selected = id;
    unread.delete(id);
    connection.follow(id);
    renderLists();
    renderHeader();
    const list = $("messages");
    list.replaceChildren();
    const c = connection.conversation(id);
    for (const m of c.ordered()) show(m);
    loadDecisions();
    loadProfile();
    sendRead(c);
  }

  function renderHeader() {
    const chat = chats.get(selected);
    if (!chat) {
      $("chat-state").textContent = selected ? "closed" : "";
      $("composer").hidden = true;
      return;
    }
    $("chat-title").textContent = chat.visitor_name ? chat.visitor_name + " (" + chat.visitor + ")" : chat.visitor;
    let state = chat.state;
    if (chat.state === "assigned") state = "with " + (names[chat.agent] || chat.agent);
    if (chat.queue_position) state += " · queue position " + chat.queue_position;
    if (chat.handoff_reason && chat.state !== "bot") state += " · " + chat.handoff_reason;
    $("chat-state").textContent = state;
    $("composer").hidden = !isMine(chat);
  }

  function show(m) {
    const mine = m.sender.kind === "agent" && m.sender.id === me;
    const node = renderMessage(m, { mine, names });
    if (!node) return;
    if (m.sender.kind === "visitor" && m.body.type === "text") node.classList.add("question");
    const existing = $("messages").querySelector('[data-seq="' + m.seq + '"]');
    if (existing) existing.remove();
    insertBySeq($("messages"), node);
    $("messages").scrollTop = $("messages").scrollHeight;
  }

  function onMessage(m, c) {
    if (m.conversation !== selected) {
      if (m.body.type !== "event") unread.add(m.conversation);
      renderLists();
      return;
    }
    show(m);
    markRead(c);
    if (m.sender.kind === "bot") {
      clearTimeout(decisionsTimer);
      decisionsTimer = setTimeout(loadDecisions, 150);
    }
    if (m.sender.kind === "visitor" && m.body.type !== "event") {
      $("typing").hidden = true;
      sendRead(c);
    }
  }

  function sendRead(c) {
    const chat = chats.get(c.id);
    if (!chat || !isMine(chat) || document.hidden) return;
    if (c.contiguous > (readSent.get(c.id) || 0)) {
      readSent.set(c.id, c.contiguous);
      connection.read(c.id, c.contiguous);
    }
  }

  function markRead(c) {
    for (const node of $("messages").querySelectorAll(".msg.mine")) {
      node.classList.toggle("read", Number(node.dataset.seq) <= c.readUpTo.visitor);
    }
  }

  function onTyping(frame) {
    if (frame.conversation !== selected || frame.from.kind !== "visitor") return;
    $("typing").textContent = "The visitor is typing…";
    $("typing").hidden = !frame.active;
  }

  // The bot's reading of each visitor question, with a way to correct it.
  async function loadDecisions() {
    if (!selected) return;
    const id = selected;
    const data = await api("GET", "/api/agent/conversations/" + id + "/bot", token).catch(() => null);
    if (!data || id !== selected) return;
    for (const d of data.decisions) {
      const node = $("messages").querySelector('[data-seq="' + d.question_seq + '"]');
      if (!node) continue;
      let tag = node.querySelector(".bot-tag");
      // A correction the agent is picking stays open while the bot answers
      // on: redrawing the tag would throw the form away under their cursor.
      if (tag && tag.querySelector(".correct")) continue;
      if (tag) tag.remove();
      tag = el("div", "bot-tag");
      const label = d.corrected_to
        ? "bot: " + d.intent + " → corrected to " + d.corrected_to
        : "bot: " + d.intent + " " + Math.round(d.confidence * 100) + "% · " + d.outcome;
      tag.appendChild(el("span", null, label));
      const wrong = el("button", "link wrong", "Wrong answer?");
      wrong.type = "button";
      wrong.addEventListener("click", () => openCorrection(tag, d));
      tag.appendChild(wrong);
      node.appendChild(tag);
    }
  }

  function openCorrection(tag, decision) {
    if (tag.querySelector(".correct")) return;
    const form = $("correct-template").content.firstElementChild.cloneNode(true);
    const select = form.querySelector(".correct-intent");
    for (const intent of intents) {
      const option = el("option", null, intent);
      option.value = intent;
      if (intent === decision.intent) option.selected = true;
      select.appendChild(option);
    }
    form.querySelector(".correct-save").addEventListener("click", async () => {
      try {
        await api("POST", "/api/agent/corrections", token, {
          conversation: selected,
          seq: decision.question_seq,
          intent: select.value,
        });
        form.replaceWith(el("span", "learned", "Learned: the next answer uses " + select.value));
      } catch (error) {
        notice(error.message);
      }
    });
    tag.appendChild(form);
  }

  // --- the visitor in the shop's systems ----------------------------------

  async function loadProfile() {
    if (!selected) return;
    const id = selected;
    const box = $("profile");
    try {
      const data = await api("GET", "/api/agent/conversations/" + id + "/profile", token);
      if (id !== selected) return;
      box.replaceChildren();
      const p = data.profile || {};
      const rows = [
        ["Name", p.name || data.name],
        ["Email", p.email],
        ["Tier", p.tier],
        ["Points", p.attributes && p.attributes.points],
        ["Ships to", p.attributes && p.attributes.ship_to],
      ];
      const table = el("dl");
      for (const [key, value] of rows) {
        if (value === undefined || value === null) continue;
        table.appendChild(el("dt", null, key));
        table.appendChild(el("dd", null, value));
      }
      box.appendChild(table);
      box.appendChild(el("h4", null, "Recent orders"));
      const orders = el("ul", "orders");
      for (const o of data.orders) {
        const lines = o.lines.map((l) => l.quantity + " × " + l.name).join(", ");
        orders.appendChild(el("li", null, o.id + " · " + o.status + " · " + money(o.total_minor, o.currency) + " · " + lines));
      }
      box.appendChild(orders);
      $("partial").hidden = !data.partial;
      for (const f of data.failures) {
        box.appendChild(el("div", "failure", f.adapter + " did not answer: " + (f.reason.error || f.reason.kind)));
      }
    } catch (error) {
      box.textContent = "Profile unavailable: " + error.message;
    }
  }

  // --- actions --------------------------------------------------------------

  function notice(text) {
    const node = el("div", "msg notice", text);
    node.dataset.seq = Number.MAX_SAFE_INTEGER;
    $("messages").appendChild(node);
    setTimeout(() => node.remove(), 6000);
  }

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("input").value.trim();
    if (!text || !selected) return;
    connection.send(selected, { type: "text", text });
    $("input").value = "";
    connection.typing(selected, false);
    typingUntil = 0;
  });
  $("input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("input").addEventListener("input", () => {
    if (!selected) return;
    const now = Date.now();
    if (now > typingUntil) {
      connection.typing(selected, true);
      typingUntil = now + 3000;
    }
    clearTimeout(typingTimer);
    typingTimer = setTimeout(() => {
      connection.typing(selected, false);
      typingUntil = 0;
    }, 4000);
  });
  $("file").addEventListener("change", async () => {
    const file = $("file").files[0];
    $("file").value = "";
    if (!file || !selected) return;
    try {
      connection.send(selected, await upload(file, token, selected));
    } catch (error) {
      notice("Upload failed: " + error.message);
    }
  });
  $("presence").addEventListener("change", () => {
    api("POST", "/api/agent/presence", token, { presence: $("presence").value }).catch((e) => notice(e.message));
  });
  $("transfer").addEventListener("click", async () => {
    if (!selected) return;
    try {
      await api("POST", "/api/agent/conversations/" + selected + "/transfer", token, { to: $("transfer-to").value });
    } catch (error) {
      notice(error.message);
    }
  });
  $("close").addEventListener("click", async () => {
    if (!selected) return;
    try {
      await api("POST", "/api/agent/conversations/" + selected + "/close", token);
    } catch (error) {
      notice(error.message);
    }
  });
  $("suggest").addEventListener("click", async () => {
    const box = $("suggestions");
    try {
      const data = await api("GET", "/api/agent/suggestions", token);
      box.replaceChildren();
      if (data.note) box.appendChild(el("p", "hint", data.note));
      box.appendChild(el("p", "hint", data.questions.length + " handed-off questions so far"));
      for (const s of data.suggestions) {
        const card = el("div", "suggestion");
        card.appendChild(el("strong", null, s.keywords.join(", ") + " (" + s.size + ")"));
        const examples = el("ul");
        for (const e of s.examples) examples.appendChild(el("li", null, e));
        card.appendChild(examples);
        box.appendChild(card);
      }
    } catch (error) {
      box.textContent = error.message;
    }
  });
  $("sign-out").addEventListener("click", async () => {
    try {
      await api("POST", "/api/agent/logout", token);
    } catch (_) {
      /* signed out already, or the server is gone: the page resets either way */
    }
    if (connection) connection.stop();
    sessionStorage.removeItem("cs.agent.token");
    location.reload();
  });
  document.addEventListener("visibilitychange", () => {
    if (selected && connection) sendRead(connection.conversation(selected));
  });

  // Signed in already (the shop's own staff login, or a token from this
  // tab)? Otherwise show the form, if the shop offers one.
  async function boot() {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    const response = await fetch(window.CsChat.PREFIX + "/api/agent/me", { headers, credentials: "same-origin" });
    const data = await response.json().catch(() => ({}));
    if (response.ok) {
      token = data.token;
      sessionStorage.setItem("cs.agent.token", token);
      await start();
      return;
    }
    sessionStorage.removeItem("cs.agent.token");
    token = null;
    $("login-form").hidden = !data.sign_in;
    $("login-elsewhere").hidden = !!data.sign_in;
  }
  boot().catch((error) => {
    $("login-error").textContent = error.message;
    $("login-form").hidden = false;
  });
})();
