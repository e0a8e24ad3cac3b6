"""Command-line overrides checked against a command's schema, and config errors told with their cause.

Hydra accepts `+key=value` for any key: on a dataclass schema a typo (`+episdoes=1`) is added as a new key,
ignored by `OmegaConf.to_object`, and the run goes on with the default. A plain typo (`episdoes=1`) gets
Hydra's advice to add `+`, which then does exactly that. `check_override_keys` walks each override's key
through the schema dataclasses (worldbagel/config.py) before anything is composed and refuses a key the
schema does not have, with the known keys of that node and the closest match. Below a free-form field (a
`dict[str, Any]` such as `policy.kwargs` or `env.kwargs`, a list, `Any`) every key is allowed: `+` is how one
adds a key there.

Hydra and OmegaConf wrap the reason of a failure in generic messages ("Error merging override
episodes=abc"); `config_error_message` adds the root cause from the exception chain ("Value 'abc' of type
'str' could not be converted to Integer", with the full key).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Sequence
from typing import Any

from omegaconf.errors import OmegaConfBaseException

from worldbagel.errors import ConfigError

__all__ = ["check_override_keys", "config_error_message", "schema_fields"]

_TEMPLATE = re.compile(r"\$[A-Z_]{3,}")
"""OmegaConf's unformatted message templates ($VALUE, $FULL_KEY, ...) that appear deeper in its chains."""


def schema_fields(tp: Any) -> dict[str, Any] | None:
    """{field name: type} of a dataclass type (or an Optional of one); None when `tp` is free-form."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = members[0] if len(members) == 1 else None
    if not (isinstance(tp, type) and dataclasses.is_dataclass(tp)):
        return None
    try:
        hints = typing.get_type_hints(tp)
    except (NameError, TypeError):  # an annotation that cannot be resolved: keys below it are not checked
        return None
    return {f.name: hints[f.name] for f in dataclasses.fields(tp)}


def _unknown_key(command: str, given: str, path: list[str], part: str, known: Sequence[str]) -> ConfigError:
    node = ".".join(path)
    full = ".".join([*path, part])
    owner = f"`{node}`" if node else f"`worldbagel {command}`"
    close = difflib.get_close_matches(part, known, n=1)
    hint = f"; did you mean `{'.'.join([*path, close[0]])}`?" if close else ""
    where = f" ({full})" if node else ""
    return ConfigError(
        f"invalid {given}: {owner} has no key `{part}`{where}{hint} Known keys of {owner}: {', '.join(known)}"
    )


def check_override_keys(command: str, schema: type, overrides: Sequence[Any], groups: Sequence[str]) -> None:
    """Refuse overrides (parsed by Hydra's OverridesParser) whose key is not in `schema`.

    `groups` are the config group names (model, sampler, env, ...): `group=option` selects a group and must
    name a field of the schema too. Deletions (`~key`), `key@package` and `hydra.*` keys are left to Hydra.
    """
    for o in overrides:
        key = o.key_or_group
        if o.is_delete() or o.package is not None or key == "hydra" or key.startswith("hydra."):
            continue
        given = o.input_line if getattr(o, "input_line", None) else key
        parts = key.split(".")
        node: Any = schema
        for i, part in enumerate(parts):
            fields = schema_fields(node)
            if fields is None:  # free-form: any key may be set or added
                break
            if part not in fields:
                if i == 0 and part in groups:
                    raise ConfigError(
                        f"invalid {given}: `worldbagel {command}` has no `{part}` group (it uses no {part}); "
                        f"its keys: {', '.join(fields)}"
                    )
                raise _unknown_key(command, given, parts[:i], part, list(fields))
            node = fields[part]


def _chain(exc: BaseException) -> list[BaseException]:
    out, seen = [], {id(exc)}
    cur = (
        exc.__cause__
        if exc.__cause__ is not None
        else (None if exc.__suppress_context__ else exc.__context__)
    )
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        out.append(cur)
        cur = (
            cur.__cause__
            if cur.__cause__ is not None
            else (None if cur.__suppress_context__ else cur.__context__)
        )
    return out


def config_error_message(exc: BaseException) -> str:
    """`exc`'s message followed by its root cause (the most specific message down its exception chain).

    OmegaConf's own message (which names the full key and the schema type) is preferred over the plain
    Python error below it (e.g. "invalid literal for int()").
    """
    top = str(exc).strip()
    causes = [
        c
        for c in _chain(exc)
        if str(c).strip() and not _TEMPLATE.search(str(c)) and str(c).strip() not in top
    ]
    if not causes:
        return top
    omega = [c for c in causes if isinstance(c, OmegaConfBaseException)]
    root = str((omega or causes)[0 if omega else -1]).strip()
    return f"{top}: {root}" if top else root
