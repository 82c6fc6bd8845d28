"""The original Oddish's worker package, kept so its imports and entry point still work: the
worker itself is ``oddish.worker`` (a Temporal worker plus the slot dispatcher)."""
