// Undo and redo by snapshots: after each user action the graph is serialized and compared with the
// last state; a difference becomes an undo step. The viewport (pan and zoom) is not an edit.

const MAX_STEPS = 100;

function snapshot(graph) {
  // Sorted by id: bringing a node to the front (a click) is not an edit.
  const state = graph.serialize({ sortNodes: true });
  if (state.extra) {
    state.extra = { ...state.extra };
    delete state.extra.ds;
  }
  return JSON.stringify(state);
}

export class ChangeTracker {
  /** `restore(state)` loads a parsed state; `onChange(state)` hears every new state (tab saving). */
  constructor(graph, { restore, onChange }) {
    this.graph = graph;
    this.restore = restore;
    this.onChange = onChange;
    this.undoStack = [];
    this.redoStack = [];
    this.current = null;
    this.paused = 0;
    this.pending = Promise.resolve();
  }

  /** Forget history and take the graph as it is now as the base state. */
  reset() {
    this.undoStack = [];
    this.redoStack = [];
    this.current = snapshot(this.graph);
  }

  /** Record a step if the graph changed since the last check. */
  checkState() {
    if (this.paused || this.current == null) return false;
    const state = snapshot(this.graph);
    if (state === this.current) return false;
    this.undoStack.push(this.current);
    if (this.undoStack.length > MAX_STEPS) this.undoStack.shift();
    this.redoStack = [];
    this.current = state;
    this.onChange?.(state);
    return true;
  }

  async #move(from, to) {
    this.checkState();
    const target = from.pop();
    if (target == null) return false;
    to.push(this.current);
    this.current = target;
    this.paused++;
    try {
      await this.restore(JSON.parse(target));
      // Drawing lays nodes out (sizes may grow to fit widgets): take the state once that settled.
      await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
      this.current = snapshot(this.graph);
    } finally {
      this.paused--;
    }
    this.onChange?.(this.current);
    return true;
  }

  // Steps run one after another, so quick key repeats never interleave two restores.
  undo() {
    this.pending = this.pending.then(() => this.#move(this.undoStack, this.redoStack));
    return this.pending;
  }

  redo() {
    this.pending = this.pending.then(() => this.#move(this.redoStack, this.undoStack));
    return this.pending;
  }
}
