"""`io.kestra.plugin.core.storage.*`, and the files of a task's working directory.

`write_input_files` and `matching_files` are how every task that takes `inputFiles`/`outputFiles`
(LocalFiles here, the script tasks) lays out and collects files, with Kestra's meaning: names are
relative to the working directory, a `kestra://` content copies a stored file, and output globs
follow Java's glob syntax (`*` stays within a folder, `**` crosses folders, `{a,b}`).
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any

from engine.plugin import RunContext, RunnableTask, TaskFailure, register


def inside(root: Path, relative: str) -> Path:
    """The path of `relative` under `root`; a name that leaves `root` fails the task."""
    target = (root / relative).resolve()
    if root.resolve() not in target.parents:
        raise TaskFailure(f"File name {relative!r} leaves the working directory")
    return target


async def file_map(ctx: RunContext, files: Any, field: str) -> dict[str, Any]:
    """Render a `name → content` property: a map, or a template rendering a JSON object."""
    if files is None:
        return {}
    rendered = await ctx.render_async(files)
    if isinstance(rendered, str):
        try:
            rendered = json.loads(rendered)
        except ValueError:
            raise TaskFailure(
                f"`{field}` must be a map of file name to content, or a JSON object of them; "
                f"got {rendered[:80]!r}"
            ) from None
    if not isinstance(rendered, dict):
        raise TaskFailure(f"`{field}` must be a map of file name to content")
    return rendered


async def write_input_files(ctx: RunContext, files: dict[str, Any]) -> None:
    """Create each file under the working directory: a `kestra://` URI copies that stored file,
    any other content is written as text (a null content makes an empty file)."""
    for name, content in files.items():
        target = inside(ctx.working_dir, str(name))
        target.parent.mkdir(parents=True, exist_ok=True)
        text = "" if content is None else str(content)
        if text.startswith("kestra://"):
            await ctx.get_file(text, target)
        else:
            target.write_text(text)


@functools.lru_cache(maxsize=256)
def glob_pattern(glob: str) -> re.Pattern[str]:
    """A Java-style glob (as Kestra matches output files) as a regex over `/`-separated paths."""
    out: list[str] = []
    i, n = 0, len(glob)
    in_group = False
    while i < n:
        c = glob[i]
        if c == "*":
            if glob.startswith("**", i):
                out.append(".*")
                i += 2
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(glob[i]))
        elif c == "[":
            end = glob.find("]", i + 2)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = glob[i + 1 : end]
                negate = body.startswith("!")
                body = (body[1:] if negate else body).replace("\\", "\\\\")
                if body.startswith("^"):
                    body = "\\" + body
                out.append("[" + ("^" if negate else "") + body + "]")
                i = end
        elif c == "{" and not in_group:
            in_group = True
            out.append("(?:")
        elif c == "}" and in_group:
            in_group = False
            out.append(")")
        elif c == "," and in_group:
            out.append("|")
        else:
            out.append(re.escape(c))
        i += 1
    if in_group:
        out.append(")")
    return re.compile("".join(out))


def matching_files(root: Path, patterns: list[str]) -> dict[str, Path]:
    """The files under `root` whose relative path matches one of the globs, by that path."""
    regexes = [glob_pattern(p.removeprefix("./")) for p in patterns if p]
    found: dict[str, Path] = {}
    if not regexes:
        return found
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            relative = path.relative_to(root).as_posix()
            if path.is_file() and any(r.fullmatch(relative) for r in regexes):
                found[relative] = path
    return found


async def keep_files(ctx: RunContext, files: dict[str, Path]) -> dict[str, str]:
    """Store each file in internal storage; its `kestra://` URI by name."""
    return {name: await ctx.put_file(path, name.replace("/", "__")) for name, path in files.items()}


@register("io.kestra.plugin.core.storage.LocalFiles", "io.kestra.core.tasks.storages.LocalFiles")
class LocalFiles(RunnableTask, kw_only=True):
    """Create files in the working directory and keep files from it (use it inside a
    WorkingDirectory to share files between tasks). Deprecated in Kestra in favour of the
    `inputFiles`/`outputFiles` of WorkingDirectory and of script tasks."""

    inputs: Any = None
    """Files to create: a map of file name to content, or a template rendering a JSON object
    of them (contents are rendered; a `kestra://` URI copies that stored file)."""
    outputs: list[str] = []
    """Globs of files to keep in internal storage, relative to the working directory
    (`out/*`, `**.csv`); output `uris` maps each file's relative path to its URI."""

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        await write_input_files(ctx, await file_map(ctx, self.inputs, "inputs"))
        patterns = [str(p) for p in await ctx.render_async(self.outputs)]
        return {"uris": await keep_files(ctx, matching_files(ctx.working_dir, patterns))}
