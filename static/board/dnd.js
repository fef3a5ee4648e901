// Drag and drop on the board (SortableJS, vendored under static/vendor/sortablejs). The browser
// only asks: a drop POSTs the card, its target column and that column's order to the server
// (views.card_drop), whose answer re-renders the lists involved as the server has them. A refused
// drop (409) therefore puts the card back, with the reason shown on it; nothing here decides.
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

  function dropped(evt) {
    var item = evt.item, to = evt.to;
    if (evt.from === to && evt.oldIndex === evt.newIndex) return;
    var id = item.id.slice(5);
    var url = to.dataset.dropUrl.replace("/0/", "/" + id + "/");
    item.classList.add("dropping");
    htmx.ajax("POST", url, {
      source: item,
      swap: "none",
      values: {column: to.dataset.column, order: idsOf(to).join(",")},
    }).then(function () {
      // Whatever the answer, the server's lists replaced ours; say so for screen readers.
      var card = document.getElementById("card-" + id);
      var error = card && card.querySelector(".error");
      announce(error ? error.textContent : "Card #" + id + " moved.");
    });
  }

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
