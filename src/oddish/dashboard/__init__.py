"""The dashboard: server-rendered pages of experiments, tasks, trials and queues under /ui,
live while runs progress, with no build step and nothing loaded from another host."""

from oddish.dashboard.routes import install

__all__ = ["install"]
