// Node types built from /object_info, plus the editor-only Reroute and Note nodes.

import { LiteGraph, LGraphNode } from "./lg.js";
import { addInputWidget, isWidgetInput, parseInputSpec } from "./widgets.js";
import { typeColor } from "./types.js";

const IMAGE_AREA_MIN = 220;

/** Input names in schema order (required, then optional), each with its parsed spec. */
export function orderedInputs(def) {
  const out = [];
  for (const group of ["required", "optional"]) {
    const inputs = def.input?.[group] ?? {};
    const order = def.input_order?.[group] ?? Object.keys(inputs);
    for (const name of order) {
      if (name in inputs) out.push({ name, optional: group === "optional", parsed: parseInputSpec(inputs[name]) });
    }
  }
  return out;
}

/** Draw a node's images (outputs, uploads, live previews) below its widgets. */
function drawImages(node, ctx) {
  const images = node.imgs?.filter((img) => img.complete && img.naturalWidth);
  if (!images?.length) return;
  const top = node.imageTop();
  const w = node.size[0] - 10;
  const h = node.size[1] - top - 5;
  if (h < 20) return;
  const img = images[node.imageIndex ?? images.length - 1] ?? images[0];
  const scale = Math.min(w / img.naturalWidth, h / img.naturalHeight);
  const dw = img.naturalWidth * scale;
  const dh = img.naturalHeight * scale;
  ctx.drawImage(img, 5 + (w - dw) / 2, top + (h - dh) / 2, dw, dh);
  if (images.length > 1) {
    ctx.fillStyle = "#ddd";
    ctx.font = "11px sans-serif";
    ctx.fillText(`${images.length} images`, 8, node.size[1] - 8);
  }
}

/** Mark inputs that a validation or run error names. */
function drawInputErrors(node, ctx) {
  if (!node.inputErrors?.size) return;
  ctx.save();
  ctx.strokeStyle = "#f33";
  ctx.fillStyle = "#f33";
  ctx.lineWidth = 2;
  for (const name of node.inputErrors.keys()) {
    const widget = node.widgets?.find((w) => w.name === name);
    if (widget && widget.y != null && !widget.hidden) {
      ctx.strokeRect(4, widget.y, node.size[0] - 8, widget.computedHeight ? widget.computedHeight - 4 : LiteGraph.NODE_WIDGET_HEIGHT);
      continue;
    }
    const index = node.inputs?.findIndex((slot) => slot.name === name) ?? -1;
    if (index >= 0) {
      const pos = node.getConnectionPos(true, index);
      ctx.beginPath();
      ctx.arc(pos[0] - node.pos[0], pos[1] - node.pos[1], 8, 0, Math.PI * 2);
      ctx.stroke();
    }
  }
  ctx.restore();
}

/** Behaviour shared by every node type built from a schema. */
export class SchemaNode extends LGraphNode {
  constructor(title) {
    super(title);
    const cls = this.constructor;
    this.serialize_widgets = true;
    this.comfyClass = cls.comfyClass;
    this.imgs = null;
    this.inputErrors = new Map();
    this.strokeStyles.running = function () {
      if (this.isRunning) return { color: "#0f0", lineWidth: 3, padding: 4 };
    };
    const app = cls.app;
    for (const { name, optional, parsed } of orderedInputs(cls.nodeData)) {
      const color = typeColor(parsed.type);
      const extra = { localized_name: name };
      if (optional) extra.shape = 7; // hollow socket for optional inputs
      if (color) extra.color_on = color;
      if (isWidgetInput(parsed, app.customWidgets)) {
        const widget = addInputWidget(this, name, parsed, app);
        if (widget) {
          this.addInput(name, parsed.type, { ...extra, widget: { name } });
          continue;
        }
      }
      this.addInput(name, parsed.type, extra);
    }
    const def = cls.nodeData;
    (def.output ?? []).forEach((type, i) => {
      const rawType = Array.isArray(type) ? "COMBO" : type;
      const name = def.output_name?.[i] ?? rawType;
      const extra = { localized_name: name };
      if (def.output_is_list?.[i]) extra.shape = 6; // grid shape marks list outputs
      if (def.output_tooltips?.[i]) extra.tooltip = def.output_tooltips[i];
      this.addOutput(name, rawType, extra);
    });
    const size = this.computeSize();
    size[0] = Math.max(size[0], 220);
    if (def.output_node) size[1] = Math.max(size[1], size[1] + 60);
    this.setSize(size);
    app.invokeExtensions("nodeCreated", this);
  }

  /** The y where images start: below the last widget or slot. */
  imageTop() {
    let top = LiteGraph.NODE_SLOT_HEIGHT * Math.max(this.inputs?.filter((s) => !s.widget).length ?? 0, this.outputs?.length ?? 0) + 8;
    for (const w of this.widgets ?? []) {
      if (w.y != null) top = Math.max(top, w.y + (w.computedHeight ?? LiteGraph.NODE_WIDGET_HEIGHT + 4));
    }
    return top + 4;
  }

  /** Grow the node so that images get room. */
  makeRoomForImages() {
    const needed = this.imageTop() + IMAGE_AREA_MIN;
    if (this.size[1] < needed) this.setSize([Math.max(this.size[0], 256), needed]);
  }

  onDrawBackground(ctx) {
    if (!this.flags.collapsed) drawImages(this, ctx);
  }

  onDrawForeground(ctx) {
    if (!this.flags.collapsed) drawInputErrors(this, ctx);
  }

  /** Saved slots replace the built ones (the library would merge them index by index). */
  configure(info) {
    if (Array.isArray(info.inputs)) this.inputs = [];
    if (Array.isArray(info.outputs)) this.outputs = [];
    super.configure(info);
  }

  /** Older workflows list only linked inputs: give back the sockets that sit on widgets. */
  onConfigure() {
    for (const widget of this.widgets ?? []) {
      if (widget.isControl || widget.type === "button") continue;
      if (this.inputs.some((slot) => slot.name === widget.name)) {
        const slot = this.inputs.find((s) => s.name === widget.name);
        slot.widget ??= { name: widget.name };
        continue;
      }
      const spec = orderedInputs(this.constructor.nodeData).find((i) => i.name === widget.name);
      if (spec) this.addInput(widget.name, spec.parsed.type, { widget: { name: widget.name }, localized_name: widget.name });
    }
  }

  onRemoved() {
    for (const widget of this.widgets ?? []) widget.onRemove?.();
    this.uploadChooser?.remove();
  }

  getExtraMenuOptions(canvas, options) {
    const app = this.constructor.app;
    if (this.imgs?.length) {
      options.unshift({
        content: "Open image",
        callback: () => window.open(this.imgs[this.imageIndex ?? this.imgs.length - 1].src, "_blank"),
      });
    }
    options.unshift(
      { content: this.mode === 4 ? "Remove bypass" : "Bypass", callback: () => app.toggleMode([this], 4) },
      { content: this.mode === 2 ? "Unmute" : "Mute", callback: () => app.toggleMode([this], 2) },
      null,
    );
    return options;
  }
}

/** Build and register one class per /object_info entry. */
export function registerSchemaNodes(app, defs) {
  for (const [name, def] of Object.entries(defs)) {
    const cls = class extends SchemaNode {};
    Object.defineProperty(cls, "name", { value: name.replace(/\W/g, "_") });
    cls.title = def.display_name || name;
    cls.comfyClass = name;
    cls.nodeData = def;
    cls.app = app;
    cls.description = def.description ?? "";
    app.invokeExtensions("beforeRegisterNodeDef", cls, def);
    LiteGraph.registerNodeType(name, cls);
    cls.category = def.category ?? "";
  }
}

/** A dot that passes a link on; it takes the type of what is connected. Not sent to the server. */
export class RerouteNode extends LGraphNode {
  static title = "Reroute";
  static collapsable = false;
  constructor(title) {
    super(title);
    this.isVirtualNode = true;
    this.addInput("", "*");
    this.addOutput("", "*");
    this.size = [75, 26];
    this.resizable = false;
  }

  onConnectionsChange(side, slot, connected, link) {
    if (side !== 1) return; // only the input decides the type
    // The link takes the input's type ("*"): the real type is the upstream output's.
    const origin = connected && link ? this.graph?.getNodeById(link.origin_id) : null;
    const type = origin?.outputs?.[link.origin_slot]?.type ?? "*";
    if (link && connected) link.type = type;
    this.outputs[0].type = type;
    this.outputs[0].name = type === "*" ? "" : type;
    for (const id of this.outputs[0].links ?? []) {
      const out = this.graph?._links.get(id);
      if (out) out.type = type;
    }
  }
}

/** A free text note; not sent to the server. */
export class NoteNode extends LGraphNode {
  static title = "Note";
  constructor(title) {
    super(title);
    this.isVirtualNode = true;
    this.serialize_widgets = true;
    this.color = "#432";
    this.bgcolor = "#653";
    addInputWidget(this, "text", { type: "STRING", options: { multiline: true }, choices: null }, NoteNode.app);
    this.size = [300, 140];
  }

  onRemoved() {
    for (const widget of this.widgets ?? []) widget.onRemove?.();
  }
}

export function registerEditorNodes(app) {
  NoteNode.app = app;
  LiteGraph.registerNodeType("Reroute", RerouteNode);
  RerouteNode.category = "utils";
  LiteGraph.registerNodeType("Note", NoteNode);
  NoteNode.category = "utils";
}
