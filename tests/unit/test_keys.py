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


# --- virtual keys: the database behind a short per-worker cache -------------------------------

class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def database(tmp_path):
    import logging

    from gateway.store.database import open_database

    database = open_database(f"sqlite:///{tmp_path / 'keys.db'}", logging.getLogger("test"))
    database.migrate()
    yield database
    database.close()


def stored(database, plaintext: str, **fields):
    from gateway.keys import token_of
    from gateway.types import KeyRecord

    record = KeyRecord(token=token_of(plaintext), key_name=f"sk-...{plaintext[-4:]}", **fields)
    database.insert_key(record)
    return record


def test_a_virtual_key_is_found_by_its_digest_and_carries_its_record(database):
    stored(database, "sk-virtual-aaaa", key_alias="app", models=("gpt",))
    principal = KeyChecker(MASTER, database).authenticate("sk-virtual-aaaa")
    assert not principal.is_master and principal.name == "app"
    assert principal.may_use("gpt") and not principal.may_use("claude")
    assert principal.key.token == digest("sk-virtual-aaaa").hex()


def test_unknown_blocked_and_expired_keys_are_refused(database):
    wall = Clock(5000.0)
    stored(database, "sk-blocked-bbbb", blocked=True)
    stored(database, "sk-expired-cccc", expires=4000.0)
    checker = KeyChecker(MASTER, database, wall=wall)
    for presented, message in (("sk-unknown-dddd", "Incorrect"), ("sk-blocked-bbbb", "blocked"),
                               ("sk-expired-cccc", "expired"), ("not-an-sk-key", "Incorrect")):
        with pytest.raises(AuthenticationFailed, match=message):
            checker.authenticate(presented)


def test_a_change_reaches_a_worker_once_its_cache_entry_is_older_than_the_ttl(database):
    clock = Clock()
    record = stored(database, "sk-change-eeee")
    checker = KeyChecker(MASTER, database, clock=clock, ttl=0.5)
    checker.authenticate("sk-change-eeee")
    database.update_key(record.token, {"blocked": True})
    clock.now += 0.4
    checker.authenticate("sk-change-eeee")                 # still within the TTL: the cached answer
    clock.now += 0.2
    with pytest.raises(AuthenticationFailed, match="blocked"):
        checker.authenticate("sk-change-eeee")


def test_forget_makes_this_workers_own_change_visible_at_once(database):
    record = stored(database, "sk-forget-ffff")
    checker = KeyChecker(MASTER, database, clock=Clock())
    checker.authenticate("sk-forget-ffff")
    database.delete_keys([record.token])
    checker.forget(record.token)
    with pytest.raises(AuthenticationFailed):
        checker.authenticate("sk-forget-ffff")


def test_a_key_never_seen_while_the_database_is_unreachable_gets_503(tmp_path):
    """A real PostgreSQL URL on a port nobody listens on: the store's own failure, not a stand-in."""
    import logging
    import socket

    from gateway.errors import StorageUnavailable
    from gateway.store.database import open_database

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = open_database(f"postgresql://nobody@127.0.0.1:{port}/test?connect_timeout=1", logging.getLogger("t"))
    clock = Clock()
    checker = KeyChecker(MASTER, down, clock=clock)
    with pytest.raises(StorageUnavailable) as unavailable:
        checker.authenticate("sk-never-seen-1111")
    assert unavailable.value.status == 503 and unavailable.value.code == "service_unavailable"
    assert checker.authenticate(MASTER).is_master          # the master key needs no database
    down.close()


def test_all_proxy_models_means_every_model_as_for_the_peer(database):
    stored(database, "sk-every-model-gggg", models=("all-proxy-models",))
    principal = KeyChecker(MASTER, database).authenticate("sk-every-model-gggg")
    assert principal.may_use("gpt") and principal.may_use("anything-configured")
