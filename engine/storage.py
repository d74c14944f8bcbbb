"""Internal storage: the files of executions (FILE inputs, task output files), by `kestra://` URI.

Events never carry file contents, only URIs. A URI names a file under the storage root:

    kestra:///company/team/my-flow/executions/<executionId>/tasks/<taskId>/<taskRunId>/out.csv
    kestra:///company/team/my-flow/executions/<executionId>/inputs/<inputId>/data.csv

(the namespace's dots become folders, as in Kestra). `LocalStorage` keeps them on the local file
system; every process of a deployment must see the same root.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Protocol

from engine.errors import InvalidRequest, NotFound

SCHEME = "kestra://"


def execution_prefix(namespace: str, flow_id: str, execution_id: str) -> str:
    """The folder (as a URI path) holding every file of one execution."""
    return f"/{namespace.replace('.', '/')}/{flow_id}/executions/{execution_id}"


def task_prefix(
    namespace: str, flow_id: str, execution_id: str, task_id: str, task_run_id: str
) -> str:
    """The folder of one task run's files."""
    return f"{execution_prefix(namespace, flow_id, execution_id)}/tasks/{task_id}/{task_run_id}"


def input_prefix(namespace: str, flow_id: str, execution_id: str, input_id: str) -> str:
    """The folder of one FILE input's file."""
    return f"{execution_prefix(namespace, flow_id, execution_id)}/inputs/{input_id}"


def uri_path(uri: str) -> PurePosixPath:
    """The path inside the storage that `uri` names; InvalidRequest when it is not one of ours."""
    if not uri.startswith(SCHEME):
        raise InvalidRequest(f"Not an internal storage URI: {uri!r}; it must start with {SCHEME}")
    path = PurePosixPath("/" + uri[len(SCHEME) :].lstrip("/"))
    if any(part in ("..", ".") for part in path.parts):
        raise InvalidRequest(f"Storage URI {uri!r} must not contain '.' or '..' segments")
    return path


def to_uri(path: str | PurePosixPath) -> str:
    """The URI of a storage path."""
    return SCHEME + "/" + str(path).lstrip("/")


class Storage(Protocol):
    """Where execution files live."""

    def put(self, prefix: str, name: str, source: Path | bytes, *, overwrite: bool = False) -> str:
        """Store `source` (a file or bytes) as `prefix/name`; return its URI. A taken name gets
        a unique suffix unless `overwrite`."""
        ...

    def local_path(self, uri: str) -> Path:
        """A local path to read the file at `uri` from; NotFound when it does not exist."""
        ...

    def read_bytes(self, uri: str) -> bytes:
        """The content of the file at `uri`."""
        ...

    def exists(self, uri: str) -> bool:
        """Whether a file is stored at `uri`."""
        ...

    def list(self, prefix: str) -> Iterator[str]:
        """The URIs of every file under `prefix`."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete every file under `prefix` (e.g. an execution's); return how many."""
        ...


class LocalStorage:
    """Internal storage on the local file system, under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, storage_path: str | PurePosixPath) -> Path:
        relative = str(storage_path).lstrip("/")
        path = (self.root / relative).resolve()
        root = self.root.resolve()
        if path != root and root not in path.parents:
            raise InvalidRequest(f"Storage path {storage_path!r} leaves the storage root")
        return path

    def put(self, prefix: str, name: str, source: Path | bytes, *, overwrite: bool = False) -> str:
        """Store `source` as `prefix/name` (a name that is taken gets a unique suffix unless
        `overwrite`)."""
        name = PurePosixPath(name).name or uuid.uuid4().hex
        target = self._path(f"{prefix}/{name}")
        if target.exists() and not overwrite:
            stem, dot, ext = name.partition(".")
            name = f"{stem}-{uuid.uuid4().hex[:8]}{dot}{ext}"
            target = self._path(f"{prefix}/{name}")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        if isinstance(source, bytes):
            partial.write_bytes(source)
        else:
            shutil.copyfile(source, partial)
        partial.replace(target)  # readers never see half a file
        return to_uri(f"{prefix}/{name}")

    def local_path(self, uri: str) -> Path:
        """The file behind `uri`; NotFound when there is none."""
        path = self._path(uri_path(uri))
        if not path.is_file():
            raise NotFound(f"No file at {uri} in the internal storage")
        return path

    def read_bytes(self, uri: str) -> bytes:
        """The content of the file at `uri`."""
        return self.local_path(uri).read_bytes()

    def exists(self, uri: str) -> bool:
        """Whether a file is stored at `uri`."""
        try:
            return self._path(uri_path(uri)).is_file()
        except InvalidRequest:
            return False

    def list(self, prefix: str) -> Iterator[str]:
        """The URIs of every file under `prefix`, sorted."""
        base = self._path(prefix)
        if not base.is_dir():
            return iter(())
        root = self.root.resolve()
        return iter(
            sorted(to_uri("/" + str(p.relative_to(root))) for p in base.rglob("*") if p.is_file())
        )

    def delete_prefix(self, prefix: str) -> int:
        """Delete every file under `prefix`; return how many there were."""
        base = self._path(prefix)
        if not base.is_dir():
            return 0
        count = sum(1 for p in base.rglob("*") if p.is_file())
        shutil.rmtree(base)
        return count
