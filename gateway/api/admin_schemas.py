"""marshmallow schemas of the keys and spend admin routes, and the two loaders their views use.

Unlike the model routes, nothing unknown is kept: an admin script that sends a
field we do not act on (a typo, or a peer feature we lack) gets a 400 naming
it, rather than a key that silently lacks the limit it asked for. Types are
strict (`"rpm_limit": "5"` is a 400); query strings are text, so their numbers
and booleans are parsed from text.
"""
from __future__ import annotations

from flask import request
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from ..admin import parse_when
from ..durations import parse_duration
from .cooperative import Pacer
from .schemas import StrictBool, StrictDict, StrictInt, StrictNumber, StrictString
from .validation import schema_error, read_json_object

MAX_NAME = 256
MAX_MODELS = 1000
MAX_KEYS_PER_DELETE = 1000
MAX_PAGE_SIZE = 100           # /key/list
MAX_LOGS_PAGE_SIZE = 1000     # /spend/logs
MAX_PAGE = 10 ** 9            # a page past it would overflow the database's 64-bit offsets


def load_body(schema: Schema) -> dict:
    """The validated JSON body; an absent body counts as `{}` (`curl -X POST …/key/generate` works)."""
    if request.content_length == 0 or (request.content_length is None
                                       and "chunked" not in request.headers.get("Transfer-Encoding", "")):
        return _load(schema, {})
    return _load(schema, read_json_object(Pacer()))


def load_args(schema: Schema) -> dict:
    return _load(schema, request.args.to_dict())


def _load(schema: Schema, data: dict) -> dict:
    try:
        return schema.load(data)
    except ValidationError as exc:
        raise schema_error(exc.messages) from None


# --- fields -----------------------------------------------------------------------------------

class NonNegativeInt(StrictInt):
    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        if value < 0:
            raise ValidationError("must be a non-negative integer.")
        return value


class NonNegativeNumber(StrictNumber):
    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        if value < 0 or value != value or value in (float("inf"), float("-inf")):
            raise ValidationError("must be a non-negative number.")
        return value


class Duration(StrictString):
    """"30s", "15m", "24h", "30d", "1w", "1mo": checked here, so a bad one never reaches the database."""

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        try:
            parse_duration(value)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
        return value


class Limits(StrictDict):
    """`model_rpm_limit` / `model_tpm_limit`: model name → non-negative integer."""

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        for model, limit in value.items():
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise ValidationError(f"must map model names to non-negative integers ({model!r} does not).")
        return value


class NewKey(StrictString):
    """A caller-chosen plaintext: the `sk-` form every client and log redactor expects."""

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        if not value.startswith("sk-") or not 8 <= len(value) <= MAX_NAME or not value.isprintable():
            raise ValidationError("must start with 'sk-' and be 8 to 256 printable characters.")
        return value


class When(StrictString):
    def __init__(self, *, end: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.end = end

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        try:
            parse_when(value, end=self.end)
        except (ValueError, OverflowError):   # OverflowError: the day after 9999-12-31
            raise ValidationError("must be a date (YYYY-MM-DD) or an ISO 8601 time.") from None
        return value


def _name(**kwargs):
    return StrictString(validate=validate.Length(min=1, max=MAX_NAME), **kwargs)


def _key_ref(**kwargs):
    """An existing key: its plaintext or its token."""
    return StrictString(validate=validate.Length(min=1, max=MAX_NAME), **kwargs)


# --- bodies -------------------------------------------------------------------------------------

class Strict(Schema):
    """Every admin schema: an unknown field is a 400 naming it."""
    class Meta:
        unknown = RAISE

    error_messages = {"unknown": "is not a field this route accepts."}


class KeySettings(Strict):
    key_alias = _name(allow_none=True)
    duration = Duration(allow_none=True)
    models = fields.List(_name(), allow_none=True, validate=validate.Length(max=MAX_MODELS))
    max_budget = NonNegativeNumber(allow_none=True)
    budget_duration = Duration(allow_none=True)
    rpm_limit = NonNegativeInt(allow_none=True)
    tpm_limit = NonNegativeInt(allow_none=True)
    max_parallel_requests = NonNegativeInt(allow_none=True)
    model_rpm_limit = Limits(allow_none=True)
    model_tpm_limit = Limits(allow_none=True)
    metadata = StrictDict(allow_none=True)
    user_id = _name(allow_none=True)
    team_id = _name(allow_none=True)
    blocked = StrictBool()


class GenerateKey(KeySettings):
    key = NewKey()


class UpdateKey(KeySettings):
    key = _key_ref(required=True)


class RegenerateKeyAtPath(KeySettings):
    """`POST /key/<key>/regenerate`: the key is in the path; `new_key` picks the new plaintext."""
    new_key = NewKey()


class RegenerateKey(RegenerateKeyAtPath):
    key = _key_ref(required=True)


class DeleteKeys(Strict):
    keys = fields.List(_key_ref(), validate=validate.Length(max=MAX_KEYS_PER_DELETE))
    key_aliases = fields.List(_name(), validate=validate.Length(max=MAX_KEYS_PER_DELETE))

    @validates_schema
    def _names_some(self, data, **kwargs):
        if not data.get("keys") and not data.get("key_aliases"):
            raise ValidationError("give a non-empty `keys` or `key_aliases` list.", field_name="keys")


class KeyOnly(Strict):
    """`/key/block`, `/key/unblock` bodies and `/key/info` arguments."""
    key = _key_ref(required=True)


# --- query arguments ----------------------------------------------------------------------------

class ListKeys(Strict):
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=MAX_PAGE))
    size = fields.Integer(load_default=10, validate=validate.Range(min=1, max=MAX_PAGE_SIZE))
    user_id = _name()
    team_id = _name()
    key_alias = _name()
    return_full_object = fields.Boolean(load_default=False)


class SpendFilters(Strict):
    api_key = _key_ref()
    start_date = When()
    end_date = When(end=True)


class SpendLogs(SpendFilters):
    key_alias = _name()
    user_id = _name()
    team_id = _name()
    model = _name()
    request_id = _name()
    page = fields.Integer(validate=validate.Range(min=1, max=MAX_PAGE))
    page_size = fields.Integer(load_default=50, validate=validate.Range(min=1, max=MAX_LOGS_PAGE_SIZE))


class SpendReport(Strict):
    start_date = When(required=True)
    end_date = When(end=True, required=True)
    group_by = fields.String(load_default="model", validate=validate.OneOf(("model", "api_key")))
