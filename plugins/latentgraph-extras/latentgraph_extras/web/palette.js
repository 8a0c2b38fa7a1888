// latentgraph-extras: colour swatches on the palette nodes. A PALETTE_SWATCHES widget (from
// getCustomWidgets) sits under PaletteFromColors (following its text as you type) and under
// ExtractPalette (filled when the node has run, from its `palette` UI output).
import { app } from "/app/app.js";

export const SWATCH_TYPE = "PALETTE_SWATCHES";
export const SWATCH_HEIGHT = 28;
const MARGIN = 15;
const HEX = /^#?([0-9a-f]{6}|[0-9a-f]{3})$/i;

/** Hex codes in a string ("#1b1b3a, f84aa7 #fff") as "#rrggbb", in order; anything else is skipped. */
export function parseColors(text) {
  const colors = [];
  for (const token of String(text ?? "").split(/[\s,;]+/)) {
    const match = HEX.exec(token);
    if (!match) continue;
    const digits = match[1].length === 3 ? [...match[1]].map((c) => c + c).join("") : match[1];
    colors.push(`#${digits.toLowerCase()}`);
  }
  return colors;
}

/** The x offset and width of each swatch in a widget `width` wide; `weights` default to equal. */
export function swatchLayout(count, width, weights = null) {
  const inner = Math.max(0, width - 2 * MARGIN);
  const w = weights && weights.length === count ? weights : Array(count).fill(1);
  const total = w.reduce((a, b) => a + b, 0) || 1;
  const boxes = [];
  let x = MARGIN;
  for (let i = 0; i < count; i++) {
    const span = (inner * w[i]) / total;
    boxes.push({ x, width: span });
    x += span;
  }
  return boxes;
}

/** Add a swatch strip to `node`; `widget.value` is the list of colours, `widget.weights` their widths. */
export function addSwatches(node, name, colors = [], weights = null) {
  const widget = {
    name,
    type: "palette_swatches",
    value: [...colors],
    weights,
    serialize: false, // display only: never in widgets_values
    isControl: true, // never in the API prompt
    options: {},
    computeSize(width) {
      return [width, SWATCH_HEIGHT];
    },
    draw(ctx, _node, width, y) {
      const boxes = swatchLayout(this.value.length, width, this.weights);
      ctx.save();
      if (!this.value.length) {
        ctx.fillStyle = "#888";
        ctx.font = "11px sans-serif";
        ctx.fillText("no colours yet", MARGIN, y + SWATCH_HEIGHT / 2 + 4);
      }
      this.value.forEach((color, i) => {
        ctx.fillStyle = color;
        ctx.fillRect(boxes[i].x, y + 4, boxes[i].width, SWATCH_HEIGHT - 8);
      });
      ctx.restore();
    },
  };
  return node.addCustomWidget(widget);
}

/** Show `colors` (and optional weights) in the node's swatch widget. */
function showPalette(node, colors, weights = null) {
  const widget = node.widgets?.find((w) => w.type === "palette_swatches");
  if (!widget) return;
  widget.value = [...colors];
  widget.weights = weights;
  node.setDirtyCanvas?.(true, true);
}

function producesPalette(def) {
  return (def.output ?? []).includes("PALETTE");
}

export const extension = {
  name: "latentgraph_extras.palette",

  getCustomWidgets() {
    return {
      [SWATCH_TYPE](node, name, [, options = {}]) {
        return { widget: addSwatches(node, name, parseColors((options.colors ?? []).join(" "))) };
      },
    };
  },

  beforeRegisterNodeDef(nodeType, def) {
    if (!producesPalette(def)) return;
    nodeType.prototype.showPalette = function (colors, weights = null) {
      showPalette(this, colors, weights);
    };
  },

  nodeCreated(node, appRef = app) {
    if (typeof node.showPalette !== "function") return;
    const make = appRef.customWidgets?.[SWATCH_TYPE] ?? this.getCustomWidgets()[SWATCH_TYPE];
    make(node, "swatches", [SWATCH_TYPE, {}], appRef);
    const text = node.widgets?.find((w) => w.name === "colors" && w.type !== "palette_swatches");
    if (text && typeof text.value === "string") {
      node.showPalette(parseColors(text.value));
      const original = text.callback;
      text.callback = function (value, ...rest) {
        const result = original?.call(this, value, ...rest);
        node.showPalette(parseColors(value));
        return result;
      };
    }
  },

  setup(appRef = app) {
    appRef.api?.addEventListener?.("executed", (event) => {
      const { node: id, output } = event.detail ?? {};
      if (!output?.palette) return;
      const node = appRef.graph?.getNodeById?.(Number(id)) ?? appRef.graph?.getNodeById?.(id);
      node?.showPalette?.(output.palette, output.weights ?? null);
    });
  },
};

app.registerExtension(extension);
