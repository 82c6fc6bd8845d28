#!/bin/bash
# The oracle runs fine, but nothing it writes satisfies the test.
set -euo pipefail
echo "attempt" > /app/impossible.txt
