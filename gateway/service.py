"""The one object the views call: authenticate, check, route, call the provider, close the books."""
from __future__ import annotations

import time

from .errors import ModelNotFound, PermissionDenied, UpstreamCredentialsMissing
from .keys import KeyChecker
from .routing import Router
from .settings import Settings
from .types import ChunkStream, Completion, Deployment, ModelRequest, Principal, RouterState, Trace


class Service:
    """What the views call: who is calling, may they, and the model call itself through the router."""

    def __init__(self, settings: Settings, keys: KeyChecker, router: Router, adapters: dict,
                 state: RouterState, health=None):
        self.settings = settings
        self._keys = keys
        self._router = router
        self._adapters = adapters
        self._state = state
        self._health = health
        self._created = int(time.time())

    def authenticate(self, presented_key: str | None) -> Principal:
        return self._keys.authenticate(presented_key)

    def run(self, principal: Principal, call: ModelRequest, trace: Trace) -> Completion | ChunkStream:
        """A whole answer, or a stream primed up to its first content (every retry is over by then).

        `trace` records what the router did, for the response headers (on
        errors too).
        """
        self._check_model(principal, call.model)
        adapters = self._adapters

        def attempt(deployment: Deployment, deadline: float):
            if deployment.unset_env:
                raise _keyless(deployment)
            adapter = adapters[deployment.provider]
            if call.stream:
                return adapter.stream(deployment, call, deadline)
            return adapter.complete(deployment, call, deadline)
        answer = self._router.call(call.model, attempt, trace, call.stream)
        if call.stream:
            return _Finishing(answer, self._router, trace)
        self._router.finished(trace, answer.usage.total_tokens if answer.usage else 0)
        return answer

    def models(self, principal: Principal) -> list[dict]:
        return [self._model_card(name) for name in self._router.model_names if principal.may_use(name)]

    def model(self, principal: Principal, model_id: str) -> dict:
        if model_id not in self._router or not principal.may_use(model_id):
            raise ModelNotFound(model_id)
        return self._model_card(model_id)

    def health(self) -> dict:
        return self._health.report()

    def readiness(self) -> tuple[bool, dict]:
        """Ready when every check says "ok"; the body also names the router state's backend."""
        status = dict(self._state.status())
        backend = status.pop("state")
        checks = {"config": "ok", **status}
        ready = all(value == "ok" for value in checks.values())
        return ready, {"status": "ready" if ready else "not ready", "checks": checks, "state_backend": backend}

    def close(self) -> None:
        for adapter in self._adapters.values():
            adapter.close()
        self._state.close()

    def _check_model(self, principal: Principal, model: str) -> None:
        if model not in self._router:
            raise ModelNotFound(model)
        if not principal.may_use(model):
            raise PermissionDenied(f"This key is not allowed to use the model `{model}`.", param="model")

    def _model_card(self, name: str) -> dict:
        return {"id": name, "object": "model", "created": self._created, "owned_by": "shin-gateway"}


class _Finishing:
    """A stream that tells the router when it is over (however it ends), exactly once, with its tokens."""
    __slots__ = ("_stream", "_router", "_trace")

    def __init__(self, stream: ChunkStream, router: Router, trace: Trace):
        self._stream, self._router, self._trace = stream, router, trace

    @property
    def usage(self):
        return self._stream.usage

    def __iter__(self):
        return iter(self._stream)

    def close(self) -> None:
        router, self._router = self._router, None
        try:
            self._stream.close()
        finally:
            if router is not None:
                usage = self._stream.usage
                router.finished(self._trace, usage.total_tokens if usage else 0)


def _keyless(deployment: Deployment) -> UpstreamCredentialsMissing:
    """A credential the config names is missing from the environment: say which, call nobody."""
    names = ", ".join(deployment.unset_env)
    return UpstreamCredentialsMissing(f"the gateway has no upstream credentials for deployment {deployment.id}: "
                              f"environment variable {names} is not set")
