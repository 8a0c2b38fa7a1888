// Saving and opening workflows: editor JSON, API JSON export, drag-and-drop of JSON or of a PNG
// saved by SaveImage (its `workflow` text chunk, else its `prompt`).

import { readPngWorkflow } from "./png.js";

export function download(filename, data) {
  const blob = new Blob([JSON.stringify(data, null, 2)], { type: "application/json" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

/** True for API format: every value is {class_type, inputs}. */
export function isApiPrompt(data) {
  const values = Object.values(data ?? {});
  return values.length > 0 && !Array.isArray(data) && values.every((v) => v && typeof v === "object" && "class_type" in v);
}

function baseName(name) {
  return name.replace(/\.[^.]+$/, "") || "workflow";
}

/** Open a dropped or chosen file: a workflow JSON (editor or API) or a PNG with one embedded. */
export async function openFile(app, file) {
  const name = baseName(file.name);
  if (file.type === "image/png" || file.name.toLowerCase().endsWith(".png")) {
    const { workflow, prompt } = readPngWorkflow(await file.arrayBuffer());
    if (workflow?.nodes) return app.tabs.add(name, workflow);
    if (prompt) return app.loadApiPrompt(prompt, name);
    throw new Error(`${file.name} holds no workflow (no "workflow" or "prompt" text chunk)`);
  }
  const text = await file.text();
  let data;
  try {
    data = JSON.parse(text);
  } catch (error) {
    throw new Error(`${file.name} is not valid JSON: ${error.message}`);
  }
  if (data?.nodes && Array.isArray(data.nodes)) return app.tabs.add(name, data);
  if (isApiPrompt(data)) return app.loadApiPrompt(data, name);
  if (isApiPrompt(data?.prompt)) return app.loadApiPrompt(data.prompt, name);
  throw new Error(`${file.name} is neither an editor workflow (nodes, links) nor an API prompt`);
}

/** Accept files dropped anywhere on the page. Images dropped on a LoadImage node are uploaded to it. */
export function installDropHandler(app) {
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    if (event.dataTransfer) event.dataTransfer.dropEffect = "copy";
  });
  document.addEventListener("drop", async (event) => {
    event.preventDefault();
    const file = event.dataTransfer?.files?.[0];
    if (!file) return;
    try {
      app.canvas.adjustMouseEvent?.(event);
      const node = app.graph.getNodeOnPos(event.canvasX, event.canvasY);
      if (node?.uploadImage && file.type.startsWith("image/")) {
        await node.uploadImage(file);
        return;
      }
      await openFile(app, file);
    } catch (error) {
      app.reportError(error);
    }
  });
}

/** Lay out API-format nodes in columns by depth, since the API format has no positions. */
export function layoutApiPrompt(prompt) {
  const depth = {};
  const visit = (id, stack = new Set()) => {
    if (depth[id] != null) return depth[id];
    if (stack.has(id)) return 0;
    stack.add(id);
    let d = 0;
    for (const value of Object.values(prompt[id]?.inputs ?? {})) {
      if (Array.isArray(value) && value.length === 2 && prompt[value[0]]) d = Math.max(d, visit(String(value[0]), stack) + 1);
    }
    depth[id] = d;
    return d;
  };
  const columns = {};
  for (const id of Object.keys(prompt)) (columns[visit(id)] ??= []).push(id);
  const pos = {};
  for (const [d, ids] of Object.entries(columns)) {
    ids.forEach((id, row) => {
      pos[id] = [50 + Number(d) * 360, 50 + row * 300];
    });
  }
  return pos;
}
