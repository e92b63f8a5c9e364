"""The trainer's profiler when none is asked for (``conf/trainer/default.yaml``).

Lightning wraps every hook it calls, and every callback's hook, in ``trainer.profiler.profile(name)``.
Its default ``PassThroughProfiler`` inherits ``Profiler.profile``, a generator-based context manager
that calls two empty methods: about 3 µs each time on a 2-core CPU, paid once per callback per hook
(an AAE batch calls 11 callback hooks, each over every callback). ``NoProfiler`` returns one shared
``nullcontext`` instead (``experiments/results/bench.md``). ``debug=profiler`` (or any
``trainer.profiler``) replaces it with a real profiler.
"""

from __future__ import annotations

import contextlib

from lightning.pytorch.profilers import PassThroughProfiler

_NOTHING = contextlib.nullcontext()


class NoProfiler(PassThroughProfiler):
    """``PassThroughProfiler`` (it records nothing, writes nothing) without its per-call context manager."""

    def profile(self, action_name: str) -> contextlib.nullcontext:
        return _NOTHING
