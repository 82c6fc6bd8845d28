"""Keep Python's full garbage collections short in long-running processes.

The API, the worker and each trial process import Harbor, LiteLLM and Temporal: some 170k
objects that live as long as the process. Each full collection walks them all, 120-170 ms on
this kind of machine, during which the event loop serves nothing (a request, a grant, a
heartbeat). Moved to the permanent generation once started, they are never walked again."""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Collect what startup left behind, then exempt every object alive now from collection.
    Call it once the process has imported and built what it keeps for its lifetime."""
    gc.collect()
    gc.freeze()
