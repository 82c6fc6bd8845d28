// oddish dashboard: keeps each page's live part current and asks before any action.
// Every [data-live] element is re-fetched (its URL answers the fragment alone) every
// data-every milliseconds and swapped in when it changed, until a fragment carries
// [data-final]. The fragments are the server's escaped HTML.
(function () {
  "use strict";

  function editing(element) {
    var active = document.activeElement;
    return active && element.contains(active) && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName);
  }

  function follow(element) {
    var every = parseInt(element.getAttribute("data-every"), 10) || 2000;
    var last = null;
    function tick() {
      if (element.querySelector("[data-final]")) {
        return;
      }
      fetch(element.getAttribute("data-live"), {
        credentials: "same-origin",
        cache: "no-store",
        headers: { "Accept": "text/html" }
      }).then(function (response) {
        if (response.status === 401) {
          window.location.assign("/ui/login?next=" + encodeURIComponent(window.location.pathname + window.location.search));
          return null;
        }
        return response.ok ? response.text() : null;
      }).then(function (html) {
        if (html !== null && html !== last && !editing(element)) {
          element.innerHTML = html;
          last = html;
          element.setAttribute("data-updated", String(Date.now()));
        }
      }).catch(function () {
        // The server is restarting or unreachable: try again at the next tick.
      }).then(function () {
        window.setTimeout(tick, every);
      });
    }
    window.setTimeout(tick, every);
  }

  document.addEventListener("submit", function (event) {
    var question = event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("[data-live]"), follow);
  });
})();
