"""Pins that carry a security fix: the requirement says so, and the installed version honours it."""
from __future__ import annotations

import configparser
import re
from importlib.metadata import version
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]


def requirement(name: str) -> str:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    for line in config["options"]["install_requires"].splitlines():
        if re.match(rf"{name}\b", line.strip()):
            return line.strip()
    raise AssertionError(f"{name} is not required")


def as_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def test_orjson_is_pinned_past_its_deep_nesting_cve():
    """CVE-2024-27454: orjson before 3.9.15 crashed on deeply nested input."""
    pinned = requirement("orjson")
    assert pinned.startswith("orjson>="), pinned
    assert as_tuple(pinned.split(">=")[1]) >= (3, 9, 15), pinned
    assert as_tuple(version("orjson")) >= (3, 9, 15)


def test_deep_input_is_a_decode_error_not_a_crash():
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(b"[" * 100_000 + b"]" * 100_000)
