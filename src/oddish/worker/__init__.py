"""The worker process: a Temporal worker for workflows and activities, plus the slot dispatcher."""
