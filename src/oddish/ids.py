"""Record ids: a readable prefix and 96 random bits, so collisions stay negligible at billions of
rows."""

import secrets


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"
