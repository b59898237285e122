"""How this project starts worker processes: forked from one fork server that imported, once,
what the workers need.

A spawned worker starts a fresh interpreter and imports its modules itself; for a training
worker (torch, Lightning, PyG) that is about 3 s of CPU before its first cell, paid by every
worker of every study. Where the platform has ``forkserver`` (Linux, macOS), workers are forked
instead from a server process that Python starts once per parent process: a clean interpreter,
free of the parent's threads (so safe once torch runs threads, unlike ``fork``), that imports
the *preload* modules once; each worker is then ready in milliseconds.

The server is one per process and its preload list takes effect when it starts, so every user
of it names its modules here (:func:`start_context`) and the first start decides. A caller that
knows early that it will want workers starts the server at once (:func:`prestart`): the server
imports in another process while this one goes on with its own start.

Two things a fork-server worker does not get from the parent that spawn would give it, and
what the callers do about them:

- the parent's environment as it is now (a worker inherits the server's, from when it started):
  callers pass ``dict(os.environ)`` and the worker applies it (:func:`adopt_environment`);
- a fresh import of a module changed since the server started: nothing imports project code
  anew during a run.

CUDA workers are spawned (:func:`start_context` with ``cuda=True``): a process that has touched
the CUDA driver cannot be forked safely, and the server's imports are not checked for that.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
from collections.abc import Iterable, Mapping

#: Modules the fork server imports before it forks its first worker (``__main__``: the main
#: script, so that workers need not import it again). Grown by :func:`start_context`.
_PRELOAD: list[str] = ["__main__"]


def start_context(
    preload: Iterable[str] = (), cuda: bool = False
) -> multiprocessing.context.BaseContext:
    """The context to start workers with: ``forkserver`` with ``preload`` added to the server's
    imports (if it has not started yet), or ``spawn`` for CUDA workers and where the platform
    has no fork server."""
    if cuda or "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    for module in preload:
        if module not in _PRELOAD:
            _PRELOAD.append(module)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(_PRELOAD))
    return context


def prestart(preload: Iterable[str] = ()) -> None:
    """Start the fork server now (it returns at once), with ``preload`` among its imports, so
    that it imports beside this process's own start. Nothing where there is no fork server."""
    context = start_context(preload)
    if context.get_start_method() == "forkserver":
        from multiprocessing import forkserver  # not on every platform

        forkserver.ensure_running()


def adopt_environment(environment: Mapping[str, str]) -> None:
    """In a worker: make ``os.environ`` the parent's ``environment`` (a fork-server worker has
    the server's, from when the server started)."""
    if dict(os.environ) != dict(environment):
        os.environ.clear()
        os.environ.update(environment)
