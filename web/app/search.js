// The node search dialog: opened by a double-click on the canvas, or when a link is dropped on empty
// canvas, in which case it lists only the node types that can take (or give) that link's type.

import { LiteGraph } from "./lg.js";
import { orderedInputs } from "./nodes.js";

/** Editor-only nodes, described like schema nodes so that the search can list them. */
const EDITOR_NODE_DEFS = {
  Reroute: { name: "Reroute", display_name: "Reroute", category: "utils", description: "pass a link on", input: { required: { "": ["*"] } }, output: ["*"] },
  Note: { name: "Note", display_name: "Note", category: "utils", description: "a text note", input: {}, output: [] },
};

function accepts(def, type, direction) {
  if (direction === "input") {
    return orderedInputs(def).some(({ parsed }) => LiteGraph.isValidConnection(type, parsed.type));
  }
  return (def.output ?? []).some((out) => LiteGraph.isValidConnection(Array.isArray(out) ? "COMBO" : out, type));
}

function score(def, name, query) {
  if (!query) return 1;
  const hay = [def.display_name ?? name, name, def.category ?? "", def.description ?? ""].map((s) => s.toLowerCase());
  const words = query.toLowerCase().split(/\s+/).filter(Boolean);
  let total = 0;
  for (const word of words) {
    const hits = hay.map((h) => h.indexOf(word));
    if (hits.every((i) => i < 0)) return 0;
    total += hits[0] === 0 || hits[1] === 0 ? 3 : hits[0] >= 0 || hits[1] >= 0 ? 2 : 1;
  }
  return total;
}

export class NodeSearch {
  constructor(app) {
    this.app = app;
    this.dialog = null;
  }

  /**
   * Open the dialog at a canvas position. `link` is {node, slot, direction} where direction is
   * "input" when the new node must take the link's output, "output" when it must feed an input.
   */
  open({ clientX, clientY, canvasPos, link = null }) {
    this.close();
    const defs = { ...this.app.defs, ...EDITOR_NODE_DEFS };
    const dialog = document.createElement("div");
    dialog.className = "lg-search";
    dialog.style.left = `${Math.max(0, Math.min(clientX - 20, innerWidth - 420))}px`;
    dialog.style.top = `${Math.max(0, Math.min(clientY - 20, innerHeight - 360))}px`;
    const input = document.createElement("input");
    input.type = "search";
    input.placeholder = link ? `Search nodes for ${link.type}` : "Search nodes";
    const list = document.createElement("ol");
    dialog.append(input, list);
    document.body.append(dialog);
    this.dialog = dialog;
    let selected = 0;
    let results = [];
    const candidates = Object.entries(defs).filter(([, def]) => !link || accepts(def, link.type, link.direction));
    const render = () => {
      const q = input.value.trim();
      results = candidates
        .map(([name, def]) => ({ name, def, s: score(def, name, q) }))
        .filter((r) => r.s > 0)
        .sort((a, b) => b.s - a.s || (a.def.display_name ?? a.name).localeCompare(b.def.display_name ?? b.name))
        .slice(0, 60);
      selected = Math.min(selected, Math.max(0, results.length - 1));
      list.replaceChildren(...results.map((r, i) => {
        const li = document.createElement("li");
        li.dataset.type = r.name;
        li.className = i === selected ? "selected" : "";
        const title = document.createElement("span");
        title.textContent = r.def.display_name || r.name;
        const category = document.createElement("small");
        category.textContent = r.def.category ?? "";
        li.append(title, category);
        li.addEventListener("mousedown", (e) => {
          e.preventDefault();
          this.choose(r.name, canvasPos, link);
        });
        return li;
      }));
    };
    input.addEventListener("input", () => {
      selected = 0;
      render();
    });
    input.addEventListener("keydown", (e) => {
      if (e.key === "ArrowDown") selected = Math.min(results.length - 1, selected + 1);
      else if (e.key === "ArrowUp") selected = Math.max(0, selected - 1);
      else if (e.key === "Escape") return this.close();
      else if (e.key === "Enter") {
        if (results[selected]) this.choose(results[selected].name, canvasPos, link);
        return;
      } else return;
      e.preventDefault();
      render();
      list.children[selected]?.scrollIntoView({ block: "nearest" });
    });
    input.addEventListener("blur", () => setTimeout(() => this.dialog === dialog && this.close(), 150));
    render();
    requestAnimationFrame(() => input.focus());
  }

  close() {
    this.dialog?.remove();
    this.dialog = null;
    this.app.canvasEl.focus();
  }

  choose(type, canvasPos, link) {
    this.close();
    const node = this.app.addNode(type, canvasPos);
    if (node && link) {
      if (link.direction === "input") {
        const index = node.inputs.findIndex((s) => LiteGraph.isValidConnection(link.type, s.type) && s.link == null);
        if (index >= 0) link.node.connect(link.slot, node, index);
      } else {
        const index = node.outputs.findIndex((s) => LiteGraph.isValidConnection(s.type, link.type));
        if (index >= 0) node.connect(index, link.node, link.slot);
      }
    }
    this.app.tracker.checkState();
    return node;
  }
}
