// Live refresh for the cms-outbox dashboard. The pages work without it: this only
// re-reads the page every few seconds while the tab is visible and swaps in the parts
// marked data-live, so counts, charts and attempts stay current. Paused while hidden.
(function () {
  "use strict";
  var body = document.body;
  var seconds = Number(body.getAttribute("data-live-refresh"));
  if (!seconds || !window.fetch || !window.DOMParser) {
    return;
  }
  var status = document.getElementById("live-status");
  var timer = null;
  var busy = false;

  function say(text) {
    if (status) {
      status.textContent = text;
    }
    body.setAttribute("data-live-state", text);
  }

  function bump(name) {
    body.setAttribute(name, String(Number(body.getAttribute(name) || "0") + 1));
  }

  function editing() {
    var active = document.activeElement;
    return active && active.closest && active.closest("[data-live] form") !== null &&
      (active.tagName === "INPUT" || active.tagName === "SELECT");
  }

  function refresh() {
    if (busy || document.visibilityState !== "visible" || editing()) {
      return;
    }
    busy = true;
    fetch(window.location.href, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live][id]").forEach(function (part) {
          var next = fresh.getElementById(part.id);
          if (next) {
            part.replaceWith(document.importNode(next, true));
          }
        });
        bump("data-live-refreshes");
        if (document.visibilityState !== "visible") {
          window.cmsOutboxHiddenRefreshes = (window.cmsOutboxHiddenRefreshes || 0) + 1;
        }
        say("live");
      })
      .catch(function () {
        say("refresh failed; retrying");
      })
      .then(function () {
        busy = false;
      });
  }

  function start() {
    if (timer === null) {
      timer = window.setInterval(refresh, seconds * 1000);
    }
  }

  function stop() {
    if (timer !== null) {
      window.clearInterval(timer);
      timer = null;
    }
  }

  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") {
      say("live");
      refresh();
      start();
    } else {
      stop();
      bump("data-live-pauses");
      say("paused");
    }
  });
  if (document.visibilityState === "visible") {
    say("live");
    start();
  } else {
    say("paused");
  }
})();
