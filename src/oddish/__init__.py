"""oddish: a durable evaluation scheduler for Harbor agent tasks."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("oddish")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
