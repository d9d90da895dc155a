"""gateway/keys.py: the master key check."""
from __future__ import annotations

import pytest

from gateway.errors import AuthenticationFailed
from gateway.keys import KeyChecker, digest

MASTER = "sk-master-0123456789"


def test_without_a_master_key_everyone_is_let_in():
    checker = KeyChecker(None)
    assert checker.auth_enabled is False
    for presented in (None, "", "anything"):
        principal = checker.authenticate(presented)
        assert principal.may_use("any-model")


def test_empty_master_key_means_auth_is_off():
    assert KeyChecker("").auth_enabled is False


def test_the_master_key_is_accepted():
    checker = KeyChecker(MASTER)
    assert checker.auth_enabled is True
    principal = checker.authenticate(MASTER)
    assert principal.is_master and principal.name == "master"
    assert principal.may_use("any-model")


@pytest.mark.parametrize("presented", [None, ""])
def test_a_missing_key_is_401(presented):
    with pytest.raises(AuthenticationFailed) as info:
        KeyChecker(MASTER).authenticate(presented)
    error = info.value
    assert (error.status, error.type, error.code) == (401, "authentication_error", "invalid_api_key")


@pytest.mark.parametrize("presented", ["sk-master-012345678", "sk-master-01234567890", MASTER.upper(),
                                       " " + MASTER, "sk-master-0123456789\n", "sk-other"])
def test_a_wrong_key_is_401_and_never_echoed(presented):
    with pytest.raises(AuthenticationFailed) as info:
        KeyChecker(MASTER).authenticate(presented)
    assert MASTER not in info.value.message
    assert presented.strip() not in info.value.message


def test_the_checker_keeps_only_a_digest():
    checker = KeyChecker(MASTER)
    assert MASTER not in repr(vars(checker))
    assert digest(MASTER) == digest(MASTER) and len(digest(MASTER)) == 32
