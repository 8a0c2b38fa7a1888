// REST and websocket client for the ComfyUI-compatible server API.

const PREVIEW_IMAGE = 1;
const PREVIEW_IMAGE_WITH_METADATA = 4;
const IMAGE_MIME = { 1: "image/jpeg", 2: "image/png" };

function newClientId() {
  return (crypto.randomUUID?.() ?? `${Date.now()}-${Math.random()}`).replaceAll("-", "");
}

/** Raised for a non-2xx response; `body` holds the parsed JSON error where the server sent one. */
export class ApiError extends Error {
  constructor(response, body) {
    const detail = body?.error?.message ?? body?.error ?? response.statusText;
    super(`${response.url}: ${response.status} ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
    this.status = response.status;
    this.body = body;
  }
}

export class Api extends EventTarget {
  constructor(base = "") {
    super();
    this.base = base;
    this.clientId = sessionStorage.getItem("latentgraph.clientId") ?? newClientId();
    sessionStorage.setItem("latentgraph.clientId", this.clientId);
    /** Every websocket message received, in order ({type, data} or {type: "preview", ...}). */
    this.messages = [];
    this.socket = null;
    this.connected = false;
  }

  url(path) {
    return `${this.base}${path}`;
  }

  async fetchJson(path, options = {}) {
    const response = await fetch(this.url(path), options);
    const text = await response.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = { error: text };
    }
    if (!response.ok) throw new ApiError(response, body);
    return body;
  }

  get(path) {
    return this.fetchJson(path);
  }

  post(path, data) {
    return this.fetchJson(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(data ?? {}),
    });
  }

  objectInfo() {
    return this.get("/object_info");
  }

  /** Queue a prompt; resolves to {prompt_id, number, node_errors} or throws ApiError (400: node_errors). */
  queuePrompt(prompt, workflow, front = false) {
    const body = { prompt, client_id: this.clientId, extra_data: { extra_pnginfo: { workflow } } };
    if (front) body.front = true;
    return this.post("/prompt", body);
  }

  getQueue() {
    return this.get("/queue");
  }

  getHistory(maxItems = 50) {
    return this.get(`/history?max_items=${maxItems}`);
  }

  deleteQueueItems(ids) {
    return this.post("/queue", { delete: ids });
  }

  clearQueue() {
    return this.post("/queue", { clear: true });
  }

  clearHistory() {
    return this.post("/history", { clear: true });
  }

  interrupt() {
    return this.post("/interrupt", {});
  }

  async uploadImage(file, { overwrite = false, subfolder = "", type = "input" } = {}) {
    const form = new FormData();
    form.append("image", file, file.name);
    form.append("type", type);
    form.append("subfolder", subfolder);
    if (overwrite) form.append("overwrite", "true");
    return this.fetchJson("/upload/image", { method: "POST", body: form });
  }

  viewUrl({ filename, subfolder = "", type = "output" }) {
    const q = new URLSearchParams({ filename, subfolder, type });
    return this.url(`/view?${q}`);
  }

  /** Open the websocket; reconnects after a drop. Resolves once the first connection is open. */
  connect() {
    return new Promise((resolve) => {
      const open = () => {
        const proto = location.protocol === "https:" ? "wss:" : "ws:";
        const base = this.base ? new URL(this.base, location.href).host : location.host;
        const socket = new WebSocket(`${proto}//${base}/ws?clientId=${this.clientId}`);
        socket.binaryType = "arraybuffer";
        this.socket = socket;
        socket.addEventListener("open", () => {
          this.connected = true;
          // The first message says which binary frames we understand (type 4 carries the node id).
          socket.send(JSON.stringify({ type: "feature_flags", data: { supports_preview_metadata: true } }));
          this.dispatchEvent(new CustomEvent("reconnected"));
          resolve();
        });
        socket.addEventListener("close", () => {
          if (this.connected) this.dispatchEvent(new CustomEvent("disconnected"));
          this.connected = false;
          if (!this.closing) setTimeout(open, 1000);
        });
        socket.addEventListener("message", (event) => this.onSocketMessage(event));
      };
      open();
    });
  }

  close() {
    this.closing = true;
    this.socket?.close();
  }

  onSocketMessage(event) {
    if (event.data instanceof ArrayBuffer) {
      const preview = parseBinaryFrame(event.data);
      if (!preview) return;
      this.messages.push({ type: "preview", data: { node: preview.node, bytes: preview.blob.size } });
      this.dispatchEvent(new CustomEvent("preview", { detail: preview }));
      return;
    }
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      console.warn("ignoring a websocket message that is not JSON");
      return;
    }
    this.messages.push(message);
    if (message.type === "status" && message.data?.sid) this.clientId = message.data.sid;
    this.dispatchEvent(new CustomEvent(message.type, { detail: message.data }));
  }
}

/**
 * Decode a binary websocket frame: a 4-byte big-endian event type, then for type 1 a 4-byte image
 * format and the image bytes, for type 4 a 4-byte JSON length, the JSON metadata and the image bytes.
 */
export function parseBinaryFrame(buffer) {
  const view = new DataView(buffer);
  if (buffer.byteLength < 8) return null;
  const type = view.getUint32(0);
  if (type === PREVIEW_IMAGE) {
    const format = view.getUint32(4);
    return { node: null, metadata: null, blob: new Blob([buffer.slice(8)], { type: IMAGE_MIME[format] ?? "image/jpeg" }) };
  }
  if (type === PREVIEW_IMAGE_WITH_METADATA) {
    const length = view.getUint32(4);
    const metadata = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 8, length)));
    const mime = metadata.image_type ?? "image/png";
    return {
      node: metadata.node_id ?? null,
      metadata,
      blob: new Blob([buffer.slice(8 + length)], { type: mime }),
    };
  }
  return null;
}
