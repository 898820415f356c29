#!/usr/bin/env bash
# Installs what the benchmark drives and compares against: wrk (the load generator),
# nginx-light (a static-file reference, and proxy_cache in the "any upstream" scenarios),
# varnish (a shared HTTP cache, in the "any upstream" scenarios) and the Python peers (the
# `bench` extra).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || missing+=(nginx-light)
command -v varnishd >/dev/null || missing+=(varnish)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update
    apt-get install -y "${missing[@]}"
fi
pip install -e '.[bench]'
