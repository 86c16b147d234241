"""Render ``docs/API.md`` from the docstrings of the public API (``wsi_fusion.__all__``).

``python -m wsi_fusion._apidoc > docs/API.md`` (``make api-docs``) regenerates the page;
``tests/test_api.py`` checks that it lists every public name with its current signature.
"""

from __future__ import annotations

import inspect
from typing import Any

import wsi_fusion

#: Page order: entry points first, then the stack and registry, settings, results, errors.
GROUPS = (
    ("Fusing", ("fuse", "fuse_array", "fuse_slide")),
    ("Reading focal planes", ("open_stack", "Box")),
    ("Fusers", ("list_fusers", "create_fuser")),
    ("Settings and results", ("RunConfig", "load_config", "RunReport")),
)

HEADER = """# Python API

Generated from the docstrings by `python -m wsi_fusion._apidoc > docs/API.md` (`make api-docs`);
do not edit by hand. Everything here is importable from `wsi_fusion` directly; the package
imports numpy, Dask and torch only when one of these is first used. Examples: the README's
"Python API" section and `notebooks/quickstart.ipynb`.
"""


class _Raw(str):
    """An annotation string shown as written (``from __future__ import annotations`` keeps
    annotations as strings, which ``inspect`` would print quoted)."""

    def __repr__(self) -> str:
        return str(self)


def _unquoted(annotation: Any) -> Any:
    return _Raw(annotation) if isinstance(annotation, str) else annotation


def signature(obj: Any) -> str:
    """``name(params)`` of a function or class (a class: its constructor's parameters)."""
    name = obj.__name__
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return name
    params = [p.replace(annotation=_unquoted(p.annotation)) for p in sig.parameters.values()]
    sig = sig.replace(parameters=params, return_annotation=_unquoted(sig.return_annotation))
    text = str(sig)
    if inspect.isclass(obj):
        text = text.split(" -> ")[0]
    return f"{name}{text}"


def _fields(obj: Any) -> str:
    """The fields of a pydantic model, one line each: name, type, default."""
    lines = []
    for field_name, info in obj.model_fields.items():
        ann = info.annotation
        kind = ann.__name__ if isinstance(ann, type) else str(ann).replace("typing.", "")
        default = (
            "(required)"
            if info.is_required()
            else f"= {info.get_default(call_default_factory=True)!r}"
        )
        lines.append(f"- `{field_name}`: `{kind}` {default}")
    return "\n".join(lines)


def _section(name: str) -> str:
    obj = getattr(wsi_fusion, name)
    doc = inspect.getdoc(obj) or "(no docstring)"
    kind = "class" if inspect.isclass(obj) else "function"
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        kind = "exception"
    where = f"{kind} `{obj.__module__}.{name}`"
    if hasattr(obj, "model_fields"):  # a pydantic model: its fields, not a long signature
        return f"### `{name}`\n\n{where}\n\n{doc}\n\nFields:\n\n{_fields(obj)}\n"
    return f"### `{name}`\n\n{where}\n\n```python\n{signature(obj)}\n```\n\n{doc}\n"


def render() -> str:
    """The whole page."""
    parts = [HEADER]
    listed = set()
    for title, names in GROUPS:
        parts.append(f"## {title}\n")
        for name in names:
            parts.append(_section(name))
            listed.add(name)
    errors = sorted(
        n for n in wsi_fusion.__all__ if n not in listed and n != "__version__" and n[0].isupper()
    )
    parts.append(
        "## Errors\n\nEvery error the package raises on purpose is a `WsiFusionError`; each also "
        "inherits the builtin that fits (`FileNotFoundError`, `ValueError`, …).\n"
    )
    items = []
    for name in ["WsiFusionError"] + [n for n in errors if n != "WsiFusionError"]:
        obj = getattr(wsi_fusion, name)
        bases = ", ".join(b.__name__ for b in obj.__bases__)
        items.append(f"- `{name}({bases})`: {(inspect.getdoc(obj) or '').splitlines()[0]}")
        listed.add(name)
    parts.append("\n".join(items) + "\n")
    missing = set(wsi_fusion.__all__) - listed - {"__version__"}
    if missing:
        raise RuntimeError(f"public names missing from the API page: {sorted(missing)}")
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
