"""The one object the views call: authenticate, check, route, call the provider."""
from __future__ import annotations

import time

from .errors import ModelNotFound, PermissionDenied, UpstreamAuthFailed
from .keys import KeyChecker
from .routing import Router
from .settings import Settings
from .types import ChunkStream, Completion, Deployment, ModelRequest, Principal


class Service:
    """What the views call: who is calling, may they, and the model call itself through the router."""

    def __init__(self, settings: Settings, keys: KeyChecker, router: Router, adapters: dict):
        self.settings = settings
        self._keys = keys
        self._router = router
        self._adapters = adapters
        self._created = int(time.time())

    def authenticate(self, presented_key: str | None) -> Principal:
        return self._keys.authenticate(presented_key)

    def run(self, principal: Principal, call: ModelRequest) -> Completion | ChunkStream:
        """A whole answer, or a stream primed up to its first content (every retry is over by then)."""
        self._check_model(principal, call.model)
        adapters = self._adapters

        def attempt(deployment: Deployment, deadline: float):
            if deployment.unset_env:
                raise _keyless(deployment)
            adapter = adapters[deployment.provider]
            if call.stream:
                return adapter.stream(deployment, call, deadline)
            return adapter.complete(deployment, call, deadline)
        return self._router.call(call.model, attempt)

    def models(self, principal: Principal) -> list[dict]:
        return [self._model_card(name) for name in self._router.model_names if principal.may_use(name)]

    def model(self, principal: Principal, model_id: str) -> dict:
        if model_id not in self._router or not principal.may_use(model_id):
            raise ModelNotFound(model_id)
        return self._model_card(model_id)

    def readiness(self) -> dict[str, str]:
        return {"config": "ok"}

    def close(self) -> None:
        for adapter in self._adapters.values():
            adapter.close()

    def _check_model(self, principal: Principal, model: str) -> None:
        if model not in self._router:
            raise ModelNotFound(model)
        if not principal.may_use(model):
            raise PermissionDenied(f"This key is not allowed to use the model `{model}`.", param="model")

    def _model_card(self, name: str) -> dict:
        return {"id": name, "object": "model", "created": self._created, "owned_by": "shin-gateway"}


def _keyless(deployment: Deployment) -> UpstreamAuthFailed:
    """A credential the config names is missing from the environment: say which, call nobody."""
    names = ", ".join(deployment.unset_env)
    return UpstreamAuthFailed(f"the gateway has no upstream credentials for deployment {deployment.id}: "
                              f"environment variable {names} is not set")
