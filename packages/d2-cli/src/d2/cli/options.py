"""Options shared by several commands (one definition, one help text)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

__all__ = [
    "AppNameOption",
    "FileArgument",
    "Format",
    "FormatOption",
    "JsonOption",
    "PolicyOption",
    "ScanPathOption",
    "Stage",
]


class Format(str, Enum):
    """A policy file format."""

    yaml = "yaml"
    json = "json"


class Stage(str, Enum):
    """Which policy of the app: the published (signed) one or the draft."""

    published = "published"
    draft = "draft"


JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout (for scripts).")
]
PolicyOption = Annotated[
    Path | None,
    typer.Option(
        "--policy",
        help="Policy file to use instead of the one in force (D2_POLICY_FILE, "
        "~/.config/d2/policy.yaml, ./policy.yaml; or the cloud bundle with D2_TOKEN).",
        dir_okay=False,
    ),
]
ScanPathOption = Annotated[
    Path,
    typer.Option(
        "--path", "-p", help="Project directory to scan for guarded functions.", file_okay=True
    ),
]
FormatOption = Annotated[
    Format | None,
    typer.Option("--format", help="File format (default: from the file name, else yaml)."),
]
AppNameOption = Annotated[
    str | None,
    typer.Option(
        "--app-name",
        help="The app you expect; refused when the token is for another app "
        "(tokens are scoped to one app).",
    ),
]
FileArgument = Annotated[
    Path | None,
    typer.Argument(
        help="Policy file (YAML or JSON); default: the local policy file.", dir_okay=False
    ),
]
