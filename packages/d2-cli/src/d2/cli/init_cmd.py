"""``d2 init``: scan the code for guarded tools (reading it, never importing it)
and write a starter policy where local mode finds it, never overwriting without
``--force``."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Annotated

import typer
from d2.core.limits import Limits
from d2.core.policy.compile import compile_policy
from d2.core.policy.load import check_limits
from rich.table import Table
from rich.text import Text

from .documents import format_for, render, write_file
from .options import FormatOption, JsonOption, ScanPathOption
from .output import OK, CliError, Output, failed, run_command
from .scan import ScanResult, scan
from .settings import config_dir, default_policy_path
from .starter import fit, header, starter_policy

__all__ = ["init"]

_NAMES = ("policy.yaml", "policy.yml", "policy.json")  # the runtime reads the first that exists


def _backup(path: Path, *, keep: bool = False) -> Path:
    """Copy ``path`` to ``<name>.bak`` (or ``<name>.bak.1``, ``.bak.2``... when
    taken): a previous backup is never overwritten. Unless ``keep``, ``path`` is
    then removed; kept, it stays in place until the new file is renamed over it, so
    an app watching it never sees it missing."""
    for n in range(10_000):
        backup = path.with_name(path.name + (".bak" if n == 0 else f".bak.{n}"))
        try:
            os.link(path, backup)  # fails when the name is taken
        except FileExistsError:
            continue
        except OSError:  # no hard links here: copy (or rename), checking the name first
            if os.path.lexists(backup):
                continue
            if keep:
                shutil.copy2(path, backup)
            else:
                os.rename(path, backup)
            return backup
        if not keep:
            os.unlink(path)
        return backup
    raise CliError(f"too many backups of {path}; remove some and run the command again")


def _runtime_policy_files() -> list[Path]:
    """Every existing policy file local mode could read (``discover_policy_file``'s
    order: ``D2_POLICY_FILE``, the XDG directory, ``./policy.*``)."""
    files: list[Path] = []
    explicit = os.environ.get("D2_POLICY_FILE")
    if explicit:
        files.append(Path(os.path.expanduser(explicit)))
    files += [config_dir() / n for n in _NAMES]
    files += [Path.cwd() / n for n in _NAMES]
    seen: list[Path] = []
    for f in files:
        if f.is_file() and f not in seen:
            seen.append(f)
    return seen


def _tools_table(found: ScanResult) -> Table:
    table = Table(title=f"guarded tools found in {found.root}", title_justify="left")
    table.add_column("tool id")
    table.add_column("where")
    table.add_column("id from")
    for tool, places in sorted(found.by_id().items()):
        explicit = any(p.explicit for p in places)
        table.add_row(
            Text(tool),
            Text(", ".join(p.where for p in places[:3]) + (" ..." if len(places) > 3 else "")),
            Text("decorator" if explicit else "module.qualname", style="dim"),
        )
    return table


def init(
    path: ScanPathOption = Path("."),
    fmt: FormatOption = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="File to write (default: ${XDG_CONFIG_HOME:-~/.config}/d2/policy.yaml).",
            dir_okay=False,
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing file (kept as .bak).")
    ] = False,
    name: Annotated[
        str | None,
        typer.Option("--name", help="metadata.name, the app name (cloud mode needs it)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Scan the code for guarded functions (without importing it) and write a
    starter policy granting them."""

    def body(out: Output) -> int:
        if not path.exists():
            raise CliError(f"--path {path} does not exist")
        fmt_value = fmt.value if fmt else None
        file_format = format_for(output, fmt_value) if output else (fmt_value or "yaml")
        target = output or default_policy_path(file_format)
        shadowing = []
        readable: list[Path] = []
        if output is None:  # another policy.* here would be read instead of (or before) ours
            shadowing = [config_dir() / n for n in _NAMES if (config_dir() / n) != target]
            shadowing = [p for p in shadowing if p.exists()]
            readable = _runtime_policy_files()
        existing = [p for p in (target, *shadowing) if p.exists()]
        refused = existing + [p for p in readable if p not in existing]
        if refused and not force:
            raise CliError(
                f"a policy file already exists: {', '.join(map(str, refused))}",
                hint="pass --force to replace it (the old file is kept as <name>.bak; the "
                f"new {target} takes precedence over ./policy.*), or --output to write "
                "elsewhere",
            )
        found = scan(path)
        limits = Limits()
        tools = fit(found.ids(), limits.max_tools)
        document = starter_policy(
            tools, name=name or os.environ.get("D2_APP") or None, source=str(path)
        )
        policy = compile_policy(document, source=str(target))
        if policy.tool_count > limits.max_tools:
            raise failed(
                f"found {len(found.ids())} guarded tools; a local policy may name "
                f"{limits.max_tools}, and they share no prefix to fold into a wildcard",
                hint="run `d2 init --path` on a smaller part of the code, or use cloud mode",
            )
        check_limits(policy, limits, time.time())
        # the target is replaced by a rename (its mode kept); other files are moved away
        backups = [str(_backup(p, keep=p == target)) for p in existing]
        try:
            write_file(
                target,
                render(document, file_format, header(len(tools))),
                overwrite=target in existing,
            )
        except FileExistsError:
            raise CliError(f"{target} was created meanwhile; run the command again") from None
        for problem in found.problems:
            out.warn(problem)
        if not tools:
            out.warn(
                f"no guarded functions found under {path} ({found.files} Python files); the "
                "developer role is empty. Pass --path with your project's root"
            )
        elif tools != found.ids():
            out.warn(
                f"{len(found.ids())} tools are over the local limit ({limits.max_tools}): "
                "families were folded into prefix wildcards"
            )
        if found.tools:
            out.print(_tools_table(found))
        for backup in backups:
            out.note(f"kept the previous file as {backup}")
        for other in readable:
            if other not in existing and other.parent == Path.cwd():
                out.warn(f"{other} is no longer read: {target} takes precedence over it")
        explicit = os.environ.get("D2_POLICY_FILE")
        if explicit and output is None:
            out.warn(f"D2_POLICY_FILE={explicit} is set: the runtime reads that file, not {target}")
        out.success(
            f"wrote {target} ({len(tools)} tools, expires {document['metadata']['expires']})"
        )
        out.emit(
            {
                "ok": True,
                "output": str(target),
                "format": file_format,
                "tools": tools,
                "found": {t: [p.where for p in ps] for t, ps in sorted(found.by_id().items())},
                "files_scanned": found.files,
                "problems": found.problems,
                "backups": backups,
                "expires": document["metadata"]["expires"],
            }
        )
        return OK

    run_command(as_json, body)
