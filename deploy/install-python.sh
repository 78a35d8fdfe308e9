#!/bin/sh
# Installs plg's Python code and dependencies with the given pip: the one recipe behind both the
# developer's virtualenv (`make install`: deploy/install-python.sh .venv/bin/pip dev) and the image
# (deploy/Dockerfile: deploy/install-python.sh pip). Editable, because the services read schemas/ and
# deploy/ next to their source; the SDK's flag engine (sdk/plg_sdk) is installed the same way.
# tests/unit/devstack/test_compose_file.py checks that both callers use it.
set -eu
pip="$1"
extras="${2:-}"
target="."
if [ -n "$extras" ]; then
    target=".[$extras]"
fi
# One resolution: plg declares plg-sdk (services/growth imports its flag engine), and naming ./sdk in the
# same command is what satisfies that requirement (never a package index).
"$pip" install -q -e sdk -e "$target"
