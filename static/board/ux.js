// The board's everyday UX (issue 7): the theme toggle, keys, search and filters, the project
// switcher, the title count and browser notifications. Loaded in <head> without defer, so the
// chosen theme applies before the first paint; everything else waits for the DOM.
(function () {
  var THEME_KEY = "board-theme";
  function storedTheme() {
    try { return localStorage.getItem(THEME_KEY); } catch (e) { return null; }
  }
  function applyTheme(theme) {
    if (theme === "dark" || theme === "light") document.documentElement.dataset.theme = theme;
    else delete document.documentElement.dataset.theme;
  }
  applyTheme(storedTheme());

  function isDark() {
    var theme = document.documentElement.dataset.theme;
    if (theme) return theme === "dark";
    return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
  }

  function typing(el) {
    if (!el) return false;
    var tag = el.tagName;
    return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || el.isContentEditable;
  }

  // --- Search and filters: one generated stylesheet, so a card pushed later (re-rendered by the
  // server) is filtered by the same rules the moment it is swapped in, with no script per push.
  function filterRule() {
    var q = (document.getElementById("board-search") || {}).value || "";
    var state = (document.getElementById("filter-state") || {}).value || "";
    var label = (document.getElementById("filter-label") || {}).value || "";
    var rules = [];
    q.trim().split(/\s+/).forEach(function (word) {
      if (word) rules.push('#columns article.card:not([data-search*="' + CSS.escape(word.toLowerCase()) + '"])');
    });
    if (state) rules.push('#columns article.card:not([data-state="' + CSS.escape(state) + '"])');
    if (label) rules.push('#columns article.card:not([data-labels~="' + CSS.escape(label) + '"])');
    return rules.length ? rules.join(",\n") + " { display: none; }" : "";
  }
  function applyFilter() {
    var style = document.getElementById("board-filter");
    if (!style) return;
    style.textContent = filterRule();
    var status = document.getElementById("filter-status");
    if (status) {
      var shown = 0, all = document.querySelectorAll("#columns article.card");
      if (style.textContent) {
        all.forEach(function (card) { if (card.offsetParent !== null || card.getClientRects().length) shown++; });
        status.textContent = shown + " of " + all.length + " cards shown";
      } else status.textContent = "";
    }
  }

  // --- Cards that need the lead: approval asked, failed, or ready for review (a run that
  // succeeded, in Review). Only a change that arrives by push counts, never the page as loaded.
  var known = {}, attention = {}, baseTitle = document.title;
  function need(card) {
    if (!card) return "";
    var state = card.dataset.state;
    if (state === "awaiting_approval") return "needs your approval";
    if (state === "failed") return "failed";
    if (state === "succeeded" && card.closest("#list-review")) return "is ready for review";
    return "";
  }
  function updateTitle() {
    var n = Object.keys(attention).length;
    document.title = (n ? "(" + n + ") " : "") + baseTitle;
  }
  function notify(card, why) {
    if (!("Notification" in window) || Notification.permission !== "granted") return;
    var title = card.querySelector(".card-title");
    try {
      new Notification((title ? title.textContent : card.id) + " " + why, {tag: card.id, body: "Agent Board"});
    } catch (e) { /* some browsers only notify from a service worker: the title count remains */ }
  }
  // The label filter offers every label on the board, those of cards added or pushed since too.
  function offerLabels(card) {
    var select = document.getElementById("filter-label");
    if (!select || !card || !card.dataset.labels) return;
    card.dataset.labels.split(" ").forEach(function (label) {
      if (!label || Array.prototype.some.call(select.options, function (o) { return o.value === label; })) return;
      var option = document.createElement("option");
      option.value = option.textContent = label;
      select.appendChild(option);
    });
  }
  function look(id) {
    var card = document.getElementById(id);
    offerLabels(card);
    var why = need(card);
    if (why && known[id] !== why) {
      attention[id] = why;
      notify(card, why);
    } else if (!why) delete attention[id];
    known[id] = why;
  }
  function remember() {
    document.querySelectorAll("#columns article.card").forEach(function (card) { known[card.id] = need(card); });
  }

  function selectCard(card) {
    document.querySelectorAll("article.card.selected").forEach(function (c) { c.classList.remove("selected"); });
    if (card) card.classList.add("selected");
  }
  function currentCard() {
    var focused = document.activeElement && document.activeElement.closest && document.activeElement.closest("article.card");
    return focused || document.querySelector("article.card.selected");
  }
  function openHelp() {
    var help = document.getElementById("keys-help");
    if (help && !help.open) help.showModal();
  }

  document.addEventListener("keydown", function (e) {
    if (e.key === "Escape") {
      var help = document.getElementById("keys-help");
      if (help && help.open) { help.close(); e.preventDefault(); return; }
      if (typing(e.target)) {  // leave the field; review.js also closes a comment form on Esc
        e.target.blur();
        return;
      }
      selectCard(null);
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey || typing(e.target) || e.defaultPrevented) return;
    if (e.key === "?") { openHelp(); e.preventDefault(); return; }
    if (e.key === "n") {
      var title = document.querySelector("#card-form [name=title]");
      if (title) { title.focus(); e.preventDefault(); }
    } else if (e.key === "/") {
      var search = document.getElementById("board-search");
      if (search) { search.focus(); search.select(); e.preventDefault(); }
    } else if (e.key === "s") {
      var card = currentCard();
      var start = card && card.querySelector('button[data-post$="/start"]');
      if (start && !start.disabled) { start.click(); e.preventDefault(); }
    }
  });

  document.addEventListener("DOMContentLoaded", function () {
    var toggle = document.getElementById("theme-toggle");
    if (toggle) {
      toggle.setAttribute("aria-pressed", isDark() ? "true" : "false");
      toggle.addEventListener("click", function () {
        var theme = isDark() ? "light" : "dark";
        try { localStorage.setItem(THEME_KEY, theme); } catch (e) { /* private mode: this page only */ }
        applyTheme(theme);
        toggle.setAttribute("aria-pressed", theme === "dark" ? "true" : "false");
      });
    }
    var switcher = document.getElementById("project-switch");
    if (switcher) switcher.addEventListener("change", function () { if (switcher.value) location.href = switcher.value; });
    var keysButton = document.getElementById("keys-button");
    if (keysButton) keysButton.addEventListener("click", openHelp);

    ["board-search", "filter-state", "filter-label"].forEach(function (id) {
      var el = document.getElementById(id);
      if (el) el.addEventListener("input", applyFilter);
    });
    var search = document.getElementById("board-search");
    if (search && search.form) search.form.addEventListener("submit", function (e) { e.preventDefault(); });

    var bell = document.getElementById("notify-button");
    if (bell) {
      var show = function () {
        var supported = "Notification" in window;
        bell.hidden = !supported || Notification.permission === "granted" || Notification.permission === "denied";
      };
      show();
      bell.addEventListener("click", function () {
        Notification.requestPermission().then(show);
      });
    }

    remember();
  });
  // On the document, not on #columns: the socket's first message replaces #columns whole.
  document.addEventListener("click", function (e) {
    if (!e.target.closest || !e.target.closest("#columns") || e.target.closest("a, button, input, textarea, select, form")) return;
    selectCard(e.target.closest("article.card"));
  });

  // When the board's socket (re)opens, say what the page shows: the server pushes only the cards
  // changed since, instead of the whole board again.
  document.addEventListener("htmx:wsOpen", function (e) {
    var columns = document.getElementById("columns");
    if (!columns || !columns.dataset.event || !e.detail.socketWrapper) return;
    var ids = Array.prototype.map.call(document.querySelectorAll("#columns article.card"), function (card) {
      return parseInt(card.id.slice(5), 10);
    });
    e.detail.socketWrapper.send(JSON.stringify({since: parseInt(columns.dataset.event, 10) || 0, cards: ids}));
  });
  // A push names the cards it carries by id: look only at those (the whole board, sent when the
  // socket (re)connects, is taken as it is, like the page's first load).
  document.addEventListener("htmx:wsAfterMessage", function (e) {
    var text = typeof e.detail.message === "string" ? e.detail.message : "";
    if (text.indexOf('id="columns"') >= 0) { remember(); return; }
    var ids = text.match(/id="card-\d+"/g) || [];
    ids.forEach(function (m) { look(m.slice(4, -1)); });
    if (ids.length) updateTitle();
  });
  // htmx answers to this tab's own buttons (Start, Land…) re-render a card too.
  document.addEventListener("htmx:afterSwap", function (e) {
    var card = e.detail.elt && e.detail.elt.closest && e.detail.elt.closest("article.card");
    if (card) { look(card.id); updateTitle(); }
  });
  // A card added by this tab's form comes out of band at the end of the Backlog (a moved one at
  // the top of its list).
  document.addEventListener("htmx:oobAfterSwap", function (e) {
    var target = e.detail.target;
    if (!target || !target.id || target.id.indexOf("list-") !== 0) return;
    offerLabels(target.querySelector(":scope > article.card"));
    offerLabels(target.querySelector(":scope > article.card:last-of-type"));
  });
})();

// Running cards' time budgets fill as the minutes pass (board.js ticks the elapsed times).
setInterval(function () {
  document.querySelectorAll("progress.time-budget[data-since]").forEach(function (bar) {
    var since = Date.parse(bar.dataset.since);
    if (!isNaN(since)) bar.value = Math.min((Date.now() - since) / 60000, parseFloat(bar.max) || 0);
  });
}, 1000);
