#!/bin/bash
# Grades two criteria and writes several rewards to reward.json; "reward" is
# the main score (the mean of the criteria).
correctness=0
style=0
if [ "$(head -n 1 /app/answer.txt 2>/dev/null)" = "10" ]; then correctness=1; fi
if grep -q '^#' /app/answer.txt 2>/dev/null; then style=1; fi
reward=$(awk -v c="$correctness" -v s="$style" 'BEGIN { printf "%.2f", (c + s) / 2 }')
printf '{"reward": %s, "correctness": %s.0, "style": %s.0}\n' "$reward" "$correctness" "$style" \
  > /logs/verifier/reward.json
cat /logs/verifier/reward.json
