#!/usr/bin/env bash
# `make run`: the system end to end on the local stack. Grows with the services; see README.
set -euo pipefail
cd "$(dirname "$0")/.."
anomstream stack up
eval "$(anomstream stack env)"
anomstream stack status
