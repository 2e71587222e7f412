// AMG console: keeps the approvals queue current and counts down to each
// parked call's expiry. Everything works without it, one reload at a time.
"use strict";

(function () {
  // skew is the server's clock minus the browser's, so countdowns follow
  // the gateway's idea of expiry.
  let skew = 0;

  function readSkew(root) {
    const q = root.querySelector("[data-now]");
    if (q) {
      const now = Date.parse(q.dataset.now);
      if (!isNaN(now)) skew = now - Date.now();
    }
  }

  function fmt(ms) {
    if (ms <= 0) return "expired";
    let s = Math.floor(ms / 1000);
    const h = Math.floor(s / 3600);
    s -= h * 3600;
    const m = Math.floor(s / 60);
    s -= m * 60;
    if (h > 0) return h + "h" + String(m).padStart(2, "0") + "m";
    if (m > 0) return m + "m" + String(s).padStart(2, "0") + "s";
    return s + "s";
  }

  function tick() {
    const now = Date.now() + skew;
    for (const t of document.querySelectorAll("time.countdown")) {
      const left = Date.parse(t.getAttribute("datetime")) - now;
      t.textContent = fmt(left);
      const card = t.closest(".approval");
      if (card) {
        card.classList.toggle("soon", left > 0 && left < 60000);
        if (left <= 0) {
          card.classList.add("expired");
          for (const b of card.querySelectorAll("button")) b.disabled = true;
        }
      }
    }
  }

  async function refresh(holder) {
    let res;
    try {
      res = await fetch(holder.dataset.refresh, { credentials: "same-origin", headers: { Accept: "text/html" } });
    } catch (e) {
      holder.classList.add("stale");
      return;
    }
    if (res.status === 401) {
      location.reload(); // the session ended: back to sign-in
      return;
    }
    if (!res.ok) {
      holder.classList.add("stale");
      return;
    }
    holder.classList.remove("stale");
    const tpl = document.createElement("template");
    tpl.innerHTML = await res.text();
    const next = tpl.content.querySelector(".queue");
    const cur = holder.querySelector(".queue");
    if (!next) return;
    readSkew(tpl.content);
    if (cur && cur.dataset.ids === next.dataset.ids && !cur.querySelector(".problem") === !next.querySelector(".problem")) {
      // The same calls are waiting: keep the page (and what is typed) as
      // it is, but show the latest decisions.
      const recent = next.querySelector("table");
      const old = cur.querySelector("table");
      if (recent && old) old.replaceWith(recent);
      else if (recent) cur.append(recent.closest("div.scroll") || recent);
      return;
    }
    // Carry typed reasons over to the new queue.
    const typed = {};
    for (const card of holder.querySelectorAll(".approval")) {
      const input = card.querySelector("input[name=reason]");
      if (input && input.value) typed[card.dataset.id] = input.value;
    }
    for (const card of next.querySelectorAll(".approval")) {
      const input = card.querySelector("input[name=reason]");
      if (input && typed[card.dataset.id]) input.value = typed[card.dataset.id];
    }
    holder.replaceChildren(next);
    tick();
  }

  document.addEventListener("DOMContentLoaded", function () {
    readSkew(document);
    tick();
    setInterval(tick, 1000);
    const holder = document.querySelector("[data-refresh]");
    if (holder) {
      // The next fetch waits for the last one, however slow: fetches
      // must not pile up on a gateway that is slow to answer.
      const next = function () {
        refresh(holder)
          .catch(function () { holder.classList.add("stale"); })
          .finally(function () { setTimeout(next, 2000); });
      };
      setTimeout(next, 2000);
    }

    document.addEventListener("submit", function (ev) {
      const form = ev.target;
      if (form.classList.contains("confirm") && !window.confirm(form.dataset.confirm)) {
        ev.preventDefault();
        return;
      }
      // One click, one decision.
      setTimeout(function () {
        for (const b of form.querySelectorAll("button")) b.disabled = true;
      }, 0);
    });
  });
})();
