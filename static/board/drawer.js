// The card's drawer on the board: opening a card (its title, or Enter on the selected card) loads
// /cards/<id>/drawer beside the columns, and ?card=<id> in the address reopens it after a reload.
// The drawer holds its own socket to the card; closing swaps it out through htmx, whose clean-up
// closes that socket (a plain remove() would leave it open).
(function () {
  function slot() {
    var el = document.getElementById("drawer-slot");
    if (!el && document.getElementById("columns")) {
      el = document.createElement("div");
      el.id = "drawer-slot";
      document.querySelector("main").appendChild(el);
    }
    return el;
  }
  function setAddress(cardId) {
    var url = new URL(location.href);
    if (cardId) url.searchParams.set("card", cardId); else url.searchParams.delete("card");
    history.replaceState(history.state, "", url);
  }
  var opener = null;  // where focus goes back to when the drawer closes
  function open(cardId) {
    var target = slot();
    if (!target || !/^\d+$/.test(String(cardId))) return;
    opener = document.activeElement;
    setAddress(cardId);
    // A card that is gone (or never was, as in a stale ?card= link) is said, and leaves the address.
    target.addEventListener("htmx:afterRequest", function (evt) {
      var xhr = evt.detail.xhr;
      if (!xhr || xhr.status !== 404) return;
      setAddress(null);
      if (window.boardSays) window.boardSays("Card #" + cardId + " was not found: it was deleted, or it is not yours to see.");
    }, {once: true});
    htmx.ajax("GET", "/cards/" + cardId + "/drawer", {source: target, target: target, swap: "innerHTML"}).then(function () {
      var tab = target.querySelector('[role="tab"][aria-selected="true"]');
      if (tab) tab.focus();
    });
  }
  function close() {
    var target = document.getElementById("drawer-slot");
    if (!target || !target.firstChild) return;
    htmx.swap(target, "", {swapStyle: "innerHTML"});
    setAddress(null);
    if (opener && document.contains(opener)) opener.focus();
  }
  function isOpen() { return !!document.getElementById("drawer"); }

  function select(tab) {
    var tabs = tab.closest('[role="tablist"]').querySelectorAll('[role="tab"]');
    tabs.forEach(function (t) {
      var on = t === tab;
      t.setAttribute("aria-selected", on ? "true" : "false");
      t.tabIndex = on ? 0 : -1;
      var panel = document.getElementById(t.getAttribute("aria-controls"));
      if (panel) panel.hidden = !on;
    });
    tab.focus();
  }

  document.addEventListener("click", function (e) {
    if (!e.target.closest) return;
    var title = e.target.closest("#columns a.card-title");
    // A click with a modifier still opens the card's own page (in a new tab, as the lead asked).
    if (title && !(e.ctrlKey || e.metaKey || e.shiftKey || e.button)) {
      e.preventDefault();
      open(title.closest("article.card").id.slice(5));
      return;
    }
    var tab = e.target.closest('#drawer [role="tab"]');
    if (tab) { select(tab); return; }
    if (e.target.closest("#drawer .drawer-close")) close();
  });

  // The drawer's forms (follow-up, approvals, land, settings, roll back, delete…) are the card page's
  // plain forms: here they post with htmx into the drawer, whose views then answer the drawer
  // again (views._drawer_answer), a refusal with its reason at the top, on the tab that was open.
  // Forms with their own hx-post (review comments) and ones a confirm() cancelled are left alone.
  document.addEventListener("submit", function (e) {
    var form = e.target;
    if (e.defaultPrevented || !window.htmx || !form.closest || !form.closest("#drawer")) return;
    if ((form.getAttribute("method") || "").toLowerCase() !== "post" || form.hasAttribute("hx-post")) return;
    e.preventDefault();
    var values = {};
    if (e.submitter && e.submitter.name) values[e.submitter.name] = e.submitter.value;
    var open = document.querySelector('#drawer [role="tab"][aria-selected="true"]');
    var tabId = open ? open.id : null;
    var target = slot();
    htmx.ajax("POST", form.getAttribute("action"), {source: form, target: target, swap: "innerHTML", values: values})
      .then(function () {
        var tab = tabId && document.getElementById(tabId);
        if (tab) select(tab);
        var message = document.getElementById("drawer-message");
        if (message && !tab) { message.tabIndex = -1; message.focus(); }
      });
  });

  document.addEventListener("keydown", function (e) {
    var tab = e.target.closest && e.target.closest('#drawer [role="tab"]');
    if (tab) {
      var tabs = Array.prototype.slice.call(tab.parentNode.querySelectorAll('[role="tab"]'));
      var i = tabs.indexOf(tab), next = null;
      if (e.key === "ArrowRight") next = tabs[(i + 1) % tabs.length];
      else if (e.key === "ArrowLeft") next = tabs[(i - 1 + tabs.length) % tabs.length];
      else if (e.key === "Home") next = tabs[0];
      else if (e.key === "End") next = tabs[tabs.length - 1];
      if (next) { select(next); e.preventDefault(); return; }
    }
    var t = e.target, typing = t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName || "");
    if (e.key === "Escape") {
      // ux.js closes the list of keys first (and says so with preventDefault); a field keeps its Esc.
      if (isOpen() && !typing && !e.defaultPrevented) { close(); e.preventDefault(); }
      return;
    }
    if (e.key === "Enter" && !typing && !e.defaultPrevented && !(t.closest && t.closest("a, button, form, #drawer"))) {
      var card = (t.closest && t.closest("#columns article.card")) || document.querySelector("#columns article.card.selected");
      if (card) { open(card.id.slice(5)); e.preventDefault(); }
    }
  });

  document.addEventListener("DOMContentLoaded", function () {
    var cardId = new URLSearchParams(location.search).get("card");
    if (cardId && document.getElementById("columns")) open(cardId);
  });
})();
