#!/bin/bash
# Sleeps ODDISH_SLEEP_SECONDS (default 1; set it through TrialConfig.agent.env)
# so concurrency tests and benchmarks can hold a trial slot for a known time.
set -euo pipefail
sleep "${ODDISH_SLEEP_SECONDS:-1}"
echo done > /app/answer.txt
