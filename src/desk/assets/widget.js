// The visitor's chat widget, added to any page by one tag:
//   <script src="PREFIX/widget.js" defer></script>
// It injects its launcher, its panel and its stylesheet, then keeps a
// signed session in localStorage, the visitor's conversation, and the
// shared chat client (which this file follows in widget.js). Options are
// data- attributes of the tag: data-title, data-launcher, data-placeholder,
// data-color (the accent), data-bot-name, data-lang (the greeting's
// language, e.g. "en" or "zh") and data-greeting (the shop's own welcome,
// shown above the chat and never sent).
"use strict";

(function () {
  const { PREFIX, Connection, renderMessage, insertBySeq, el, api, upload } = window.CsChat;
  const $ = (id) => document.getElementById(id);
  const options = (document.currentScript && document.currentScript.dataset) || {};

  // Static markup only: every text that varies is set with textContent.
  const MARKUP = `
  <button id="launcher" class="launcher" type="button" aria-controls="widget">💬 <span id="cs-launch-text">Chat with us</span></button>
  <section id="widget" class="widget" aria-label="Customer service chat" hidden>
    <header class="widget-header">
      <div>
        <strong id="cs-title">Support</strong>
        <div id="status" class="status">Connecting…</div>
      </div>
      <button id="minimise" type="button" aria-label="Minimise">–</button>
    </header>
    <div id="messages" class="messages" aria-live="polite"></div>
    <div id="typing" class="typing" hidden></div>
    <div id="ended" class="ended" hidden>
      <span>This chat has ended.</span>
      <button id="restart" type="button">Start a new chat</button>
    </div>
    <form id="rate" class="rate" hidden>
      <span>How did we do?</span>
      <span class="stars" role="radiogroup" aria-label="Rating from 1 to 5"><button type="button" data-score="1" aria-label="1 of 5">★</button><button type="button" data-score="2" aria-label="2 of 5">★</button><button type="button" data-score="3" aria-label="3 of 5">★</button><button type="button" data-score="4" aria-label="4 of 5">★</button><button type="button" data-score="5" aria-label="5 of 5">★</button></span>
      <input id="rate-comment" maxlength="1000" placeholder="A comment (optional)" aria-label="Comment">
      <button id="rate-send" type="submit" disabled>Rate</button>
    </form>
    <form id="composer" class="composer">
      <label class="attach" title="Send an image or file">📎<input id="file" type="file" hidden></label>
      <textarea id="input" rows="1" maxlength="4000" aria-label="Message"></textarea>
      <button id="send" type="submit">Send</button>
    </form>
    <footer class="widget-footer"><button id="end" type="button" class="link">End chat</button></footer>
  </section>`;

  function mount() {
    const style = document.createElement("link");
    style.rel = "stylesheet";
    style.href = PREFIX + "/assets/desk.css";
    document.head.appendChild(style);
    const root = document.createElement("div");
    root.id = "cs-widget";
    root.innerHTML = MARKUP;
    document.body.appendChild(root);
    $("cs-title").textContent = options.title || "Support";
    if (options.launcher) $("cs-launch-text").textContent = options.launcher;
    $("input").placeholder = options.placeholder || "Type your question…";
    if (options.color) root.style.setProperty("--cs-accent", options.color);
  }
  mount();
  const names = {};
  let token = localStorage.getItem("cs.visitor.token");
  let visitor = null;
  let conversation = null; // the open conversation's id
  let rated = false; // whether the visitor rated it (once, after its close)
  let score = 0; // the stars chosen
  let connection = null;
  let readSent = 0;
  let typingUntil = 0;
  let typingTimer = null;
  let theirTyping = null;

  function setStatus(text) {
    $("status").textContent = text;
  }

  function describe(chat) {
    if (chat.state === "bot") return options.botName ? "Chatting with " + options.botName : "Chatting with our assistant";
    if (chat.state === "queued") {
      return chat.queue_position ? "Waiting for an agent · position " + chat.queue_position : "Waiting for an agent";
    }
    if (chat.state === "assigned") return "Chatting with " + (names[chat.agent] || chat.agent);
    return "";
  }

  // Another tab may have renewed the session, which retires this tab's token.
  function currentToken() {
    return localStorage.getItem("cs.visitor.token") || token;
  }

  async function renew() {
    const session = await api("POST", "/api/visitor/session", currentToken());
    token = session.token;
    visitor = session.visitor;
    localStorage.setItem("cs.visitor.token", token);
  }

  // An API call with the current token, renewed once if it was refused.
  async function call(path, body) {
    try {
      return await api("POST", path, currentToken(), body);
    } catch (e) {
      if (e.status !== 401) throw e;
      await renew();
      return api("POST", path, token, body);
    }
  }

  async function start() {
    await renew();
    connection = new Connection(() => "/ws/visitor?token=" + encodeURIComponent(currentToken()), {
      renew,
      status: (state) => {
        if (state !== "online") setStatus(state === "connecting" ? "Connecting…" : "Reconnecting…");
      },
      open: () => {
        if (conversation) refreshStatus();
      },
      message: onMessage,
      typing: onTyping,
      error: (frame) => showNotice(frame.message),
      host: onHostFrame,
    });
    connection.start();
    await openConversation();
  }

  function conversationPath() {
    const lang = options.lang ? "?lang=" + encodeURIComponent(options.lang) : "";
    return "/api/visitor/conversation" + lang;
  }

  async function openConversation() {
    const data = await call(conversationPath());
    const chat = data.conversation;
    Object.assign(names, data.agents);
    conversation = chat.id;
    $("messages").replaceChildren();
    if (options.greeting) {
      const note = el("div", "welcome", options.greeting);
      note.dataset.seq = 0; // before every message
      $("messages").appendChild(note);
    }
    $("ended").hidden = true;
    $("rate").hidden = true;
    rated = false;
    $("composer").hidden = false;
    setStatus(describe(chat));
    connection.follow(conversation);
  }

  async function refreshStatus() {
    try {
      const data = await call(conversationPath());
      if (data.conversation.id === conversation) setStatus(describe(data.conversation));
    } catch (_) {
      /* the socket's own status says enough */
    }
  }

  function onMessage(m, c) {
    if (m.conversation !== conversation) return;
    const body = m.body;
    if (body.type === "event") {
      if (body.event === "assigned") {
        setStatus("Chatting with " + (names[body.agent] || body.agent));
      } else if (body.event === "transfer") {
        setStatus("Chatting with " + (names[body.to] || body.to));
      } else if (body.event === "handoff") {
        setStatus("Waiting for an agent");
      } else if (body.event === "close") {
        $("ended").hidden = false;
        $("composer").hidden = true;
        setStatus("Chat ended");
        askRating();
      } else if (body.event === "rating") {
        rated = true;
        $("rate").hidden = true;
      } else if (body.event === "read") {
        markRead(c);
      }
    }
    const mine = m.sender.kind === "visitor" && m.sender.id === visitor;
    const node = renderMessage(m, { mine, names, onQuickReply: pickQuickReply });
    if (node) {
      insertBySeq($("messages"), node);
      retireQuickReplies();
      $("messages").scrollTop = $("messages").scrollHeight;
    }
    if (!mine && body.type !== "event") {
      clearTyping();
      sendRead(c);
    }
    markRead(c);
  }

  // Satisfaction: at the close, 1 to 5 stars and a comment, sent once.
  function askRating() {
    if (rated) return;
    score = 0;
    for (const star of $("rate").querySelectorAll("[data-score]")) star.classList.remove("on");
    $("rate-send").disabled = true;
    $("rate").hidden = false;
  }
  $("rate").querySelector(".stars").addEventListener("click", (event) => {
    const star = event.target.closest("[data-score]");
    if (!star) return;
    score = Number(star.dataset.score);
    for (const s of $("rate").querySelectorAll("[data-score]")) {
      s.classList.toggle("on", Number(s.dataset.score) <= score);
    }
    $("rate-send").disabled = false;
  });
  $("rate").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!score || !conversation) return;
    const comment = $("rate-comment").value.trim();
    try {
      await call("/api/visitor/rating", { conversation, score, comment: comment || null });
      showNotice("Thank you for your rating.");
    } catch (error) {
      // 409: rated already (in another tab); anything else is worth saying.
      if (error.status !== 409) return showNotice(error.message);
    }
    rated = true;
    $("rate").hidden = true;
  });

  // A quick-reply tap: the label goes to the bot as the visitor's message,
  // which the bot reads as the pick (an older server reads it as a question).
  function pickQuickReply(label) {
    if (conversation) connection.send(conversation, { type: "text", text: label });
  }

  // Only the newest message's quick replies can still be tapped: once
  // anything follows (the visitor's own words, the answer, a person), the
  // question they answered has moved on. Also after a reload's replay.
  function retireQuickReplies() {
    const rows = $("messages").querySelectorAll(".msg[data-seq]:not(.notice)");
    const last = rows[rows.length - 1];
    for (const group of $("messages").querySelectorAll(".quick-replies")) {
      if (group.closest(".msg") === last) continue;
      for (const button of group.querySelectorAll("button")) button.disabled = true;
    }
  }

  // "Read" under the visitor's messages the agent has read.
  function markRead(c) {
    const upTo = c.readUpTo.agent;
    for (const node of $("messages").querySelectorAll(".msg.mine")) {
      node.classList.toggle("read", Number(node.dataset.seq) <= upTo);
    }
  }

  function sendRead(c) {
    if (document.hidden || $("widget").hidden) return;
    if (c.contiguous > readSent) {
      readSent = c.contiguous;
      connection.read(conversation, c.contiguous);
    }
  }

  function onTyping(frame) {
    if (frame.conversation !== conversation || frame.from.kind === "visitor") return;
    if (frame.active) {
      $("typing").textContent = (names[frame.from.id] || "The agent") + " is typing…";
      $("typing").hidden = false;
      clearTimeout(theirTyping);
      theirTyping = setTimeout(clearTyping, 6000);
    } else {
      clearTyping();
    }
  }

  function clearTyping() {
    $("typing").hidden = true;
  }

  function onHostFrame(frame) {
    if (frame.type === "queue" && frame.conversation === conversation) {
      setStatus("Waiting for an agent · position " + frame.position);
    }
  }

  function showNotice(text) {
    const node = el("div", "msg notice", text);
    node.dataset.seq = Number.MAX_SAFE_INTEGER;
    $("messages").appendChild(node);
    setTimeout(() => node.remove(), 6000);
  }

  function onInput() {
    const now = Date.now();
    if (now > typingUntil) {
      connection.typing(conversation, true);
      typingUntil = now + 3000;
    }
    clearTimeout(typingTimer);
    typingTimer = setTimeout(() => {
      connection.typing(conversation, false);
      typingUntil = 0;
    }, 4000);
  }

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("input").value.trim();
    if (!text || !conversation) return;
    connection.send(conversation, { type: "text", text });
    $("input").value = "";
    connection.typing(conversation, false);
    typingUntil = 0;
  });
  $("input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("input").addEventListener("input", onInput);
  $("file").addEventListener("change", async () => {
    const file = $("file").files[0];
    $("file").value = "";
    if (!file) return;
    try {
      connection.send(conversation, await upload(file, currentToken(), conversation));
    } catch (error) {
      showNotice("Upload failed: " + error.message);
    }
  });
  $("end").addEventListener("click", async () => {
    try {
      await call("/api/visitor/conversation/close");
    } catch (error) {
      showNotice(error.message);
    }
  });
  $("restart").addEventListener("click", () => openConversation().catch((e) => showNotice(e.message)));
  $("launcher").addEventListener("click", () => {
    $("widget").hidden = false;
    $("launcher").hidden = true;
    localStorage.setItem("cs.widget.open", "1");
    const c = conversation && connection.conversation(conversation);
    if (c) sendRead(c);
  });
  $("minimise").addEventListener("click", () => {
    $("widget").hidden = true;
    $("launcher").hidden = false;
    localStorage.setItem("cs.widget.open", "0");
  });
  document.addEventListener("visibilitychange", () => {
    const c = conversation && connection && connection.conversation(conversation);
    if (c) sendRead(c);
  });

  // Open unless the visitor minimised it last time.
  if (localStorage.getItem("cs.widget.open") !== "0") {
    $("widget").hidden = false;
    $("launcher").hidden = true;
  }
  start().catch((error) => setStatus("Chat unavailable: " + error.message));
})();
