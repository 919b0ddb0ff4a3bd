// The console's Reports page: a date range, the figures of GET
// api/agent/reports, four charts drawn here as SVG (no chart library, no
// CDN), today's figures kept current, the bot's top intents and handed-off
// questions (each matched to a suggested new intent of GET
// api/agent/suggestions), the agents' table and the CSV downloads. Signed
// in by the console's cookie; an agent sees their own figures, a
// supervisor everyone's.
"use strict";

(function () {
  const script = document.currentScript;
  const PREFIX = new URL(script.src, location.href).pathname.replace(/\/assets\/reports\.js$/, "");
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // YYYY-MM-DD of a Date, in UTC (the report's days are the shop's, as strings).
  const iso = (d) => d.toISOString().slice(0, 10);
  function daysBetween(from, to) {
    const out = [];
    const d = new Date(from + "T00:00:00Z");
    const end = new Date(to + "T00:00:00Z");
    while (d <= end && out.length < 400) {
      out.push(iso(d));
      d.setUTCDate(d.getUTCDate() + 1);
    }
    return out;
  }

  const seconds = (ms) => (ms === null || ms === undefined ? null : ms / 1000);
  function duration(ms) {
    if (ms === null || ms === undefined) return "–";
    const s = ms / 1000;
    if (s < 90) return Math.round(s) + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  // One chart: series of {name, cls, values (one per day, null = none)},
  // drawn as bars or lines over the days, with the top value on the axis.
  function chart(node, days, series, kind, fixedMax) {
    node.replaceChildren();
    const W = 480, H = 190, L = 36, B = 22, T = 26;
    node.setAttribute("viewBox", `0 0 ${W} ${H}`);
    const values = series.flatMap((s) => s.values.filter((v) => v !== null));
    const max = fixedMax || Math.max(1, ...values);
    const x0 = L, x1 = W - 6, y0 = H - B, y1 = T;
    const step = (x1 - x0) / Math.max(1, days.length);
    const y = (v) => y0 - (v / max) * (y0 - y1);
    node.appendChild(svg("line", { x1: x0, y1: y0, x2: x1, y2: y0, class: "axis" }));
    node.appendChild(svg("line", { x1: x0, y1: y0, x2: x0, y2: y1, class: "axis" }));
    node.appendChild(svg("text", { x: x0 - 4, y: y1 + 8, class: "tick", "text-anchor": "end" }, String(Math.round(max * 100) / 100)));
    node.appendChild(svg("text", { x: x0 - 4, y: y0, class: "tick", "text-anchor": "end" }, "0"));
    const labelEvery = Math.ceil(days.length / 6);
    days.forEach((day, i) => {
      if (i % labelEvery === 0) {
        node.appendChild(svg("text", { x: x0 + step * (i + 0.5), y: H - 6, class: "tick", "text-anchor": "middle" }, day.slice(5)));
      }
    });
    series.forEach((s, k) => {
      if (kind === "bars") {
        const w = Math.max(1, (step * 0.8) / series.length);
        s.values.forEach((v, i) => {
          if (v === null) return;
          const rect = svg("rect", {
            x: x0 + step * i + step * 0.1 + w * k, y: y(v), width: w, height: y0 - y(v), class: "bar " + s.cls,
          });
          rect.appendChild(svg("title", {}, `${days[i]} ${s.name}: ${v}`));
          node.appendChild(rect);
        });
      } else {
        const points = s.values
          .map((v, i) => (v === null ? null : `${x0 + step * (i + 0.5)},${y(v)}`))
          .filter((p) => p !== null);
        if (points.length) node.appendChild(svg("polyline", { points: points.join(" "), class: "line " + s.cls }));
        s.values.forEach((v, i) => {
          if (v === null) return;
          const dot = svg("circle", { cx: x0 + step * (i + 0.5), cy: y(v), r: 3, class: "dot " + s.cls });
          dot.appendChild(svg("title", {}, `${days[i]} ${s.name}: ${v}`));
          node.appendChild(dot);
        });
      }
    });
    series.forEach((s, k) => {
      // Above the plot, so no bar or line hides it.
      node.appendChild(svg("text", { x: x0 + 4 + 110 * k, y: 12, class: "legend " + s.cls }, "■ " + s.name));
    });
  }

  function tile(label, value) {
    const node = el("div", "tile");
    node.appendChild(el("div", "tile-value", value));
    node.appendChild(el("div", "tile-label", label));
    return node;
  }

  function show(report) {
    const days = daysBetween(report.from, report.to);
    // The desk's days for a supervisor; an agent's own otherwise.
    const source = report.desk || (report.agents[0] ? { total: report.agents[0].total, days: report.agents[0].days } : { total: null, days: [] });
    const byDay = new Map(source.days.map((d) => [d.day, d]));
    const each = (f) => days.map((day) => (byDay.has(day) ? f(byDay.get(day)) : null));
    const t = source.total;
    $("scope").textContent = report.desk
      ? "The whole desk and every agent, " + report.from + " to " + report.to + "."
      : "Your own figures, " + report.from + " to " + report.to + ".";
    $("tiles").replaceChildren();
    if (t) {
      $("tiles").append(
        tile("conversations opened", String(t.opened)),
        tile("closed by the bot alone", t.containment_rate === null ? "–" : Math.round(t.containment_rate * 100) + " %"),
        tile("hand-offs", String(t.handoffs)),
        tile("median wait (at most)", duration(t.wait.p50_le_ms)),
        tile("median first response (at most)", duration(t.first_response.p50_le_ms)),
        tile("mean rating", t.ratings.mean === null ? "–" : t.ratings.mean.toFixed(2) + " / 5"),
      );
    }
    chart($("chart-volume"), days, [
      { name: "opened", cls: "s1", values: each((d) => d.opened) },
      { name: "closed", cls: "s2", values: each((d) => d.closed) },
    ], "bars");
    chart($("chart-containment"), days, [
      { name: "contained", cls: "s1", values: each((d) => d.containment_rate) },
    ], "lines", 1);
    chart($("chart-times"), days, [
      { name: "wait", cls: "s1", values: each((d) => seconds(d.wait.p50_le_ms)) },
      { name: "first response", cls: "s2", values: each((d) => seconds(d.first_response.p50_le_ms)) },
    ], "lines");
    chart($("chart-rating"), days, [
      { name: "mean rating", cls: "s1", values: each((d) => d.ratings.mean) },
    ], "bars", 5);
    showBot(report);
    const body = $("agents").querySelector("tbody");
    body.replaceChildren();
    for (const a of report.agents) {
      const row = el("tr");
      row.dataset.agent = a.agent;
      const f = a.total;
      for (const text of [
        a.name, String(f.handled), duration(f.first_response.p50_le_ms), duration(f.mean_handling_ms),
        String(f.transfers), String(f.ratings.count), f.ratings.mean === null ? "–" : f.ratings.mean.toFixed(2),
      ]) {
        row.appendChild(el("td", "", text));
      }
      body.appendChild(row);
    }
    $("report").hidden = false;
  }

  // The shop's today: the report's zone offset applied to now.
  const shopToday = (report) => iso(new Date(Date.now() + report.zone_offset_minutes * 60000));

  function showToday(report) {
    const today = shopToday(report);
    const source = report.desk || report.agents[0];
    const day = source && source.days.find((d) => d.day === today);
    const inRange = report.from <= today && today <= report.to;
    $("today-box").hidden = !inRange;
    if (!inRange) return;
    const f = day || { opened: 0, closed: 0, contained: 0, handoffs: 0, handled: 0, ratings: { count: 0, mean: null } };
    $("today").replaceChildren(
      tile("opened today", String(f.opened)),
      tile("closed today", String(f.closed)),
      tile("by the bot alone", String(f.contained)),
      tile("hand-offs today", String(f.handoffs)),
      tile("ratings today", String(f.ratings.count)),
      tile("mean rating today", f.ratings.mean === null ? "–" : f.ratings.mean.toFixed(2) + " / 5"),
    );
    $("today-updated").textContent = "(" + today + ", updated " + new Date().toLocaleTimeString() + ")";
  }

  // Which suggested group a handed-off question belongs to: one whose
  // examples hold it, else the one sharing the most keywords with it.
  function suggestionFor(question, suggestions) {
    const q = question.toLowerCase();
    let best = null, bestHits = 0;
    suggestions.forEach((s, i) => {
      if (s.examples.some((e) => e.trim().toLowerCase().replace(/\s+/g, " ") === q)) {
        best = i;
        bestHits = Infinity;
        return;
      }
      const hits = s.keywords.filter((k) => q.includes(k.toLowerCase())).length;
      if (hits > bestHits) {
        best = i;
        bestHits = hits;
      }
    });
    return best === null ? null : { index: best, group: suggestions[best] };
  }

  let suggestions = [];
  async function loadSuggestions() {
    try {
      const response = await fetch(PREFIX + "/api/agent/suggestions", { credentials: "same-origin" });
      if (response.ok) suggestions = (await response.json()).suggestions || [];
    } catch (_) {
      suggestions = [];
    }
  }

  function showBot(report) {
    const bot = report.desk && report.desk.bot;
    $("bot").hidden = !bot;
    if (!bot) return;
    const intents = $("top-intents").querySelector("tbody");
    intents.replaceChildren();
    for (const r of bot.top_intents) {
      const row = el("tr");
      row.append(el("td", "", r.name), el("td", "", String(r.count)));
      intents.appendChild(row);
    }
    if (!bot.top_intents.length) intents.appendChild(el("tr")).appendChild(el("td", "hint", "No answers in these days."));
    const handed = $("top-handed-off").querySelector("tbody");
    handed.replaceChildren();
    for (const r of bot.top_handed_off) {
      const row = el("tr");
      const match = suggestionFor(r.name, suggestions);
      const cell = el("td", "");
      if (match) {
        const link = el("a", "", "#" + (match.index + 1) + ": " + match.group.keywords.join(", ") + " (" + match.group.size + ")");
        link.href = "../agent#suggestions";
        cell.appendChild(link);
      } else {
        cell.textContent = "–";
      }
      row.append(el("td", "", r.name), el("td", "", String(r.count)), cell);
      handed.appendChild(row);
    }
    if (!bot.top_handed_off.length) handed.appendChild(el("tr")).appendChild(el("td", "hint", "No hand-offs by the bot in these days."));
    $("handed-off-other").textContent = bot.handed_off_other ? bot.handed_off_other + " more, not counted apart." : "";
  }

  let current = null;
  async function load() {
    const query = "from=" + encodeURIComponent($("from").value) + "&to=" + encodeURIComponent($("to").value);
    $("csv").href = PREFIX + "/api/agent/reports?" + query + "&format=csv";
    $("csv-top").href = PREFIX + "/api/agent/reports?" + query + "&format=csv&table=top";
    $("error").textContent = "";
    const response = await fetch(PREFIX + "/api/agent/reports?" + query, { credentials: "same-origin" });
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (response.status === 401) {
      $("error").textContent = "Sign in in the console first.";
      return;
    }
    if (!response.ok) {
      $("error").textContent = (data && data.message) || response.statusText;
      return;
    }
    if (!current) await loadSuggestions();
    current = data;
    show(data);
    showToday(data);
  }

  // Today's figures as they happen: while the range holds the shop's
  // today, the report is read again every 10 s (a read of a few counters).
  setInterval(() => {
    if (!current || document.hidden) return;
    const today = shopToday(current);
    if (current.from <= today && today <= current.to) load().catch(() => {});
  }, 10000);

  // The last 14 days by default, ending today (the browser's today).
  const today = new Date();
  const start = new Date(today.getTime() - 13 * 86400000);
  $("to").value = iso(today);
  $("from").value = iso(start);
  $("range").addEventListener("submit", (event) => {
    event.preventDefault();
    load().catch((e) => ($("error").textContent = e.message));
  });
  load().catch((e) => ($("error").textContent = e.message));
})();
