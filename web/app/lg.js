// The one module that imports the graph library. Everything else in the editor imports from here,
// so the library (pinned @comfyorg/litegraph, served at /vendor/litegraph/) could be swapped.
export {
  LiteGraph,
  LGraph,
  LGraphCanvas,
  LGraphNode,
  LGraphGroup,
  LGraphEventMode,
  LLink,
  Reroute,
  ContextMenu,
} from "litegraph";

import { LiteGraph, LGraphCanvas } from "litegraph";

/** Editor-wide library settings, applied once at start-up. */
export function configureLibrary() {
  LiteGraph.release_link_on_empty_shows_menu = true;
  LiteGraph.search_hide_on_mouse_leave = false;
  LiteGraph.search_filter_enabled = true;
  LiteGraph.search_show_all_on_open = true;
  LiteGraph.alt_drag_do_clone_nodes = true;
  LiteGraph.middle_click_slot_add_default_node = true;
  LiteGraph.saveViewportWithGraph = true;
  LiteGraph.ctrl_shift_v_paste_connect_unselected_outputs = true;
  LiteGraph.onDeprecationWarning = [];
  LiteGraph.catch_exceptions = false;
}

/** Colour for links and sockets of one type (the library keys them by type name). */
export function setTypeColor(canvas, type, color) {
  LGraphCanvas.link_type_colors[type] = color;
  canvas.default_connection_color_byType[type] = color;
}

/** Modes a node can be in, by our names. */
export const MODE = { always: 0, never: 2, bypass: 4 };
