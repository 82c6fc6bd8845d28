"""The ``oddish`` command line (Typer), a client of the REST API."""
