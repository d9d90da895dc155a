"""`azure/<deployment>`: Azure OpenAI, which speaks OpenAI's bodies at its own URLs and with its own key header.

Bodies, chunks and errors are OpenAI's, so the OpenAI-compatible relay does
the work unchanged (and as fast): Azure's content-filter preamble chunk (no
choices, no usage) is one of the chunks it already keeps from the client, and
its `content_filter` error code is a content-policy refusal there too. Only
addressing and credentials differ, and the error bodies that lack a type.
"""
from __future__ import annotations

from urllib.parse import quote

from ..types import Deployment
from .auth import HeaderAuth, bearer
from .failures import UpstreamError
from .openai_compat import OpenAICompatibleAdapter

# The newest generally available data-plane version; stream_options needs 2024-09-01 or later.
DEFAULT_API_VERSION = "2024-10-21"
V1_SUFFIX = "/openai/v1"


class AzureAdapter(OpenAICompatibleAdapter):
    label = "Azure OpenAI"

    def base_url(self, deployment: Deployment) -> str:
        return deployment.api_base or ""

    def url(self, deployment: Deployment, base: str, endpoint: str, stream: bool) -> str:
        """`{resource}/openai/deployments/{name}/{endpoint}?api-version=…`, or the v1 API's plain OpenAI paths.

        The v1 API (an api_base ending in /openai/v1, or api_version "v1")
        takes the deployment name as the body's `model` and no api-version.
        """
        if base.endswith(V1_SUFFIX):
            return f"{base}/{endpoint}"
        if deployment.api_version in ("v1", "latest", "preview"):
            return f"{base}{V1_SUFFIX}/{endpoint}"
        version = quote(deployment.api_version or DEFAULT_API_VERSION, safe="")
        return f"{base}/openai/deployments/{quote(deployment.upstream_model, safe='')}/{endpoint}?api-version={version}"

    def auth(self, deployment: Deployment):
        """An Entra ID token (`azure_ad_token`) as a bearer token, else the resource key as `api-key`."""
        if deployment.azure_ad_token:
            return bearer(deployment.azure_ad_token)
        return HeaderAuth("api-key", deployment.api_key) if deployment.api_key else None

    def describe_error(self, status: int, content: bytes, headers) -> UpstreamError:
        """As OpenAI's, but a numeric code ("429") is no code, and a missing type comes from the status."""
        error = super().describe_error(status, content, headers)
        code = None if error.code and error.code.isdigit() else error.code
        if code == error.code and error.type:
            return error
        return UpstreamError(error.status, error.message, kind=error.kind, code=code,
                             type=error.type or _TYPE_OF_STATUS.get(status), param=error.param)


_TYPE_OF_STATUS = {400: "invalid_request_error", 404: "invalid_request_error", 422: "invalid_request_error"}
