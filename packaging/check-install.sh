#!/usr/bin/env bash
# Installs an edgehub .deb on this machine, checks what installing, upgrading, removing
# and purging do, and leaves the machine as it found it. Root only; meant for CI and
# throwaway machines (systemd need not be running: nothing here starts the hub).
#   packaging/check-install.sh target/debian/edgehub_0.1.0-1_amd64.deb
set -euo pipefail

deb=${1:?usage: $0 path/to/edgehub_VERSION_ARCH.deb}
[ "$(id -u)" = 0 ] || { echo "!!! $0 must run as root" >&2; exit 1; }
if dpkg-query -W -f='${Status}' edgehub 2>/dev/null | grep -q installed; then
  echo "!!! edgehub is already installed here; this check needs a machine without it" >&2
  exit 1
fi

fail() { echo "!!! FAILED: $*" >&2; exit 1; }
step() { echo "-- $*"; }
enabled_state() { systemctl is-enabled edgehub.service 2>/dev/null || true; }

# What was here before, so that the clean-up removes only what this check made.
had_user=$(getent passwd edgehub >/dev/null && echo yes || echo no)
had_group=$(getent group edgehub >/dev/null && echo yes || echo no)
had_state=$([ -e /var/lib/edgehub ] && echo yes || echo no)
cleanup() {
  dpkg --purge edgehub >/dev/null 2>&1 || true
  [ "$had_state" = yes ] || rm -rf /var/lib/edgehub
  [ "$had_user" = yes ] || userdel edgehub 2>/dev/null || true
  [ "$had_group" = yes ] || groupdel edgehub 2>/dev/null || true
}
trap cleanup EXIT

step "install $(basename "$deb")"
dpkg -i "$deb"
id -nG edgehub | tr ' ' '\n' | grep -qx dialout || fail "user edgehub is not in group dialout: $(id edgehub)"
[ -f /etc/edgehub/edgehub.toml ] || fail "/etc/edgehub/edgehub.toml is missing"
dpkg-query -W -f='${Conffiles}\n' edgehub | grep -q '/etc/edgehub/edgehub.toml' \
  || fail "/etc/edgehub/edgehub.toml is not a conffile"
state=$(enabled_state)
[ "$state" = disabled ] || fail "the service is '$state' after install, expected disabled"
[ ! -e /etc/systemd/system/multi-user.target.wants/edgehub.service ] || fail "install enabled the service"
/usr/bin/edgehub --version
# The service's user can read the shipped configuration, and it is valid.
runuser -u edgehub -- /usr/bin/edgehub check-config --config /etc/edgehub/edgehub.toml >/dev/null \
  || fail "edgehub check-config as user edgehub"

step "upgrade (the same package again) keeps the administrator's choice and edits"
systemctl enable edgehub.service
echo "# a local edit" >> /etc/edgehub/edgehub.toml
dpkg -i --force-confold "$deb"
state=$(enabled_state)
[ "$state" = enabled ] || fail "the service is '$state' after an upgrade, expected still enabled"
grep -q '^# a local edit$' /etc/edgehub/edgehub.toml || fail "the upgrade overwrote /etc/edgehub/edgehub.toml"
systemctl disable edgehub.service

step "remove keeps configuration and state"
mkdir -p /var/lib/edgehub/journal
dpkg -r edgehub
[ ! -e /usr/bin/edgehub ] || fail "/usr/bin/edgehub is still there after remove"
[ -f /etc/edgehub/edgehub.toml ] || fail "remove deleted the configuration"
[ -d /var/lib/edgehub/journal ] || fail "remove deleted /var/lib/edgehub"

step "purge removes the configuration, keeps state and the user"
dpkg -P edgehub
[ ! -e /etc/edgehub/edgehub.toml ] || fail "purge left /etc/edgehub/edgehub.toml"
[ -d /var/lib/edgehub/journal ] || fail "purge deleted /var/lib/edgehub"
getent passwd edgehub >/dev/null || fail "purge deleted the user edgehub"
for link in /etc/systemd/system/edgehub.service /etc/systemd/system/multi-user.target.wants/edgehub.service; do
  [ ! -e "$link" ] && [ ! -L "$link" ] || fail "purge left $link"
done
echo "install, upgrade, remove and purge behave"
