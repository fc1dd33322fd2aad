// GenEvolve view: the page's only script. It submits filter forms (class auto) when a field changes and, while
// "live" is ticked, reloads the page's content when the files behind it change (a batch still
// writing). No build step, no libraries.
"use strict";

document.addEventListener("change", (event) => {
  const field = event.target;
  if (field.form && field.form.classList.contains("auto") && field.type !== "text") field.form.submit();
});

(function live() {
  const sources = document.body.dataset.live;
  if (!sources) return;
  let stamp = document.body.dataset.stamp;
  const query = sources.split(",").map((s) => "src=" + encodeURIComponent(s)).join("&");
  async function check() {
    const box = document.getElementById("live");
    if (!box || !box.checked || document.hidden) return;
    try {
      const reply = await fetch("/api/stamp?" + query, { cache: "no-store" });
      if (!reply.ok) return;
      const now = (await reply.json()).stamp;
      if (now === stamp) return;
      const html = await (await fetch(location.href, { cache: "no-store" })).text();
      const fresh = new DOMParser().parseFromString(html, "text/html").getElementById("main");
      const main = document.getElementById("main");
      if (fresh && main) {
        // keep what the reader opened: <details> elements with an id stay open
        const open = new Set([...main.querySelectorAll("details[id][open]")].map((d) => d.id));
        fresh.querySelectorAll("details[id]").forEach((d) => { if (open.has(d.id)) d.open = true; });
        main.replaceWith(fresh);
      }
      stamp = now;
      document.body.dataset.stamp = now;
    } catch (err) {
      // the server went away; keep the page as it is
    }
  }
  setInterval(check, 2000);
})();
