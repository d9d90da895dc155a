"""The users' guide (docs/api-integration-guide.md) as code blocks the tests can run.

Each block is named after the guide section it sits in ("python-integration/basic-usage"),
and `for_gateway` rewrites only what the guide tells readers to replace: the host
`http://localhost:4000` and the placeholder keys.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "api-integration-guide.md"
GUIDE_HOST = "http://localhost:4000"
PLACEHOLDER_KEYS = ("your-litellm-master-key", "your-master-key")


@dataclass(frozen=True)
class Block:
    id: str          # "<h2 slug>/<h3 slug>", "#2" appended for a second block in one section
    language: str
    code: str
    line: int        # 1-based line of the opening fence


def _slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")


def blocks(language: str, path: Path = GUIDE) -> list[Block]:
    found, seen = [], {}
    section, subsection = "", ""
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section, subsection = _slug(line[3:]), ""
        elif line.startswith("### "):
            subsection = _slug(line[4:])
        elif line.startswith("```"):
            fence_language = line[3:].strip()
            start = i
            i += 1
            body = []
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            if fence_language == language:
                name = f"{section}/{subsection}" if subsection else section
                seen[name] = seen.get(name, 0) + 1
                if seen[name] > 1:
                    name = f"{name}#{seen[name]}"
                found.append(Block(name, language, "\n".join(body) + "\n", start + 1))
        i += 1
    return found


def for_gateway(code: str, gateway_url: str, key: str) -> str:
    """Point an example at the test gateway: host and placeholder keys only (a `/v1` after the host stays)."""
    code = code.replace(GUIDE_HOST, gateway_url)
    for placeholder in PLACEHOLDER_KEYS:
        code = code.replace(placeholder, key)
    return code
