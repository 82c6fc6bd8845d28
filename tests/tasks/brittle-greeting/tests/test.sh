#!/bin/bash
# BRITTLE on purpose (a test task for the judge): it demands a capital W that the instruction
# never asked for, so even a correct solution fails.
if [ "$(cat /app/greeting.txt 2>/dev/null)" = "Hello, World!" ]; then
  echo 1 > /logs/verifier/reward.txt
else
  echo "greeting.txt is not exactly 'Hello, World!'"
  echo 0 > /logs/verifier/reward.txt
fi
