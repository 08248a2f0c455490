// A job's page: its log kept live from the server's events (new lines appended, the view
// following the end while the reader is there), earlier lines fetched on demand, and the
// page's DOM kept bounded however long the log grows. Text only, never HTML.
"use strict";
(() => {
  const MAX_LINES = 50000; // lines kept in the page; the oldest go first
  const PAGE = 1000; // lines fetched per "show earlier lines"
  const log = document.getElementById("log");
  const earlier = document.getElementById("earlier");
  const note = document.getElementById("log-note");
  let attempt = Number(log.dataset.attempt);
  let first = Number(log.dataset.first); // index of the first line shown
  let next = Number(log.dataset.next); // index of the line after the last one shown
  let following = true;

  function lineElement(stream, text) {
    const span = document.createElement("span");
    span.className = stream;
    span.textContent = text + "\n";
    return span;
  }
  function atBottom() {
    return log.scrollHeight - log.scrollTop - log.clientHeight < 24;
  }
  log.addEventListener("scroll", () => { following = atBottom(); });

  function trim() {
    const extra = log.childElementCount - MAX_LINES;
    if (extra <= 0) return;
    for (let i = 0; i < extra; i++) log.firstElementChild.remove();
    first += extra;
    earlier.hidden = false;
    note.textContent = `Only the last ${MAX_LINES} lines are kept here; the download has them all.`;
  }
  function append(lines) {
    const fragment = document.createDocumentFragment();
    for (const [stream, text] of lines) fragment.append(lineElement(stream, text));
    log.append(fragment);
    trim();
    if (following) log.scrollTop = log.scrollHeight;
  }

  earlier.addEventListener("click", async () => {
    if (log.childElementCount + PAGE > MAX_LINES) {
      note.textContent = `The page holds at most ${MAX_LINES} lines: download the log for all of them.`;
      earlier.hidden = true;
      return;
    }
    const from = Math.max(first - PAGE, 0);
    const url = `${log.dataset.linesUrl}?attempt=${attempt}&offset=${from}&limit=${first - from}`;
    earlier.disabled = true;
    try {
      const answer = await fetch(url, { headers: { Accept: "application/json" } });
      if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
      const got = await answer.json();
      const height = log.scrollHeight;
      const fragment = document.createDocumentFragment();
      for (const [stream, text] of got.lines) fragment.append(lineElement(stream, text));
      log.prepend(fragment);
      log.scrollTop += log.scrollHeight - height; // the lines in view stay in view
      first = from;
      earlier.hidden = first === 0;
      note.textContent = first ? `Showing lines from ${first + 1}.` : "";
    } catch (e) {
      note.textContent = `Could not fetch earlier lines (${e.message}).`;
    } finally {
      earlier.disabled = false;
    }
  });

  if (log.dataset.live) {
    log.scrollTop = log.scrollHeight;
    let source = null;
    const connect = () => {
      source = new EventSource(`${log.dataset.eventsUrl}?attempt=${attempt}&offset=${next}`);
      source.addEventListener("lines", (e) => {
        const batch = JSON.parse(e.data);
        if (batch.attempt !== attempt) { // the job started, or was retried: its next attempt's lines
          if (attempt) append([["system", `attempt ${batch.attempt}`]]);
          attempt = batch.attempt;
          next = 0;
        }
        if (batch.offset + batch.lines.length <= next) return; // seen already
        append(batch.lines.slice(Math.max(next - batch.offset, 0)));
        next = batch.offset + batch.lines.length;
      });
      source.addEventListener("end", async () => {
        source.close();
        note.textContent = "The job has ended.";
        try { // its final state and attempts, from the page as the server now renders it
          const answer = await fetch(location.href);
          const fresh = new DOMParser().parseFromString(await answer.text(), "text/html");
          for (const id of ["job-status", "attempts"]) {
            const now = fresh.getElementById(id);
            if (now) document.getElementById(id).replaceWith(document.adoptNode(now));
          }
        } catch (err) { note.textContent = "The job has ended: reload for its final state."; }
      });
      source.addEventListener("failure", (e) => {
        source.close();
        note.textContent = `The log stopped: ${JSON.parse(e.data).message}`;
      });
      source.onerror = () => { // take up again where the page got to, not where it started
        source.close();
        setTimeout(connect, 2000);
      };
    };
    connect();
  }
})();
