// Elapsed times tick in the browser from the run's start time; the server pushes only changes.
(function () {
  // After a restart of the board, reconnect within a few seconds: htmx's default backoff grows to
  // a minute. Jittered so that many open tabs do not reconnect at the same instant.
  if (window.htmx) {
    htmx.config.wsReconnectDelay = function (retryCount) {
      return Math.min(500 * Math.pow(2, retryCount), 4000) * (0.5 + Math.random() / 2);
    };
  }
  function fmt(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    var h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    var mm = (h ? String(m).padStart(2, "0") : String(m));
    return (h ? h + ":" : "") + mm + ":" + String(s).padStart(2, "0");
  }
  function tick() {
    document.querySelectorAll("time[data-since]").forEach(function (el) {
      var since = Date.parse(el.dataset.since);
      var until = el.dataset.until ? Date.parse(el.dataset.until) : Date.now();
      if (!isNaN(since)) el.textContent = fmt((until - since) / 1000);
    });
  }
  function stickLog() {
    var log = document.getElementById("log");
    if (log && log.dataset.follow !== "off") log.scrollTop = log.scrollHeight;
  }
  document.addEventListener("DOMContentLoaded", function () { tick(); stickLog(); });
  // The card page keeps the newest LOG_DOM_EVENTS output chunks (about LOG_DOM_CHARS characters)
  // while it follows a flood; older ones leave the page, and "Load earlier lines" brings them back.
  var LOG_DOM_EVENTS = 1000, LOG_DOM_CHARS = 1000000;
  function trimLog() {
    var log = document.getElementById("log");
    if (!log || log.dataset.follow === "off" || !log.dataset.run) return;
    var lines = log.querySelectorAll(":scope > .line[data-seq]");
    var chars = 0, first = 0;
    for (var i = lines.length - 1; i >= 0; i--) {
      chars += parseInt(lines[i].dataset.len || "0", 10);
      if (lines.length - i > LOG_DOM_EVENTS || chars > LOG_DOM_CHARS) { first = i + 1; break; }
    }
    if (!first || first >= lines.length) return;
    while (log.firstChild && log.firstChild !== lines[first]) log.removeChild(log.firstChild);
    var more = document.createElement("button");
    more.type = "button";
    more.className = "link load-earlier";
    more.textContent = "Load earlier lines";
    more.setAttribute("hx-get", log.dataset.earlierUrl + "?run=" + log.dataset.run + "&before=" + lines[first].dataset.seq);
    more.setAttribute("hx-swap", "outerHTML");
    log.insertBefore(more, log.firstChild);
    htmx.process(more);
  }
  document.addEventListener("htmx:oobAfterSwap", function () { tick(); trimLog(); stickLog(); });
  // When the card page's socket (re)opens, say where its log stands: the server sends what the
  // page missed, however long it was away, instead of the whole log again.
  document.addEventListener("htmx:wsOpen", function (e) {
    var log = document.getElementById("log");
    if (!log || !e.detail.socketWrapper) return;
    var lines = log.querySelectorAll(".line[data-seq]");
    var seq = lines.length ? parseInt(lines[lines.length - 1].dataset.seq, 10) : 0;
    e.detail.socketWrapper.send(JSON.stringify({resume: {run: parseInt(log.dataset.run || "0", 10) || 0, seq: seq}}));
  });
  document.addEventListener("htmx:afterSwap", tick);
  document.addEventListener("scroll", function (e) {
    var log = document.getElementById("log");
    if (log && e.target === log) {
      log.dataset.follow = (log.scrollTop + log.clientHeight >= log.scrollHeight - 20) ? "on" : "off";
    }
  }, true);
  // Say whether live updates are flowing, so a silent board is never mistaken for an idle one.
  function wsStatus(text, cls) {
    var el = document.getElementById("ws-status");
    if (el) { el.textContent = text; el.className = "ws-status " + cls; }
  }
  document.addEventListener("htmx:wsOpen", function () { wsStatus("live", "ok"); });
  document.addEventListener("htmx:wsClose", function () { wsStatus("reconnecting…", "warn"); });
  // A card pushed into a column moves there: the copy already on the page (in its old column, or
  // added by this tab's own form) goes first, so a card is never shown twice.
  document.addEventListener("htmx:oobBeforeSwap", function (e) {
    var target = e.detail.target, fragment = e.detail.fragment;
    // Into a list, or beside a card (a card moved by hand goes right under the one above it).
    if (!target || !fragment || !fragment.children || !/^(list|card)-/.test(target.id)) return;
    Array.prototype.forEach.call(fragment.children, function (child) {
      var old = child.id && document.getElementById(child.id);
      // A list swapped whole (a reorder, a drop's answer) replaces itself: not a duplicate.
      if (old && old !== target) old.remove();
    });
  });
  // Forms re-rendered by a websocket push carry no CSRF token (there is no request to make one
  // for); give them the page's own before they are sent.
  document.addEventListener("submit", function (e) {
    var form = e.target;
    if ((form.method || "").toLowerCase() !== "post" || form.querySelector("[name=csrfmiddlewaretoken]")) return;
    var headers = JSON.parse(document.body.getAttribute("hx-headers") || "{}");
    if (!headers["X-CSRFToken"]) return;
    var input = document.createElement("input");
    input.type = "hidden";
    input.name = "csrfmiddlewaretoken";
    input.value = headers["X-CSRFToken"];
    form.appendChild(input);
  }, true);
  // A card's buttons (Start, Stop, Land, Mark done…) carry only data-post: one handler here asks
  // the server and swaps its answer (the card, or a 409 with the reason) in place of the card.
  // As hx-post attributes on every card, htmx had some 2,500 elements to process when a board of
  // 1,000 cards loaded, a sixth of the load (bench/board_render.py). htmx.ajax sends the body's
  // hx-headers (the CSRF token) and drops a second click while the first is under way.
  document.addEventListener("click", function (e) {
    var button = e.target.closest ? e.target.closest("button[data-post]") : null;
    if (!button || button.disabled || !window.htmx) return;
    var card = button.closest("article.card");
    if (!card) return;
    e.preventDefault();
    htmx.ajax("POST", button.dataset.post, {source: button, target: "#" + card.id, swap: "outerHTML"});
  });
  setInterval(tick, 1000);
})();
