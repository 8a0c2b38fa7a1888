// The editor: graph and canvas, node types from /object_info, running prompts, files, tabs, plugins.
// Plugins import `app` from here; tests reach it as window.app.

import {
  configureLibrary, setTypeColor, LGraph, LGraphCanvas, LGraphGroup, LiteGraph, MODE,
} from "./lg.js";
import { Api, ApiError } from "./api.js";
import { graphToPrompt } from "./convert.js";
import { ExecutionView } from "./execution.js";
import { download, installDropHandler, layoutApiPrompt, openFile } from "./files.js";
import { Keybindings } from "./keybindings.js";
import { registerEditorNodes, registerSchemaNodes } from "./nodes.js";
import { QueuePanel } from "./queue.js";
import { NodeSearch } from "./search.js";
import { Tabs } from "./tabs.js";
import { knownTypeColors, typeColor } from "./types.js";
import { ChangeTracker } from "./undo.js";
import { applySeedControl, drawFrame, hideStaleTextareas } from "./widgets.js";

const $ = (id) => document.getElementById(id);

export class App {
  constructor() {
    this.api = new Api();
    this.defs = {};
    this.extensions = [];
    this.customWidgets = {};
    this.errors = [];
    this.ready = false;
  }

  /** Register a plugin extension: {name, init, setup, beforeRegisterNodeDef, nodeCreated, getCustomWidgets}. */
  registerExtension(extension) {
    if (!extension?.name) throw new Error("an extension needs a name");
    if (this.extensions.some((e) => e.name === extension.name)) throw new Error(`extension ${extension.name} is already registered`);
    this.extensions.push(extension);
  }

  /** Call one hook on every extension; a failing extension is reported, the others still run. */
  invokeExtensions(method, ...args) {
    const results = [];
    for (const extension of this.extensions) {
      if (typeof extension[method] !== "function") continue;
      try {
        results.push(extension[method](...args, this));
      } catch (error) {
        this.showBanner(`extension ${extension.name} failed in ${method}: ${error.message}`);
      }
    }
    return results;
  }

  async invokeExtensionsAsync(method, ...args) {
    for (const extension of this.extensions) {
      if (typeof extension[method] !== "function") continue;
      try {
        await extension[method](...args, this);
      } catch (error) {
        this.showBanner(`extension ${extension.name} failed in ${method}: ${error.message}`);
      }
    }
  }

  async setup() {
    configureLibrary();
    this.canvasEl = $("graph");
    this.graph = new LGraph();
    this.canvas = new LGraphCanvas(this.canvasEl, this.graph);
    this.canvas.allow_searchbox = true;
    this.canvas.show_info = false;
    this.canvas.render_canvas_border = false;
    for (const [type, color] of Object.entries(knownTypeColors())) setTypeColor(this.canvas, type, color);
    this.search = new NodeSearch(this);
    this.#hookCanvas();
    this.tracker = new ChangeTracker(this.graph, {
      restore: (state) => this.#configure(state),
      onChange: (state) => this.tabs.update(state),
    });
    this.tabs = new Tabs(this, $("tabs"));
    this.queuePanel = new QueuePanel(this, $("queue-panel"));
    this.execution = new ExecutionView(this);
    this.keybindings = new Keybindings(this.commands());
    this.keybindings.attach(window);
    this.#installToolbar();
    installDropHandler(this);
    new ResizeObserver(() => this.#resize()).observe(this.canvasEl.parentElement);

    const [defs] = await Promise.all([this.api.objectInfo(), this.api.connect()]);
    this.defs = defs;
    await this.#loadExtensions();
    await this.invokeExtensionsAsync("init");
    for (const extension of this.extensions) {
      const widgets = await extension.getCustomWidgets?.(this);
      Object.assign(this.customWidgets, widgets ?? {});
    }
    registerEditorNodes(this);
    registerSchemaNodes(this, defs);
    for (const def of Object.values(defs)) {
      for (const type of def.output ?? []) if (!Array.isArray(type)) setTypeColor(this.canvas, type, typeColor(type));
    }
    await this.#showFailedPlugins();
    this.#noteBuiltinModels(defs);
    if (this.tabs.restore()) {
      await this.loadGraphData(JSON.parse(this.tabs.current.workflow), { keepTab: true });
      this.tabs.render();
    } else {
      await this.newWorkflow();
    }
    await this.invokeExtensionsAsync("setup");
    this.api.addEventListener("status", (e) => {
      $("queue-size").textContent = `queue: ${e.detail?.status?.exec_info?.queue_remaining ?? 0}`;
      this.queuePanel.refresh();
    });
    this.ready = true;
    document.body.dataset.ready = "true";
  }

  #resize() {
    const rect = this.canvasEl.parentElement.getBoundingClientRect();
    const ratio = window.devicePixelRatio || 1;
    this.canvasEl.width = Math.round(rect.width * ratio);
    this.canvasEl.height = Math.round(rect.height * ratio);
    this.canvasEl.style.width = `${rect.width}px`;
    this.canvasEl.style.height = `${rect.height}px`;
    this.canvasEl.getContext("2d").setTransform(ratio, 0, 0, ratio, 0, 0);
    this.canvas.setDirty(true, true);
  }

  #hookCanvas() {
    const canvas = this.canvas;
    canvas.showSearchBox = (event, options = {}) => {
      const pos = canvas.convertEventToCanvasOffset(event);
      let link = null;
      if (options.node_from) link = { node: options.node_from, slot: options.node_from.outputs.indexOf(options.slot_from), type: options.type_filter_in, direction: "input" };
      if (options.node_to) link = { node: options.node_to, slot: options.node_to.inputs.indexOf(options.slot_to ?? options.slot_from), type: options.type_filter_out, direction: "output" };
      this.search.open({ clientX: event.clientX, clientY: event.clientY, canvasPos: pos, link });
    };
    // A link dropped on empty canvas opens the search, filtered by the link's type.
    canvas.showConnectionMenu = ({ nodeFrom, slotFrom, nodeTo, slotTo, e }) => {
      const pos = canvas.convertEventToCanvasOffset(e);
      const link = nodeFrom
        ? { node: nodeFrom, slot: nodeFrom.outputs.indexOf(slotFrom), type: slotFrom.type, direction: "input" }
        : { node: nodeTo, slot: nodeTo.inputs.indexOf(slotTo), type: slotTo.type, direction: "output" };
      this.search.open({ clientX: e.clientX, clientY: e.clientY, canvasPos: pos, link });
    };
    canvas.onDrawForeground = () => {
      hideStaleTextareas(drawFrame.value);
      drawFrame.value++;
    };
    // After the library has handled the event (our listeners run after its own).
    const check = () => queueMicrotask(() => this.tracker?.checkState());
    this.canvasEl.addEventListener("pointerup", check);
    window.addEventListener("keyup", check);
    this.graph.onAfterChange = check;
    // Node widgets changed by the canvas (drag, click, prompt) count as edits.
    this.graph.onNodeAdded = (node) => {
      const changed = node.onWidgetChanged;
      node.onWidgetChanged = (...args) => {
        changed?.apply(node, args);
        check();
      };
    };
  }

  #installToolbar() {
    const commands = this.commands();
    for (const button of document.querySelectorAll("[data-command]")) {
      button.addEventListener("click", () => Promise.resolve(commands[button.dataset.command]()).catch((e) => this.reportError(e)));
    }
    $("open-file").addEventListener("change", async (event) => {
      const file = event.target.files?.[0];
      event.target.value = "";
      if (file) await openFile(this, file).catch((e) => this.reportError(e));
    });
    $("errors-close").addEventListener("click", () => this.clearErrors());
  }

  commands() {
    return {
      queue: () => this.queuePrompt(false),
      queueFront: () => this.queuePrompt(true),
      interrupt: () => this.api.interrupt(),
      save: () => this.saveWorkflow(),
      open: () => $("open-file").click(),
      exportApi: () => download(`${this.tabs.current?.name ?? "workflow"}_api.json`, graphToPrompt(this.graph, this.defs)),
      undo: () => this.tracker.undo(),
      redo: () => this.tracker.redo(),
      bypass: () => this.toggleMode(this.selectedNodes(), MODE.bypass),
      mute: () => this.toggleMode(this.selectedNodes(), MODE.never),
      group: () => this.groupSelected(),
      collapse: () => this.#collapseSelected(),
      fitView: () => this.fitView(),
      toggleQueue: () => this.queuePanel.toggle(),
      newWorkflow: () => this.newWorkflow(),
      loadDefault: () => this.newWorkflow(),
      reportError: (e) => this.reportError(e),
    };
  }

  selectedNodes() {
    return Object.values(this.canvas.selected_nodes ?? {});
  }

  /** Bypass or mute nodes; applied again to nodes already in that mode, it restores them. */
  toggleMode(nodes, mode) {
    if (!nodes.length) return;
    const all = nodes.every((n) => n.mode === mode);
    for (const node of nodes) node.mode = all ? MODE.always : mode;
    this.redraw();
    this.tracker.checkState();
  }

  groupSelected() {
    const nodes = this.selectedNodes();
    if (!nodes.length) return null;
    const group = new LGraphGroup("Group");
    this.graph.add(group);
    group.resizeTo(nodes);
    this.redraw();
    this.tracker.checkState();
    return group;
  }

  #collapseSelected() {
    for (const node of this.selectedNodes()) node.collapse();
    this.tracker.checkState();
  }

  fitView() {
    const nodes = this.graph._nodes;
    if (!nodes.length) return;
    let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
    for (const n of nodes) {
      x0 = Math.min(x0, n.pos[0]);
      y0 = Math.min(y0, n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT);
      x1 = Math.max(x1, n.pos[0] + n.size[0]);
      y1 = Math.max(y1, n.pos[1] + n.size[1]);
    }
    this.canvas.ds.fitToBounds([x0, y0, x1 - x0, y1 - y0], { zoom: 0.9 });
    this.redraw();
  }

  redraw() {
    this.canvas.setDirty(true, true);
  }

  addNode(type, pos = [100, 100]) {
    const node = LiteGraph.createNode(type);
    if (!node) throw new Error(`unknown node type ${type}`);
    node.pos = [pos[0], pos[1]];
    this.graph.add(node);
    return node;
  }

  async #configure(state) {
    this.clearErrors();
    const selected = this.selectedNodes().map((n) => n.id);
    this.canvas.deselectAll?.();
    this.graph.configure(state);
    const again = selected.map((id) => this.graph.getNodeById(id)).filter(Boolean);
    if (again.length) this.canvas.selectNodes(again);
    this.execution?.restoreOutputs();
    // Draw now: the canvas finds nodes under the pointer among those it drew last, so a click
    // right after an undo must not meet the replaced nodes.
    this.canvas.draw(true, true);
  }

  /** Load an editor-format workflow into the current tab (or a new one unless keepTab). */
  async loadGraphData(workflow, { keepTab = false, name = "workflow" } = {}) {
    if (!keepTab) return this.tabs.add(name, workflow);
    const missing = [...new Set((workflow.nodes ?? []).map((n) => n.type).filter((t) => !LiteGraph.registered_node_types[t]))];
    if (missing.length) this.showBanner(`This workflow uses node types the server does not have: ${missing.join(", ")}`);
    this.execution.nodeOutputs = {};
    await this.#configure(workflow);
    if (!workflow.extra?.ds) this.fitView();
    this.tracker.reset();
    return this.graph;
  }

  /** A new tab with the default SDXL workflow; the checkpoint combo takes the first model found. */
  async newWorkflow() {
    const response = await fetch("/app/default_workflow.json");
    const workflow = await response.json();
    await this.tabs.add("default", workflow);
    for (const node of this.graph._nodes) {
      for (const widget of node.widgets ?? []) {
        const values = widget.options?.values;
        if (widget.type === "combo" && Array.isArray(values) && values.length && !values.includes(widget.value)) widget.value = values[0];
      }
    }
    this.tracker.reset();
    this.tabs.update(JSON.stringify(this.graph.serialize()));
    return this.graph;
  }

  /** Build an editor graph from an API prompt (no positions there: nodes are laid out by depth). */
  async loadApiPrompt(prompt, name = "api") {
    await this.tabs.add(name, { nodes: [], links: [], version: 0.4 });
    const positions = layoutApiPrompt(prompt);
    const nodes = {};
    for (const [id, entry] of Object.entries(prompt)) {
      const node = LiteGraph.createNode(entry.class_type);
      if (!node) {
        this.showBanner(`unknown node type ${entry.class_type} (node ${id})`);
        continue;
      }
      node.pos = positions[id];
      if (entry._meta?.title) node.title = entry._meta.title;
      this.graph.add(node);
      nodes[id] = node;
    }
    for (const [id, entry] of Object.entries(prompt)) {
      const node = nodes[id];
      if (!node) continue;
      for (const [inputName, value] of Object.entries(entry.inputs ?? {})) {
        if (Array.isArray(value) && value.length === 2 && nodes[value[0]]) {
          const slot = node.inputs.findIndex((s) => s.name === inputName);
          if (slot >= 0) nodes[value[0]].connect(value[1], node, slot);
        } else {
          const widget = node.widgets?.find((w) => w.name === inputName && !w.isControl);
          if (widget) widget.value = value?.__value__ ?? value;
        }
      }
    }
    this.fitView();
    this.tracker.reset();
    this.tabs.update(JSON.stringify(this.graph.serialize()));
  }

  /** The API prompt for the current graph (what Queue sends). */
  graphToPrompt() {
    return graphToPrompt(this.graph, this.defs);
  }

  saveWorkflow() {
    const name = this.tabs.current?.name ?? "workflow";
    download(`${name}.json`, this.graph.serialize());
  }

  /** Convert, queue, and on success apply each seed's control_after_generate. */
  async queuePrompt(front = false) {
    this.clearErrors();
    const prompt = graphToPrompt(this.graph, this.defs);
    const workflow = this.graph.serialize();
    let result;
    try {
      result = await this.api.queuePrompt(prompt, workflow, front);
    } catch (error) {
      if (error instanceof ApiError && error.body) {
        const body = error.body;
        const message = body.error?.message ?? String(body.error ?? error.message);
        const details = body.error?.details ? `: ${body.error.details}` : "";
        this.showErrors(`${message}${details}`, body.node_errors ?? {});
        return { error: body };
      }
      throw error;
    }
    for (const node of this.graph._nodes) {
      for (const widget of node.widgets ?? []) {
        if (widget.controlWidget && node.mode !== MODE.never) applySeedControl(widget, widget.controlWidget.value);
      }
    }
    this.lastQueued = result;
    // Outputs that passed validation run; the others come back in node_errors (200, as ComfyUI).
    if (result?.node_errors && Object.keys(result.node_errors).length) {
      this.showErrors("Some outputs failed validation and will not run", result.node_errors);
    }
    this.redraw();
    this.tracker.checkState();
    this.queuePanel.refresh();
    return result;
  }

  /** Outline nodes and inputs named by errors ({node_id: {errors: [{message, details, extra_info}]}}). */
  showErrors(message, nodeErrors = {}) {
    const list = $("errors-list");
    list.replaceChildren();
    const add = (text, nodeId) => {
      const li = document.createElement("li");
      li.textContent = text;
      if (nodeId != null) {
        li.dataset.node = String(nodeId);
        li.addEventListener("click", () => {
          const node = this.execution.node(nodeId);
          if (node) this.canvas.centerOnNode(node);
        });
      }
      list.append(li);
    };
    if (message) add(message);
    for (const [id, entry] of Object.entries(nodeErrors)) {
      const node = this.execution.node(id);
      if (node) {
        node.has_errors = true;
        node.inputErrors = new Map();
      }
      for (const err of entry.errors ?? []) {
        const input = err.extra_info?.input_name;
        if (node && input) node.inputErrors.set(input, err.message);
        add(`#${id} ${entry.class_type ?? node?.type ?? ""}${input ? ` · ${input}` : ""}: ${err.message}${err.details ? ` (${err.details})` : ""}`, id);
      }
    }
    this.errors = { message, nodeErrors };
    $("errors").hidden = false;
    this.redraw();
  }

  clearErrors() {
    for (const node of this.graph?._nodes ?? []) {
      node.has_errors = false;
      node.inputErrors?.clear();
    }
    this.errors = [];
    const box = $("errors");
    if (box) box.hidden = true;
    this.redraw();
  }

  /** Show images on a node: [{filename, subfolder, type}] -> /view URLs. */
  showImagesOnNode(node, images, { preview = false } = {}) {
    const loaded = images.map((image) => {
      const img = new Image();
      img.onload = () => this.redraw();
      img.src = this.api.viewUrl(image);
      return img;
    });
    node.imgs = loaded;
    node.imageIndex = loaded.length - 1;
    node.imagesArePreview = preview;
    node.makeRoomForImages?.();
    this.redraw();
  }

  setStatus(text) {
    $("status").textContent = text;
  }

  showBanner(text, detail = "") {
    const banner = $("banner");
    const li = document.createElement("li");
    li.textContent = text;
    if (detail) li.title = detail;
    banner.querySelector("ul").append(li);
    banner.hidden = false;
  }

  reportError(error) {
    console.warn(error);
    this.showErrors(error?.message ?? String(error), {});
  }

  async #loadExtensions() {
    let urls = [];
    try {
      urls = await this.api.get("/extensions");
    } catch (error) {
      this.showBanner(`could not list web extensions: ${error.message}`);
      return;
    }
    for (const url of urls ?? []) {
      try {
        await import(url);
      } catch (error) {
        this.showBanner(`web extension ${url} failed to load: ${error.message}`);
      }
    }
  }

  /** Say plainly when the only checkpoints are latentgraph's own (they are demos, not real SDXL weights). */
  #noteBuiltinModels(defs) {
    const choices = defs?.CheckpointLoaderSimple?.input?.required?.ckpt_name?.[0];
    if (!Array.isArray(choices)) return;
    const builtin = choices.every((name) => name.startsWith("latentgraph_"));
    $("model-note").hidden = !builtin;
    $("model-note-close").onclick = () => { $("model-note").hidden = true; };
  }

  async #showFailedPlugins() {
    let records;
    try {
      records = await this.api.get("/api/plugins");
    } catch (error) {
      this.showBanner(`could not list plugins: ${error.message}`);
      return;
    }
    const list = Array.isArray(records) ? records : (records?.plugins ?? Object.values(records ?? {}));
    for (const record of list) {
      if (record?.status !== "failed") continue;
      // The error may end with a traceback: show its last line, keep the rest on hover.
      const lines = String(record.error ?? "").trim().split("\n");
      this.showBanner(`plugin ${record.name} failed to load: ${lines.at(-1)}`, lines.join("\n"));
    }
  }
}

export const app = new App();
window.app = app;
