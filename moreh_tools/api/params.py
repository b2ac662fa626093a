"""Reading request parameters the Moreh way: query-string parameters, also on POST/PUT/DELETE.

``param(request, "id", int)`` converts and checks one parameter and raises ``ApiError(600)`` naming it when it is
missing or malformed. A JSON object or form body is accepted too (the app's body middleware parses it): the query
string wins when a name is in both. The OpenAPI description lists each endpoint's parameters by reading the
``param(...)`` calls in its source (``param_specs``), so routes never declare them twice.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request

from moreh_tools.api.errors import SYNTAX, ApiError

T = TypeVar("T")
BODY_PARAMS_KEY = "moreh.body_params"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_TEXT = 4096
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
_KIND_WORDS = {str: "text", int: "an integer", bool: "a boolean (true or false)", float: "a number"}
_EXAMPLES = {str: "text", int: "1", bool: "true", float: "1.5"}


def _raw(request: Request, name: str) -> str | None:
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise ApiError(SYNTAX, f"SyntaxError. Parameter '{name}' is given {len(values)} times; give it once.")
    if values:
        return values[0]
    body_params: dict[str, Any] = request.scope.get(BODY_PARAMS_KEY) or {}
    if name in body_params:
        value = body_params[name]
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float | str):
            return str(value)
        raise ApiError(SYNTAX, f"SyntaxError. Parameter '{name}' in the body must be a string, number or boolean.")
    return None


def convert(name: str, raw: str, kind: type) -> Any:
    """Convert ``raw`` to ``kind`` (str, int, bool or float) or raise 600 naming ``name``."""
    wanted = _KIND_WORDS.get(kind, kind.__name__)
    shown = raw if len(raw) <= 40 else raw[:40] + "..."
    bad = ApiError(SYNTAX, f"SyntaxError. Parameter '{name}' must be {wanted}, got '{shown}'.")
    if kind is str:
        if len(raw) > MAX_TEXT or "\x00" in raw:
            raise ApiError(SYNTAX, f"SyntaxError. Parameter '{name}' must be at most {MAX_TEXT} characters, no NUL.")
        try:
            raw.encode()  # a JSON body's "\ud800" escape decodes to a lone surrogate, which no UTF-8 consumer takes
        except UnicodeEncodeError:
            raise ApiError(
                SYNTAX, f"SyntaxError. Parameter '{name}' must be UTF-8 text (no lone surrogates)."
            ) from None
        return raw
    text = raw.strip()
    if kind is int:
        body = text[1:] if text[:1] in "+-" else text
        if not body.isascii() or not body.isdigit() or text != raw:
            raise bad
        number = int(text)
        if not INT64_MIN <= number <= INT64_MAX:
            raise ApiError(SYNTAX, f"SyntaxError. Parameter '{name}' is out of the 64-bit integer range.")
        return number
    if kind is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise bad
    if kind is float:
        try:
            number_f = float(text)
        except ValueError:
            raise bad from None
        if number_f != number_f or number_f in (float("inf"), float("-inf")):
            raise bad
        return number_f
    raise TypeError(f"unsupported parameter kind {kind!r}")


def first_given(*values: Any) -> Any:
    """The first value that is not None (None when all are): for a parameter clients send under several names."""
    return next((v for v in values if v is not None), None)


def param(request: Request, name: str, kind: type = str, *, required: bool = True, default: Any = None) -> Any:
    """Return query parameter ``name`` converted to ``kind``; 600 naming it when missing or malformed.

    An empty value counts as missing for non-text kinds (``?id=`` is not an id).
    """
    raw = _raw(request, name)
    if raw is None or (raw == "" and kind is not str):
        if required:
            example = _EXAMPLES.get(kind, "value")
            raise ApiError(
                SYNTAX,
                f"SyntaxError. Parameter '{name}' is required ({_KIND_WORDS.get(kind, kind.__name__)}), "
                f"e.g. ?{name}={example}.",
            )
        return default
    return convert(name, raw, kind)


# -- OpenAPI: the parameters an endpoint reads ----------------------------------------------------------------------

_OPENAPI_TYPES = {"str": "string", "int": "integer", "bool": "boolean", "float": "number"}


@dataclass(frozen=True)
class ParamSpec:
    """One query parameter as the OpenAPI description shows it."""

    name: str
    type: str  # OpenAPI type: string, integer, boolean, number
    required: bool

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI parameter object."""
        schema: dict[str, Any] = {"type": self.type}
        if self.type == "integer":
            schema.update(minimum=INT64_MIN, maximum=INT64_MAX)
        return {"name": self.name, "in": "query", "required": self.required, "schema": schema}


def _spec_of(call: ast.Call) -> ParamSpec | None:
    if len(call.args) < 2 or not isinstance(call.args[1], ast.Constant) or not isinstance(call.args[1].value, str):
        return None
    kind = "str"
    if len(call.args) >= 3 and isinstance(call.args[2], ast.Name):
        kind = call.args[2].id
    required = True
    for keyword in call.keywords:
        if keyword.arg == "kind" and isinstance(keyword.value, ast.Name):
            kind = keyword.value.id
        if keyword.arg == "required":  # required only when it always is (a computed flag lists it as optional)
            required = isinstance(keyword.value, ast.Constant) and bool(keyword.value.value)
    return ParamSpec(call.args[1].value, _OPENAPI_TYPES.get(kind, "string"), required)


def _calls(func: Any, seen: set[Any]) -> list[ast.Call]:
    """The calls in ``func``'s source in source order, descending into same-module helpers it calls by name."""
    seen.add(func)
    try:
        source = textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError):
        return []
    calls = sorted(
        (n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call)), key=lambda n: (n.lineno, n.col_offset)
    )
    found: list[ast.Call] = []
    module = getattr(func, "__module__", None)
    scope = getattr(func, "__globals__", {})
    for call in calls:
        found.append(call)
        if isinstance(call.func, ast.Name):
            helper = scope.get(call.func.id)
            if inspect.isfunction(helper) and helper.__module__ == module and helper not in seen:
                found.extend(_calls(helper, seen))
    return found


def param_specs(func: Any) -> list[ParamSpec]:
    """The ``param(request, "name", kind, required=...)`` calls in ``func`` (and the same-module helpers it calls),
    required ones first, deduplicated.

    A name read both required and optional (on different branches) is listed as optional.
    """
    specs: dict[str, ParamSpec] = {}
    for node in _calls(func, set()):
        callee = node.func
        name = callee.id if isinstance(callee, ast.Name) else callee.attr if isinstance(callee, ast.Attribute) else ""
        if name != "param":
            continue
        spec = _spec_of(node)
        if spec is None:
            continue
        previous = specs.get(spec.name)
        if previous is not None and not (previous.required and spec.required):
            spec = ParamSpec(spec.name, previous.type, False)
        specs[spec.name] = spec
    order = list(specs)
    return sorted(specs.values(), key=lambda s: (not s.required, order.index(s.name)))
