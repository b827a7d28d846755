#!/usr/bin/env bash
# `make images`: build every image in images/images.yaml with docker or podman, whichever answers.
# Usage: images/build.sh [--dry-run] [--push] [ROLE ...]   (roles: teacher teacher-tpu student cpu)
# CONTAINER_ENGINE=docker|podman picks one; PYTHON picks the interpreter that reads images.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=0 push=0 roles=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry_run=1 ;;
    --push) push=1 ;;
    -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
    *) roles+=("$arg") ;;
  esac
done

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi
plan="$(PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} "$python" -m crossdistill.images list)"

engine=""
if [[ $dry_run -eq 0 ]]; then
  for candidate in ${CONTAINER_ENGINE:-docker podman}; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" info >/dev/null 2>&1; then
      engine="$candidate"; break
    fi
  done
  if [[ -z "$engine" ]]; then
    echo "images: no container engine answers (tried: ${CONTAINER_ENGINE:-docker podman}); nothing built." >&2
    echo "images: start Docker or Podman (or set CONTAINER_ENGINE), or use --dry-run to see the commands." >&2
    exit 3
  fi
else
  engine="${CONTAINER_ENGINE:-docker}"
fi

built=0
while IFS=$'\t' read -r role image dockerfile; do
  if [[ ${#roles[@]} -gt 0 && ! " ${roles[*]} " == *" $role "* ]]; then continue; fi
  cmd=("$engine" build --file "$dockerfile" --tag "$image" .)
  echo "+ ${cmd[*]}"
  [[ $dry_run -eq 1 ]] || "${cmd[@]}"
  if [[ $push -eq 1 ]]; then
    echo "+ $engine push $image"
    [[ $dry_run -eq 1 ]] || "$engine" push "$image"
  fi
  built=$((built + 1))
done <<< "$plan"

if [[ $built -eq 0 ]]; then
  echo "images: no image matches roles: ${roles[*]} (known: teacher teacher-tpu student cpu)" >&2
  exit 2
fi
