// Dead letters: "select all on this page" (a header checkbox, shown only with JavaScript; without
// it the page offers a link that opens the page with every box ticked), and an "all matching"
// replay or discard going on to its next batch by itself.
(function () {
  "use strict";
  var all = document.getElementById("dl-select-all");
  if (all) {
    var boxes = Array.prototype.slice.call(document.querySelectorAll('#deadletters input[name="ids"]'));
    var note = document.getElementById("dl-page-note");
    var sync = function () {
      var ticked = boxes.filter(function (b) { return b.checked; }).length;
      all.checked = ticked > 0 && ticked === boxes.length;
      all.indeterminate = ticked > 0 && ticked < boxes.length;
      if (note) { note.hidden = !all.checked; }
    };
    all.hidden = false;
    all.addEventListener("change", function () {
      boxes.forEach(function (b) { b.checked = all.checked; });
      sync();
    });
    boxes.forEach(function (b) { b.addEventListener("change", sync); });
    sync();
  }
  var more = document.getElementById("dl-continue");
  if (more) {
    more.querySelector("button").hidden = true;
    window.setTimeout(function () { more.submit(); }, 200);
  }
})();
