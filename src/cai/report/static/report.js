// The report's example browser: inlined into report.html by cai.report at build time.
//
// The examples are in the JSON block #cai-data: {critiques: [...], pairs: [...], across: [...]}
// (shapes: cai/report/collect.py, critique_example, pair_example, across_examples). Model outputs
// are untrusted text: they reach the page through textContent only, never innerHTML.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("cai-data").textContent);
  var current = null, visible = [];
  var sel = document.getElementById("ex-select"), panel = document.getElementById("ex-panel");
  var filter = document.getElementById("ex-filter");

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);  // never innerHTML: model text is untrusted
    return e;
  }
  function turn(cls, who, text, badges) {
    var t = el("div", "turn " + cls), w = el("div", "who", who);
    (badges || []).forEach(function (b) { if (b) w.appendChild(el("span", "badge " + b[0], b[1])); });
    t.appendChild(w);
    t.appendChild(el("div", "text", text === "" ? "(empty)" : text));
    return t;
  }
  // The turns before the request of a multi-turn conversation, then the request itself.
  function conversation(r, who) {
    var n = (r.context || []).length;
    (r.context || []).forEach(function (m, i) {
      panel.appendChild(turn("context", "earlier turn " + (i + 1) + " of " + n + " · " + m.role, m.content));
    });
    panel.appendChild(turn("prompt", who + (n ? " (turn " + (n + 1) + ")" : ""), r.prompt));
  }
  function num(x, digits) { return x === null || x === undefined ? "–" : Number(x).toFixed(digits); }
  function short(s) { s = String(s).replace(/\s+/g, " "); return s.length > 110 ? s.slice(0, 107) + "…" : s; }
  function multi(r) { return r.context && r.context.length ? "[" + (r.context.length + 1) + " turns] " : ""; }

  var views = {
    critiques: {
      label: function (r) { return multi(r) + r.prompt; },
      render: function (r) {
        conversation(r, "red-team prompt");
        panel.appendChild(turn("answer", "initial answer", r.init));
        r.rounds.forEach(function (rd, i) {
          var tag = "round " + (i + 1) + (rd.principle_id ? " · principle " + rd.principle_id : "");
          if (rd.critic_prompt || rd.critic_response) {
            panel.appendChild(turn("critique", "critique request (" + tag + ")", rd.critic_prompt));
            panel.appendChild(turn("critique", "critique", rd.critic_response));
          }
          panel.appendChild(turn("revision", "revision request (" + tag + ")", rd.revision_prompt));
          panel.appendChild(turn("revision", "revision", rd.revision_response));
        });
      }
    },
    pairs: {
      label: function (r) { return "p=" + num(r.p_chosen, 2) + " · " + multi(r) + r.prompt; },
      render: function (r) {
        conversation(r, "prompt" + (r.kind ? " (" + r.kind + ")" : ""));
        panel.appendChild(turn("chosen", "chosen", r.chosen, [["good_refusal", "p(chosen) " + num(r.p_chosen, 3)]]));
        panel.appendChild(turn("rejected", "rejected", r.rejected));
        if (r.questions && r.questions.length) {
          var reasons = r.questions.some(function (q) { return q.reasoning; });
          var cols = ["principle", "option (A) is", "p(A)", "p(chosen)"].concat(reasons ? ["reasoning"] : []);
          var tb = el("table", "data"), head = el("tr");
          cols.forEach(function (h) { head.appendChild(el("th", null, h)); });
          var thead = el("thead"); thead.appendChild(head); tb.appendChild(thead);
          var body = el("tbody");
          r.questions.forEach(function (q) {
            var tr = el("tr");
            tr.appendChild(el("th", null, q.principle_id));
            tr.appendChild(el("td", null, q.first));
            tr.appendChild(el("td", null, num(q.p_option_a, 3)));
            tr.appendChild(el("td", null, num(q.p_chosen, 3)));
            if (reasons) tr.appendChild(el("td", "small", q.reasoning || ""));
            body.appendChild(tr);
          });
          tb.appendChild(body);
          panel.appendChild(el("h3", null, "The feedback model's questions"));
          panel.appendChild(tb);
        }
      }
    },
    across: {
      label: function (r) { return "[" + r.kind + (r.form ? " · " + r.form : "") + "] " + r.prompt; },
      render: function (r) {
        conversation(r, (r.kind === "red_team" ? "held-out red-team" : "held-out helpful") + " prompt" + (r.form ? " (" + r.form + ")" : ""));
        r.answers.forEach(function (a) {
          var pname = r.kind === "red_team" ? "judge p(harmless) " : "judge p(helpful) ";
          panel.appendChild(turn("answer", a.model, a.answer, [a.oracle ? [a.oracle, a.oracle.replace("_", " ")] : null, a.p === null || a.p === undefined ? null : ["info", pname + num(a.p, 3)]]));
        });
        if (r.comparisons.length) {
          var ul = el("ul");
          r.comparisons.forEach(function (c) { ul.appendChild(el("li", null, c.label + ": p(" + c.better + " better) " + num(c.p, 3))); });
          panel.appendChild(el("h3", null, "AI judge, pairwise"));
          panel.appendChild(ul);
        }
      }
    }
  };

  function show(i) {
    panel.textContent = "";
    if (!visible.length) { panel.appendChild(el("div", "empty", "Nothing to show: this stage has not run (or nothing matches the filter).")); return; }
    i = Math.max(0, Math.min(visible.length - 1, i));
    sel.value = String(i);
    views[current].render(data[current][visible[i]]);
  }
  function fill() {
    var q = filter.value.trim().toLowerCase(), rows = data[current] || [];
    visible = [];
    rows.forEach(function (r, i) { if (!q || JSON.stringify(r).toLowerCase().indexOf(q) >= 0) visible.push(i); });
    sel.textContent = "";
    visible.forEach(function (ri, i) { var o = el("option", null, "#" + (ri + 1) + "  " + short(views[current].label(rows[ri]))); o.value = String(i); sel.appendChild(o); });
    show(0);
  }
  function select(name) {
    current = name;
    Array.prototype.forEach.call(document.querySelectorAll(".tab"), function (t) { t.classList.toggle("active", t.getAttribute("data-tab") === name); });
    fill();
  }
  Array.prototype.forEach.call(document.querySelectorAll(".tab"), function (t) { t.addEventListener("click", function () { select(t.getAttribute("data-tab")); }); });
  sel.addEventListener("change", function () { show(Number(sel.value)); });
  filter.addEventListener("input", fill);
  document.getElementById("ex-prev").addEventListener("click", function () { show(Number(sel.value) - 1); });
  document.getElementById("ex-next").addEventListener("click", function () { show(Number(sel.value) + 1); });
  var first = ["across", "critiques", "pairs"].filter(function (k) { return data[k] && data[k].length; })[0] || "critiques";
  select(first);
  document.body.setAttribute("data-ready", "1");
})();
