"""Harbor environments provided by oddish.

Environments are loaded by Harbor through an import path, e.g.
``EnvironmentConfig(import_path=LOCAL_ENVIRONMENT_IMPORT_PATH)``. This package
deliberately imports nothing heavy so importing it stays cheap.
"""

LOCAL_ENVIRONMENT_IMPORT_PATH = "oddish.environments.local:LocalEnvironment"

__all__ = ["LOCAL_ENVIRONMENT_IMPORT_PATH"]
