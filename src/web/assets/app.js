// flownexus dashboard: enhancements only. Every page works without this
// file; with it, regions marked data-live refresh when the server reports
// news (Server-Sent Events), and destructive forms ask first.
(function () {
  "use strict";

  document.addEventListener("submit", function (e) {
    var message = e.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) {
      e.preventDefault();
    }
  });

  // The time zone toggle offers this browser's own zone.
  document.querySelectorAll("input[data-local-zone]").forEach(function (el) {
    try { el.value = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) { el.value = ""; }
  });

  // "Tick all on this page" boxes.
  document.addEventListener("change", function (e) {
    var name = e.target.getAttribute && e.target.getAttribute("data-select-all");
    if (name) {
      document.querySelectorAll('input[type=checkbox][name="' + name + '"]').forEach(function (box) {
        box.checked = e.target.checked;
      });
    }
  });

  // The object tree's filter: resources whose name holds the text, with
  // their instances and objects opened; the rest hidden. Without script
  // the box stays hidden (it could not work).
  function filterTree() {
    var box = document.querySelector("input[data-tree-filter]");
    if (!box) { return; }
    box.closest(".tree-filter").hidden = false;
    var text = box.value.trim().toLowerCase();
    document.querySelectorAll("#objects details.object").forEach(function (obj) {
      var objectHits = 0;
      obj.querySelectorAll("section.instance").forEach(function (inst) {
        var hits = 0;
        inst.querySelectorAll("tr[data-name]").forEach(function (row) {
          var hit = !text || row.getAttribute("data-name").toLowerCase().indexOf(text) >= 0;
          row.hidden = !hit;
          if (hit) { hits += 1; }
        });
        inst.hidden = text !== "" && hits === 0;
        objectHits += hits;
      });
      obj.hidden = text !== "" && objectHits === 0;
      if (text && objectHits > 0) { obj.open = true; }
    });
  }
  document.addEventListener("input", function (e) {
    if (e.target.hasAttribute && e.target.hasAttribute("data-tree-filter")) { filterTree(); }
  });
  filterTree();

  var live = document.querySelector("[data-live]");
  if (!live || !window.EventSource || !window.fetch) {
    return;
  }
  // A page may name its own stream (a campaign's); else the server's events.
  var url = live.getAttribute("data-stream") || "/api/v1/events/stream";
  var endpoint = live.getAttribute("data-endpoint");
  if (endpoint) {
    url += "?endpoint=" + encodeURIComponent(endpoint);
  }

  var timer = null;
  function typing() {
    var a = document.activeElement;
    return a && live.contains(a) && /^(INPUT|SELECT|TEXTAREA)$/.test(a.tagName);
  }
  // What the operator changed in the region (typed values, opened or
  // closed sections) survives its refresh: by element id.
  function carry(from, to) {
    from.querySelectorAll("input[id], select[id], textarea[id]").forEach(function (el) {
      var twin = to.querySelector("#" + CSS.escape(el.id));
      if (twin && el.type !== "hidden") { twin.value = el.value; }
    });
    // Ticked rows (by their value: a row may move in a refreshed list).
    from.querySelectorAll("input[type=checkbox][name][value]").forEach(function (el) {
      var twin = to.querySelector('input[type=checkbox][name="' + CSS.escape(el.name) + '"][value="' + CSS.escape(el.value) + '"]');
      if (twin) { twin.checked = el.checked; }
    });
    from.querySelectorAll("details[id]").forEach(function (el) {
      var twin = to.querySelector("#" + CSS.escape(el.id));
      if (twin) { twin.open = el.open; }
    });
  }
  function refresh() {
    timer = null;
    if (typing()) {
      soon();
      return;
    }
    fetch(window.location.href, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html").querySelector("[data-live]");
        if (fresh) {
          var node = document.importNode(fresh, true);
          carry(live, node);
          live.replaceWith(node);
          live = node;
          filterTree();
          document.body.setAttribute("data-refreshed", String(Date.now()));
        }
      })
      .catch(function () {});
  }
  function soon() {
    // Bursts of events (a registration storm) cause one refresh a second.
    if (timer === null) { timer = window.setTimeout(refresh, 1000); }
  }

  var source = new EventSource(url);
  ["registered", "updated", "deregistered", "expired", "values", "operation", "campaign", "lagged"].forEach(function (name) {
    source.addEventListener(name, soon);
  });
  source.addEventListener("open", function () {
    document.body.setAttribute("data-live-connected", "yes");
    // News between the page's rendering and this (re)connection was not
    // streamed to us (an operation finishing right after its form posted):
    // catch up once.
    soon();
  });
})();
