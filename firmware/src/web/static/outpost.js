// Outpost web admin: small enhancements only; every action works without this script.
"use strict";
(function () {
  // Parts of a page that refresh themselves: data-refresh="/path" data-every="seconds".
  function refresh(el) {
    var every = Math.max(1, parseInt(el.getAttribute("data-every") || "5", 10)) * 1000;
    function tick() {
      fetch(el.getAttribute("data-refresh"), { credentials: "same-origin", redirect: "manual" })
        .then(function (r) {
          if (r.type === "opaqueredirect" || r.status === 401 || r.status === 303) {
            window.location.reload();
            return null;
          }
          return r.ok ? r.text() : null;
        })
        .then(function (html) {
          if (html !== null && html !== undefined) { el.innerHTML = html; el.setAttribute("data-refreshed", String(Date.now())); }
        })
        .catch(function () {})
        .then(function () { setTimeout(tick, every); });
    }
    setTimeout(tick, every);
  }
  // Countdowns: data-deadline="ms since the epoch".
  function countdown(el) {
    function tick() {
      var left = Math.round((parseInt(el.getAttribute("data-deadline"), 10) - Date.now()) / 1000);
      el.textContent = left > 0 ? left + " s left to confirm" : "time is up: rolling back";
      if (left > -5) { setTimeout(tick, 1000); } else { window.location.reload(); }
    }
    tick();
  }
  // Forms that ask first: data-confirm="question".
  function ask(form) {
    form.addEventListener("submit", function (e) {
      if (!window.confirm(form.getAttribute("data-confirm"))) { e.preventDefault(); }
    });
  }
  // The configuration editor: put the cursor on the line an error names.
  function toLine(area) {
    var line = parseInt(area.getAttribute("data-error-line"), 10);
    if (!(line > 0)) { return; }
    var lines = area.value.split("\n"), pos = 0;
    for (var i = 0; i < line - 1 && i < lines.length; i++) { pos += lines[i].length + 1; }
    area.focus();
    area.setSelectionRange(pos, pos + (lines[line - 1] || "").length);
    area.scrollTop = Math.max(0, (line - 3) * 18);
  }
  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("[data-refresh]"), refresh);
    Array.prototype.forEach.call(document.querySelectorAll("[data-deadline]"), countdown);
    Array.prototype.forEach.call(document.querySelectorAll("form[data-confirm]"), ask);
    Array.prototype.forEach.call(document.querySelectorAll("textarea[data-error-line]"), toLine);
  });
})();
