/* Forum Scheduler: a little progressive enhancement. Every page works without it. */
(function () {
  "use strict";
  var html = document.documentElement;
  var ZONE = /^[A-Za-z0-9_\/+\-]{1,64}$/;
  var browserZone = "";
  try { browserZone = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) {}

  // The visitor's own time zone: asked of the browser once, kept in a cookie for the server.
  if (!html.dataset.tz && ZONE.test(browserZone)) {
    var tried = false;
    try { tried = sessionStorage.getItem("fs-tz") === "1"; sessionStorage.setItem("fs-tz", "1"); } catch (e) { tried = true; }
    document.cookie = "tz=" + browserZone + "; path=/; max-age=31536000; samesite=lax";
    if (!tried && document.cookie.indexOf("tz=") !== -1 && document.querySelector("[data-visitor-time]")) {
      window.location.reload();
      return;
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    // An empty time zone field starts with the browser's zone.
    document.querySelectorAll("input[data-browser-zone]").forEach(function (input) {
      if (!input.value && ZONE.test(browserZone)) { input.value = browserZone; }
    });

    // Ask before destructive actions.
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.getAttribute("data-confirm"))) { event.preventDefault(); }
      });
    });

    // Copy a calendar feed address, and say so to screen readers.
    document.querySelectorAll("button[data-copy]").forEach(function (button) {
      if (!navigator.clipboard) { return; }
      button.hidden = false;
      button.addEventListener("click", function () {
        navigator.clipboard.writeText(button.getAttribute("data-copy")).then(function () {
          var status = button.parentNode.querySelector("[data-copied]");
          if (status) { status.textContent = status.getAttribute("data-copied"); }
        });
      });
    });

    // After a refused form, take keyboard and screen-reader users to the list of problems.
    var summary = document.getElementById("error-summary");
    if (summary) { summary.focus(); }
    var preview = document.getElementById("preview-title");
    if (preview && !summary) { preview.focus(); }
  });
})();
