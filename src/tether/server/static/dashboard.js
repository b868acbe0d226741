// The dashboard's live updates. Pages work without this script; with it, a page that
// names a stream (data-stream: one execution's events, data-changes: the store's counts)
// re-renders its `data-live` regions when the stream says something happened. The
// regions come from the server's own rendering of the same URL, so there is one template
// for both; a region holding a form the person is filling in is left alone.
(function () {
  "use strict";
  var main = document.querySelector("main");
  if (!main || !window.EventSource || !window.fetch) return;
  var url = main.getAttribute("data-stream") || main.getAttribute("data-changes");
  if (!url) return;

  document.addEventListener("input", function (event) {
    var form = event.target.closest && event.target.closest("form");
    if (form) form.setAttribute("data-dirty", "1");
  });

  function busy(region) {
    var active = document.activeElement;
    if (active && active !== document.body && region.contains(active) &&
        /^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName)) return true;
    return region.querySelector("form[data-dirty]") !== null;
  }

  var timer = null;
  var running = false;
  function refresh() {
    if (timer) clearTimeout(timer);
    timer = setTimeout(load, 100);
  }
  function load() {
    if (running) { refresh(); return; }
    running = true;
    fetch(window.location.href, { headers: { "X-Tether-Live": "1" }, credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (!html) return;
        var fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("main [data-live][id]").forEach(function (region) {
          var next = fresh.getElementById(region.id);
          if (next && !busy(region) && next.innerHTML !== region.innerHTML) {
            region.replaceWith(next);
          }
        });
        var nextMain = fresh.querySelector("main");
        if (nextMain && !nextMain.getAttribute("data-stream") && main.getAttribute("data-stream")) {
          main.removeAttribute("data-stream");  // finished: the page stops listening
          if (source) source.close();
        }
      })
      .catch(function () { /* the next message tries again */ })
      .then(function () { running = false; });
  }

  var source = new EventSource(url);
  ["event", "status", "changed"].forEach(function (kind) {
    source.addEventListener(kind, refresh);
  });
  source.addEventListener("end", function () { refresh(); source.close(); });
})();
