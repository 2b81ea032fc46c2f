"""Named sources: a short name in a config that stands for a model, reward CLIP or judge folder.

`model.pretrained`, `reward.clip_model` and `eval.judge` each take a hub id or model name, a local
folder, or a *source name* such as "toyworld" (the embedded world). The loaders
(`diffusion.loading`, `rewards.openclip_loading`, `evaluation.run`) call `resolve(kind, name)`:
a registered name becomes its folder, anything else comes back unchanged.

Why a registry: the loaders sit low in the stack and must not import the toy world, which sits
above them (it trains models with them). So the dependency is inverted: a *provider* registers a
resolver per (kind, name) at import time,

    register("model", "toyworld", pipeline_dir)   # in critic_unlearn/toyworld/__init__.py

and the loaders only ever import this module. A resolver is called at resolve time, not at
registration, so an unbuilt world raises its own message (how to build it) only when it is used.

Who imports the providers: `resolve` imports every module named in `PROVIDERS` by name, once, on
first use. The entry points (CLI, training, evaluation, tests, a notebook) therefore need no import
for its side effect. The import is by name on purpose: no lower layer depends on a provider's code
(import-linter, which checks static imports, sees none; see [tool.importlinter] in
pyproject.toml), and this module knows only a provider's module name, none of its contents. A
provider module that is not installed is skipped (its names are then unknown and pass through
unchanged, so the loader's own "no such model/folder" message applies). Another install adds its
own sources with `register(...)` or by appending its module to `PROVIDERS`.

This module imports nothing of the project and no torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

KINDS = ("model", "reward_clip", "judge")
# Modules imported (by name) before the first lookup; importing them registers their sources.
PROVIDERS: list[str] = ["critic_unlearn.toyworld"]

Resolver = Callable[[], str | Path]

_resolvers: dict[tuple[str, str], Resolver] = {}
_imported: set[str] = set()


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown source kind {kind!r}; one of {list(KINDS)}")


def register(kind: str, name: str, resolver: Resolver) -> None:
    """Make `name` stand for the folder `resolver()` returns when a `kind` loader reads it.

    Registering a name again replaces its resolver (a provider module may be reloaded)."""
    _check_kind(kind)
    _resolvers[(kind, name)] = resolver


def _import_providers() -> None:
    for module in PROVIDERS:
        if module in _imported:
            continue
        _imported.add(module)
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
                raise  # the provider exists but one of its own imports is missing: say so
            # the provider itself is not installed: its names stay unknown


def names(kind: str) -> list[str]:
    """The registered source names of `kind`, sorted."""
    _check_kind(kind)
    _import_providers()
    return sorted(n for k, n in _resolvers if k == kind)


def is_source(kind: str, name: str) -> bool:
    """Whether `name` is a registered source of `kind` (not a hub id or folder)."""
    _check_kind(kind)
    _import_providers()
    return (kind, name) in _resolvers


def resolve(kind: str, name: str) -> str:
    """A registered source name -> its folder (as a string); any other name unchanged.

    A registered name wins over a same-named folder in the working directory. The resolver's own
    errors propagate (e.g. the toy world's WorldMissingError, which says how to build one)."""
    if not is_source(kind, name):
        return name
    return str(_resolvers[(kind, name)]())


__all__ = ["KINDS", "PROVIDERS", "is_source", "names", "register", "resolve"]
