#!/usr/bin/env bash
# Builds the Raspberry Pi (arm64) package on a Debian or Ubuntu x86-64 machine:
#   packaging/build-arm64.sh [--install] [cargo deb options, e.g. --profile deb-check]
# It checks what the cross build needs and, with --install, installs what is missing
# (apt-get through sudo unless root, rustup, cargo install); then runs
#   cargo deb -p hub --target aarch64-unknown-linux-gnu
# which writes target/debian/edgehub_<version>-1_arm64.deb. The linker is set in
# .cargo/config.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

install=no
if [ "${1:-}" = --install ]; then
  install=yes
  shift
fi

missing_apt=()
command -v aarch64-linux-gnu-gcc >/dev/null || missing_apt+=(gcc-aarch64-linux-gnu)
[ -e /usr/aarch64-linux-gnu/lib/libc.so.6 ] || missing_apt+=(libc6-dev-arm64-cross)
rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu && have_target=yes || have_target=no
cargo deb --version >/dev/null 2>&1 && have_deb=yes || have_deb=no

if [ "$install" = yes ]; then
  if [ ${#missing_apt[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing_apt[@]}"
    missing_apt=()
  fi
  [ "$have_target" = yes ] || { rustup target add aarch64-unknown-linux-gnu; have_target=yes; }
  [ "$have_deb" = yes ] || { cargo install cargo-deb --locked; have_deb=yes; }
fi

problems=()
[ ${#missing_apt[@]} -eq 0 ] || problems+=("sudo apt-get install ${missing_apt[*]}")
[ "$have_target" = yes ] || problems+=("rustup target add aarch64-unknown-linux-gnu")
[ "$have_deb" = yes ] || problems+=("cargo install cargo-deb --locked")
if [ ${#problems[@]} -gt 0 ]; then
  echo "!!! the arm64 build needs, first:" >&2
  printf '      %s\n' "${problems[@]}" >&2
  echo "    (or run $0 --install)" >&2
  exit 1
fi

exec cargo deb -p hub --target aarch64-unknown-linux-gnu "$@"
