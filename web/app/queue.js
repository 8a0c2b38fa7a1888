// The queue and history panel: running and pending prompts with cancel, clear, history with
// results that can be loaded back into the editor.

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, attrs);
  node.append(...children);
  return node;
}

export class QueuePanel {
  constructor(app, element) {
    this.app = app;
    this.element = element;
    this.refreshing = null;
  }

  toggle(show = this.element.hidden) {
    this.element.hidden = !show;
    if (show) this.refresh();
  }

  /** Fetch /queue and /history and redraw (only while the panel is open). */
  refresh() {
    if (this.element.hidden) return Promise.resolve();
    this.refreshing ??= this.#load().finally(() => {
      this.refreshing = null;
    });
    return this.refreshing;
  }

  async #load() {
    const api = this.app.api;
    const [queue, history] = await Promise.all([api.getQueue(), api.getHistory(30)]);
    const running = queue.queue_running ?? [];
    const pending = queue.queue_pending ?? [];
    const runningList = el("ul", { className: "queue-running" }, ...running.map((item) => this.#queueItem(item, true)));
    const pendingList = el("ul", { className: "queue-pending" }, ...pending.map((item) => this.#queueItem(item, false)));
    const historyEntries = Object.entries(history ?? {}).reverse();
    const historyList = el("ul", { className: "queue-history" }, ...historyEntries.map(([id, entry]) => this.#historyItem(id, entry)));
    const clear = el("button", { className: "queue-clear", textContent: "Clear queue", onclick: () => this.#act(() => api.clearQueue()) });
    const clearHistory = el("button", { className: "history-clear", textContent: "Clear history", onclick: () => this.#act(() => api.clearHistory()) });
    this.element.replaceChildren(
      el("h3", { textContent: `Running (${running.length})` }), runningList,
      el("h3", { textContent: `Pending (${pending.length})` }), clear, pendingList,
      el("h3", { textContent: `History (${historyEntries.length})` }), clearHistory, historyList,
    );
  }

  async #act(action) {
    try {
      await action();
    } catch (error) {
      this.app.reportError(error);
    }
    await this.refresh();
  }

  #queueItem(item, running) {
    const [number, promptId] = item;
    const cancel = el("button", {
      className: "queue-cancel",
      textContent: running ? "Interrupt" : "Cancel",
      onclick: () => this.#act(() => (running ? this.app.api.interrupt() : this.app.api.deleteQueueItems([promptId]))),
    });
    const load = el("button", { textContent: "Load", onclick: () => this.#loadFrom(item[3], item[2]) });
    const li = el("li", {}, el("span", { textContent: `#${number} ${promptId.slice(0, 8)}` }), load, cancel);
    li.dataset.promptId = promptId;
    return li;
  }

  #historyItem(promptId, entry) {
    const status = entry.status?.status_str ?? (entry.status?.completed ? "success" : "?");
    const thumbs = [];
    for (const output of Object.values(entry.outputs ?? {})) {
      for (const image of output.images ?? []) {
        thumbs.push(el("img", { src: this.app.api.viewUrl(image), className: "thumb", loading: "lazy" }));
      }
    }
    const prompt = entry.prompt ?? [];
    const load = el("button", { textContent: "Load", onclick: () => this.#loadFrom(prompt[3], prompt[2]) });
    const li = el("li", { className: `history-${status}` }, el("span", { textContent: `${promptId.slice(0, 8)} ${status}` }), load, ...thumbs);
    li.dataset.promptId = promptId;
    return li;
  }

  #loadFrom(extraData, prompt) {
    const workflow = extraData?.extra_pnginfo?.workflow;
    if (workflow) return this.app.tabs.add("from queue", workflow);
    if (prompt) return this.app.loadApiPrompt(prompt, "from queue");
    return null;
  }
}
