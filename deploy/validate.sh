#!/usr/bin/env bash
# Validates deploy/*.yaml against the Kubernetes OpenAPI schemas, offline: the PyPI package
# kubernetes-validate ships the schemas of every Kubernetes minor version it knows. Installs
# it into a venv under target/ on first use (PyPI is the only network access).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/deploy-venv
if [[ ! -x $venv/bin/kubernetes-validate ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'kubernetes-validate==1.37.0'
fi
# --strict: unknown fields are errors too (a misspelt key is silently ignored by the API
# server). Oldest and newest Kubernetes the manifests are meant for.
for version in 1.33.0 1.37.0; do
    "$venv/bin/kubernetes-validate" --strict --kubernetes-version "$version" deploy/*.yaml
done
