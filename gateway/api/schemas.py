"""marshmallow schemas of the OpenAI request bodies we accept.

Types are strict, as OpenAI's own API is: `"temperature": "0.7"` or
`"stream": "yes"` is a 400, not something coerced and forwarded. Unknown
top-level keys are vendor extras (vLLM's `top_k`, …) and are kept; unknown
keys inside messages and parts are kept too, since OpenAI adds them often.
"""
from __future__ import annotations

import re

from marshmallow import INCLUDE, Schema, ValidationError, fields, validate, validates_schema

from .cooperative import Pacer

ROLES = ("system", "developer", "user", "assistant", "tool", "function")

# Caps no legitimate client reaches, but that bound the work one request can cause.
MAX_MESSAGES = 10_000
MAX_CONTENT_PARTS = 500
MAX_TOOLS = 512
MAX_STOP = 64
MAX_LOGIT_BIAS = 1024
MAX_INPUTS = 2048         # embeddings `input` and completions `prompt` arrays (OpenAI's own limit)
MAX_DIMENSIONS = 16_384
TOOL_CHOICE_MODES = ("none", "auto", "required")
_FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


# --- strict JSON scalars ------------------------------------------------------------------

class StrictBool(fields.Field):
    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise ValidationError("must be a boolean (true or false).")
        return value


class StrictNumber(fields.Field):
    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValidationError("must be a number.")
        return value


class StrictInt(fields.Field):
    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError("must be an integer.")
        return value


class StrictString(fields.Field):
    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str):
            raise ValidationError("must be a string.")
        return value


class StrictDict(fields.Field):
    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, dict):
            raise ValidationError("must be an object.")
        return value


class OneOrManyStrings(fields.Field):
    """`stop`: a string or a list of strings."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, list) and len(value) > MAX_STOP:
            raise ValidationError(f"must have at most {MAX_STOP} strings.")
        if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return value
        raise ValidationError("must be a string or an array of strings.")


class CooperativeList(fields.List):
    """A list of at most `max_items`, validated item by item with a turn for the event loop now and then."""

    def __init__(self, inner, *, max_items: int, min_items: int = 0, **kwargs):
        super().__init__(inner, **kwargs)
        self.max_items = max_items
        self.min_items = min_items

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, list):
            raise ValidationError("must be an array.")
        if len(value) > self.max_items:
            raise ValidationError(f"must have at most {self.max_items} items.")
        if len(value) < self.min_items:
            raise ValidationError("must contain at least one message." if self.min_items == 1
                                  else f"must have at least {self.min_items} items.")
        pacer = Pacer()
        errors = {}
        for index, item in enumerate(value):
            try:
                self.inner.deserialize(item, **kwargs)
            except ValidationError as error:
                errors[index] = error.messages
                break  # the first failing item is the one reported
            pacer.tick(64)
        if errors:
            raise ValidationError(errors)
        return value


def _range(low, high):
    return validate.Range(min=low, max=high, error=f"must be between {low} and {high}.")


def _at_least(low):
    return validate.Range(min=low, error=f"must be at least {low}.")


# --- message content ----------------------------------------------------------------------

class ImageUrlSchema(Schema):
    class Meta:
        unknown = INCLUDE
    url = StrictString(required=True, validate=validate.Length(min=1))
    detail = StrictString(validate=validate.OneOf(("auto", "low", "high")))


class ContentPartSchema(Schema):
    class Meta:
        unknown = INCLUDE
    type = StrictString(required=True)
    text = StrictString()
    image_url = fields.Nested(ImageUrlSchema)
    input_audio = StrictDict()
    file = StrictDict()
    refusal = StrictString()

    @validates_schema
    def _part_fields(self, data, **kwargs):
        needed = {"text": "text", "image_url": "image_url", "input_audio": "input_audio",
                  "file": "file", "refusal": "refusal"}.get(data.get("type"))
        if needed and needed not in data:
            raise ValidationError("is required for this content part type.", needed)


class MessageContent(fields.Field):
    """A string, or an array of content parts (text, image_url, input_audio, file, …)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            if not value:
                raise ValidationError("must not be an empty array.")
            if len(value) > MAX_CONTENT_PARTS:
                raise ValidationError(f"must have at most {MAX_CONTENT_PARTS} content parts.")
            errors = {}
            for index, part in enumerate(value):
                if not isinstance(part, dict):
                    errors[index] = ["must be an object."]
                    continue
                problems = _PART_SCHEMA.validate(part)
                if problems:
                    errors[index] = problems
            if errors:
                raise ValidationError(errors)
            return value
        raise ValidationError("must be a string or an array of content parts.")


class FunctionCallSchema(Schema):
    class Meta:
        unknown = INCLUDE
    name = StrictString(required=True)
    arguments = StrictString(required=True)


class ToolCallSchema(Schema):
    class Meta:
        unknown = INCLUDE
    id = StrictString(required=True)
    type = StrictString(required=True)
    function = fields.Nested(FunctionCallSchema)


class MessageSchema(Schema):
    class Meta:
        unknown = INCLUDE
    role = StrictString(required=True, validate=validate.OneOf(ROLES, error="must be one of: " + ", ".join(ROLES)))
    content = MessageContent(allow_none=True)
    name = StrictString()
    tool_calls = fields.List(fields.Nested(ToolCallSchema))
    tool_call_id = StrictString()

    @validates_schema
    def _content_by_role(self, data, **kwargs):
        role = data.get("role")
        if role == "assistant":
            if data.get("content") is None and not data.get("tool_calls") and not data.get("function_call") \
                    and not data.get("refusal") and not data.get("audio"):
                raise ValidationError("is required unless tool_calls or function_call is given.", "content")
        elif role in ("system", "developer", "user", "tool", "function"):
            if data.get("content") is None and role != "function":
                raise ValidationError("is required.", "content")
        if role == "tool" and "tool_call_id" not in data:
            raise ValidationError("is required for messages with role 'tool'.", "tool_call_id")


# --- tools and formats --------------------------------------------------------------------

class FunctionDefinitionSchema(Schema):
    class Meta:
        unknown = INCLUDE
    name = StrictString(required=True, validate=validate.Regexp(
        _FUNCTION_NAME, error="must be 1-64 characters of a-z, A-Z, 0-9, _ or -."))
    description = StrictString()
    parameters = StrictDict()
    strict = StrictBool(allow_none=True)


class ToolSchema(Schema):
    class Meta:
        unknown = INCLUDE
    type = StrictString(required=True, validate=validate.OneOf(("function", "custom")))
    function = fields.Nested(FunctionDefinitionSchema)

    @validates_schema
    def _function_given(self, data, **kwargs):
        if data.get("type") == "function" and "function" not in data:
            raise ValidationError("is required for tools of type 'function'.", "function")


class ToolChoice(fields.Field):
    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            if value not in TOOL_CHOICE_MODES:
                raise ValidationError("must be one of: none, auto, required, or an object naming a function.")
            return value
        if isinstance(value, dict) and isinstance(value.get("type"), str):
            function = value.get("function")
            if value["type"] == "function" and not (isinstance(function, dict)
                                                    and isinstance(function.get("name"), str)):
                raise ValidationError("must name the function: {'type': 'function', 'function': {'name': …}}.")
            return value
        raise ValidationError("must be one of: none, auto, required, or an object naming a function.")


class JsonSchemaFormatSchema(Schema):
    class Meta:
        unknown = INCLUDE
    name = StrictString(required=True, validate=validate.Regexp(
        _FUNCTION_NAME, error="must be 1-64 characters of a-z, A-Z, 0-9, _ or -."))
    description = StrictString()
    schema = StrictDict()
    strict = StrictBool(allow_none=True)


class ResponseFormatSchema(Schema):
    class Meta:
        unknown = INCLUDE
    type = StrictString(required=True, validate=validate.OneOf(("text", "json_object", "json_schema")))
    json_schema = fields.Nested(JsonSchemaFormatSchema)

    @validates_schema
    def _schema_given(self, data, **kwargs):
        if data.get("type") == "json_schema" and "json_schema" not in data:
            raise ValidationError("is required when type is 'json_schema'.", "json_schema")


class StreamOptionsSchema(Schema):
    class Meta:
        unknown = INCLUDE
    include_usage = StrictBool()
    include_obfuscation = StrictBool()


class LogitBias(fields.Field):
    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, dict):
            raise ValidationError("must be an object mapping token ids to numbers.")
        if len(value) > MAX_LOGIT_BIAS:
            raise ValidationError(f"must have at most {MAX_LOGIT_BIAS} entries.")
        for key, bias in value.items():
            if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -100 <= bias <= 100:
                raise ValidationError(f"value for token {key} must be a number between -100 and 100.")
        return value


# --- request bodies -----------------------------------------------------------------------

class _ModelCallSchema(Schema):
    """Fields every model endpoint shares. Unknown top-level keys are vendor extras."""
    class Meta:
        unknown = INCLUDE
    model = StrictString(required=True, validate=validate.Length(min=1, error="must not be empty."))
    user = StrictString()


class _SamplingSchema(_ModelCallSchema):
    stream = StrictBool(allow_none=True)
    stream_options = fields.Nested(StreamOptionsSchema, allow_none=True)
    n = StrictInt(allow_none=True, validate=_range(1, 128))
    stop = OneOrManyStrings(allow_none=True)
    temperature = StrictNumber(allow_none=True, validate=_range(0, 2))
    top_p = StrictNumber(allow_none=True, validate=_range(0, 1))
    max_tokens = StrictInt(allow_none=True, validate=_at_least(1))
    presence_penalty = StrictNumber(allow_none=True, validate=_range(-2, 2))
    frequency_penalty = StrictNumber(allow_none=True, validate=_range(-2, 2))
    logit_bias = LogitBias(allow_none=True)
    seed = StrictInt(allow_none=True)

    @validates_schema
    def _stream_options_need_stream(self, data, **kwargs):
        if data.get("stream_options") is not None and not data.get("stream"):
            raise ValidationError("is only allowed when stream is true.", "stream_options")


class ChatCompletionSchema(_SamplingSchema):
    messages = CooperativeList(fields.Nested(MessageSchema), required=True, min_items=1, max_items=MAX_MESSAGES)
    tools = CooperativeList(fields.Nested(ToolSchema), allow_none=True, max_items=MAX_TOOLS)
    functions = CooperativeList(StrictDict(), allow_none=True, max_items=MAX_TOOLS)
    tool_choice = ToolChoice(allow_none=True)
    parallel_tool_calls = StrictBool(allow_none=True)
    response_format = fields.Nested(ResponseFormatSchema, allow_none=True)
    max_completion_tokens = StrictInt(allow_none=True, validate=_at_least(1))
    logprobs = StrictBool(allow_none=True)
    top_logprobs = StrictInt(allow_none=True, validate=_range(0, 20))
    reasoning_effort = StrictString(allow_none=True)
    metadata = StrictDict(allow_none=True)
    store = StrictBool(allow_none=True)
    modalities = fields.List(StrictString(), allow_none=True)

    @validates_schema
    def _top_logprobs_need_logprobs(self, data, **kwargs):
        if data.get("top_logprobs") is not None and not data.get("logprobs"):
            raise ValidationError("requires logprobs to be true.", "top_logprobs")


class Prompt(fields.Field):
    """A string, an array of strings, an array of token ids, or an array of token-id arrays."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            return value
        if isinstance(value, list) and len(value) > MAX_INPUTS:
            raise ValidationError(f"must have at most {MAX_INPUTS} items.")
        if isinstance(value, list) and value and (
                all(isinstance(v, str) for v in value)
                or all(_is_int(v) for v in value)
                or all(isinstance(v, list) and v and all(_is_int(t) for t in v) for v in value)):
            return value
        raise ValidationError("must be a string, an array of strings, or an array of token ids.")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class CompletionSchema(_SamplingSchema):
    prompt = Prompt(required=True)
    best_of = StrictInt(allow_none=True, validate=_range(1, 20))
    echo = StrictBool(allow_none=True)
    logprobs = StrictInt(allow_none=True, validate=_range(0, 5))
    suffix = StrictString(allow_none=True)


class EmbeddingSchema(_ModelCallSchema):
    input = Prompt(required=True)
    encoding_format = StrictString(validate=validate.OneOf(("float", "base64")))
    dimensions = StrictInt(validate=_range(1, MAX_DIMENSIONS))


_PART_SCHEMA = ContentPartSchema()
