#!/bin/bash
# Correct but without the comment line, so it only earns partial credit.
set -euo pipefail
awk '{ s += $1 } END { print s }' /app/numbers.txt > /app/answer.txt
