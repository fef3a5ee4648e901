// A refusal for a role too low (403, a short text from board.views.permission_denied) is shown
// where the page's messages go: htmx does not swap error answers, so the button would otherwise
// seem to do nothing. window.boardSays(text) puts any such message there (drawer.js uses it).
(function () {
  "use strict";
  function says(text) {
    var list = document.querySelector("ul.messages");
    if (!list) {
      list = document.createElement("ul");
      list.className = "messages";
      list.setAttribute("role", "status");
      var main = document.querySelector("main");
      main.parentNode.insertBefore(list, main);
    }
    var item = document.createElement("li");
    item.className = "msg-error refused";
    item.textContent = String(text).slice(0, 300);
    list.appendChild(item);
  }
  window.boardSays = says;
  document.addEventListener("htmx:responseError", function (e) {
    var xhr = e.detail.xhr;
    if (!xhr || xhr.status !== 403) return;
    says(xhr.responseText || "You may not do this here.");
  });
})();
