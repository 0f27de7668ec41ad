// Osler dashboard: live updates, answers without a reload, and keyboard navigation.
// Written for this project; no framework and no build step. Every page works without it
// (forms post and redirect back); with it, the page's <main> is swapped in place.
(function () {
  "use strict";
  var main = document.getElementById("main");
  var live = document.getElementById("live");
  var urgent = document.getElementById("urgent");
  var timer = null;
  var busy = false;

  function say(text) {
    if (live && text) live.textContent = text;
  }

  function typing() {
    var a = document.activeElement;
    return a && main && main.contains(a) && /^(INPUT|TEXTAREA|SELECT)$/.test(a.tagName) && a.value;
  }

  // Fetches this page's <main> again and swaps it in, keeping focus where it was.
  function refresh(why, delay) {
    if (!main || !main.hasAttribute("data-live") || timer) return;
    timer = setTimeout(function () {
      timer = null;
      if (busy || typing()) { refresh(why, 2000); return; }
      busy = true;
      fetch(location.href, { headers: { "x-osler-fragment": "main" }, credentials: "same-origin" })
        .then(function (r) {
          if (r.ok && r.headers.get("x-osler-fragment") === "main") {
            return r.text().then(function (html) {
              var focused = document.activeElement && document.activeElement.id;
              main.innerHTML = html;
              var again = focused && document.getElementById(focused);
              if (again) again.focus();
              say(why);
            });
          }
          if (r.redirected && r.url.indexOf("/ui/login") >= 0) location.href = r.url;
        })
        .catch(function () {})
        .then(function () { busy = false; });
    }, delay || 150);
  }

  // An emergency announced before it is stored: shown at once, in words, until its stored
  // alert arrives (the page then shows it like every alert).
  function announce(d) {
    if (!urgent || !d.patient) return;
    var p = document.createElement("p");
    p.setAttribute("data-key", d.patient + " " + d.rule);
    p.textContent = "EMERGENCY: " + (d.title || d.rule) + ", patient " + d.patient +
      " (" + d.reading_time + "). Announced by gateway " + d.gateway + "; confirming.";
    urgent.appendChild(p);
    urgent.hidden = false;
  }
  function confirmed(d) {
    if (!urgent) return;
    Array.prototype.slice.call(urgent.children).forEach(function (p) {
      if (p.getAttribute("data-key") === d.patient + " " + d.rule) urgent.removeChild(p);
    });
    urgent.hidden = urgent.children.length === 0;
  }

  // One event stream per tab (browsers allow six connections per origin across tabs).
  function connect() {
    if (!main || !main.hasAttribute("data-live")) return;
    var es = new EventSource("/alerts/stream");
    var on = function (e) {
      var d = {};
      try { d = JSON.parse(e.data); } catch (_) {}
      var who = d.patient ? " for " + d.patient : "";
      // This screen has the alert: a recipient's response moves from notified to delivered
      // (the hub refuses it for anyone else, and for a response already further on).
      if (e.type === "alert" && d.event === "raised") confirmed(d);
      if (e.type === "alert" && (d.event === "raised" || d.event === "reopened") && d.id) {
        fetch("/alerts/" + d.id + "/delivered", {
          method: "POST", body: "{}", credentials: "same-origin",
          headers: { "content-type": "application/json" }
        }).catch(function () {});
      }
      refresh(e.type === "alert" ? "Alert " + (d.state || "changed") + who : "Alert answered" + who);
    };
    es.addEventListener("alert", on);
    es.addEventListener("response", on);
    es.addEventListener("notice", function (e) {
      try { announce(JSON.parse(e.data)); } catch (_) {}
    });
    es.onerror = function () {
      // A closed stream (the session ended or the hub restarted): renew the session, then
      // reconnect; the refresh brings whatever happened meanwhile.
      if (es.readyState === EventSource.CLOSED) {
        setTimeout(function () {
          fetch("/ui/session", { credentials: "same-origin" }).catch(function () {}).then(function () {
            connect();
            refresh("Reconnected");
          });
        }, 3000);
      }
    };
  }

  document.addEventListener("submit", function (ev) {
    var f = ev.target;
    if (!(f instanceof HTMLFormElement) || !f.classList.contains("act")) return;
    ev.preventDefault();
    var old = f.querySelector(".error");
    if (old) old.remove();
    fetch(f.action, {
      method: "POST",
      body: new URLSearchParams(new FormData(f)),
      credentials: "same-origin",
      headers: { "x-osler-fragment": "main" }
    }).then(function (r) {
      return r.text().then(function (text) {
        if (r.ok) { say(text); refresh(text, 1); return; }
        var p = document.createElement("p");
        p.className = "error";
        p.setAttribute("role", "alert");
        p.textContent = text;
        f.appendChild(p);
      });
    }).catch(function () { say("The hub did not answer; nothing was sent twice. Try again."); });
  });

  // j / k move between worklist rows; Enter opens the focused row's patient.
  document.addEventListener("keydown", function (e) {
    if (e.altKey || e.ctrlKey || e.metaKey || (e.target.closest && e.target.closest("input,textarea,select"))) return;
    var rows = Array.prototype.slice.call(document.querySelectorAll("[data-row]"));
    if (!rows.length) return;
    var here = document.activeElement && document.activeElement.closest && document.activeElement.closest("[data-row]");
    var i = rows.indexOf(here);
    if (e.key === "j") { rows[Math.min(i + 1, rows.length - 1)].focus(); e.preventDefault(); }
    else if (e.key === "k") { rows[Math.max(i - 1, 0)].focus(); e.preventDefault(); }
    else if (e.key === "Enter" && document.activeElement === here) {
      var a = here.querySelector("a[data-open]");
      if (a) a.click();
    }
  });

  connect();
  // Ages ("4 min ago") and staleness move with the clock, not only with alerts.
  setInterval(function () { refresh(""); }, 60000);
})();
