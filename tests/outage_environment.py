"""A local sandbox that cannot start while an outage file exists: an outage the test switches
off."""

from pathlib import Path
from typing import Any

from oddish.environments.local import LocalEnvironment


class OutageEnvironment(LocalEnvironment):
    def __init__(self, *args: Any, outage_file: str, **kwargs: Any) -> None:
        self._outage_file = Path(outage_file)
        super().__init__(*args, **kwargs)

    async def start(self, force_build: bool) -> None:
        if self._outage_file.exists():
            raise ConnectionError("sandbox provider unreachable: connection refused")
        await super().start(force_build)
