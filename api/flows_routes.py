"""Routes for flows as a CI/CD pipeline and Kestra's clients handle them: a namespace's flows
as a whole, imports of files, and one task of a flow.

- `GET /api/v1/flows/{namespace}`: the namespace's flows (a list).
- `PUT|POST /api/v1/flows/{namespace}`: make a multi-document YAML body (or multipart `flows`
  files) the namespace's flows (`?delete=true`, Kestra's default, deletes the namespace's flows
  the body does not hold); every document is validated first, and nothing changes when any is
  invalid.
- `POST /api/v1/flows/import`: a `.yml`/`.yaml` file or a `.zip` of them (multipart); answers
  the names of the files (or indexes of the documents) it could not import, as Kestra does.
- `GET /api/v1/flows/{namespace}/{id}/tasks/{taskId}`: a task's definition.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Awaitable, Callable
from typing import Any

from quart import Blueprint, Response, request

from api import bodies
from api.auth import access, actor, require_namespace
from engine import commands
from engine.errors import FlowValidationError, InvalidRequest, NotFound, Problem, TiercelError
from engine.flow import Flow
from engine.server import ServerContext

FlowAnswer = Callable[[list[commands.FlowRecord]], Awaitable[list[dict[str, Any]]]]

MAX_ZIP_ENTRIES = 1000
"""Files a zip to import may hold."""
ZIP_EXPANSION = 5
"""A zip's files may expand to at most this many times the body limit in all (a zip bomb
expands to far more: it is refused once that much was read, never read whole)."""
YAML_SUFFIXES = (".yml", ".yaml")
RESERVED = frozenset({"search", "validate", "import", "source", "distinct-namespaces"})
"""Names after `/flows/` that are routes of their own (Kestra's), never a namespace."""


def _answer(body: Any, status: int = 200) -> Response:
    return Response(bodies.json_bytes(body), status=status, content_type="application/json")


def _delete_arg() -> bool:
    raw = (request.args.get("delete") or "true").lower()
    if raw not in ("true", "false"):
        raise InvalidRequest(f"Query parameter 'delete' must be true or false, got {raw!r}")
    return raw == "true"


def _not_reserved(namespace: str) -> None:
    if namespace in RESERVED:
        raise NotFound(
            f"No route {request.method} {request.path}; docs/api.md lists the routes Tiercel serves"
        )


def blueprint(ctx: ServerContext, flow_answer: FlowAnswer) -> Blueprint:
    """The routes, on `ctx`'s store; `flow_answer` shapes flows as the API shows them."""
    routes = Blueprint("kestra_flows", __name__)
    store = ctx.store
    limits = bodies.body_limits(ctx)

    @routes.get("/api/v1/flows/<namespace>")
    @access("viewer")
    async def namespace_flows(namespace: str) -> Response:
        _not_reserved(namespace)
        return _answer(await flow_answer(await commands.namespace_flows(store, namespace)))

    @routes.route("/api/v1/flows/<namespace>", methods=["PUT", "POST"])
    @access("editor")
    async def deploy_namespace(namespace: str) -> Response:
        _not_reserved(namespace)
        delete = _delete_arg()
        if (request.mimetype or "") == "multipart/form-data":
            documents = await _namespace_files(namespace)
        else:
            documents = commands.split_documents(await bodies.yaml_text())
        deleted, deployed = await commands.deploy_namespace(
            store, namespace, documents, delete=delete, actor=actor()
        )
        return _answer(await flow_answer([*deleted, *deployed]))

    @routes.post("/api/v1/flows/import")
    @access("editor")
    async def import_flows() -> Response:
        fail_on_error = (request.args.get("failOnError") or "false").lower()
        if fail_on_error not in ("true", "false"):
            raise InvalidRequest(
                f"Query parameter 'failOnError' must be true or false, got {fail_on_error!r}"
            )
        name, data = await _upload()
        documents = await bodies.off_loop(_documents_of, name, data, limits.body)
        good, bad = await bodies.off_loop(_check_each, documents)
        for _, flow in good:
            require_namespace(flow.namespace)  # before anything is imported
        if bad and fail_on_error == "true":
            problems = [p for _, errors in bad for p in errors]
            raise FlowValidationError(
                problems, ", ".join(sorted({n for n, _ in bad})) + " (nothing was imported)"
            )
        for doc, _ in good:
            await commands.deploy_flow(store, doc.source, actor=actor())
        # Kestra's answer: what could not be imported (file names, or indexes in one file).
        return _answer(sorted({n for n, _ in bad}))

    @routes.get("/api/v1/flows/<namespace>/<flow_id>/tasks/<task_id>")
    @access("viewer")
    async def flow_task(namespace: str, flow_id: str, task_id: str) -> Response:
        raw = request.args.get("revision")
        try:
            revision = int(raw) if raw else None
        except ValueError:
            raise InvalidRequest(
                f"Query parameter 'revision' must be an integer, got {raw!r}"
            ) from None
        if revision is not None and not 1 <= revision < 2**31:
            raise InvalidRequest(f"Query parameter 'revision' must be positive, got {raw!r}")
        _, flow = await commands.flow_to_run(store, namespace, flow_id, revision)
        return _answer(commands.task_definition(flow, task_id))

    return routes


async def _namespace_files(namespace: str) -> list[commands.FlowDocument]:
    """The flows of a multipart namespace deploy (Kestra's `flows` parts, one file each); with
    `?override=true` each file's `namespace:` line is set to the path's namespace first."""
    override = (request.args.get("override") or "false").lower()
    if override not in ("true", "false"):
        raise InvalidRequest(f"Query parameter 'override' must be true or false, got {override!r}")
    files = await request.files
    uploads = files.getlist("flows") or [files[key] for key in files]
    if not uploads:
        raise InvalidRequest("No flow in the request: send each flow file as a part 'flows'")
    if len(uploads) > commands.MAX_DOCUMENTS:
        raise InvalidRequest(f"At most {commands.MAX_DOCUMENTS} flow files are deployed at once")

    def read() -> list[commands.FlowDocument]:
        documents = []
        for index, upload in enumerate(uploads, 1):
            name = bodies.file_name(upload.filename, f"file {index}")
            text = bodies.decode_utf8(upload.read(), f"The file {name}")
            if override == "true":
                # A function, not a template: the path's namespace is taken as it is.
                text = _NAMESPACE_LINE.sub(lambda _: f"namespace: {namespace}", text, count=1)
            documents += commands.split_documents(text, name)
        return documents

    return await bodies.off_loop(read)


_NAMESPACE_LINE = re.compile(r"(?m)^namespace:.*$")


async def _upload() -> tuple[str, bytes]:
    if (request.mimetype or "") != "multipart/form-data":
        raise InvalidRequest(
            "Send the file to import as multipart/form-data (curl -F fileUpload=@flows.zip)"
        )
    files = await request.files
    if not files:
        raise InvalidRequest(
            "No file in the request: send a .yml, .yaml or .zip file as the part 'fileUpload'"
        )
    key = "fileUpload" if "fileUpload" in files else next(iter(files))
    upload = files[key]
    name = bodies.file_name(upload.filename, key)
    data = await bodies.off_loop(upload.read)
    return name, data


def _documents_of(name: str, data: bytes, limit: int) -> list[commands.FlowDocument]:
    """The flow documents of an uploaded file: a YAML file's documents, or those of every
    .yml/.yaml file of a zip (bounded: entries, each file's size and their total)."""
    lower = name.lower()
    if lower.endswith(".zip") or data[:4] == b"PK\x03\x04":
        return _zip_documents(name, data, limit)
    if not lower.endswith(YAML_SUFFIXES) and lower != "fileupload":
        raise InvalidRequest(f"Cannot import {name!r}: send a .yml, .yaml or .zip file")
    text = bodies.decode_utf8(data, f"The file {name}")
    documents = commands.split_documents(text, name)
    if len(documents) > 1:
        # Kestra names the documents of one file by their index.
        documents = [
            commands.FlowDocument(d.source, str(i), d.line) for i, d in enumerate(documents)
        ]
    return documents


def _zip_documents(name: str, data: bytes, limit: int) -> list[commands.FlowDocument]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        entries = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise InvalidRequest(f"{name} is not a readable zip file: {exc}") from None
    if len(entries) > MAX_ZIP_ENTRIES:
        raise InvalidRequest(
            f"{name} holds {len(entries)} files; a zip to import may hold at most {MAX_ZIP_ENTRIES}"
        )
    budget = limit * ZIP_EXPANSION
    documents: list[commands.FlowDocument] = []
    for entry in entries:
        if entry.is_dir() or not entry.filename.lower().endswith(YAML_SUFFIXES):
            continue
        if entry.file_size > limit or entry.file_size > budget:
            raise InvalidRequest(_too_large(name, entry.filename, limit))
        try:
            with archive.open(entry) as member:
                # The sizes a zip declares may lie: never read more than allowed.
                content = member.read(min(limit, budget) + 1)
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, EOFError) as exc:
            raise InvalidRequest(f"Cannot read {entry.filename} in {name}: {exc}") from None
        if len(content) > min(limit, budget):
            raise InvalidRequest(_too_large(name, entry.filename, limit))
        budget -= len(content)
        text = bodies.decode_utf8(content, f"{entry.filename} in {name}")
        for doc in commands.split_documents(text, entry.filename):
            documents.append(commands.FlowDocument(doc.source, entry.filename, doc.line))
            if len(documents) > commands.MAX_DOCUMENTS:
                raise InvalidRequest(
                    f"{name} holds more than {commands.MAX_DOCUMENTS} flows: import them in "
                    "several files"
                )
    if not documents:
        raise InvalidRequest(f"{name} holds no .yml or .yaml file to import")
    return documents


def _too_large(name: str, entry: str, limit: int) -> str:
    return (
        f"{entry} in {name} expands past the limit: each file of a zip may hold at most "
        f"{bodies.human(limit)} and all of them {bodies.human(limit * ZIP_EXPANSION)}"
    )


def _check_each(
    documents: list[commands.FlowDocument],
) -> tuple[list[tuple[commands.FlowDocument, Flow]], list[tuple[str, list[Problem]]]]:
    """The documents that are valid flows, and the names of those that are not, with why."""
    good: list[tuple[commands.FlowDocument, Flow]] = []
    bad: list[tuple[str, list[Problem]]] = []
    for doc in documents:
        try:
            good += commands.check_documents([doc])
        except TiercelError as exc:
            bad.append((doc.name, exc.details or [Problem(exc.message)]))
    return good, bad
