"""Modules that are also the API's functions: ``abexrat.train(...)`` and ``abexrat.study(...)``.

``abexrat.train`` and ``abexrat.study`` are modules (the training loop, the study package) and the
API's two verbs. A module's class may be a subclass of ``ModuleType``: these two get one whose
``__call__`` is the API function, so ``abexrat.train.fit`` and ``abexrat.train(config)`` both work
whichever was imported first.

The function is named as ``"module:function"`` and imported on the first call: the API sits above
the training loop and the study runner, which must not import it back.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
from collections.abc import Callable
from typing import Any


def _resolve(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def make_callable(module_name: str, target: str) -> None:
    """Make ``sys.modules[module_name]`` callable as ``target`` (``"module:function"``), with that
    function's signature (what help() and IPython's "?" show)."""

    class CallableModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return _resolve(target)(*args, **kwargs)

        @property
        def __signature__(self) -> inspect.Signature:
            return inspect.signature(_resolve(target))

    CallableModule.__call__.__doc__ = f"Call :func:`{target.replace(':', '.')}`."
    sys.modules[module_name].__class__ = CallableModule
