# Sourced by devstack/ensure_*.sh: install Debian packages as root, or say what to run.
#   debian_install "<what it is>" "<extra hint for a normal user>" package...
# As root: apt-get install without recommends, with a policy-rc.d that keeps a package's service
# from starting (the local stack runs its own servers, on its own ports). Otherwise: the apt-get
# line to run, and exit 2.
debian_install() {
  local what=$1 hint=$2; shift 2
  if [ "$(id -u)" -ne 0 ]; then
    echo "$what was not found." >&2
    echo "Install it with: sudo apt-get install --no-install-recommends $*" >&2
    [ -n "$hint" ] && echo "$hint" >&2
    echo "Then run make again." >&2
    exit 2
  fi
  echo "installing $* from Debian's packages..." >&2
  export DEBIAN_FRONTEND=noninteractive
  local policy=/usr/sbin/policy-rc.d created_policy=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created_policy=1; fi
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  local rc=$?
  [ "$created_policy" = 1 ] && rm -f "$policy"
  return $rc
}
