// The live events page: one EventSource on the console's stream, rows newest first, filters.
// Three kinds of entries (docs/api.md): deliveries (ingest), "landed" (the event worker: the
// profile each event landed on and the transitions it caused) and "esp" (the sync: what each ESP
// request came to). A worker line goes under the delivery that carried its events (matched by event
// id), an ESP line under the row where that profile last landed; what matches nothing gets a row of
// its own, so the filters (sender, outcome) keep working on rows. The worker may write its line
// before the web process writes the delivery (deliveries are written every 100 ms): a worker line
// whose delivery has not come waits for it up to WAIT_MS. Rows are kept newest first by their
// instant, whatever order the entries come in.
(function () {
  "use strict";
  var table = document.getElementById("live");
  var body = table.querySelector("tbody");
  var state = document.getElementById("live-state");
  var sender = document.getElementById("f-sender");
  var outcome = document.getElementById("f-outcome");
  var personUrl = table.dataset.person || "";
  var MAX_ROWS = 500;
  var rowOfEvent = {};    // event id -> the delivery's row
  var rowOfProfile = {};  // profile id -> the row where it last landed
  var waiting = {};       // event id -> a worker line waiting for its delivery
  var WAIT_MS = 3000;

  // Text a sender wrote, as the pages show it (the "isolated" filter, connector/ops/console/views.py):
  // in a <bdi>, so its direction does not spill onto the text around it, each character that changes
  // direction (U+202E, ...) in a <bdi> of its own, marked with its code point by console.css.
  var BIDI_CONTROL = /([\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069])/;

  function isolated(text) {
    var bdi = document.createElement("bdi");
    bdi.className = "v";
    String(text).split(BIDI_CONTROL).forEach(function (part, n) {
      if (n % 2) {
        var ctl = document.createElement("bdi");
        ctl.className = "ctl";
        ctl.dataset.cp = "U+" + ("000" + part.charCodeAt(0).toString(16).toUpperCase()).slice(-4);
        ctl.textContent = part;
        bdi.appendChild(ctl);
      } else if (part) {
        bdi.appendChild(document.createTextNode(part));
      }
    });
    return bdi;
  }

  // parts: text, nodes (isolated values), links ({href, text}) and lists of those
  function append(parent, parts) {
    (Array.isArray(parts) ? parts : [parts]).forEach(function (p) {
      if (p === null || p === undefined || p === "") return;
      if (Array.isArray(p)) {
        append(parent, p);
      } else if (p.nodeType) {
        parent.appendChild(p);
      } else if (p.href) {
        var a = document.createElement("a");
        a.href = p.href;
        a.textContent = p.text;
        parent.appendChild(a);
      } else {
        parent.appendChild(document.createTextNode(String(p)));
      }
    });
  }

  function joined(values, separator) {
    var out = [];
    values.forEach(function (v, n) { if (n) out.push(separator); out.push(v); });
    return out;
  }

  function cell(row, parts, cls) {
    var td = document.createElement("td");
    append(td, parts);
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  function identities(events) {
    var out = [];
    events.forEach(function (e) {
      Object.keys(e.identities || {}).forEach(function (k) { out.push([k + " ", isolated(e.identities[k])]); });
    });
    return joined(out, ", ");
  }

  function plural(n, one, many) { return n + " " + (n === 1 ? one : many); }

  function detail(d) {
    if (d.outcome === "refused") return [d.status + " ", isolated(d.reason || "")];
    if (d.outcome === "not_shown") {
      return plural(d.deliveries, "more delivery", "more deliveries") + " (" +
             plural(d.accepted, "event", "events") + " stored, " + d.duplicates + " duplicate), " + d.reason;
    }
    var names = joined(d.events.map(function (e) { return isolated(e.name); }), ", ");
    var more = d.event_count > d.events.length ? " (+" + (d.event_count - d.events.length) + " more)" : "";
    return [d.accepted + " stored, " + d.duplicates + " duplicate · ", names, more];
  }

  function visible(row) {
    return (!sender.value || row.dataset.sender === sender.value) &&
           (!outcome.value || row.dataset.outcome === outcome.value);
  }

  function newRow(d, sent, what, idText) {
    var row = document.createElement("tr");
    row.className = d.outcome;
    row.dataset.sender = sent;
    row.dataset.outcome = d.outcome;
    cell(row, d.at, "nowrap");
    cell(row, sent);
    cell(row, d.outcome.replace("_", " "), "outcome");
    var td = cell(row, what, "detail");
    cell(row, idText, "small ids");
    row.hidden = !visible(row);
    var at = Date.parse(d.at) || 0;
    row.dataset.at = String(at);
    var next = body.firstChild;  // newest first: before the first row that is not later
    while (next && Number(next.dataset.at) > at) next = next.nextSibling;
    body.insertBefore(row, next);
    while (body.children.length > MAX_ROWS) body.removeChild(body.lastChild);
    return td;
  }

  function line(td, cls, parts) {
    var div = document.createElement("div");
    div.className = "sub " + cls;
    append(div, parts);
    td.appendChild(div);
  }

  function profileLink(pid) {
    if (!pid) return "(erased)";
    var text = pid.length > 12 ? pid.slice(0, 8) + "…" : pid;
    return personUrl ? { href: personUrl.replace("__PID__", encodeURIComponent(pid)), text: text } : text;
  }

  function delivery(d) {
    var td = newRow(d, d.sender, detail(d), identities(d.events));
    (d.events || []).forEach(function (e) {
      if (!e.id) return;
      rowOfEvent[e.id] = td;
      var held = waiting[e.id];
      if (held && !held.done) {
        settle(held);
        clearTimeout(held.timer);
        underDelivery(td, held.p);
      }
    });
  }

  function underDelivery(td, p) {
    line(td, "landed", ["→ profile ", profileLink(p.profile), ": ", landedText(p)]);
    rowOfProfile[p.profile] = td;
  }

  function settle(held) {
    held.done = true;
    held.p.events.forEach(function (id) { if (waiting[id] === held) delete waiting[id]; });
  }

  function wait(d, p) {
    var held = { p: p, done: false };
    p.events.forEach(function (id) { waiting[id] = held; });
    held.timer = setTimeout(function () {
      if (held.done) return;
      settle(held);
      looseRow(d, [p], true);
    }, WAIT_MS);
  }

  function landedText(p) {
    var out = [];
    if (p.entered.length) out.push("entered " + p.entered.join(", "));
    if (p.exited.length) out.push("exited " + p.exited.join(", "));
    var traits = Object.keys(p.traits || {});
    if (traits.length) {
      out.push(["traits ", joined(traits.map(function (k) { return [k + "=", isolated(p.traits[k])]; }), ", ")]);
    }
    if (!out.length) out.push("no segment change");
    return joined(out, "; ");
  }

  function landed(d) {
    var loose = [];
    d.profiles.forEach(function (p) {
      var td = null;
      (p.events || []).forEach(function (id) { td = td || rowOfEvent[id]; });
      if (td) underDelivery(td, p);
      else if ((p.events || []).length) wait(d, p);
      else loose.push(p);
    });
    looseRow(d, loose);
  }

  function looseRow(d, loose, alone) {
    if (!loose.length) return;
    var more = !alone && d.profile_count > d.profiles.length ?
      " (+" + (d.profile_count - d.profiles.length) + " more)" : "";
    var td = newRow(d, d.sender || "", loose.length + " profile(s) updated" + more, "");
    loose.forEach(function (p) {
      line(td, "landed", ["profile ", profileLink(p.profile), ": ", landedText(p)]);
      rowOfProfile[p.profile] = td;
    });
  }

  function espText(d, r) {
    var out = [d.destination + ": " + r.status.replace("_", " ")];
    if (r.reason) out.push(" (", isolated(r.reason), ")");
    if (r.retry_at) out.push(", retry at " + r.retry_at);
    return out;
  }

  function esp(d) {
    var loose = [];
    d.results.forEach(function (r) {
      var td = r.profile && rowOfProfile[r.profile];
      if (!td) { loose.push(r); return; }
      line(td, "esp " + r.status, ["→ ESP ", espText(d, r)]);
    });
    if (!loose.length) return;
    var counts = Object.keys(d.counts).map(function (k) { return d.counts[k] + " " + k.replace("_", " "); });
    var td = newRow(d, "", "→ " + d.destination + ": " + counts.join(", "), "");
    loose.forEach(function (r) {
      line(td, "esp " + r.status, ["profile ", profileLink(r.profile), ": ", espText(d, r)]);
    });
  }

  function add(d) {
    if (d.kind === "landed") landed(d);
    else if (d.kind === "esp") esp(d);
    else delivery(d);
  }

  function refilter() {
    Array.prototype.forEach.call(body.children, function (row) { row.hidden = !visible(row); });
  }
  sender.addEventListener("change", refilter);
  outcome.addEventListener("change", refilter);

  // Each answer sends what is new and ends; EventSource asks again after the answer's "retry"
  // (half a second) with Last-Event-ID, so an "error" between two answers is the normal case.
  var source = new EventSource(table.dataset.stream);
  var failures = 0;
  source.addEventListener("delivery", function (msg) { add(JSON.parse(msg.data)); });
  source.onopen = function () { failures = 0; state.textContent = "live"; };
  source.onerror = function () {
    if (source.readyState === EventSource.CLOSED) { state.textContent = "disconnected (reload the page)"; return; }
    failures += 1;
    if (failures > 3) state.textContent = "reconnecting…";
  };
})();
