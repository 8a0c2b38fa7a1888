// Editor graph (litegraph) -> API prompt {id: {class_type, inputs, _meta}}, as ComfyUI does in the
// browser: muted nodes and editor-only nodes are left out, bypassed nodes pass a matching input on,
// a widget's socket with a link sends the link instead of the widget's value.

import { MODE } from "./lg.js";
import { orderedInputs } from "./nodes.js";

function linkOf(graph, id) {
  return id == null ? null : graph._links.get(id) ?? graph.links?.[id] ?? null;
}

/**
 * Follow a link upstream through reroutes and bypassed nodes to the node that really produces it.
 * Returns [nodeId, slot] or null when the chain ends (muted node, nothing connected).
 */
export function resolveSource(graph, link, seen = new Set()) {
  let current = link;
  while (current) {
    const node = graph.getNodeById(current.origin_id);
    if (!node || seen.has(node.id)) return null;
    seen.add(node.id);
    if (node.isVirtualNode) {
      current = linkOf(graph, node.inputs?.[0]?.link);
      continue;
    }
    if (node.mode === MODE.never) return null;
    if (node.mode === MODE.bypass) {
      const wanted = node.outputs[current.origin_slot]?.type;
      const candidates = node.inputs ?? [];
      const same = candidates[current.origin_slot];
      const pick = (same && same.link != null && same.type === wanted) ? same
        : candidates.find((input) => input.link != null && input.type === wanted);
      current = pick ? linkOf(graph, pick.link) : null;
      continue;
    }
    return [String(node.id), current.origin_slot];
  }
  return null;
}

/** Convert the graph; `defs` is /object_info. Unknown types are kept so the server can name them. */
export function graphToPrompt(graph, defs) {
  const prompt = {};
  const nodes = [...graph._nodes].sort((a, b) => Number(a.id) - Number(b.id));
  for (const node of nodes) {
    if (node.isVirtualNode || node.mode === MODE.never || node.mode === MODE.bypass) continue;
    const def = defs[node.type];
    const inputs = {};
    const names = def ? orderedInputs(def).map((i) => i.name) : (node.inputs ?? []).map((i) => i.name);
    for (const name of names) {
      const slot = node.inputs?.find((s) => s.name === name);
      if (slot?.link != null) {
        const source = resolveSource(graph, linkOf(graph, slot.link));
        if (source) {
          inputs[name] = source;
          continue;
        }
        if (!slot.widget) continue;
      }
      const widget = node.widgets?.find((w) => w.name === name && !w.isControl);
      if (widget) {
        const value = widget.serializeValue ? widget.serializeValue(node, name) : widget.value;
        inputs[name] = Array.isArray(value) ? { __value__: value } : value;
      }
    }
    prompt[String(node.id)] = { class_type: node.type, inputs, _meta: { title: node.title } };
  }
  return prompt;
}
