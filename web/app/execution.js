// What the websocket says about a run, shown on the graph: the running node outlined, its progress
// bar, live previews on the sampler, output images on output nodes, and error outlines.

export class ExecutionView {
  constructor(app) {
    this.app = app;
    this.runningNodeId = null;
    this.promptId = null;
    /** Last output per node id, kept across undo and tab reloads of the same graph. */
    this.nodeOutputs = {};
    this.lastError = null;
    const api = app.api;
    api.addEventListener("execution_start", (e) => this.onStart(e.detail));
    api.addEventListener("executing", (e) => this.onExecuting(e.detail));
    api.addEventListener("progress", (e) => this.onProgress(e.detail));
    api.addEventListener("executed", (e) => this.onExecuted(e.detail));
    api.addEventListener("execution_error", (e) => this.onError(e.detail));
    api.addEventListener("execution_interrupted", () => this.onDone("interrupted"));
    api.addEventListener("execution_success", () => this.onDone("success"));
    api.addEventListener("preview", (e) => this.onPreview(e.detail));
  }

  node(id) {
    return id == null ? null : this.app.graph.getNodeById(isNaN(Number(id)) ? id : Number(id)) ?? this.app.graph.getNodeById(id);
  }

  setRunning(id) {
    const previous = this.node(this.runningNodeId);
    if (previous) {
      previous.isRunning = false;
      previous.progress = undefined;
    }
    this.runningNodeId = id;
    const node = this.node(id);
    if (node) node.isRunning = true;
    this.app.setStatus(id == null ? "idle" : `running ${node?.title ?? id}`);
    this.app.redraw();
  }

  onStart({ prompt_id }) {
    this.promptId = prompt_id;
    this.app.clearErrors();
  }

  onExecuting({ node }) {
    this.setRunning(node);
  }

  onProgress({ node, value, max }) {
    const target = this.node(node ?? this.runningNodeId);
    if (target && max) target.progress = value / max;
    this.app.setStatus(`${target?.title ?? node}: ${value}/${max}`);
    this.app.redraw();
  }

  onExecuted({ node, output }) {
    this.nodeOutputs[node] = output;
    const target = this.node(node);
    if (target && output?.images?.length) this.app.showImagesOnNode(target, output.images);
  }

  onPreview({ node, blob }) {
    const target = this.node(node ?? this.runningNodeId);
    if (!target) return;
    const img = new Image();
    const url = URL.createObjectURL(blob);
    img.onload = () => {
      if (target.previewUrl) URL.revokeObjectURL(target.previewUrl);
      target.previewUrl = url;
      target.imgs = [img];
      target.imageIndex = 0;
      target.makeRoomForImages?.();
      this.app.redraw();
    };
    img.src = url;
  }

  onError(data) {
    this.lastError = data;
    const node = this.node(data.node_id);
    const message = `${data.node_type ?? "node"} ${data.node_id}: ${data.exception_type ?? "error"}: ${data.exception_message ?? ""}`;
    if (node) {
      node.has_errors = true;
      node.errorMessage = data.exception_message;
    }
    this.app.showErrors(message, data.node_id != null ? { [data.node_id]: { errors: [{ message: data.exception_message ?? "" }], class_type: data.node_type } } : {});
    this.onDone("error");
  }

  onDone(status) {
    this.setRunning(null);
    this.app.setStatus(status);
    this.app.queuePanel.refresh();
  }

  /** Put back images after the graph was reloaded (undo, tab switch). */
  restoreOutputs() {
    for (const [id, output] of Object.entries(this.nodeOutputs)) {
      const node = this.node(id);
      if (node && output?.images?.length) this.app.showImagesOnNode(node, output.images);
    }
  }
}
