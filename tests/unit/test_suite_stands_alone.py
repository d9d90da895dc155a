"""The test suite stands alone: a clone with nothing beside it has every file the tests read.

Reference data (OpenAI's spec, recorded provider wire bodies) is vendored under
tests/reference/. No file under tests/ may reach the steering repository's sibling
directory, and the vendored files must be there and non-empty, so a missing
file fails here by name instead of turning a schema check into a no-op.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
REFERENCE = TESTS / "reference"
SIBLING = "shar" + "ed"          # spelt in two parts so this file passes its own check

# Ways a test reaches outside the repository for that directory.
OUTSIDE = re.compile("|".join((
    r"""["']""" + SIBLING + r"""["']""",                  # Path(...) / "<sibling>" / "reference"
    r"\.\.[/\\]" + SIBLING,                               # ../<sibling>
    r"(?<![\w-])" + SIBLING + r"[/\\]",                   # <sibling>/reference, /work/<sibling>/...
    r"parents\[\s*(?:[3-9]|\d\d+)\s*\]",                  # above the repository root from tests/<dir>/x.py
)))

# Vendored files: path → how many files each fixture directory holds at least.
FIXTURE_DIRS = {"openai": 9, "anthropic": 5, "gemini/googleai": 36, "gemini/vertexai": 10, "bedrock": 3}
NAMED = ("openai-openapi.yaml", "README.md",
         "fixtures/openai/chat-nonstream-text.json", "fixtures/openai/chat-stream-text-usage.sse",
         "fixtures/openai/chat-stream-parallel-tool-calls-usage.sse",
         "fixtures/anthropic/messages-stream-text.sse",
         "fixtures/bedrock/bedrock-runtime-2023-09-30-service-2.json",
         "fixtures/bedrock/converse-stream-tool-use.bin")


def _scanned_files() -> list[Path]:
    files = [path for path in TESTS.rglob("*")
             if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
             and path != REFERENCE / "README.md"]
    assert len(files) > 20, f"scanned only {len(files)} files under {TESTS}"
    return files


def test_no_test_reads_outside_the_repository():
    offenders = []
    for path in _scanned_files():
        text = path.read_bytes().decode("utf-8", "replace")
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(TESTS.parent)}:{number}: {line.strip()[:120]}")
    assert not offenders, "tests must read tests/reference, not the sibling directory:\n" + "\n".join(offenders)


@pytest.mark.parametrize("line", [
    'REF = Path(__file__).resolve().parents[' + '3] / "%s" / "reference"' % SIBLING,
    "open('../%s/reference/openai-openapi.yaml')" % SIBLING,
    "spec = '/work/%s/reference/openai-openapi.yaml'" % SIBLING,
    "root = HERE.parents[" + "4]",
])
def test_the_guard_catches_each_form(line):
    assert OUTSIDE.search(line)


@pytest.mark.parametrize("line", [
    "ROOT = Path(__file__).resolve().parents[2]",
    '"""The shared gateway: 2 gevent workers."""',
    "shared_headers = {}",
])
def test_the_guard_lets_ordinary_code_through(line):
    assert not OUTSIDE.search(line)


@pytest.mark.parametrize("name", NAMED)
def test_named_reference_files_are_vendored(name):
    path = REFERENCE / name
    assert path.is_file() and path.stat().st_size > 0, f"missing or empty: {path}"


def test_the_spec_is_the_whole_file():
    spec = REFERENCE / "openai-openapi.yaml"
    assert spec.stat().st_size > 2_000_000, "openai-openapi.yaml looks truncated"
    with spec.open("rb") as handle:
        head = handle.read(4096)
    assert head.startswith(b"openapi: 3.1")


@pytest.mark.parametrize("directory,at_least", FIXTURE_DIRS.items())
def test_fixture_directories_are_full_and_no_file_is_empty(directory, at_least):
    files = [path for path in (REFERENCE / "fixtures" / directory).iterdir() if path.is_file()]
    assert len(files) >= at_least, f"{directory}: {len(files)} files, expected at least {at_least}"
    empty = [path.name for path in files if path.stat().st_size == 0]
    assert not empty, f"{directory}: empty files {empty}"


def test_gemini_streams_keep_their_crlf():
    """git must not normalise line endings of recorded bytes (tests/reference/.gitattributes)."""
    body = (REFERENCE / "fixtures/gemini/googleai/streaming-success-basic-reply-short.txt").read_bytes()
    assert b"\r\n" in body
    assert (REFERENCE / ".gitattributes").read_text().split()[-2:] == ["*", "-text"]
