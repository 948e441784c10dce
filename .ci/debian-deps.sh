#!/usr/bin/env bash
# Installs the Debian packages aiogaol's build, tests and benchmarks need, when they are missing.
set -euo pipefail
need=()
command -v gcc >/dev/null || need+=(gcc)
# tests/test_real_programs.py builds a C and a C++ program with make and runs node in a jail
command -v g++ >/dev/null || need+=(g++)
command -v make >/dev/null || need+=(make)
command -v node >/dev/null || need+=(nodejs)
dpkg -s libc6-dev >/dev/null 2>&1 || need+=(libc6-dev)
dpkg -s python3-dev >/dev/null 2>&1 || need+=(python3-dev)
dpkg -s python3-venv >/dev/null 2>&1 || need+=(python3-venv)
ls /usr/lib/*/libseccomp.so.2 /lib/*/libseccomp.so.2 >/dev/null 2>&1 || need+=(libseccomp2)
command -v bwrap >/dev/null || need+=(bubblewrap)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages: ${need[*]} (install them as root: apt-get install ${need[*]})" >&2
    # Not fatal for an unprivileged run: bubblewrap is only needed for comparisons, and the real-program
    # tests skip (saying so) what is missing.
    exit 0
fi
echo "installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq "${need[@]}" >/dev/null
