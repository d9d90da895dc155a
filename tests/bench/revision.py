"""A temporary checkout of a git revision to benchmark side by side with the work tree.

Why a ``git worktree``: it shares the repository's objects, costs a second or
two, and leaves the work tree (which holds the change being measured) alone.
The checkout is detached, lives in a temporary directory, and is removed again
on every exit path of the runner (``remove`` is safe to call repeatedly); a
runner killed outright leaves it behind, and ``git worktree prune`` after
deleting the directory tidies that up.

The baseline gateway runs with ``cwd`` and ``PYTHONPATH`` set to the checkout,
with the project's venv: ``PYTHONPATH`` comes before site-packages, so it wins
over the venv's editable install (a meta-path finder appended after the path
finder), and ``wsgi``, ``config/gunicorn.conf.py`` and ``gateway`` all come
from the checkout. ``check_imports`` proves it with the same interpreter, cwd
and environment before anything is measured.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHECKED_MODULES = ("wsgi", "gateway", "gateway.server", "gateway.worker")
_CHECK = ("import importlib.util, json; print(json.dumps({m: getattr(importlib.util.find_spec(m), \"origin\", None)"
          " for m in %r}))" % (CHECKED_MODULES,))


class RevisionError(RuntimeError):
    """The revision could not be checked out, or its code would not be the code run."""


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise RevisionError(f"git {' '.join(args)} failed: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip()


def describe(repo: Path, rev: str = "HEAD") -> str:
    """``<short hash> <subject>`` of a revision."""
    return _git(repo, "log", "-1", "--format=%h %s", rev)


def work_tree_label(repo: Path) -> str:
    """What the work tree holds: HEAD, plus a note when it has uncommitted changes."""
    dirty = bool(_git(repo, "status", "--porcelain", "--untracked-files=no"))
    return f"work tree on {describe(repo)}" + (" + uncommitted changes" if dirty else "")


def source_env(source: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment that makes Python import the project from ``source``."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(source), env.get("PYTHONPATH", "")) if p)
    return env


def check_imports(source: Path, env: dict[str, str]) -> dict[str, str]:
    """Where the venv's interpreter, run from ``source`` with ``env``, finds the
    gateway's modules; raises unless every one of them is inside ``source``."""
    # -P: no cwd on sys.path, so this shows PYTHONPATH alone is enough (gunicorn adds its cwd too)
    out = subprocess.run([sys.executable, "-P", "-c", _CHECK], cwd=str(source), env=env, capture_output=True,
                         text=True, stdin=subprocess.DEVNULL, timeout=60)
    if out.returncode != 0:
        raise RevisionError(f"import check in {source} failed:\n{out.stderr.strip()}")
    origins: dict[str, str] = json.loads(out.stdout.strip().splitlines()[-1])
    root = source.resolve()
    for module, origin in origins.items():
        if not origin or not Path(origin).resolve().is_relative_to(root):
            raise RevisionError(f"{module} would be imported from {origin}, not from {source}")
    return origins


def check_process_tree(pids: list[int], source: Path) -> None:
    """Every running gateway process has ``source`` as its cwd (and so on ``sys.path``)."""
    root = source.resolve()
    for pid in pids:
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd")).resolve()
        except OSError:
            continue  # exited meanwhile
        if cwd != root:
            raise RevisionError(f"gateway process {pid} runs in {cwd}, not in {source}")


class Checkout:
    """``git worktree add --detach <tmp>/tree REV``; ``remove()`` undoes it."""

    def __init__(self, repo: Path, rev: str) -> None:
        self.repo, self.rev = repo, rev
        self.commit = _git(repo, "rev-parse", "--verify", "--end-of-options", f"{rev}^{{commit}}")
        self.label = f"{rev} = {describe(repo, self.commit)}"
        self.tmp: Path | None = None
        self.path: Path | None = None

    def add(self) -> Path:
        self.tmp = Path(tempfile.mkdtemp(prefix="shin-gateway-bench-rev-")).resolve()
        self.path = self.tmp / "tree"
        _git(self.repo, "worktree", "add", "--detach", str(self.path), self.commit)
        return self.path

    def remove(self) -> None:
        if self.tmp is None:
            return
        if self.path is not None and self.path.exists():
            subprocess.run(["git", "-C", str(self.repo), "worktree", "remove", "--force", str(self.path)],
                           capture_output=True, stdin=subprocess.DEVNULL)
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self.path is not None and self._registered():
            # `worktree remove` failed or `add` was interrupted half-way: the directory is
            # gone now, so prune drops its registration
            subprocess.run(["git", "-C", str(self.repo), "worktree", "prune"], capture_output=True,
                           stdin=subprocess.DEVNULL)
        self.tmp = self.path = None

    def _registered(self) -> bool:
        out = subprocess.run(["git", "-C", str(self.repo), "worktree", "list", "--porcelain"],
                             capture_output=True, text=True, stdin=subprocess.DEVNULL)
        return f"worktree {self.path}" in out.stdout.splitlines()
