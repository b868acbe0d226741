// The dashboard's countdowns. A relative time the server rendered ("in 12.0 s") keeps
// counting on a page left open, without a reload. Each is rendered with the moment it
// counts to (`data-until`) and the server's clock then (`data-now`), both epoch seconds:
// the first one seen fixes how far this browser's clock is from the server's, so a wrong
// clock here shows no wrong countdown, and a region re-rendered by the live updates below
// counts on from the same reckoning. Past its moment it shows what the server would
// render then: a deadline (`data-passed="ago"`) "passed 3.0 s ago", marked as a warning;
// a start (`data-passed="due"`) "due".
(function () {
  "use strict";
  var offset = null;  // the server's clock minus this browser's, in seconds

  function seconds(value) {  // as the server's `seconds` filter writes them
    if (value < 1) return Math.round(value * 1000) + " ms";
    if (value < 120) return value.toFixed(1) + " s";
    if (value < 7200) return (value / 60).toFixed(1) + " min";
    return (value / 3600).toFixed(1) + " h";
  }

  function tick() {
    var here = Date.now() / 1000;
    document.querySelectorAll("[data-until]").forEach(function (countdown) {
      var rendered = parseFloat(countdown.getAttribute("data-now"));
      if (offset === null && !isNaN(rendered)) offset = rendered - here;
      var until = parseFloat(countdown.getAttribute("data-until"));
      if (offset === null || isNaN(until)) return;
      var left = until - (here + offset);
      var text;
      if (left > 0) {
        text = "in " + seconds(left);
      } else if (countdown.getAttribute("data-passed") === "due") {
        text = "due";
      } else {
        text = "passed " + seconds(-left) + " ago";
        var line = countdown.closest(".deadline");
        if (line) line.classList.add("warn");
      }
      if (countdown.textContent !== text) countdown.textContent = text;
    });
  }

  // Every second, whether or not a countdown shows yet: a live update may bring one.
  tick();
  setInterval(tick, 1000);
})();

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
