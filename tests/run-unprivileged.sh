#!/usr/bin/env bash
# Runs the whole suite again as an ordinary user.  The clone may sit in a folder that user cannot enter
# (/root, say), so the user gets its own copy of the tree and its own venv in its home directory.
set -euo pipefail
user=${1:-aiogaol-test}
src=$(cd "$(dirname "$0")/.." && pwd)
if ! id -u "$user" >/dev/null 2>&1; then
    useradd --create-home --shell /bin/bash "$user"
fi
home=$(getent passwd "$user" | cut -d: -f6)
dest="$home/aiogaol"
mkdir -p "$dest"
# Keep the user's venv between runs (its packages), but nothing else of an earlier copy.
find "$dest" -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +
rm -f "$dest/.venv/.installed"
if git -C "$src" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$src" && git ls-files -co --exclude-standard -z | tar --null -T - -cf -) | tar -xf - -C "$dest"
else
    tar -C "$src" --exclude=.venv --exclude=build -cf - . | tar -xf - -C "$dest"
fi
chown -R "$user": "$dest"
# A Python the user can run: the invoking one when its files are readable, else Debian's.
py=$(command -v "${PYTHON:-python3}" || true)
if [ -z "$py" ] || ! runuser -u "$user" -- "$py" -c 'import venv' >/dev/null 2>&1; then
    py=/usr/bin/python3
fi
echo "=== the suite again as unprivileged user $user (uid $(id -u "$user")), python $py, in $dest"
exec runuser -u "$user" -- env -i HOME="$home" USER="$user" LANG=C.UTF-8 PATH=/usr/local/bin:/usr/bin:/bin \
    ${CI:+CI=$CI} make -C "$dest" --no-print-directory test-here PYTHON="$py" VENV="$dest/.venv" \
    PYTEST_ARGS="${PYTEST_ARGS:-}"
