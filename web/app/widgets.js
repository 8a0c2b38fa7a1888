// Widgets built from an /object_info input spec: numbers, combos, toggles, text, multiline text
// (a DOM textarea kept over the canvas), seeds with control_after_generate, and image upload.

export const WIDGET_TYPES = new Set(["INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"]);
/** Counts canvas frames, so textareas of nodes not drawn in the last frame can be hidden. */
export const drawFrame = { value: 0 };
export const SEED_CONTROLS = ["fixed", "increment", "decrement", "randomize"];

/** Normalise an input spec ([type, options]) to {type, options, choices}. */
export function parseInputSpec(spec) {
  const [rawType, options] = Array.isArray(spec) ? spec : [spec];
  if (Array.isArray(rawType)) return { type: "COMBO", options: options ?? {}, choices: rawType };
  if (rawType === "COMBO") return { type: "COMBO", options: options ?? {}, choices: options?.options ?? [] };
  // A spec without options (["INT"]) is a link-only input: it gets a socket, no widget.
  return { type: String(rawType), options: options ?? { forceInput: true }, choices: null };
}

/** True when the input is shown as a widget (a socket sits on it), false for a plain socket. */
export function isWidgetInput({ type, options }, customWidgets) {
  if (options.forceInput || options.rawLink) return false;
  return WIDGET_TYPES.has(type) || type in customWidgets;
}

function decimals(step) {
  const text = String(step);
  return text.includes(".") ? text.split(".")[1].length : 0;
}

function addNumber(node, name, { type, options }) {
  const isInt = type === "INT";
  const step = options.step ?? (isInt ? 1 : 0.1);
  const round = options.round ?? (isInt ? 1 : step);
  const precision = isInt ? 0 : (options.precision ?? Math.max(decimals(round || step), 1));
  const min = options.min ?? (isInt ? -Number.MAX_SAFE_INTEGER : -Infinity);
  const max = options.max ?? (isInt ? Number.MAX_SAFE_INTEGER : Infinity);
  const widget = node.addWidget("number", name, options.default ?? Math.max(0, min), function (value) {
    let v = Number(value);
    if (round) v = Math.round(v / round) * round;
    if (isInt) v = Math.round(v);
    else v = Number(v.toFixed(precision));
    this.value = Math.min(max, Math.max(min, v));
  }, { min, max, step: step * 10, step2: step, round, precision });
  return widget;
}

function addCombo(node, name, { options, choices }) {
  const value = options.default ?? choices[0] ?? "";
  return node.addWidget("combo", name, value, () => {}, { values: choices });
}

function addToggle(node, name, { options }) {
  return node.addWidget("toggle", name, Boolean(options.default ?? false), () => {}, {
    on: options.label_on ?? "true",
    off: options.label_off ?? "false",
  });
}

/**
 * A textarea kept over the canvas at the widget's place. The canvas draws it each frame it draws the
 * node; textareas of nodes it did not draw are hidden after the frame (see hideStaleTextareas).
 */
function addMultiline(node, name, { options }) {
  const element = document.createElement("textarea");
  element.className = "lg-textarea";
  element.placeholder = options.placeholder ?? name;
  element.spellcheck = false;
  element.dataset.widget = name;
  element.style.display = "none";
  document.getElementById("textareas").append(element);
  const widget = {
    type: "customtext",
    name,
    options: {},
    y: 0,
    element,
    drawnAt: -1,
    get value() {
      return element.value;
    },
    set value(v) {
      element.value = v ?? "";
    },
    computeSize(width) {
      return [width, 90];
    },
    draw(ctx, drawnNode, width, y) {
      this.drawnAt = drawFrame.value;
      if (element.dataset.node !== String(drawnNode.id)) element.dataset.node = String(drawnNode.id);
      const canvasEl = ctx.canvas;
      const t = ctx.getTransform();
      const rect = canvasEl.getBoundingClientRect();
      const ratio = canvasEl.width / rect.width || 1;
      const scale = t.a / ratio;
      const height = (this.computedHeight ?? 90) - 8;
      const left = rect.left + (t.e + t.a * 8) / ratio;
      const top = rect.top + (t.f + t.d * (y + 2)) / ratio;
      const style = `left:${left}px;top:${top}px;width:${(width - 16)}px;height:${height}px;transform:scale(${scale});display:block;opacity:${this.computedDisabled ? 0.5 : 1}`;
      if (style !== this.lastStyle) {
        element.style.cssText = style;
        this.lastStyle = style;
      }
      element.disabled = Boolean(this.computedDisabled);
    },
    onRemove() {
      element.remove();
    },
  };
  widget.value = options.default ?? "";
  element.addEventListener("input", () => {
    node.onWidgetChanged?.(name, element.value);
  });
  element.addEventListener("change", () => node.graph?.afterChange?.());
  node.addCustomWidget(widget);
  return widget;
}

/** Hide textareas of nodes the last frame did not draw (off screen, collapsed, or removed). */
export function hideStaleTextareas(frame) {
  for (const node of document.querySelectorAll("#textareas textarea")) {
    const widget = node.widgetRef;
    if (widget && widget.drawnAt !== frame && node.style.display !== "none") {
      node.style.display = "none";
      widget.lastStyle = null;
    }
  }
}

function addText(node, name, { options }) {
  return node.addWidget("text", name, options.default ?? "", () => {}, {});
}

/** After each run: what a seed widget does with its value. */
export function applySeedControl(widget, control) {
  const { min = 0, max = Number.MAX_SAFE_INTEGER } = widget.options;
  const hi = Math.min(max, Number.MAX_SAFE_INTEGER);
  switch (control) {
    case "increment":
      widget.value = Math.min(hi, widget.value + 1);
      break;
    case "decrement":
      widget.value = Math.max(min, widget.value - 1);
      break;
    case "randomize": {
      // 53 random bits at most: JSON numbers above 2^53 lose precision.
      const span = Math.max(0, hi - min);
      const r = Math.floor(Math.random() * 2 ** 32) * 2 ** 21 + Math.floor(Math.random() * 2 ** 21);
      widget.value = min + (span > 0 ? r % (span + 1) : 0);
      break;
    }
    default:
      break;
  }
}

function addSeedControl(node, widget, options) {
  const initial = typeof options.control_after_generate === "string" ? options.control_after_generate : "randomize";
  const control = node.addWidget("combo", "control_after_generate", initial, () => {}, { values: SEED_CONTROLS });
  control.controls = widget;
  control.isControl = true;
  widget.controlWidget = control;
  return control;
}

/** An upload button for a combo of input images; the node shows the chosen image. */
function addImageUpload(node, comboWidget, app) {
  const chooser = document.createElement("input");
  chooser.type = "file";
  chooser.accept = "image/png,image/jpeg,image/webp";
  chooser.style.display = "none";
  document.body.append(chooser);
  const showPreview = (name) => {
    if (!name) return;
    const [subfolder, filename] = name.includes("/") ? [name.slice(0, name.lastIndexOf("/")), name.slice(name.lastIndexOf("/") + 1)] : ["", name];
    app.showImagesOnNode(node, [{ filename, subfolder, type: "input" }], { preview: true });
  };
  const upload = async (file) => {
    const result = await app.api.uploadImage(file);
    const name = result.subfolder ? `${result.subfolder}/${result.name}` : result.name;
    if (!comboWidget.options.values.includes(name)) comboWidget.options.values.push(name);
    comboWidget.value = name;
    showPreview(name);
    app.tracker.checkState();
    return name;
  };
  chooser.addEventListener("change", async () => {
    if (chooser.files?.length) await upload(chooser.files[0]);
    chooser.value = "";
  });
  const callback = comboWidget.callback;
  comboWidget.callback = function (value, ...rest) {
    callback?.call(this, value, ...rest);
    showPreview(value);
  };
  const button = node.addWidget("button", "choose file to upload", "image", () => chooser.click(), {});
  button.serialize = false;
  button.isControl = true;
  node.uploadImage = upload;
  node.uploadChooser = chooser;
  node.onAddedToGraph = () => showPreview(comboWidget.value);
  requestAnimationFrame(() => showPreview(comboWidget.value));
  return button;
}

/**
 * Add the widget(s) for one input. Returns the main widget; companions (seed control, upload button)
 * are added right after it and marked `isControl` so they stay out of the API prompt.
 */
export function addInputWidget(node, name, parsed, app) {
  const custom = app.customWidgets[parsed.type];
  let widget;
  if (custom) {
    widget = custom(node, name, [parsed.type, parsed.options], app)?.widget;
  } else if (parsed.type === "INT" || parsed.type === "FLOAT") {
    widget = addNumber(node, name, parsed);
  } else if (parsed.type === "BOOLEAN") {
    widget = addToggle(node, name, parsed);
  } else if (parsed.type === "COMBO") {
    widget = addCombo(node, name, parsed);
  } else if (parsed.type === "STRING") {
    widget = parsed.options.multiline ? addMultiline(node, name, parsed) : addText(node, name, parsed);
  }
  if (!widget) return null;
  if (widget.element) widget.element.widgetRef = widget;
  if (parsed.options.tooltip) widget.tooltip = parsed.options.tooltip;
  if (parsed.options.control_after_generate && parsed.type === "INT") addSeedControl(node, widget, parsed.options);
  if (parsed.options.image_upload && parsed.type === "COMBO") addImageUpload(node, widget, app);
  return widget;
}
