"""`io.kestra.plugin.core.storage.*`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.plugin import RunContext, RunnableTask, TaskFailure, register


def _inside(root: Path, relative: str) -> Path:
    target = (root / relative).resolve()
    if root.resolve() not in target.parents:
        raise TaskFailure(f"File name {relative!r} leaves the working directory")
    return target


@register("io.kestra.plugin.core.storage.LocalFiles", "io.kestra.core.tasks.storages.LocalFiles")
class LocalFiles(RunnableTask, kw_only=True):
    """Create files in the working directory and keep files from it (use it inside a
    WorkingDirectory to share files between tasks)."""

    inputs: Any = None
    """Files to create: a map of file name to content (templates rendered; a `kestra://` URI
    copies that stored file)."""
    outputs: list[str] = []
    """Globs of files to keep in internal storage; output `uris` maps each name to its URI."""

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        files = ctx.render(self.inputs) if self.inputs is not None else {}
        if not isinstance(files, dict):
            raise TaskFailure("`inputs` must be a map of file name to content")
        for name, content in files.items():
            target = _inside(ctx.working_dir, str(name))
            target.parent.mkdir(parents=True, exist_ok=True)
            text = "" if content is None else str(content)
            if text.startswith("kestra://"):
                await ctx.get_file(text, target)
            else:
                target.write_text(text)
        uris: dict[str, str] = {}
        for pattern in self.outputs:
            for path in sorted(ctx.working_dir.glob(str(ctx.render(pattern)))):
                if path.is_file():
                    relative = path.relative_to(ctx.working_dir).as_posix()
                    uris[relative] = await ctx.put_file(path, relative.replace("/", "__"))
        return {"uris": uris}
