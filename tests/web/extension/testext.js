// A test web extension: proves extensions load after the node definitions and can change node
// types (beforeRegisterNodeDef), nodes (nodeCreated) and add widgets (getCustomWidgets).
import { app } from "/app/app.js";

app.registerExtension({
  name: "latentgraph.test-extension",
  setup() {
    window.testExtension = { setup: true, seen: [], created: 0 };
  },
  beforeRegisterNodeDef(nodeType, def) {
    (window.testExtensionDefs ??= []).push(def.name);
    if (def.name === "SolidImage") nodeType.prototype.fromExtension = true;
  },
  nodeCreated(node) {
    if (node.comfyClass === "SolidImage") node.color = "#225522";
  },
});
