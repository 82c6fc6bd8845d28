#!/bin/bash
# Reward 1 if /app/hello.txt has the expected content, else 0.
if [ "$(cat /app/hello.txt 2>/dev/null)" = "Hello, world!" ]; then
  echo 1 > /logs/verifier/reward.txt
else
  echo "hello.txt missing or wrong"
  echo 0 > /logs/verifier/reward.txt
fi
