# The image of the db-init, api and worker services of docker-compose.yml.
FROM python:3.12-slim

# bubblewrap runs the sandboxes of the `local` environment.
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap \
    && rm -rf /var/lib/apt/lists/*

COPY --from=ghcr.io/astral-sh/uv:0.13.8 /uv /uvx /bin/

ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.12

WORKDIR /app

# Dependencies first, in a layer of their own: it is rebuilt only when the lock file changes.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project

# The package itself, installed as a wheel: the migrations travel inside it (oddish/_alembic).
COPY alembic.ini ./
COPY alembic ./alembic
COPY src ./src
RUN uv sync --frozen --no-dev --no-editable

# Example tasks, to try a run from inside a container.
COPY examples ./examples

ENV PATH="/app/.venv/bin:$PATH" \
    HARBOR_TELEMETRY=0 \
    ODDISH_HOME=/data/home \
    ODDISH_TASKS_DIR=/data/tasks \
    ODDISH_HARBOR_JOBS_DIR=/data/harbor-jobs

EXPOSE 8000
CMD ["python", "-m", "oddish.api", "--host", "0.0.0.0", "--port", "8000", "--no-workers"]
