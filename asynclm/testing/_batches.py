"""The fake server's Batch APIs: OpenAI's files + batches, on the server's event loop.

- ``POST .../files`` (multipart/form-data: ``purpose=batch`` and a JSONL ``file``),
  ``GET .../files/{id}`` and ``GET .../files/{id}/content``;
- ``POST .../batches`` (``input_file_id``, ``endpoint``, ``completion_window``),
  ``GET .../batches/{id}``, ``POST .../batches/{id}/cancel``.

A batch is ``validating`` for the first half of ``batch_delay``, then ``in_progress``: each of its
lines is answered by the server's normal response logic (the script, ``Fields``, injected faults,
``fault_rate``), counted as a request and kept in ``request_log``: a 2xx answer goes to the output
file, a scripted ``Fault`` (its status and error body) to the error file. Then the batch is
``completed`` (or ``expired``, the lines after the first ``expire_after`` reported in the error
file with code ``batch_expired``, when ``FakeOpenAIServer.batch_expire_after`` is set), once
``batch_delay`` has passed since its creation (or once its lines are answered, if that takes
longer): like a real provider's processing time, the delay includes answering the lines.
With ``FakeOpenAIServer.batch_queue_limit`` set, a batch whose lines would take the requests of
the batches in progress over it fails at the end of its validation, as OpenAI's enqueued-token
limit does (code ``token_limit_exceeded``, no line answered).
Cancelling one that is not finished makes it ``cancelled`` at once (lines not yet answered are
reported in neither file), and counts in ``batches_cancelled``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import TYPE_CHECKING, Any

from . import _anthropic
from ._http import Connection, Exchange, JSONDecodeError, RawRequest, dumps, error_body, loads
from ._types import DEFAULT_ERRORS, FakeRequest, Fault, Fields, Reply

if TYPE_CHECKING:
    from ._core import ServerCore

__all__ = ["FakeBatches"]


def _iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

_TERMINAL = ("completed", "failed", "expired", "cancelled")


_raw_body: Any = FakeRequest.__dict__["body"]  # the slot's descriptor


class _LineRequest(FakeRequest):
    """A batch line as a request: its raw ``body`` is encoded only if somebody reads it (most
    response functions read ``json`` and ``messages``; encoding each line again cost the fake
    provider a tenth of its time)."""

    __slots__ = ()

    @property
    def body(self) -> bytes:
        value: bytes | None = _raw_body.__get__(self)
        if value is None:
            value = dumps(self.json)
            _raw_body.__set__(self, value)
        return value

    @body.setter
    def body(self, value: bytes | None) -> None:
        _raw_body.__set__(self, value)


def _multipart(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """The parts of a multipart/form-data body: name -> (file name, bytes)."""
    boundary = None
    for piece in content_type.split(";"):
        name, _, value = piece.strip().partition("=")
        if name.lower() == "boundary":
            boundary = value.strip('"')
    if not boundary:
        raise ValueError("multipart/form-data without a boundary")
    parts: dict[str, tuple[str | None, bytes]] = {}
    delimiter = b"--" + boundary.encode()
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, content = chunk.partition(b"\r\n\r\n")
        if content.endswith(b"\r\n"):
            content = content[:-2]
        field = filename = None
        for line in head.decode("latin-1").split("\r\n"):
            if line.lower().startswith("content-disposition:"):
                for item in line.split(";")[1:]:
                    key, _, value = item.strip().partition("=")
                    if key == "name":
                        field = value.strip('"')
                    elif key == "filename":
                        filename = value.strip('"')
        if field is not None:
            parts[field] = (filename, content)
    return parts


class FakeBatches:
    """The files and batches of one fake server (used on its loop only)."""

    def __init__(self, core: ServerCore, delay: float) -> None:
        self.core = core
        self.delay = delay
        self.files: dict[str, dict[str, Any]] = {}
        self.contents: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.created = 0
        self.cancelled = 0
        self.polls = 0
        self.expire_after: int | None = None
        self.queue_limit: int | None = None
        self.refused = 0
        self.timings: list[dict[str, Any]] = []  # per batch (both APIs): wall clock and CPU (bench_batch)
        self._next = 0

    def _id(self, prefix: str) -> str:
        self._next += 1
        return f"{prefix}_fake{self._next}"

    def _reply(
        self, conn: Connection, raw: RawRequest, status: int, body: bytes, ctype: str = "application/json"
    ) -> None:
        exchange = Exchange(conn, raw.keep_alive, "req_fake_batch")
        conn.exchange = exchange
        exchange.send(status, body, ctype)

    def _not_found(self, conn: Connection, raw: RawRequest, what: str) -> None:
        self._reply(conn, raw, 404, error_body(f"No such {what}", "invalid_request_error", "not_found"))

    def _authorized(self, conn: Connection, raw: RawRequest) -> bool:
        key = self.core.api_key
        if key is not None and raw.headers.get("authorization") != f"Bearer {key}":
            self._reply(conn, raw, 401, error_body("Incorrect API key provided (FakeOpenAIServer).",
                                                   "invalid_request_error", "invalid_api_key"))
            return False
        return True

    def dispatch(self, conn: Connection, raw: RawRequest, route: str) -> bool:
        """Serve ``route`` if it is a files or batches route; return whether it was."""
        parts = route.split("/")
        if "files" in parts:
            at = len(parts) - 1 - parts[::-1].index("files")
            rest = parts[at + 1 :]
            if not self._authorized(conn, raw):
                return True
            if not rest and raw.method == "POST":
                self._upload(conn, raw)
            elif len(rest) == 1 and raw.method == "GET":
                info = self.files.get(rest[0])
                if info is None:
                    self._not_found(conn, raw, "file")
                else:
                    self._reply(conn, raw, 200, dumps(info))
            elif len(rest) == 2 and rest[1] == "content" and raw.method == "GET":
                content = self.contents.get(rest[0])
                if content is None:
                    self._not_found(conn, raw, "file")
                else:
                    self._reply(conn, raw, 200, content, "application/octet-stream")
            else:
                return False
            return True
        if "batches" in parts and "messages" in parts:
            at = len(parts) - 1 - parts[::-1].index("batches")
            rest = parts[at + 1 :]
            key = self.core.api_key
            if key is not None and raw.headers.get("x-api-key") != key:
                self._reply(conn, raw, 401, _anthropic.error_body("invalid x-api-key", "authentication_error"))
                return True
            if not rest and raw.method == "POST":
                self._anthropic_create(conn, raw)
            elif len(rest) == 1 and raw.method == "GET":
                self.polls += 1
                batch = self.batches.get(rest[0])
                if batch is None:
                    self._reply(conn, raw, 404, _anthropic.error_body("batch not found", "not_found_error"))
                else:
                    self._reply(conn, raw, 200, dumps(batch))
            elif len(rest) == 2 and rest[1] == "results" and raw.method == "GET":
                content = self.contents.get(f"results_{rest[0]}")
                if content is None:
                    self._reply(conn, raw, 404, _anthropic.error_body("no results yet", "not_found_error"))
                else:
                    self._reply(conn, raw, 200, content, "application/binary")
            elif len(rest) == 2 and rest[1] == "cancel" and raw.method == "POST":
                self._cancel(conn, raw, rest[0])
            else:
                return False
            return True
        if "batches" in parts:
            at = len(parts) - 1 - parts[::-1].index("batches")
            rest = parts[at + 1 :]
            if not self._authorized(conn, raw):
                return True
            if not rest and raw.method == "POST":
                self._create(conn, raw)
            elif len(rest) == 1 and raw.method == "GET":
                batch = self.batches.get(rest[0])
                self.polls += 1
                if batch is None:
                    self._not_found(conn, raw, "batch")
                else:
                    self._reply(conn, raw, 200, dumps(batch))
            elif len(rest) == 2 and rest[1] == "cancel" and raw.method == "POST":
                self._cancel(conn, raw, rest[0])
            else:
                return False
            return True
        return False

    # -- files -----------------------------------------------------------------------------------

    def _add_file(self, content: bytes, purpose: str, filename: str) -> str:
        file_id = self._id("file")
        self.files[file_id] = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
        }
        self.contents[file_id] = content
        return file_id

    def _upload(self, conn: Connection, raw: RawRequest) -> None:
        try:
            parts = _multipart(raw.body, raw.headers.get("content-type", ""))
        except ValueError as exc:
            self._reply(conn, raw, 400, error_body(str(exc), "invalid_request_error"))
            return
        if "file" not in parts or "purpose" not in parts:
            self._reply(conn, raw, 400, error_body("multipart fields 'file' and 'purpose' are required",
                                                   "invalid_request_error"))
            return
        filename, content = parts["file"]
        file_id = self._add_file(content, parts["purpose"][1].decode(), filename or "upload.jsonl")
        self._reply(conn, raw, 200, dumps(self.files[file_id]))

    # -- batches ---------------------------------------------------------------------------------

    def _create(self, conn: Connection, raw: RawRequest) -> None:
        try:
            body = loads(raw.body)
        except JSONDecodeError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("input_file_id"), str):
            self._reply(conn, raw, 400, error_body("'input_file_id' is required", "invalid_request_error"))
            return
        content = self.contents.get(body["input_file_id"])
        if content is None:
            self._not_found(conn, raw, "file")
            return
        endpoint = body.get("endpoint")
        if endpoint not in ("/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/responses"):
            self._reply(conn, raw, 400, error_body(f"invalid endpoint {endpoint!r}", "invalid_request_error"))
            return
        if body.get("completion_window") != "24h":
            self._reply(conn, raw, 400, error_body("completion_window must be '24h'", "invalid_request_error"))
            return
        lines = [line for line in content.splitlines() if line.strip()]
        batch_id = self._id("batch")
        self.created += 1
        batch: dict[str, Any] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": endpoint,
            "errors": None,
            "input_file_id": body["input_file_id"],
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": int(time.time()),
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
        }
        self.batches[batch_id] = batch
        assert self.core.loop is not None
        self.tasks[batch_id] = self.core.loop.create_task(self._process(batch, lines, raw))
        self._reply(conn, raw, 200, dumps(batch))

    def _cancel(self, conn: Connection, raw: RawRequest, batch_id: str) -> None:
        batch = self.batches.get(batch_id)
        if batch is None:
            self._not_found(conn, raw, "batch")
            return
        if batch.get("type") == "message_batch":
            if batch["processing_status"] != "ended":
                self.cancelled += 1
                task = self.tasks.pop(batch_id, None)
                if task is not None:
                    task.cancel()
                counts = batch["request_counts"]
                lines = self.contents.pop(f"input_{batch_id}", b"")
                results = [dumps({"custom_id": cid, "result": {"type": "canceled"}}) for cid in loads(lines or b"[]")]
                counts["canceled"], counts["processing"] = counts["processing"], 0
                self.contents[f"results_{batch_id}"] = b"\n".join(results) + b"\n"
                batch["processing_status"] = "ended"
                batch["cancel_initiated_at"] = batch["ended_at"] = _iso()
                batch["results_url"] = f"/v1/messages/batches/{batch_id}/results"
        elif batch["status"] not in _TERMINAL and batch["status"] != "cancelling":
            self.cancelled += 1
            task = self.tasks.pop(batch_id, None)
            if task is not None:
                task.cancel()
            batch["status"] = "cancelled"
            batch["cancelled_at"] = int(time.time())
        self._reply(conn, raw, 200, dumps(batch))

    async def _process(self, batch: dict[str, Any], lines: list[bytes], raw: RawRequest) -> None:
        timing = {"id": batch["id"], "lines": len(lines), "created": time.time()}
        end = time.monotonic() + self.delay
        try:
            await asyncio.sleep(self.delay / 2)
            if self.queue_limit is not None:
                queued = sum(b["request_counts"]["total"] for b in self.batches.values()
                             if b.get("status") in ("in_progress", "finalizing"))  # fmt: skip
                if queued + len(lines) > self.queue_limit:
                    # OpenAI's enqueued-token limit (counted in requests here): failed, nothing run
                    self.refused += 1
                    batch["status"] = "failed"
                    batch["failed_at"] = int(time.time())
                    batch["errors"] = {"object": "list", "data": [{
                        "code": "token_limit_exceeded", "line": None, "param": None,
                        "message": f"Enqueued token limit reached for this organization. Limit: {self.queue_limit} "
                                   "enqueued requests (FakeOpenAIServer counts requests). Please try again once "
                                   "some in_progress batches have been completed.",
                    }]}  # fmt: skip
                    return
            batch["status"] = "in_progress"
            timing["started"], cpu = time.time(), time.thread_time()
            outputs: list[bytes] = []
            errors: list[bytes] = []
            expired = False
            for n, line in enumerate(lines):
                if self.expire_after is not None and n >= self.expire_after:
                    expired = True  # the 24 h window passed: the rest are reported as expired
                    try:
                        custom_id = loads(line).get("custom_id")
                    except (JSONDecodeError, AttributeError):
                        custom_id = None
                    errors.append(dumps({
                        "id": f"batch_req_{batch['id']}_{n}",
                        "custom_id": custom_id,
                        "response": None,
                        "error": {
                            "code": "batch_expired",
                            "message": "This request could not be executed before the completion window expired.",
                        },
                    }))
                    continue
                status, custom_id, answer = await self._line(line, raw, batch["endpoint"])
                # OpenAI's record, with the answer's bytes as they are
                record = b'{"id":"batch_req_%s_%d","custom_id":%s,"response":{"status_code":%d,' \
                    b'"request_id":"req_fake_line_%d","body":%s},"error":null}' % (
                        batch["id"].encode(), n, dumps(custom_id), status, n, answer)
                (outputs if 200 <= status < 300 else errors).append(record)
            timing["cpu_s"] = time.thread_time() - cpu
            await asyncio.sleep(end - time.monotonic())  # the rest of the delay
            counts = batch["request_counts"]
            counts["completed"] = len(outputs)
            counts["failed"] = len(errors)
            if outputs:
                batch["output_file_id"] = self._add_file(b"\n".join(outputs) + b"\n", "batch_output", "output.jsonl")
            if errors:
                batch["error_file_id"] = self._add_file(b"\n".join(errors) + b"\n", "batch_output", "errors.jsonl")
            batch["status"] = "expired" if expired else "completed"
            batch["expired_at" if expired else "completed_at"] = int(time.time())
            timing["done"] = time.time()
            self.timings.append(timing)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug (or a failing response function): keep it, fail the batch
            self.core.errors.append(exc)
            batch["status"] = "failed"
            batch["errors"] = {"object": "list", "data": [{"code": "server_error", "message": repr(exc)}]}
        finally:
            self.tasks.pop(batch["id"], None)

    async def _line(self, line: bytes, raw: RawRequest, endpoint: str) -> tuple[int, Any, bytes]:
        core = self.core
        try:
            item_json = loads(line)
        except JSONDecodeError:
            return 400, None, error_body("a line of the input file is not valid JSON", "invalid_request_error")
        custom_id = item_json.get("custom_id") if isinstance(item_json, dict) else None
        body = item_json.get("body") if isinstance(item_json, dict) else None
        if item_json.get("url") != endpoint or not isinstance(body, dict):
            return 400, custom_id, error_body(f"each line needs 'url': {endpoint!r} and a 'body' object",
                                              "invalid_request_error")
        core.requests += 1
        request = _LineRequest(core.requests, "POST", endpoint, raw.headers, None, body)  # type: ignore[arg-type]
        core.request_log.append(request)
        invalid = core._validate(body)
        if invalid is not None:
            return 400, custom_id, error_body(invalid, "invalid_request_error")
        status, answer = await self._answer(request)
        return status, custom_id, answer

    # -- Anthropic Message Batches -------------------------------------------------------------------

    def _anthropic_create(self, conn: Connection, raw: RawRequest) -> None:
        try:
            body = loads(raw.body)
        except JSONDecodeError:
            body = None
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            self._reply(conn, raw, 400, _anthropic.error_body("'requests' must be a non-empty list",
                                                              "invalid_request_error"))
            return
        ids = [r.get("custom_id") if isinstance(r, dict) else None for r in requests]
        if len(set(ids)) != len(ids) or not all(isinstance(i, str) and 1 <= len(i) <= 64 for i in ids):
            self._reply(conn, raw, 400, _anthropic.error_body(
                "each request needs a unique custom_id of 1 to 64 characters", "invalid_request_error"))
            return
        batch_id = self._id("msgbatch")
        self.created += 1
        batch: dict[str, Any] = {
            "id": batch_id,
            "type": "message_batch",
            "processing_status": "in_progress",
            "request_counts": {"processing": len(requests), "succeeded": 0, "errored": 0, "canceled": 0,
                               "expired": 0},
            "ended_at": None,
            "created_at": _iso(),
            "expires_at": None,
            "cancel_initiated_at": None,
            "results_url": None,
        }
        self.batches[batch_id] = batch
        self.contents[f"input_{batch_id}"] = dumps(ids)
        assert self.core.loop is not None
        self.tasks[batch_id] = self.core.loop.create_task(self._anthropic_process(batch, requests, raw))
        self._reply(conn, raw, 200, dumps(batch))

    async def _anthropic_process(self, batch: dict[str, Any], requests: list[Any], raw: RawRequest) -> None:
        core = self.core
        timing = {"id": batch["id"], "lines": len(requests), "created": time.time()}
        end = time.monotonic() + self.delay
        try:
            await asyncio.sleep(self.delay / 2)
            timing["started"], cpu = time.time(), time.thread_time()
            counts = batch["request_counts"]
            results: list[bytes] = []
            for n, item in enumerate(requests):
                custom_id = item["custom_id"]
                if self.expire_after is not None and n >= self.expire_after:
                    results.append(dumps({"custom_id": custom_id, "result": {"type": "expired"}}))
                    counts["expired"] += 1
                    counts["processing"] -= 1
                    continue
                params = item.get("params")
                core.requests += 1
                request = _LineRequest(core.requests, "POST", "/v1/messages", raw.headers, None, params,  # type: ignore[arg-type]
                                       "anthropic")
                core.request_log.append(request)
                invalid = _anthropic.validate(params, {"anthropic-version": "2023-06-01"})
                status, answer = (400, _anthropic.error_body(invalid, "invalid_request_error")) if invalid \
                    else await self._answer(request)
                counts["processing"] -= 1
                if 200 <= status < 300:
                    counts["succeeded"] += 1
                    results.append(b'{"custom_id":%s,"result":{"type":"succeeded","message":%s}}'
                                   % (dumps(custom_id), answer))
                else:
                    counts["errored"] += 1
                    results.append(b'{"custom_id":%s,"result":{"type":"errored","error":%s}}'
                                   % (dumps(custom_id), answer))
            timing["cpu_s"] = time.thread_time() - cpu
            await asyncio.sleep(end - time.monotonic())  # the rest of the delay
            self.contents[f"results_{batch['id']}"] = b"\n".join(results) + b"\n"
            batch["processing_status"] = "ended"
            batch["ended_at"] = _iso()
            batch["results_url"] = f"/v1/messages/batches/{batch['id']}/results"
            timing["done"] = time.time()
            self.timings.append(timing)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            core.errors.append(exc)
            batch["processing_status"] = "ended"
        finally:
            self.tasks.pop(batch["id"], None)

    async def _answer(self, request: FakeRequest) -> tuple[int, bytes]:
        """(status, encoded JSON body) of one line, by the server's normal response logic (kept as
        bytes: a line's record embeds them, nothing is decoded and encoded again)."""
        core = self.core
        anthropic = request.api == "anthropic"
        item: Any
        if core.injected:
            item = core.injected.popleft()
        elif core.fault_rate > 0 and core.faults and core.rng.random() < core.fault_rate:
            item = core.rng.choice(core.faults)
        else:
            try:
                item = core._scripted(request)
                if inspect.isawaitable(item):
                    item = await item
            except Exception as exc:
                core.errors.append(exc)
                message = f"the scripted response failed: {exc!r}"
                return 500, (_anthropic.error_body(message, "api_error") if anthropic
                             else error_body(message, "server_error"))
        if isinstance(item, Fields):
            item = Reply(item.render(request))
        if isinstance(item, str):
            item = Reply(item)
        if isinstance(item, Reply):
            return 200, core._completion(request, item)
        if isinstance(item, dict):
            return 200, dumps(item)
        if isinstance(item, Fault) and item.kind == "status":
            if isinstance(item.body, dict):
                return item.status, dumps(item.body)
            if anthropic:
                return item.status, _anthropic.fault_body(item, "req_fake_line")
            default_type, default_code, default_message = DEFAULT_ERRORS.get(
                item.status, ("server_error", None, "The server had an error (injected by FakeOpenAIServer).")
            )
            return item.status, error_body(
                item.message or default_message,
                item.error_type or default_type,
                item.code if item.code is not None else default_code,
                item.param,
            )
        kind = item.kind if isinstance(item, Fault) else type(item).__name__
        message = f"injected fault {kind!r} (not a status) cannot answer a batch line"
        return 500, (_anthropic.error_body(message, "api_error") if anthropic
                     else error_body(message, "server_error"))

    def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        self.tasks.clear()
