// The card page's review: clicking a line number of the diff opens a small comment form under
// that line (the server's own form, kept in a <template> in the diff panel); htmx posts it and
// puts the saved comment in its place. Everything else (pages, views, checkpoints, sending) is
// plain htmx in the templates.
(function () {
  if (window.boardReview) return;  // the page may include this file once per render of its assets
  window.boardReview = true;

  function cellsOf(row) {
    var n = 0;
    Array.prototype.forEach.call(row.cells, function (cell) { n += cell.colSpan || 1; });
    return n;
  }

  function openForm(button) {
    var row = button.closest("tr"), file = button.closest(".diff-file"), panel = button.closest("#diff");
    var template = document.getElementById("comment-form-template");
    if (!row || !file || !panel || !template) return;
    var side = button.dataset.side, line = button.dataset.line, path = file.dataset.path;
    // After the row's comments, if it has any; one open form per line and side.
    var after = row;
    while (after.nextElementSibling && after.nextElementSibling.matches(".comments-row, .comment-form-row")) {
      var open = after.nextElementSibling.querySelector(".comment-form");
      if (open && open.elements.side.value === side && open.elements.line.value === line) {
        open.elements.text.focus();
        return;
      }
      after = after.nextElementSibling;
    }
    var formRow = template.content.firstElementChild.cloneNode(true);
    var form = formRow.querySelector("form");
    form.elements.path.value = path;
    form.elements.line.value = line;
    form.elements.side.value = side;
    form.elements.commit.value = panel.dataset.commit || "";
    form.elements.view.value = panel.dataset.view || "unified";
    formRow.querySelector(".comment-where").textContent = "Comment on " + side + " line " + line + " of " + path;
    formRow.firstElementChild.colSpan = cellsOf(row);
    after.after(formRow);
    htmx.process(formRow);
    form.elements.text.focus();
  }

  document.addEventListener("click", function (e) {
    var button = e.target.closest && e.target.closest("#diff button.line-no");
    if (button) {
      e.preventDefault();
      openForm(button);
      return;
    }
    var cancel = e.target.closest && e.target.closest("#diff .comment-cancel");
    if (cancel) cancel.closest("tr").remove();
  });

  // Escape closes the comment form being written in.
  document.addEventListener("keydown", function (e) {
    if (e.key !== "Escape" || !e.target.closest) return;
    var row = e.target.closest(".comment-form-row");
    if (row) row.remove();
  });
})();
