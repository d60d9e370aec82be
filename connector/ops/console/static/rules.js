// The rule editor: validate as you type, dry run (who enters, who exits), publish with progress.
(function () {
  "use strict";
  var config = JSON.parse(document.getElementById("rules-config").textContent);
  var text = document.getElementById("rules-text");
  var status = document.getElementById("rules-status");
  var warnings = document.getElementById("rules-warnings");
  var dryRun = document.getElementById("dry-run");
  var publish = document.getElementById("publish");
  var diff = document.getElementById("diff");
  var progress = document.getElementById("publish-progress");
  var bar = document.getElementById("progress-bar");
  var progressText = document.getElementById("progress-text");
  var timer = null;
  var checked = null; // the text the last dry run was for

  function send(action, fields) {
    var body = new URLSearchParams(fields);
    body.set("csrf", config.csrf);
    return fetch(config.base + "/" + action, { method: "POST", body: body, credentials: "same-origin" })
      .then(function (r) { return r.json().then(function (data) { return { ok: r.ok, data: data }; }); });
  }

  function show(message, good) {
    status.textContent = message;
    status.className = "small " + (good ? "good" : "bad");
  }

  function showWarnings(list) {
    warnings.textContent = "";
    (list || []).forEach(function (w) {
      var item = document.createElement("li");
      item.className = "alert warning small";
      item.textContent = w.path + ": " + w.message;
      warnings.appendChild(item);
    });
    warnings.hidden = !warnings.childNodes.length;
  }

  function validate() {
    send("validate", { text: text.value }).then(function (answer) {
      var d = answer.data;
      showWarnings(answer.ok ? d.warnings : []);
      if (!answer.ok) return show(d.error || "could not check the rules", false);
      if (d.valid) {
        show("Valid: " + d.segments.length + " segments (" + d.segments.join(", ") + "), " + d.traits.length + " computed traits.", true);
      } else {
        show(d.path + ": " + d.reason, false);
      }
    });
  }

  function people(list, more) {
    var out = list.join(", ");
    return more > list.length ? out + " … and " + (more - list.length) + " more" : out;
  }

  function renderDiff(d) {
    diff.textContent = "";
    var head = document.createElement("p");
    head.className = "small muted";
    head.textContent = d.profiles + " profiles evaluated with the rules in force and the edited ones" +
      (d.sampled ? " (a sample: the first " + d.limit + " stored profiles)" : "") + ".";
    diff.appendChild(head);
    if (!d.segments.length) {
      var none = document.createElement("p");
      none.textContent = "No one would enter or leave any segment.";
      diff.appendChild(none);
      return;
    }
    var table = document.createElement("table");
    table.id = "diff-table";
    table.innerHTML = "<thead><tr><th>Segment</th><th>Enter</th><th>Exit</th></tr></thead>";
    var body = document.createElement("tbody");
    d.segments.forEach(function (s) {
      var row = document.createElement("tr");
      row.dataset.segment = s.name;
      [[s.name, ""], ["+" + s.entering + " " + people(s.entering_sample, s.entering), "good enter"],
       ["−" + s.exiting + " " + people(s.exiting_sample, s.exiting), "bad exit"]].forEach(function (c) {
        var td = document.createElement("td");
        td.textContent = c[0];
        td.className = c[1];
        row.appendChild(td);
      });
      body.appendChild(row);
    });
    table.appendChild(body);
    diff.appendChild(table);
  }

  function poll(key, version) {
    fetch(config.base + "/progress/" + encodeURIComponent(key), { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (p) {
        if (p.error) { progressText.textContent = p.error; return; }
        bar.value = p.percent;
        progressText.textContent = "Version " + version + " published: re-evaluated " + p.done + " of " + p.total + " profiles (" + p.percent + " %)";
        if (!p.finished) setTimeout(function () { poll(key, version); }, 500);
      });
  }

  function announce(version) {
    // the page was rendered before the publish: say what is in force now
    var source = document.getElementById("rules-source");
    source.textContent = "";
    var line = document.createElement("p");
    line.innerHTML = 'In force: <span class="pill good"></span> published just now; every process takes it at its next check (within a second or two).';
    line.querySelector(".pill").textContent = "API version " + version;
    source.appendChild(line);
    var empty = document.querySelector("#versions td[colspan]");
    if (empty) empty.textContent = "Version " + version + " published just now: reload the page for the list.";
  }

  text.addEventListener("input", function () {
    if (publish) { publish.disabled = checked === null || checked !== text.value; }
    clearTimeout(timer);
    timer = setTimeout(validate, 400);
  });

  if (dryRun) {
    dryRun.addEventListener("click", function () {
      var sent = text.value;
      diff.textContent = "Evaluating …";
      send("dry-run", { text: sent }).then(function (answer) {
        if (!answer.ok) {
          diff.textContent = "";
          show(answer.data.error, false);
          return;
        }
        renderDiff(answer.data);
        checked = sent;
        publish.disabled = text.value !== checked;
      });
    });
    publish.addEventListener("click", function () {
      publish.disabled = true;
      send("publish", { text: text.value }).then(function (answer) {
        if (!answer.ok) { show(answer.data.error, false); return; }
        progress.hidden = false;
        announce(answer.data.version);
        poll(answer.data.key, answer.data.version);
      });
    });
  }
})();
