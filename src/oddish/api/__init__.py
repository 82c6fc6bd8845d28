"""The REST API (FastAPI): validates input, stores task archives, and calls ``oddish.queue``."""
