"""An environment whose sandbox never comes up, loaded by import path like any custom
environment."""

from oddish.environments.local import LocalEnvironment


class UnstartableEnvironment(LocalEnvironment):
    async def start(self, force_build: bool) -> None:
        raise ConnectionError("sandbox provider unreachable: connection refused")
