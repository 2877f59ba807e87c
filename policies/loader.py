"""Loading a policy: a built-in name (`strict`, `balanced`, `research`) or a path to a TOML file.

A bare name (no `/`, no `.toml`) means a built-in, shipped in `policies/builtin/<name>.toml`; anything
else is a path. A file may `extends = "<name or path>"` another policy (paths relative to the file)
and state only what it changes. Whatever goes wrong raises one `PolicyError` naming the file and
listing every bad field.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from policies.errors import PolicyError, validation_problems
from policies.schema import Policy

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["load_policy", "builtin_names", "parse_policy"]


def builtin_names() -> list[str]:
    """The names of the built-in policies."""
    folder = resources.files("policies") / "builtin"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def _is_bare_name(ref: str) -> bool:
    return "/" not in ref and "\\" not in ref and not ref.endswith(".toml")


def _read(ref: str | Path, *, relative_to: Path | None) -> tuple[str, str, Path | None, str]:
    """(text, source label, the file's folder or None for a built-in, default name)."""
    if isinstance(ref, str) and _is_bare_name(ref) and ref in builtin_names():
        text = (resources.files("policies") / "builtin" / f"{ref}.toml").read_text(encoding="utf-8")
        return text, f"built-in '{ref}'", None, ref
    path = Path(ref).expanduser()
    if relative_to is not None and not path.is_absolute():
        path = relative_to / path
    if not path.is_file():
        if isinstance(ref, str) and _is_bare_name(ref):
            problem = f"unknown policy; the built-in policies are {', '.join(builtin_names())}, or give a TOML file"
        else:
            problem = "no such file"
        raise PolicyError(str(ref) if relative_to is None else path, [problem])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(path, [f"cannot read the file: {exc}"]) from None
    return text, str(path), path.parent, path.stem


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; every other value (lists included) replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _raw(ref: str | Path, *, relative_to: Path | None, chain: tuple[str, ...]) -> tuple[dict[str, Any], str]:
    text, source, folder, default_name = _read(ref, relative_to=relative_to)
    if source in chain:
        raise PolicyError(source, [f"'extends' loops: {' -> '.join((*chain, source))}"])
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(source, [f"not valid TOML: {exc}"]) from None
    data.setdefault("name", default_name)
    base_ref = data.pop("extends", None)
    if base_ref is None:
        return data, source
    if not isinstance(base_ref, str) or not base_ref.strip():
        raise PolicyError(source, [f"extends: must be a policy name or a path (got {base_ref!r})"])
    base, _ = _raw(base_ref, relative_to=folder, chain=(*chain, source))
    base.pop("description", None)  # a description speaks for its own file only
    return _merge(base, data), source


def parse_policy(data: dict[str, Any], *, source: str = "<data>") -> Policy:
    """Validate an already-parsed policy table, raising `PolicyError` with every problem."""
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(source, validation_problems(exc)) from None


def load_policy(name_or_path: str | Path) -> Policy:
    """A built-in policy by name, or a policy TOML file by path."""
    data, source = _raw(name_or_path, relative_to=None, chain=())
    return parse_policy(data, source=source)
