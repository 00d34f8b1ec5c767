"""Pydantic validation told the way the configuration speaks: one ``path: message`` line per
problem (``lanes.x.timeout_s: must be greater than 0``), and the few field annotations that
give a value its own message (:func:`says`), its own absence message (:func:`required`) or a
quiet fallback (:func:`otherwise`).

Shared by ``quarterdeck.toml`` (:mod:`quarterdeck.runtime.config`) and the adapters' options
(:mod:`quarterdeck.runtime.lanes`).
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import Field, ValidationError, ValidatorFunctionWrapHandler, WrapValidator
from pydantic_core import ErrorDetails, PydanticCustomError

_MESSAGES: Final = {
    "missing": "is required",
    "extra_forbidden": "unknown setting",
    "unexpected_keyword_argument": "unknown setting",
    "string_type": "must be a string",
    "path_type": "must be a string",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "dataclass_type": "must be a table",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than_equal": "must be at most {le}",
    "too_short": "must not be empty",
    "string_too_short": "must not be empty",
}
_PROBLEM: Final = "problem"


def problem(message: str) -> PydanticCustomError:
    """The error a validator raises to report ``message`` as it is."""
    return PydanticCustomError(_PROBLEM, "{message}", {"message": message})


def problems(error: ValidationError, where: str = "") -> list[str]:
    """Each error of ``error`` as ``path: message``, the path starting with ``where``."""
    lines: list[str] = []
    for detail in error.errors(include_url=False):
        line = f"{_path(where, detail['loc'])}: {_message(detail)}"
        if line not in lines:
            lines.append(line)
    return lines


def _path(where: str, loc: tuple[int | str, ...]) -> str:
    path = where
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path


def _message(detail: ErrorDetails) -> str:
    template = _MESSAGES.get(detail["type"])
    if template is None:
        return detail["msg"]
    context = detail.get("ctx", {})
    return template.format(
        **{k: f"{v:g}" if isinstance(v, float) else v for k, v in context.items()}
    )


def says(message: str, *, parts: bool = True) -> WrapValidator:
    """Report any failure of the annotated value as one ``message`` at its path. With
    ``parts=False`` only the value's own failures (wrong type, empty) are told so; a failing
    part (a table in a list) keeps its own path and message."""

    def validate(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            if parts or all(not detail["loc"] for detail in exc.errors()):
                raise problem(message) from None
            raise

    return WrapValidator(validate)


def otherwise(default: Any) -> WrapValidator:
    """Use ``default`` in place of an unusable value instead of refusing it (options that
    have always been read leniently)."""

    def validate(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError:
            return default

    return WrapValidator(validate)


def required() -> Any:
    """The default of a field that must be given but whose absence has its own message: the
    absent value (None) goes through the field's validation, so its :func:`says` reports it."""
    return Field(default=None, validate_default=True)
