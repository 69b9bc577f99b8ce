"""Turn catalog YAML files into validated dataclasses with messages that name the field."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
"""The repository's ``conf/`` folder (Hydra config groups live below it)."""


class CatalogError(ValueError):
    """A catalog entry or a lookup is invalid; the message names the field and the fix."""


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a simple type hint (int, float, bool, str, Optional)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if hint is bool:
        if not isinstance(value, bool):
            raise CatalogError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise CatalogError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "6.7e9" (no sign) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CatalogError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise CatalogError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def build_dataclass(cls: type[T], raw: Any, source: str) -> T:
    """Build ``cls`` from a mapping, rejecting unknown and missing keys by name.

    Args:
        cls: a dataclass type whose ``__post_init__`` validates values.
        raw: the parsed YAML mapping.
        source: where the mapping came from (file name), used in messages.

    Returns:
        The constructed dataclass instance.

    Raises:
        CatalogError: naming ``source`` and the offending field.
    """
    if not isinstance(raw, dict):
        raise CatalogError(f"{source}: expected a mapping of fields, got {type(raw).__name__}")
    hints = _field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        hint = difflib.get_close_matches(unknown[0], list(fields), n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise CatalogError(
            f"{source}: unknown field {unknown[0]!r}{extra}; allowed: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, f in fields.items():
        if name not in raw:
            no_default = (
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            )
            if no_default:
                raise CatalogError(f"{source}: missing required field {name!r}")
            continue
        kwargs[name] = _coerce(raw[name], hints[name], f"{source}: field {name!r}")
    try:
        return cls(**kwargs)
    except CatalogError:
        raise
    except ValueError as exc:
        raise CatalogError(f"{source}: {exc}") from None


def load_yaml(path: Path) -> Any:
    """Parse one YAML file, turning syntax errors into a :class:`CatalogError`."""
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path.name}: malformed YAML: {exc}") from None


def normalise_name(name: str) -> str:
    """Lookup key: lower case with ``-``, ``_``, ``.`` and spaces removed."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def lookup(entries: dict[str, T], name: str, kind: str) -> T:
    """Find ``name`` in ``entries`` (keys are normalised names), or list the known ones."""
    if not isinstance(name, str) or not name:
        raise CatalogError(f"{kind} name must be a non-empty string, got {name!r}")
    key = normalise_name(name)
    if key in entries:
        return entries[key]
    known = sorted({getattr(v, "name", k) for k, v in entries.items()})
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    extra = f" Did you mean {', '.join(close)}?" if close else ""
    raise CatalogError(f"unknown {kind} {name!r}.{extra} Known {kind}s: {', '.join(known)}")


def run_cli(main, argv=None) -> None:
    """Run a command-line ``main``; bad input ends with one clear line and exit code 2."""
    import sys

    try:
        main(argv)
    except (CatalogError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
