// Keyboard shortcuts: a table from key combination to command, overridable by the user
// (localStorage "latentgraph.keybindings" = {"Ctrl+Enter": "queue", ...}).

export const DEFAULT_KEYBINDINGS = {
  "Ctrl+Enter": "queue",
  "Ctrl+Shift+Enter": "queueFront",
  "Ctrl+S": "save",
  "Ctrl+O": "open",
  "Ctrl+Z": "undo",
  "Ctrl+Y": "redo",
  "Ctrl+Shift+Z": "redo",
  "Ctrl+B": "bypass",
  "Ctrl+M": "mute",
  "Ctrl+G": "group",
  "Alt+C": "collapse",
  ".": "fitView",
  "Ctrl+Alt+Enter": "interrupt",
};

const TEXT_FIELD_COMMANDS = new Set(["queue", "queueFront", "save"]);

/** "Ctrl+Shift+Z" for a keydown event (Cmd counts as Ctrl). */
export function comboOf(event) {
  const parts = [];
  if (event.ctrlKey || event.metaKey) parts.push("Ctrl");
  if (event.altKey) parts.push("Alt");
  if (event.shiftKey) parts.push("Shift");
  let key = event.key;
  if (key.length === 1) key = key.toUpperCase();
  if (event.code?.startsWith("Key") && (event.altKey || event.ctrlKey)) key = event.code.slice(3);
  parts.push(key);
  return parts.join("+");
}

export class Keybindings {
  constructor(commands) {
    this.commands = commands;
    this.bindings = { ...DEFAULT_KEYBINDINGS };
    try {
      Object.assign(this.bindings, JSON.parse(localStorage.getItem("latentgraph.keybindings") ?? "{}"));
    } catch {
      localStorage.removeItem("latentgraph.keybindings");
    }
  }

  attach(target) {
    target.addEventListener("keydown", (event) => this.onKeyDown(event), true);
  }

  onKeyDown(event) {
    const command = this.bindings[comboOf(event)];
    if (!command || !this.commands[command]) return;
    // In a text field keys type text (and undo text), except the run and save shortcuts.
    const tag = event.target?.localName;
    const typing = tag === "input" || tag === "textarea" || tag === "select";
    if (typing && !TEXT_FIELD_COMMANDS.has(command)) return;
    if (document.querySelector(".lg-search")) return;
    event.preventDefault();
    event.stopImmediatePropagation();
    Promise.resolve(this.commands[command]()).catch((error) => this.commands.reportError?.(error));
  }
}
