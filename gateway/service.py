"""The one object the views call: authenticate, check, route, call the provider."""
from __future__ import annotations

import time

from .errors import ModelNotFound, PermissionDenied
from .keys import KeyChecker
from .routing import Router
from .settings import Settings
from .types import ChunkStream, Completion, ModelRequest, Principal


class Service:
    def __init__(self, settings: Settings, keys: KeyChecker, router: Router, adapters: dict):
        self.settings = settings
        self._keys = keys
        self._router = router
        self._adapters = adapters
        self._created = int(time.time())

    def authenticate(self, presented_key: str | None) -> Principal:
        return self._keys.authenticate(presented_key)

    def run(self, principal: Principal, call: ModelRequest) -> Completion | ChunkStream:
        self._check_model(principal, call.model)
        adapters = self._adapters
        if call.stream:
            return self._router.call(call.model, lambda d: adapters[d.provider].stream(d, call))
        return self._router.call(call.model, lambda d: adapters[d.provider].complete(d, call))

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
