#!/bin/sh
# Installs the Debian packages of the servers the test suite starts, when missing:
#   dnsmasq                      a DNS server we did not write (DNS interoperability tests)
#   haproxy, nginx,              the benchmark's quick mode, smoke-tested in the suite
#   libnginx-mod-stream, wrk
# Called by `make test` (and so by .ci/run). Installs nothing when all are present.
# As root: apt-get update, then apt-get install of the missing packages only, with a
# policy-rc.d that keeps them from starting their system services (nothing may listen
# beyond loopback; the tests start their own instances), removed afterwards. Not root:
# runs itself again through sudo when sudo exists; otherwise stops with one line naming
# the packages to install.
#
# For the suite's own test of this script (never needed otherwise):
#   TGW_TEST_DEPS_SBIN      where to look besides PATH (default /usr/sbin:/sbin)
#   TGW_NGINX_STREAM_MODULE the stream module's file (default as Debian installs it)
#   TGW_POLICY_RC_D         the policy-rc.d to create (default /usr/sbin/policy-rc.d)
set -eu

sbin=${TGW_TEST_DEPS_SBIN-/usr/sbin:/sbin}
stream_module=${TGW_NGINX_STREAM_MODULE-/usr/lib/nginx/modules/ngx_stream_module.so}
policy=${TGW_POLICY_RC_D-/usr/sbin/policy-rc.d}

# A program on PATH or in the sbin directories (dnsmasq and nginx live in /usr/sbin,
# which a user's PATH may not have).
have() {
  command -v "$1" >/dev/null 2>&1 && return 0
  old_ifs=$IFS
  IFS=:
  for dir in $sbin; do
    if [ -n "$dir" ] && [ -x "$dir/$1" ]; then
      IFS=$old_ifs
      return 0
    fi
  done
  IFS=$old_ifs
  return 1
}

missing=""
for tool in dnsmasq haproxy nginx wrk; do
  have "$tool" || missing="$missing $tool"
done
[ -e "$stream_module" ] || missing="$missing libnginx-mod-stream"
missing=${missing# }
[ -z "$missing" ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "make test: installing the servers the tests start: $missing"
  created=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# tgw scripts/test-deps.sh: no service starts on install\nexit 101\n' >"$policy"
    chmod +x "$policy"
    created="yes"
  fi
  # Removed however apt-get ends.
  trap '[ -z "$created" ] || rm -f "$policy"' EXIT
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086  # one word per package
  apt-get install -y -qq --no-install-recommends $missing
  exit 0
fi

if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then
  echo "make test: installing the servers the tests start with sudo: $missing"
  exec sudo -- sh "$0"
fi

echo "make test: missing Debian packages for servers the tests start: $missing (install them as root: apt-get install $missing)" >&2
exit 1
