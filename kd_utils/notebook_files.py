"""The stored notebooks' upkeep: their Colab badges and install cells, generated from the one repository URL in
``pyproject.toml`` (``[project.urls] Repository``), and no stale widget state. ``python -m kd_utils.notebook sync``
writes each notebook's badge and install cell, ``check`` lists the notebooks that disagree or carry widget state
(stale tqdm widgets), ``strip`` removes it (and the ``rerun-pending`` tag of each cell that has since run).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import tomllib
from .notebook import BRANCH, NOTEBOOKS_DIR, REPO_ROOT
from .results import atomic_write

# --- the repository URL, the Colab badges and the install cells -------------------------------------------

GITHUB = re.compile(r"^https://github\.com/(?P<owner>[\w.-]+)/(?P<repo>[\w.-]+?)(?:\.git)?/?$")
BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")
INSTALL_MARK = "# Colab (or anywhere kd_utils is missing): clone the project and install it."


def repository_url(pyproject: str | Path = REPO_ROOT / "pyproject.toml") -> str:
    """The repository URL: ``[project.urls] Repository`` in ``pyproject.toml`` (a GitHub URL)."""
    try:
        url = tomllib.loads(Path(pyproject).read_text())["project"]["urls"]["Repository"]
    except (FileNotFoundError, KeyError):
        raise ValueError(f"no [project.urls] Repository in {Path(pyproject).name}; add the repository's URL") from None
    if not GITHUB.match(url):
        raise ValueError(f"Repository = {url!r}: Colab opens notebooks from GitHub; use https://github.com/OWNER/REPO")
    return url.removesuffix("/").removesuffix(".git")


def colab_badge(url: str, notebook: str) -> str:
    """The "Open In Colab" badge of ``notebooks/<notebook>.ipynb`` on ``BRANCH`` of the repository at ``url``."""
    m = GITHUB.match(url)
    target = (
        f"https://colab.research.google.com/github/{m['owner']}/{m['repo']}/blob/{BRANCH}/notebooks/{notebook}.ipynb"
    )
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({target})"


def install_cell(url: str) -> str:
    """The first code cell: where ``kd_utils`` is not importable, clone the repository and install it."""
    folder = GITHUB.match(url)["repo"]
    return f"""{INSTALL_MARK}
# Generated from pyproject.toml's [project.urls] by `python -m kd_utils.notebook sync`: edit there, not here.
import importlib.util
import os
import subprocess
import sys

REPOSITORY = "{url}"
if importlib.util.find_spec("kd_utils") is None:
    if not os.path.isdir("{folder}"):
        subprocess.run(["git", "clone", "--depth", "1", REPOSITORY, "{folder}"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "{folder}"], check=True)
    sys.path.insert(0, os.path.abspath("{folder}"))"""


def _source(cell: dict) -> str:
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def synced(nb: dict, notebook: str, url: str) -> dict:
    """``nb`` (notebook JSON) with its title cell's badge and its first code cell made from ``url``.

    Raises:
        ValueError: the first cell has no Colab badge to replace.
    """
    cells = nb["cells"]
    title = _source(cells[0])
    if cells[0]["cell_type"] != "markdown" or not BADGE.search(title):
        raise ValueError(f"{notebook}: the first cell has no 'Open In Colab' badge to update")
    cells[0]["source"] = _lines(BADGE.sub(lambda _: colab_badge(url, notebook), title, count=1))
    first_code = next(c for c in cells if c["cell_type"] == "code")
    first_code["source"] = _lines(install_cell(url))
    return nb


def notebook_paths(folder: str | Path = NOTEBOOKS_DIR) -> list[Path]:
    return sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))


def out_of_sync(folder: str | Path = NOTEBOOKS_DIR, url: str | None = None) -> list[str]:
    """Names of the notebooks whose badge or install cell disagrees with the repository URL."""
    url = url or repository_url()
    stale = []
    for path in notebook_paths(folder):
        nb = json.loads(path.read_text())
        before = json.dumps(nb, sort_keys=True)
        if json.dumps(synced(nb, path.stem, url), sort_keys=True) != before:
            stale.append(path.stem)
    return stale


def write_notebook(path: Path, nb: dict) -> None:
    """Write notebook JSON as nbformat's writer does (sorted keys, indent 1, UTF-8, a final newline), atomically."""
    atomic_write(path, json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n")


def sync(folder: str | Path = NOTEBOOKS_DIR, url: str | None = None) -> list[Path]:
    """Rewrite every notebook's badge and install cell from the repository URL; returns the files changed."""
    url = url or repository_url()
    changed = []
    for path in notebook_paths(folder):
        nb = json.loads(path.read_text())
        before = json.dumps(nb, sort_keys=True)
        nb = synced(nb, path.stem, url)
        if json.dumps(nb, sort_keys=True) != before:
            write_notebook(path, nb)
            changed.append(path)
    return changed


# --- widget state: stale progress bars ---------------------------------------------------------------------

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"  # an output that shows a live widget (a tqdm bar)


def widget_state(nb: dict) -> int:
    """How much widget state ``nb`` carries: 1 for ``metadata.widgets``, plus one per widget output."""
    outputs = [out for cell in nb["cells"] for out in cell.get("outputs", [])]
    return ("widgets" in nb.get("metadata", {})) + sum(WIDGET_VIEW in out.get("data", {}) for out in outputs)


def without_widgets(nb: dict) -> dict:
    """``nb`` without widget state: no ``metadata.widgets``, and each widget output keeps only its other
    representations (tqdm's ``text/plain``: the bar's final text), or goes when it has none.

    A stored widget only says "Loading widget..." or "Error displaying widget" once its kernel is gone, and the
    saved widget models can outweigh the rest of the notebook.
    """
    nb.get("metadata", {}).pop("widgets", None)
    for cell in nb["cells"]:
        if "outputs" not in cell:
            continue
        outputs = []
        for out in cell["outputs"]:
            if WIDGET_VIEW in out.get("data", {}):
                data = {mime: value for mime, value in out["data"].items() if mime != WIDGET_VIEW}
                if not data:
                    continue
                out = {**out, "data": data}
            outputs.append(out)
        cell["outputs"] = outputs
    return nb


# --- cells the stored execution predates ---------------------------------------------------------------------

PENDING_TAG = "rerun-pending"  # a cell added for the re-run, unexecuted in the stored (protocol 1) execution


def pending_tags_left(nb: dict) -> int:
    """How many cells that ran still carry ``PENDING_TAG``."""
    return sum(c.get("execution_count") is not None and PENDING_TAG in c.get("metadata", {}).get("tags", [])
               for c in nb["cells"])  # fmt: skip


def without_pending_tags(nb: dict) -> dict:
    """``nb`` with ``PENDING_TAG`` dropped from every cell that ran (``make study``'s execution ran them all)."""
    for cell in nb["cells"]:
        tags = cell.get("metadata", {}).get("tags", [])
        if cell.get("execution_count") is not None and PENDING_TAG in tags:
            tags.remove(PENDING_TAG)
            if not tags:
                del cell["metadata"]["tags"]
    return nb


def ipynb_files(paths: Sequence[str | Path]) -> list[Path]:
    """The notebooks at ``paths``: a file as it is, a folder's ``*.ipynb`` (sorted)."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(path.glob("*.ipynb"))
        elif path.suffix == ".ipynb" and path.is_file():
            files.append(path)
        else:
            raise ValueError(f"{path}: not a notebook (.ipynb) file or a folder")
    return files


def carrying_widgets(paths: Sequence[str | Path] = (NOTEBOOKS_DIR,)) -> list[Path]:
    """The notebooks at ``paths`` (files or folders) that carry widget state."""
    return [path for path in ipynb_files(paths) if widget_state(json.loads(path.read_text(encoding="utf-8")))]


def strip(paths: Sequence[str | Path] = (NOTEBOOKS_DIR,)) -> list[Path]:
    """Remove widget state, and the ``PENDING_TAG`` of cells that ran, from the notebooks at ``paths`` (files or
    folders), in place; returns those changed.

    Everything else, outputs and cell ids included, is kept; a notebook with neither is not rewritten.
    """
    changed = []
    for path in ipynb_files(paths):
        nb = json.loads(path.read_text(encoding="utf-8"))
        if widget_state(nb) or pending_tags_left(nb):
            write_notebook(path, without_pending_tags(without_widgets(nb)))
            changed.append(path)
    return changed


def shown(path: Path) -> str:
    """``path`` relative to the current folder where it lies below it (for printing)."""
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


USAGE = """usage: python -m kd_utils.notebook sync | check | strip [PATHS]
  sync   write the notebooks' Colab badges and install cells from pyproject.toml's [project.urls] Repository
  check  list the notebooks that disagree with it or carry widget state (exit 1 if any)
  strip  remove widget state (stale tqdm widgets), and the rerun-pending tags of cells that ran, from the
         notebooks at PATHS, files or folders (default: notebooks/), in place"""


def main(argv: list[str] | None = None) -> int:
    """``python -m kd_utils.notebook sync|check|strip [PATHS]``."""
    argv = sys.argv[1:] if argv is None else argv
    command, paths = (argv[0], argv[1:]) if argv else (None, [])
    if command not in ("sync", "check", "strip") or (paths and command != "strip"):
        print(USAGE, file=sys.stderr)
        return 2
    if command == "sync":
        for path in sync():
            print(f"updated {shown(path)}")
        return 0
    if command == "strip":
        try:
            for path in strip(paths or [NOTEBOOKS_DIR]):
                print(f"stripped widget state and spent re-run tags from {shown(path)}")
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    stale = out_of_sync()
    for name in stale:
        print(f"{name}: badge or install cell differs from {repository_url()}; run python -m kd_utils.notebook sync")
    widgets = carrying_widgets()
    for path in widgets:
        print(f"{path.stem}: carries widget state; run python -m kd_utils.notebook strip")
    return 1 if stale or widgets else 0
