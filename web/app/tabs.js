// Workflow tabs, kept in localStorage so they survive a reload.

const KEY = "latentgraph.tabs";

export class Tabs {
  constructor(app, element) {
    this.app = app;
    this.element = element;
    this.tabs = [];
    this.active = 0;
  }

  /** Load saved tabs; returns false when there were none (first open). */
  restore() {
    try {
      const saved = JSON.parse(localStorage.getItem(KEY) ?? "null");
      if (saved?.tabs?.length) {
        this.tabs = saved.tabs;
        this.active = Math.min(saved.active ?? 0, this.tabs.length - 1);
        return true;
      }
    } catch {
      localStorage.removeItem(KEY);
    }
    return false;
  }

  persist() {
    try {
      localStorage.setItem(KEY, JSON.stringify({ tabs: this.tabs, active: this.active }));
    } catch (error) {
      console.warn(`could not keep the workflow tabs: ${error}`);
    }
  }

  get current() {
    return this.tabs[this.active];
  }

  /** The graph changed: keep its state in the active tab. */
  update(stateJson) {
    if (!this.current) return;
    this.current.workflow = stateJson;
    this.persist();
  }

  async add(name, workflow) {
    this.saveCurrent();
    this.tabs.push({ name, workflow: JSON.stringify(workflow) });
    this.active = this.tabs.length - 1;
    await this.app.loadGraphData(workflow, { keepTab: true });
    this.persist();
    this.render();
  }

  saveCurrent() {
    if (this.current && this.app.graph) this.current.workflow = JSON.stringify(this.app.graph.serialize());
  }

  async select(index) {
    if (index === this.active || !this.tabs[index]) return;
    this.saveCurrent();
    this.active = index;
    await this.app.loadGraphData(JSON.parse(this.tabs[index].workflow), { keepTab: true });
    this.persist();
    this.render();
  }

  async close(index) {
    if (this.tabs.length === 1) {
      this.tabs = [];
      this.active = 0;
      await this.app.newWorkflow();
      return;
    }
    this.saveCurrent();
    this.tabs.splice(index, 1);
    if (this.active >= index) this.active = Math.max(0, this.active - (this.active === index && index === 0 ? 0 : 1));
    this.active = Math.min(this.active, this.tabs.length - 1);
    await this.app.loadGraphData(JSON.parse(this.current.workflow), { keepTab: true });
    this.persist();
    this.render();
  }

  rename(name) {
    if (!this.current) return;
    this.current.name = name;
    this.persist();
    this.render();
  }

  render() {
    this.element.replaceChildren();
    this.tabs.forEach((tab, i) => {
      const el = document.createElement("div");
      el.className = `tab${i === this.active ? " active" : ""}`;
      el.dataset.index = String(i);
      const label = document.createElement("span");
      label.textContent = tab.name;
      label.title = "double-click to rename";
      label.addEventListener("dblclick", () => {
        const name = prompt("Workflow name", tab.name);
        if (name) {
          this.active = i;
          this.rename(name);
        }
      });
      const close = document.createElement("button");
      close.className = "close";
      close.textContent = "×";
      close.title = "close tab";
      close.addEventListener("click", (e) => {
        e.stopPropagation();
        this.close(i);
      });
      el.append(label, close);
      el.addEventListener("click", () => this.select(i));
      this.element.append(el);
    });
    const add = document.createElement("button");
    add.className = "tab-add";
    add.textContent = "+";
    add.title = "new workflow";
    add.addEventListener("click", () => this.app.newWorkflow());
    this.element.append(add);
  }
}
