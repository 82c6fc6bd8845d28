"""Custom search attributes that make tasks findable in the Temporal Web UI."""

from temporalio.common import SearchAttributeKey

EXPERIMENT = SearchAttributeKey.for_keyword("OddishExperiment")
TASK = SearchAttributeKey.for_keyword("OddishTask")
STATUS = SearchAttributeKey.for_keyword("OddishStatus")
QUEUE_KEYS = SearchAttributeKey.for_keyword_list("OddishQueueKeys")

ALL = (EXPERIMENT, TASK, STATUS, QUEUE_KEYS)
