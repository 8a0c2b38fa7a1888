"""Prompt routes: `/prompt`, `/queue`, `/history`, `/interrupt`, `/free`, workflow conversion."""

from __future__ import annotations

import asyncio
import math
import uuid
from typing import Any

from aiohttp import web

from engine.server.jsonio import ApiError, error_body, json_response, read_json_object
from engine.server.queue import QueueItem, json_number
from engine.server.state import ServerState
from engine.server.store import DuplicatePromptError
from engine.validate import validate_prompt
from engine.workflow import WorkflowFormatError, editor_to_api, load_workflow

__all__ = ["PromptRoutes", "MAX_PROMPT_ID"]

MAX_PROMPT_ID = 200
INLINE_VALIDATION_NODES = 200  # larger prompts are validated on a thread, keeping the event loop free


def _prompt_error(kind: str, message: str, details: str = "", **extra: Any) -> web.Response:
    """ComfyUI's 400 for `/prompt`: `{error, node_errors}`."""
    return json_response({**error_body(kind, message, details, **extra), "node_errors": {}}, status=400)


def _ids(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
        raise ApiError(400, "invalid_request", f"'{what}' must be a list of prompt ids, got {value!r}")
    return [str(v) for v in value]


def _int_query(request: web.Request, name: str) -> int | None:
    text = request.query.get(name)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ApiError(400, "invalid_query", f"?{name}= must be an integer, got {text!r}") from None


class PromptRoutes:
    """Handlers that queue, inspect and control prompts, bound to the server's state."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def _changed(self) -> None:
        if self.state.hub is not None:
            self.state.hub.broadcast_status()

    # ---- /prompt -------------------------------------------------------------------------------

    async def get_prompt(self, request: web.Request) -> web.Response:
        return json_response({"exec_info": {"queue_remaining": self.state.queue.remaining()}})

    async def post_prompt(self, request: web.Request) -> web.Response:
        body = await read_json_object(request)
        prompt = body.get("prompt")
        if prompt is None:
            return _prompt_error("no_prompt", "No prompt provided",
                                 "the request body needs 'prompt': the API-format (or editor) workflow")
        extra_data = body.get("extra_data") or {}
        if not isinstance(extra_data, dict):
            return _prompt_error("invalid_prompt", "extra_data must be an object",
                                 f"got {type(extra_data).__name__}")
        extra_data = dict(extra_data)
        if isinstance(prompt, dict) and isinstance(prompt.get("nodes"), list):
            try:  # the editor's own format: convert here, ComfyUI leaves this to the browser
                converted = editor_to_api(prompt, self.state.host.nodes, "prompt")
            except WorkflowFormatError as exc:
                return _prompt_error("invalid_prompt", "Cannot convert the editor workflow", str(exc),
                                     unknown_types=exc.unknown_types)
            extra_data.setdefault("extra_pnginfo", {}).setdefault("workflow", prompt)
            prompt = converted
        if "client_id" in body and body["client_id"] is not None:
            extra_data["client_id"] = str(body["client_id"])
        prompt_id = body.get("prompt_id") or str(uuid.uuid4())
        if not isinstance(prompt_id, str) or len(prompt_id) > MAX_PROMPT_ID:
            return _prompt_error("invalid_prompt", "prompt_id must be a string",
                                 f"got {prompt_id!r}; use at most {MAX_PROMPT_ID} characters, e.g. a UUID")
        targets = body.get("partial_execution_targets")
        if targets is not None and (not isinstance(targets, list)
                                    or not all(isinstance(t, (str, int)) for t in targets)):
            return _prompt_error("invalid_prompt", "partial_execution_targets must be a list of node ids",
                                 f"got {targets!r}")
        number = self._number(body)
        state = self.state
        target_ids = [str(t) for t in targets] if targets is not None else None
        if isinstance(prompt, dict) and len(prompt) <= INLINE_VALIDATION_NODES:
            # Small graphs validate in well under a millisecond: a thread hand-off would cost more.
            result = validate_prompt(prompt, state.host.nodes, state.env, target_ids)
        else:
            result = await asyncio.to_thread(validate_prompt, prompt, state.host.nodes, state.env, target_ids)
        if not result.ok:
            error = result.error or error_body("invalid_prompt", "Prompt failed validation")["error"]
            return json_response({"error": error, "node_errors": result.node_errors}, status=400)
        item = QueueItem(number=number, prompt_id=prompt_id, prompt=prompt, extra_data=extra_data,
                         outputs=list(result.outputs))
        try:
            state.queue.put(item)
        except DuplicatePromptError as exc:
            return _prompt_error("duplicate_prompt_id", "Duplicate prompt_id", str(exc), prompt_id=prompt_id)
        self._changed()
        return json_response({"prompt_id": prompt_id, "number": json_number(number),
                              "node_errors": result.node_errors})

    def _number(self, body: dict[str, Any]) -> float:
        if "number" in body and body["number"] is not None:
            try:
                number = float(body["number"])
            except (TypeError, ValueError):
                raise ApiError(400, "invalid_prompt", f"'number' must be a number, got {body['number']!r}") from None
            if not math.isfinite(number):
                raise ApiError(400, "invalid_prompt", f"'number' must be finite, got {body['number']!r}")
            return number
        number = float(self.state.queue.next_number())
        return -number if body.get("front") else number

    # ---- /queue --------------------------------------------------------------------------------

    async def get_queue(self, request: web.Request) -> web.Response:
        queue = self.state.queue
        return json_response({"queue_running": [i.as_tuple() for i in queue.running()],
                              "queue_pending": [i.as_tuple() for i in queue.pending()]})

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await read_json_object(request, allow_empty=True)
        cleared: list[str] = []
        deleted: list[str] = []
        if body.get("clear"):
            cleared = self.state.queue.clear()
        if "delete" in body:
            deleted = self.state.queue.delete(_ids(body["delete"], "delete"))
        if cleared or deleted:
            self._changed()
        return json_response({"deleted": cleared + deleted})

    # ---- /history ------------------------------------------------------------------------------

    async def get_history(self, request: web.Request) -> web.Response:
        max_items = _int_query(request, "max_items")
        offset = _int_query(request, "offset")
        history = await asyncio.to_thread(self.state.queue.history, max_items, -1 if offset is None else offset)
        return json_response(history)

    async def get_history_one(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = self.state.queue.history_entry(prompt_id)
        return json_response({prompt_id: entry} if entry is not None else {})

    async def post_history(self, request: web.Request) -> web.Response:
        body = await read_json_object(request, allow_empty=True)
        removed = 0
        if body.get("clear"):
            removed += self.state.queue.clear_history()
        if "delete" in body:
            removed += len(self.state.queue.delete_history(_ids(body["delete"], "delete")))
        return json_response({"deleted": removed})

    # ---- control -------------------------------------------------------------------------------

    async def interrupt(self, request: web.Request) -> web.Response:
        body = await read_json_object(request, allow_empty=True)
        prompt_id = body.get("prompt_id")
        if prompt_id is not None and not isinstance(prompt_id, str):
            raise ApiError(400, "invalid_request", f"'prompt_id' must be a string, got {prompt_id!r}")
        worker = self.state.worker
        done = worker.interrupt(prompt_id) if worker is not None else False
        return json_response({"interrupted": done})

    async def free(self, request: web.Request) -> web.Response:
        body = await read_json_object(request, allow_empty=True)
        unload, free_memory = bool(body.get("unload_models")), bool(body.get("free_memory"))
        if self.state.worker is not None and (unload or free_memory):
            self.state.worker.request_free(unload, free_memory)
        return json_response({"unload_models": unload, "free_memory": free_memory})

    async def convert(self, request: web.Request) -> web.Response:
        """`POST /api/workflow/convert`: editor JSON (or a PNG with a workflow) -> `{prompt, workflow}`."""
        if request.content_type == "image/png":
            source: Any = await request.read()
        else:
            body = await read_json_object(request)
            source = body["workflow"] if isinstance(body.get("workflow"), dict) and "nodes" not in body else body
        try:
            workflow = await asyncio.to_thread(load_workflow, source, self.state.host.nodes)
        except WorkflowFormatError as exc:
            raise ApiError(400, "invalid_workflow", str(exc), unknown_types=exc.unknown_types) from None
        return json_response({"prompt": workflow.api, "workflow": workflow.editor})
