#!/bin/bash
# This check can never pass: reward is always 0.
if [ "$(head -n 1 /app/impossible.txt 2>/dev/null)" = "a" ] && \
   [ "$(head -n 1 /app/impossible.txt 2>/dev/null)" = "b" ]; then
  echo 1 > /logs/verifier/reward.txt
else
  echo 0 > /logs/verifier/reward.txt
fi
