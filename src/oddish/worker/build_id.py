"""The build id each of our Temporal workers reports."""

from __future__ import annotations

from importlib.metadata import version

# Left unset, temporalio derives one by reading and hashing the code of every module loaded
# (Harbor and LiteLLM included): seconds of CPU at the start of each worker process and each
# trial process. We use no worker versioning, so the package's version says enough.
WORKER_BUILD_ID = f"oddish-{version('oddish')}"
