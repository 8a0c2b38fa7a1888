"""Build a graph from the search dialog with real mouse input, run it on the real server, and see
progress, live previews, output images, validation and run errors, the queue panel and interrupt."""

from __future__ import annotations

from typing import Any

from tests.web.helpers import (
    until,
    add_node_via_search, clear_graph, connect, drag, input_index, links, slot_xy, wait_message, widget_xy,
)


def _build(editor: Any) -> tuple[int, int]:
    clear_graph(editor)
    solid = add_node_via_search(editor, "solid image", 250, 250)
    save = add_node_via_search(editor, "save image", 750, 220)
    assert editor.evaluate(f"app.graph.getNodeById({solid}).type") == "SolidImage"
    assert editor.evaluate(f"app.graph.getNodeById({save}).type") == "SaveImage"
    connect(editor, solid, 0, save, "images")
    assert [link[1:5] for link in links(editor)] == [[solid, 0, save, input_index(editor, save, "images")]]
    return solid, save


def test_build_connect_run_progress_preview_output(editor: Any) -> None:
    solid, save = _build(editor)
    # A wrong type is refused: IMAGE onto the STRING widget socket of filename_prefix.
    drag(editor, slot_xy(editor, solid, False, 0), widget_xy(editor, save, "filename_prefix", 0.3))
    assert len(links(editor)) == 1
    # A link dropped on empty canvas opens the search, filtered to nodes that take an IMAGE.
    drag(editor, slot_xy(editor, solid, False, 0), (700, 650))
    editor.wait_for_selector(".lg-search input")
    listed = editor.eval_on_selector_all(".lg-search li", "els => els.map(e => e.dataset.type)")
    takes_image = editor.evaluate(
        """names => names.filter(n => n in app.defs).filter(n => !Object.values(app.defs[n].input?.required ?? {}).concat(Object.values(app.defs[n].input?.optional ?? {}))
             .some(spec => typeof spec[0] === 'string' && spec[0].split(',').some(t => t === 'IMAGE' || t === '*')))""",
        listed,
    )
    assert "PreviewImage" in listed and "SolidImage" not in listed and takes_image == []
    editor.keyboard.type("preview image")
    editor.keyboard.press("Enter")
    editor.wait_for_selector(".lg-search", state="detached")
    preview = editor.evaluate("app.graph._nodes.find(n => n.type === 'PreviewImage').id")
    assert len(links(editor)) == 2

    # Seed control: "increment" adds one after each queued run.
    editor.evaluate(f"""() => {{ const n = app.graph.getNodeById({solid});
        n.widgets.find(w => w.name === 'seed').value = 7;
        n.widgets.find(w => w.name === 'control_after_generate').value = 'increment';
        n.widgets.find(w => w.name === 'steps').value = 5; }}""")
    editor.evaluate("""() => { window.seenProgress = [];
        app.api.addEventListener('progress', e => window.seenProgress.push(
          [e.detail.node, app.graph.getNodeById(Number(e.detail.node)).progress, app.graph.getNodeById(Number(e.detail.node)).isRunning])); }""")
    editor.click("#graph")
    editor.keyboard.press("Control+Enter")
    until(editor, "app.lastQueued?.prompt_id")
    prompt_id = editor.evaluate("app.lastQueued.prompt_id")
    wait_message(editor, "execution_success", prompt_id)
    assert editor.evaluate(f"app.graph.getNodeById({solid}).widgets.find(w => w.name === 'seed').value") == 8

    sent = editor.evaluate(f"app.api.messages.filter(m => m.data?.prompt_id === '{prompt_id}' || m.type === 'preview')")
    executing = [m["data"]["node"] for m in sent if m["type"] == "executing"]
    assert executing[-1] is None and str(solid) in executing and str(save) in executing
    progress = editor.evaluate("window.seenProgress")
    assert [p[1] for p in progress if p[0] == str(solid)] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert all(p[2] for p in progress), "the running node is highlighted while it reports progress"
    assert sum(1 for m in sent if m["type"] == "preview" and m["data"]["node"] == str(solid)) == 5
    assert editor.evaluate(f"app.graph.getNodeById({solid}).imgs[0].naturalWidth") == 64  # live preview
    outputs = {m["data"]["node"]: m["data"]["output"] for m in sent if m["type"] == "executed"}
    assert outputs[str(save)]["images"][0]["type"] == "output"
    assert outputs[str(preview)]["images"][0]["type"] == "temp"
    for node in (save, preview):
        until(editor, f"app.graph.getNodeById({node}).imgs?.[0]?.naturalWidth === 64")
        src = editor.evaluate(f"app.graph.getNodeById({node}).imgs[0].src")
        assert "/view?" in src
    assert editor.evaluate(f"app.graph.getNodeById({solid}).isRunning") is False

    # Queue and history panel: the finished prompt with its images.
    editor.click("#queue-toggle")
    editor.wait_for_selector(f"#queue-panel li[data-prompt-id='{prompt_id}'] img.thumb")


def test_errors_outlined_queue_cancel_and_interrupt(editor: Any) -> None:
    solid, save = _build(editor)
    # Validation: the save node loses its input -> 400 node_errors, outlined with the message.
    editor.problems.allow("/prompt", 400)
    editor.evaluate(f"app.graph.getNodeById({save}).disconnectInput(0)")
    editor.click("#queue-button")
    editor.wait_for_selector("#errors:not([hidden])")
    assert editor.evaluate(f"app.graph.getNodeById({save}).has_errors") is True
    assert editor.evaluate(f"[...app.graph.getNodeById({save}).inputErrors.keys()]") == ["images"]
    assert "images" in editor.inner_text("#errors-list")

    # Run error: a node that raises -> execution_error outlines it with the exception message.
    connect(editor, solid, 0, save, "images")
    fail = add_node_via_search(editor, "fail", 300, 600)
    editor.evaluate(f"app.graph.getNodeById({fail}).widgets.find(w => w.name === 'message').value = 'kaput'")
    show = add_node_via_search(editor, "show", 650, 600)
    connect(editor, fail, 0, show, "value")
    editor.click("#queue-button")
    error = wait_message(editor, "execution_error")
    assert "kaput" in error["data"]["exception_message"] and error["data"]["node_id"] == str(fail)
    until(editor, f"app.graph.getNodeById({fail}).has_errors === true")
    assert "kaput" in editor.inner_text("#errors-list")
    editor.evaluate(f"app.graph.remove(app.graph.getNodeById({fail})); app.graph.remove(app.graph.getNodeById({show}))")

    # Queue a slow run and a second one; cancel the pending one, interrupt the running one.
    editor.evaluate(f"""() => {{ const n = app.graph.getNodeById({solid});
        n.widgets.find(w => w.name === 'steps').value = 40; n.widgets.find(w => w.name === 'delay').value = 0.25; }}""")
    first = editor.evaluate("app.queuePrompt().then(r => r.prompt_id)")
    second = editor.evaluate("app.queuePrompt().then(r => r.prompt_id)")
    editor.click("#queue-toggle")
    wait_message(editor, "progress", first)
    editor.evaluate("app.queuePanel.refresh()")
    editor.wait_for_selector(f"#queue-panel .queue-pending li[data-prompt-id='{second}']")
    editor.click(f"#queue-panel .queue-pending li[data-prompt-id='{second}'] .queue-cancel")
    editor.wait_for_selector(f"#queue-panel .queue-pending li[data-prompt-id='{second}']", state="detached")
    editor.wait_for_selector(f"#queue-panel .queue-running li[data-prompt-id='{first}']")
    editor.click(f"#queue-panel .queue-running li[data-prompt-id='{first}'] .queue-cancel")
    wait_message(editor, "execution_interrupted", first)
    types = editor.evaluate(f"app.api.messages.filter(m => m.data?.prompt_id === '{second}').map(m => m.type)")
    assert "execution_start" not in types, "the cancelled prompt never ran"


def test_default_sdxl_graph_built_from_search_runs(editor: Any) -> None:
    """The default SDXL graph, built by hand from the search dialog and linked with the mouse,
    runs on the server's default model: progress on the sampler, the image on SaveImage."""
    clear_graph(editor)
    place = {
        "CheckpointLoaderSimple": (60, 520), "CLIPTextEncode": (400, 130), "EmptyLatentImage": (400, 700),
        "KSampler": (880, 130), "VAEDecode": (880, 560), "SaveImage": (1130, 560),
    }
    ids = {name: add_node_via_search(editor, name, *xy, pick=name) for name, xy in place.items()}
    negative = add_node_via_search(editor, "CLIPTextEncode", 400, 400, pick="CLIPTextEncode")
    ckpt, positive, latent = ids["CheckpointLoaderSimple"], ids["CLIPTextEncode"], ids["EmptyLatentImage"]
    sampler, decode, save = ids["KSampler"], ids["VAEDecode"], ids["SaveImage"]
    for src, slot, dst, name in [
        (ckpt, 0, sampler, "model"), (ckpt, 1, positive, "clip"), (ckpt, 1, negative, "clip"),
        (positive, 0, sampler, "positive"), (negative, 0, sampler, "negative"), (latent, 0, sampler, "latent_image"),
        (sampler, 0, decode, "samples"), (ckpt, 2, decode, "vae"), (decode, 0, save, "images"),
    ]:
        connect(editor, src, slot, dst, name)
    assert len(links(editor)) == 9
    # Type the prompt into the text box on the node; keep the run small for the CPU.
    editor.click(f"textarea[data-node='{positive}']")
    editor.keyboard.type("a lighthouse at dusk")
    editor.evaluate(f"""() => {{
        const w = (id, name) => app.graph.getNodeById(id).widgets.find(x => x.name === name);
        w({latent}, 'width').value = 64; w({latent}, 'height').value = 64;
        w({sampler}, 'steps').value = 3; w({sampler}, 'control_after_generate').value = 'fixed'; }}""")
    prompt = editor.evaluate("app.graphToPrompt()")
    assert prompt[str(positive)]["inputs"] == {"text": "a lighthouse at dusk", "clip": [str(ckpt), 1]}
    assert prompt[str(sampler)]["inputs"]["latent_image"] == [str(latent), 0]
    assert prompt[str(ckpt)]["inputs"]["ckpt_name"] == editor.evaluate("app.defs.CheckpointLoaderSimple.input.required.ckpt_name[0][0]")
    editor.keyboard.press("Control+Enter")
    until(editor, "app.lastQueued?.prompt_id")
    prompt_id = editor.evaluate("app.lastQueued.prompt_id")
    wait_message(editor, "execution_success", prompt_id, timeout=120000)
    sent = editor.evaluate(f"app.api.messages.filter(m => m.data?.prompt_id === '{prompt_id}')")
    steps = [(m["data"]["value"], m["data"]["max"]) for m in sent if m["type"] == "progress" and m["data"]["node"] == str(sampler)]
    assert steps[-1] == (3, 3)
    previews = editor.evaluate(f"app.api.messages.filter(m => m.type === 'preview' && m.data.node === '{sampler}').length")
    assert previews >= 1, "live latent previews reach the sampler node"
    until(editor, f"app.graph.getNodeById({save}).imgs?.[0]?.naturalWidth === 64")
