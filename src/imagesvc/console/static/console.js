// The imagesvc console: everything a client does, by hand, with the public API only.
// No framework, no build step. Server data reaches the page through textContent and
// attributes only (filenames are the client's: never HTML).
"use strict";

(function () {
  const KEY = "imagesvc.apiKey"; // sessionStorage only: gone when the tab closes
  const PAGE = 24;
  const THUMB = "256x256";
  const PREVIEW = "1024x1024";
  const PARALLEL_UPLOADS = 2;
  const API = new URL(".", window.location.href); // the service's root, whatever its prefix

  const $ = (id) => document.getElementById(id);
  const state = { cursor: null, shown: 0, current: null, queue: [], running: 0 };

  // --- the API --------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, problem) {
      super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
      this.status = status;
      this.code = problem && problem.code;
      this.requestId = problem && problem.request_id;
    }
  }

  function apiKey() {
    return window.sessionStorage.getItem(KEY);
  }

  async function api(method, path, { json, headers } = {}) {
    const sent = { Authorization: `Bearer ${apiKey()}`, ...(headers || {}) };
    let body;
    if (json !== undefined) {
      sent["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    }
    const response = await fetch(new URL(path, API), { method, headers: sent, body });
    if (response.status === 204) return null;
    const type = response.headers.get("Content-Type") || "";
    const data = type.includes("json") ? await response.json() : null;
    if (!response.ok) {
      if (response.status === 401) keyRejected();
      throw new ApiError(response.status, data);
    }
    return data;
  }

  // --- messages -------------------------------------------------------------------------

  function toast(text, kind = "info") {
    const item = document.createElement("div");
    item.className = `toast ${kind}`;
    item.textContent = text;
    $("toasts").append(item);
    window.setTimeout(() => item.remove(), kind === "error" ? 8000 : 3500);
  }

  function failed(what, error) {
    const id = error.requestId ? ` (request ${error.requestId})` : "";
    toast(`${what}: ${error.message}${id}`, "error");
  }

  // --- the key --------------------------------------------------------------------------

  function showSignedIn(signedIn) {
    $("welcome").hidden = signedIn;
    $("workspace").hidden = !signedIn;
    $("forget-key").hidden = !signedIn;
    $("api-key").placeholder = signedIn ? "Key in use (this tab only)" : "Paste an API key (isk_…)";
  }

  function keyRejected() {
    window.sessionStorage.removeItem(KEY);
    showSignedIn(false);
    toast("The API key was refused (missing, unknown or revoked).", "error");
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("api-key").value.trim();
    if (!value) {
      toast("Paste an API key first.", "error");
      return;
    }
    window.sessionStorage.setItem(KEY, value);
    $("api-key").value = "";
    showSignedIn(true);
    reload();
  });

  $("forget-key").addEventListener("click", () => {
    window.sessionStorage.removeItem(KEY);
    $("grid").replaceChildren();
    closeDetail();
    showSignedIn(false);
  });

  // --- the library ----------------------------------------------------------------------

  function formatBytes(bytes) {
    if (bytes < 1024) return `${bytes} B`;
    if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
    return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
  }

  function tile(image) {
    const figure = document.createElement("figure");
    figure.className = "tile";
    figure.dataset.imageId = image.id;
    figure.tabIndex = 0;
    // The placeholder: the dominant colour at once, the BlurHash over it, then the bytes.
    if (image.dominant_color) figure.style.backgroundColor = image.dominant_color;
    const placeholder = image.blurhash && window.BlurHash.toDataURL(image.blurhash);
    if (placeholder) figure.style.backgroundImage = `url("${placeholder}")`;

    const img = document.createElement("img");
    img.dataset.testid = "thumbnail";
    img.dataset.imageId = image.id;
    img.alt = image.filename || image.id;
    img.decoding = "async";
    img.addEventListener("load", () => figure.classList.add("loaded"));
    img.addEventListener("error", () => figure.classList.add("broken"));
    img.src = new URL(image.links.signed_variant, API).href;

    const caption = document.createElement("figcaption");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = image.filename || image.id;
    const facts = document.createElement("span");
    facts.className = "facts";
    facts.textContent = `${image.width}×${image.height} · ${formatBytes(image.byte_size)}`;
    caption.append(name, facts);
    if (image.visibility === "public") {
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = "public";
      figure.append(badge);
    }
    figure.append(img, caption);
    const open = () => openDetail(image.id);
    figure.addEventListener("click", open);
    figure.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        open();
      }
    });
    return figure;
  }

  function updateCount() {
    const tiles = $("grid").children.length;
    $("count").textContent = tiles ? `${tiles}${state.cursor ? "+" : ""} images` : "";
    $("empty").hidden = tiles > 0;
  }

  async function loadPage() {
    const params = new URLSearchParams({ limit: String(PAGE), links: THUMB });
    if (state.cursor) params.set("cursor", state.cursor);
    const button = $("load-more");
    button.disabled = true;
    try {
      const page = await api("GET", `v1/images?${params}`);
      for (const image of page.items) {
        if (!$("grid").querySelector(`[data-image-id="${image.id}"]`)) {
          $("grid").append(tile(image));
        }
      }
      state.cursor = page.next_cursor;
      button.hidden = !state.cursor;
      updateCount();
    } catch (error) {
      if (error.status !== 401) failed("Could not list images", error);
    } finally {
      button.disabled = false;
    }
  }

  function reload() {
    state.cursor = null;
    $("grid").replaceChildren();
    return loadPage();
  }

  $("load-more").addEventListener("click", loadPage);
  $("refresh").addEventListener("click", reload);

  // --- uploads --------------------------------------------------------------------------

  function enqueue(files) {
    for (const file of files) {
      const item = document.createElement("li");
      item.className = "upload";
      item.dataset.testid = "upload-progress";
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = file.name;
      const bar = document.createElement("progress");
      bar.max = 100;
      bar.value = 0;
      const status = document.createElement("span");
      status.className = "status";
      status.textContent = "waiting";
      item.append(name, bar, status);
      $("uploads").append(item);
      state.queue.push({ file, item, bar, status });
    }
    pump();
  }

  function pump() {
    while (state.running < PARALLEL_UPLOADS && state.queue.length) {
      const job = state.queue.shift();
      state.running += 1;
      upload(job).finally(() => {
        state.running -= 1;
        pump();
      });
    }
  }

  function upload({ file, item, bar, status }) {
    // XMLHttpRequest, not fetch: only XHR reports upload progress.
    return new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", new URL("v1/images", API));
      xhr.setRequestHeader("Authorization", `Bearer ${apiKey()}`);
      // Retry-safe: a retried request with this key returns the first result.
      xhr.setRequestHeader("Idempotency-Key", window.crypto.randomUUID());
      xhr.responseType = "json";
      xhr.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) {
          const percent = Math.round((event.loaded / event.total) * 100);
          bar.value = percent;
          status.textContent = `${percent} %`;
        }
      });
      xhr.addEventListener("load", async () => {
        if (xhr.status === 201) {
          bar.value = 100;
          status.textContent = "done";
          item.classList.add("done");
          try {
            const image = await api("GET", `v1/images/${xhr.response.id}?links=${THUMB}`);
            $("grid").prepend(tile(image));
            updateCount();
          } catch (error) {
            failed("Uploaded, but could not show it", error);
          }
          window.setTimeout(() => item.remove(), 2500);
        } else {
          const problem = xhr.response || {};
          item.classList.add("failed");
          status.textContent = problem.detail || `HTTP ${xhr.status}`;
          if (xhr.status === 401) keyRejected();
          window.setTimeout(() => item.remove(), 10000);
        }
        resolve();
      });
      xhr.addEventListener("error", () => {
        item.classList.add("failed");
        status.textContent = "network error";
        resolve();
      });
      const form = new FormData();
      form.append("file", file, file.name);
      xhr.send(form);
    });
  }

  $("file-input").addEventListener("change", (event) => {
    enqueue(Array.from(event.target.files));
    event.target.value = "";
  });
  const drop = $("drop");
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    enqueue(Array.from(event.dataTransfer.files));
  });

  // --- the detail view ------------------------------------------------------------------

  function fact(name, value) {
    const term = document.createElement("dt");
    term.textContent = name;
    const detail = document.createElement("dd");
    detail.textContent = value;
    return [term, detail];
  }

  function showMeta(image) {
    $("detail-title").textContent = image.filename || image.id;
    $("meta").replaceChildren(
      ...fact("Id", image.id),
      ...fact("Filename", image.filename || "—"),
      ...fact("Type", image.content_type),
      ...fact("Size", `${formatBytes(image.byte_size)} (${image.byte_size} bytes)`),
      ...fact("Pixels", `${image.width} × ${image.height}${image.frames > 1 ? `, ${image.frames} frames` : ""}`),
      ...fact("Colour", image.dominant_color || "—"),
      ...fact("SHA-256", image.sha256),
      ...fact("Created", new Date(image.created_at).toLocaleString()),
    );
    const isPublic = image.visibility === "public";
    $("visibility").checked = isPublic;
    $("visibility-label").textContent = isPublic ? "Public: no key needed" : "Private";
  }

  async function openDetail(id) {
    state.current = id;
    $("confirm").hidden = true;
    $("detail").hidden = false;
    $("backdrop").hidden = false;
    const preview = $("preview-img");
    preview.removeAttribute("src");
    try {
      const image = await api("GET", `v1/images/${id}?links=${PREVIEW}`);
      if (state.current !== id) return;
      showMeta(image);
      $("preview").style.backgroundColor = image.dominant_color || "";
      preview.alt = image.filename || image.id;
      preview.src = new URL(image.links.signed_variant, API).href;
      const link = await api("POST", `v1/images/${id}/links`, { json: { download: true } });
      $("download").href = new URL(link.url, API).href;
    } catch (error) {
      failed("Could not open the image", error);
    }
  }

  function closeDetail() {
    state.current = null;
    $("detail").hidden = true;
    $("backdrop").hidden = true;
  }

  $("detail-close").addEventListener("click", closeDetail);
  $("backdrop").addEventListener("click", closeDetail);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") closeDetail();
  });

  $("visibility").addEventListener("change", async (event) => {
    const id = state.current;
    const visibility = event.target.checked ? "public" : "private";
    try {
      const image = await api("PATCH", `v1/images/${id}`, { json: { visibility } });
      showMeta(image);
      const old = $("grid").querySelector(`.tile[data-image-id="${id}"]`);
      if (old) {
        const fresh = await api("GET", `v1/images/${id}?links=${THUMB}`);
        old.replaceWith(tile(fresh));
      }
      toast(`Now ${visibility}.`);
    } catch (error) {
      event.target.checked = !event.target.checked;
      failed("Could not change the visibility", error);
    }
  });

  $("delete").addEventListener("click", async () => {
    const id = state.current;
    if (!id) return;
    $("delete").disabled = true;
    try {
      await api("DELETE", `v1/images/${id}`);
      const old = $("grid").querySelector(`.tile[data-image-id="${id}"]`);
      if (old) old.remove();
      updateCount();
      closeDetail();
      toast("Deleted: the image and all its renditions.");
    } catch (error) {
      failed("Could not delete", error);
    } finally {
      $("delete").disabled = false;
    }
  });

  // --- start ----------------------------------------------------------------------------

  const signedIn = Boolean(apiKey());
  showSignedIn(signedIn);
  if (signedIn) reload();
})();
