// Drag and drop on the board (SortableJS, vendored under static/vendor/sortablejs). The browser
// only asks: a drop POSTs the card, its target column and its new neighbours there (the ids of the
// cards just above and below it) to the server (views.card_drop), whose answer is the card placed
// where the server has it. A refused drop (409) therefore puts the card back, with the reason
// shown on it; nothing here decides.
(function () {
  if (!window.Sortable || !window.htmx) return;

  function idsOf(list) {
    var ids = [];
    Array.prototype.forEach.call(list.children, function (el) {
      // The dragged element's floating clone (forceFallback) is not a card of the column.
      if (el.classList.contains("card") && !el.classList.contains("sortable-fallback") && el.id.indexOf("card-") === 0) {
        ids.push(el.id.slice(5));
      }
    });
    return ids;
  }

  function announce(text) {
    var status = document.getElementById("dnd-status");
    if (status) status.textContent = text;
  }

  // Ask the server to put card ``id`` in list ``to`` (a .card-list) where ``ids`` (the list's card
  // ids as the lead wants them, top first) has it; the answer places the card. Resolves
  // with the card as the server now shows it, after saying what happened (or why not) aloud.
  function ask(item, id, to, ids) {
    var url = to.dataset.dropUrl.replace("/0/", "/" + id + "/");
    item.classList.add("dropping");
    // The source is the status line, not the card: a push may replace the card (and its list)
    // while the request is under way, and htmx finds the answer's out-of-band targets from the
    // source's document, which a detached card no longer has.
    // Only the card's new neighbours go to the server, not the column's whole order.
    var at = ids.indexOf(String(id));
    var source = document.getElementById("dnd-status") || document.body, refused = "";
    // A refusal htmx does not swap (403 for a role too low) still has its reason said aloud.
    source.addEventListener("htmx:afterRequest", function (evt) {
      var xhr = evt.detail.xhr;
      if (xhr && xhr.status >= 400) refused = (xhr.responseText || "").replace(/<[^>]*>/g, " ").replace(/\s+/g, " ").trim().slice(0, 300) || "Refused.";
    }, {once: true});
    return htmx.ajax("POST", url, {
      source: source,
      swap: "none",
      values: {column: to.dataset.column, before: at > 0 ? ids[at - 1] : "", after: ids[at + 1] || ""},
    }).then(function () {
      // Whatever the answer, the card is where the server has it now; say so for screen readers.
      var card = document.getElementById("card-" + id);
      var error = card && card.querySelector(".error");
      var where = card && card.closest(".column");
      var heading = where && where.querySelector("h2");
      announce(error ? error.textContent
        : refused ? "Card #" + id + " stays where it was: " + refused
        : "Card #" + id + " moved" + (heading ? " to " + heading.textContent + ", place " + (placeOf(card) + 1) : "") + ".");
      return card;
    });
  }

  function dropped(evt) {
    var item = evt.item, to = evt.to;
    if (evt.from === to && evt.oldIndex === evt.newIndex) return;
    ask(item, item.id.slice(5), to, idsOf(to));
  }

  // --- Moving by keys: Alt+ArrowLeft/ArrowRight to the column before or after (to its top, as a
  // move by the server puts it), Alt+ArrowUp/ArrowDown one place within the column, for the card
  // focused (or holding focus) or selected. The same request and rules as a drop.
  function placeOf(card) {
    return idsOf(card.parentNode).indexOf(card.id.slice(5));
  }
  function shown(el) { return el && !el.hidden && el.offsetParent !== null; }
  function keyMove(e) {
    var keys = {ArrowLeft: -1, ArrowRight: 1, ArrowUp: -1, ArrowDown: 1};
    if (!e.altKey || e.ctrlKey || e.metaKey || e.shiftKey || !(e.key in keys) || e.defaultPrevented) return;
    var t = e.target;
    if (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName || "")) return;
    // The focused card, else the selected one while nothing else has the focus (not the drawer's tabs).
    var card = (t.closest && t.closest("#columns article.card"))
      || ((t === document.body || t === document.documentElement) && document.querySelector("#columns article.card.selected"));
    if (!card || !card.parentNode || !card.parentNode.dataset.column) return;
    e.preventDefault();  // Alt+ArrowLeft is also the browser's Back
    var list = card.parentNode, id = card.id.slice(5), step = keys[e.key], ids = idsOf(list), to = list;
    if (e.key === "ArrowLeft" || e.key === "ArrowRight") {
      var lists = Array.prototype.slice.call(document.querySelectorAll(".card-list[data-column]"));
      to = lists[lists.indexOf(list) + step];
      if (!to) { announce("Card #" + id + " is in the " + (step < 0 ? "first" : "last") + " column already."); return; }
      ids = [id].concat(idsOf(to));
    } else {
      var i = ids.indexOf(id), j = i + step;
      // Past cards the filters hide, so a step is one place as the lead sees the column.
      while (j >= 0 && j < ids.length && !shown(document.getElementById("card-" + ids[j]))) j += step;
      if (j < 0 || j >= ids.length) { announce("Card #" + id + " is at the " + (step < 0 ? "top" : "bottom") + " of its column already."); return; }
      ids.splice(i, 1);
      ids.splice(j, 0, id);
    }
    keep = id;
    ask(card, id, to, ids).then(refocus);
  }
  // The card moved by keys keeps the selection and the focus while it and the lists around it are
  // replaced (the answer, then the push to every open board), until the lead goes elsewhere.
  var keep = null;
  function refocus() {
    var card = keep && document.getElementById("card-" + keep);
    if (!card) return;
    if (!card.classList.contains("selected")) {
      document.querySelectorAll("article.card.selected").forEach(function (c) { c.classList.remove("selected"); });
      card.classList.add("selected");
    }
    var title = card.querySelector("a.card-title");
    var lost = !document.activeElement || document.activeElement === document.body;
    if (title && (lost || card.contains(document.activeElement))) title.focus();
  }
  document.addEventListener("keydown", keyMove);
  document.addEventListener("htmx:oobAfterSwap", refocus);
  document.addEventListener("focusin", function (e) {
    if (keep && !(e.target.closest && e.target.closest("#card-" + keep))) keep = null;
  });
  document.addEventListener("click", function (e) {
    if (keep && !(e.target.closest && e.target.closest("#card-" + keep))) keep = null;
  });

  function bind() {
    document.querySelectorAll(".card-list[data-column]").forEach(function (list) {
      if (list._sortable) return;  // a list replaced by a push is a new element, bound afresh
      list._sortable = Sortable.create(list, {
        group: "cards",
        draggable: ".card",
        // Buttons, links and forms on a card stay clickable: a drag starts elsewhere on it.
        filter: "button, a, input, textarea, select, label, summary",
        preventOnFilter: false,
        // Pointer events rather than the HTML5 drag API: the same in every browser, and testable
        // in headless Chromium with real mouse moves.
        forceFallback: true,
        fallbackOnBody: true,
        fallbackTolerance: 4,
        animation: 120,
        onEnd: dropped,
      });
    });
  }

  document.addEventListener("DOMContentLoaded", bind);
  document.addEventListener("htmx:oobAfterSwap", bind);
  document.addEventListener("htmx:afterSwap", bind);
  bind();
})();
