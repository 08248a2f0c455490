// The new-workflow form: files dropped or chosen are listed, sent with the form by XHR
// with a progress bar per file; refusals are shown above the form, which keeps its input.
// Without JavaScript the form posts as it is.
"use strict";
(() => {
  const form = document.getElementById("new-workflow");
  const input = document.getElementById("files");
  const zone = document.getElementById("dropzone");
  const list = document.getElementById("chosen");
  const problems = document.getElementById("problems");
  const chosen = new Map(); // name -> {file, bar}

  function add(files) {
    for (const file of files) {
      const old = chosen.get(file.name);
      if (old) old.item.remove();
      const item = document.createElement("li");
      const name = document.createElement("span");
      name.textContent = `${file.name} (${file.size} bytes)`;
      const bar = document.createElement("progress");
      bar.max = 1; bar.value = 0;
      bar.setAttribute("aria-label", `upload of ${file.name}`);
      const remove = document.createElement("button");
      remove.type = "button"; remove.textContent = "Remove";
      remove.addEventListener("click", () => { chosen.delete(file.name); item.remove(); });
      item.append(name, bar, remove);
      list.append(item);
      chosen.set(file.name, { file, bar, item });
    }
  }
  input.addEventListener("change", () => { add(input.files); input.value = ""; });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => { e.preventDefault(); zone.classList.remove("over"); add(e.dataTransfer.files); });

  function showProblems(items) {
    const ul = problems.querySelector("ul");
    ul.replaceChildren(...items.map(({ place, message }) => {
      const li = document.createElement("li");
      if (place) { const b = document.createElement("strong"); b.textContent = place; li.append(b, ": "); }
      li.append(message);
      return li;
    }));
    problems.hidden = false;
    problems.scrollIntoView({ block: "nearest" });
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const data = new FormData(form);
    data.delete("files");
    const entries = [...chosen.values()];
    for (const { file } of entries) data.append("files", file, file.name);
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.setRequestHeader("X-CSRFToken", document.querySelector("meta[name=csrf-token]").content);
    xhr.upload.addEventListener("progress", (p) => {
      // the files go in order at the end of the body: each one's share of what was sent
      let start = p.total - entries.reduce((sum, { file }) => sum + file.size, 0);
      for (const { file, bar } of entries) {
        bar.value = file.size ? Math.min(Math.max((p.loaded - start) / file.size, 0), 1) : 1;
        start += file.size;
      }
    });
    xhr.addEventListener("load", () => {
      button.disabled = false;
      let answer = {};
      try { answer = JSON.parse(xhr.responseText); } catch (err) { /* not JSON: said below */ }
      if (xhr.status === 201 && answer.location) { location.assign(answer.location); return; }
      for (const { bar } of entries) bar.value = 0;
      if (answer.problems) showProblems(answer.problems);
      else showProblems([{ place: "", message: (answer.details || [answer.error || `the server answered ${xhr.status}`]).join(" ") }]);
    });
    xhr.addEventListener("error", () => {
      button.disabled = false;
      showProblems([{ place: "", message: "the server could not be reached; nothing was created" }]);
    });
    xhr.send(data);
  });
})();
