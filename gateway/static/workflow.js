// A workflow's page: the DAG drawn from the layout the server made (only the boxes in
// view exist in the page, so ten thousand jobs stay fast), and the page kept live from
// the server's events: job states in boxes and table rows, the workflow's own facts.
"use strict";
(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const graph = JSON.parse(document.getElementById("graph").textContent);
  const view = document.getElementById("dag");
  const facts = document.getElementById("facts");
  const [boxWidth, boxHeight] = graph.box;
  const base = location.pathname.replace(/\/$/, "");
  const nodes = graph.nodes.map(([name, status, x, y]) => ({ name, status, x, y, el: null }));
  const byName = new Map(nodes.map((n) => [n.name, n]));
  const rows = new Map([...document.querySelectorAll("#jobs tr[data-job]")].map((r) => [r.dataset.job, r]));

  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("width", graph.width);
  svg.setAttribute("height", graph.height);
  const edges = document.createElementNS(SVG, "path");
  edges.setAttribute("class", "edges");
  edges.setAttribute("d", graph.edges.map(([a, b]) => {
    const p = nodes[a], c = nodes[b];
    return `M${p.x + boxWidth / 2},${p.y + boxHeight}L${c.x + boxWidth / 2},${c.y}`;
  }).join(""));
  const layer = document.createElementNS(SVG, "g");
  svg.append(edges, layer);
  view.append(svg);

  function label(node) {
    node.el.setAttribute("data-status", node.status);
    node.el.querySelector(".state").textContent = node.status;
    node.el.querySelector("title").textContent = `${node.name}: ${node.status}`;
  }
  function make(node) {
    const a = document.createElementNS(SVG, "a");
    a.setAttribute("class", "node");
    a.setAttribute("href", `${base}/jobs/${encodeURIComponent(node.name)}`);
    a.setAttribute("data-job", node.name);
    a.setAttribute("transform", `translate(${node.x},${node.y})`);
    const rect = document.createElementNS(SVG, "rect");
    rect.setAttribute("width", boxWidth);
    rect.setAttribute("height", boxHeight);
    const name = document.createElementNS(SVG, "text");
    name.setAttribute("x", 8); name.setAttribute("y", 17);
    name.textContent = node.name.length > 22 ? node.name.slice(0, 21) + "…" : node.name;
    const state = document.createElementNS(SVG, "text");
    state.setAttribute("class", "state");
    state.setAttribute("x", 8); state.setAttribute("y", 33);
    a.append(document.createElementNS(SVG, "title"), rect, name, state);
    node.el = a;
    label(node);
    return a;
  }
  let pending = false;
  function draw() { // the boxes within a screen of what is in view
    pending = false;
    const left = view.scrollLeft - view.clientWidth, right = view.scrollLeft + 2 * view.clientWidth;
    const top = view.scrollTop - view.clientHeight, bottom = view.scrollTop + 2 * view.clientHeight;
    const added = document.createDocumentFragment();
    for (const node of nodes) {
      const near = node.x + boxWidth >= left && node.x <= right && node.y + boxHeight >= top && node.y <= bottom;
      if (near && !node.el) added.append(make(node));
      else if (!near && node.el && !node.el.contains(document.activeElement)) { node.el.remove(); node.el = null; }
    }
    layer.append(added);
  }
  function later() { if (!pending) { pending = true; requestAnimationFrame(draw); } }
  view.addEventListener("scroll", later, { passive: true });
  addEventListener("resize", later);
  view.scrollLeft = (graph.width - view.clientWidth) / 2; // layers are centred: start at their middle
  draw();

  function setText(id, text) { const el = document.getElementById(id); if (el) el.textContent = text; }
  function counts(jobCounts) {
    const box = document.getElementById("job-counts");
    box.replaceChildren();
    for (const [status, n] of Object.entries(jobCounts)) {
      if (!n) continue;
      const span = document.createElement("span");
      span.className = "count"; span.dataset.status = status; span.textContent = `${n} ${status}`;
      box.append(span, " ");
    }
  }
  function onWorkflow(w) {
    const badge = document.getElementById("workflow-status");
    badge.dataset.status = w.status; badge.textContent = w.status;
    setText("started-at", w.started_at); setText("finished-at", w.finished_at);
    setText("duration", w.duration); setText("message", w.message);
    counts(w.job_counts);
    const finished = ["done", "failed", "terminated", "dead"].includes(w.status);
    document.getElementById("cancel").hidden = finished;
    document.getElementById("retry").hidden = !finished || w.status === "done";
  }
  function onJobs(changed) {
    for (const [name, job] of Object.entries(changed)) {
      const node = byName.get(name);
      if (node) { node.status = job.status; if (node.el) label(node); }
      const row = rows.get(name);
      if (!row) continue;
      row.dataset.status = job.status;
      const badge = row.querySelector(".job-status .status");
      badge.dataset.status = job.status; badge.textContent = job.status;
      row.querySelector(".job-attempt").textContent = job.attempt || "";
      row.querySelector(".job-started").textContent = job.started_at;
      row.querySelector(".job-duration").textContent = job.duration;
      row.querySelector(".job-exit").textContent = job.exit_code ?? "";
      row.querySelector(".job-message").textContent = job.message;
    }
  }
  if (!facts.dataset.finished) {
    const events = new EventSource(facts.dataset.eventsUrl);
    events.addEventListener("workflow", (e) => { onWorkflow(JSON.parse(e.data)); facts.dataset.live = "yes"; });
    events.addEventListener("jobs", (e) => onJobs(JSON.parse(e.data)));
    events.addEventListener("end", () => events.close());
    events.addEventListener("failure", () => events.close());
  }
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (e) => { if (!confirm(form.dataset.confirm)) e.preventDefault(); });
  }
})();
