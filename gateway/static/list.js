// The workflow list refreshes its rows every few seconds while the page is visible.
"use strict";
(() => {
  const table = document.getElementById("workflows");
  if (!table) return;
  const body = table.tBodies[0];
  async function refresh() {
    if (document.visibilityState !== "visible") return;
    try {
      const answer = await fetch(table.dataset.rowsUrl, { headers: { Accept: "text/html" } });
      if (answer.redirected) { location.reload(); return; } // signed out meanwhile
      if (answer.ok) body.innerHTML = await answer.text(); // server-rendered rows: already escaped
    } catch (e) { /* the next round tries again */ }
  }
  setInterval(refresh, 3000);
})();
