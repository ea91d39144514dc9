"""Modules that are also the API's functions: ``abexrat.train(...)`` and ``abexrat.study(...)``.

``abexrat.train`` and ``abexrat.study`` are modules (the training loop, the study package) and the
API's two verbs. A module's class may be a subclass of ``ModuleType``: these two get one whose
``__call__`` is the API function, so ``abexrat.train.fit`` and ``abexrat.train(config)`` both work
whichever was imported first.
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Callable
from typing import Any


def make_callable(module_name: str, function: Callable[..., Any]) -> None:
    """Make ``sys.modules[module_name]`` callable as ``function`` (its docstring and signature too)."""

    class CallableModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return function(*args, **kwargs)

    CallableModule.__call__.__doc__ = function.__doc__
    module = sys.modules[module_name]
    module.__class__ = CallableModule
    module.__signature__ = inspect.signature(function)  # what help() and IPython's "?" show
