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
  document.addEventListener("htmx:oobAfterSwap", function () { tick(); stickLog(); });
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
    if (!target || !fragment || !fragment.children || target.id.indexOf("list-") !== 0) return;
    Array.prototype.forEach.call(fragment.children, function (child) {
      var old = child.id && document.getElementById(child.id);
      if (old) old.remove();
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
  setInterval(tick, 1000);
})();
