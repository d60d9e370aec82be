// The live events page: one EventSource on the console's stream, rows newest first, filters.
(function () {
  "use strict";
  var table = document.getElementById("live");
  var body = table.querySelector("tbody");
  var state = document.getElementById("live-state");
  var sender = document.getElementById("f-sender");
  var outcome = document.getElementById("f-outcome");
  var MAX_ROWS = 500;

  function cell(row, text, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    row.appendChild(td);
  }

  function identities(events) {
    var out = [];
    events.forEach(function (e) {
      Object.keys(e.identities || {}).forEach(function (k) { out.push(k + " " + e.identities[k]); });
    });
    return out.join(", ");
  }

  function detail(d) {
    if (d.outcome === "refused") return d.status + " " + (d.reason || "");
    var names = d.events.map(function (e) { return e.name; }).join(", ");
    var more = d.event_count > d.events.length ? " (+" + (d.event_count - d.events.length) + " more)" : "";
    return d.accepted + " stored, " + d.duplicates + " duplicate · " + names + more;
  }

  function visible(row) {
    return (!sender.value || row.dataset.sender === sender.value) &&
           (!outcome.value || row.dataset.outcome === outcome.value);
  }

  function add(d) {
    var row = document.createElement("tr");
    row.className = d.outcome;
    row.dataset.sender = d.sender;
    row.dataset.outcome = d.outcome;
    cell(row, d.at, "nowrap");
    cell(row, d.sender);
    cell(row, d.outcome, "outcome");
    cell(row, detail(d), "detail");
    cell(row, identities(d.events), "small");
    row.hidden = !visible(row);
    body.insertBefore(row, body.firstChild);
    while (body.children.length > MAX_ROWS) body.removeChild(body.lastChild);
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
