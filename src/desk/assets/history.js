// The console's History page: upload past conversations (POST
// api/agent/history), review the suggested FAQ entries (GET
// api/agent/history/suggestions), and accept, edited, or reject each. Signed
// in by the console's cookie; supervisors only (the desk says so otherwise).
"use strict";

(function () {
  const script = document.currentScript;
  const PREFIX = new URL(script.src, location.href).pathname.replace(/\/assets\/history\.js$/, "");
  const API = PREFIX + "/api/agent/history";
  const $ = (id) => document.getElementById(id);

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // A request to the desk; throws the desk's own message on failure.
  async function call(method, path, body, type) {
    const init = { method, credentials: "same-origin", headers: {} };
    if (body !== undefined) {
      init.body = body;
      init.headers["Content-Type"] = type || "application/json";
    }
    const response = await fetch(path, init);
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (response.status === 401) throw new Error("Sign in in the console first.");
    if (!response.ok) throw new Error((data && data.message) || response.statusText);
    return data;
  }

  function fail(e) {
    $("status").textContent = "";
    $("error").textContent = e.message;
  }

  function card(s) {
    const node = el("article", "suggestion");
    node.dataset.id = String(s.id);
    node.appendChild(el("div", "meta", s.size + " questions · " + s.answer_count + " agents gave this answer · cohesion " + s.cohesion.toFixed(2)));
    const keywords = el("div", "keywords");
    for (const k of s.keywords) keywords.appendChild(el("span", "", k));
    node.appendChild(keywords);
    const examples = el("ul", "representatives");
    for (const q of s.representatives) examples.appendChild(el("li", "", q));
    node.appendChild(examples);
    const name = el("input", "s-name");
    name.value = s.name;
    const answer = el("textarea", "s-answer");
    answer.value = s.answer;
    const questions = el("textarea", "s-questions");
    questions.value = s.questions.join("\n");
    for (const [text, field] of [["Intent name", name], ["Answer", answer], ["Questions the bot learns (" + s.questions.length + ")", questions]]) {
      const label = el("label", "", text);
      label.appendChild(field);
      node.appendChild(label);
    }
    const actions = el("div", "actions");
    const accept = el("button", "s-accept", "Accept");
    accept.type = "button";
    const reject = el("button", "s-reject", "Reject");
    reject.type = "button";
    actions.append(accept, reject);
    node.appendChild(actions);
    accept.addEventListener("click", () => {
      const edit = {
        name: name.value.trim(),
        answer: answer.value,
        questions: questions.value.split("\n").map((q) => q.trim()).filter((q) => q),
      };
      $("error").textContent = "";
      call("POST", API + "/suggestions/" + s.id + "/accept", JSON.stringify(edit))
        .then((done) => {
          $("status").textContent = "Accepted “" + done.accepted.name + "”" + (done.accepted.merged ? " (merged into the existing intent)." : ": the bot answers it now.");
          return load();
        })
        .catch(fail);
    });
    reject.addEventListener("click", () => {
      $("error").textContent = "";
      call("POST", API + "/suggestions/" + s.id + "/reject")
        .then(() => {
          $("status").textContent = "Rejected.";
          return load();
        })
        .catch(fail);
    });
    return node;
  }

  function show(review) {
    const last = review.last_import;
    $("summary").textContent = last
      ? "Last import: " + last.conversations + " conversations, " + last.questions + " answered questions (" + last.unanswered + " unanswered), " + last.suggestions + " suggestions."
      : "Nothing imported yet.";
    $("pending-count").textContent = "(" + review.pending.length + ")";
    $("pending").replaceChildren(...review.pending.map(card));
    $("rejected-count").textContent = review.rejected ? "(" + review.rejected + " rejected)" : "";
    $("accepted").replaceChildren(...review.accepted.map((a) =>
      el("li", "", a.name + (a.merged ? " (merged)" : "") + ": " + a.questions.length + " questions · " + a.answer)));
  }

  async function load() {
    show(await call("GET", API + "/suggestions"));
  }

  $("upload").addEventListener("submit", (event) => {
    event.preventDefault();
    const file = $("history-file").files[0];
    if (!file) return;
    const groups = $("clusters").value.trim();
    $("error").textContent = "";
    $("status").textContent = "Importing " + file.name + " (" + Math.round(file.size / 1024) + " KiB) and grouping its questions…";
    call("POST", API + (groups ? "?clusters=" + encodeURIComponent(groups) : ""), file, "application/x-ndjson")
      .then((done) => {
        $("status").textContent = "Imported: " + done.imported.suggestions + " suggestions from " + done.imported.questions + " questions.";
        return load();
      })
      .catch(fail);
  });
  load().catch(fail);
})();
