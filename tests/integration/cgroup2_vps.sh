#!/bin/bash
# A pure cgroup v2 host, made for real in a private mount namespace: run as
#   unshare --mount --propagation private bash cgroup2_vps.sh
# /sys/fs/cgroup becomes the cgroup2 hierarchy alone (as systemd 252 mounts it on a pure v2
# host), and a systemd VPS goes through create, start, exec, stop, a stop after runc lost its
# state, and destroy there. Nothing outside the namespace sees the mounts; the namespace goes
# with this process.
#
# Each step leaves $OUT/<step>.out, .err and .rc for the test to judge; the script itself
# judges nothing, except that it refuses to touch mounts outside a namespace of its own.
# With the argument "cleanup" it only stops and destroys the VPS (of a run that was killed).
set -u
: "${BIN:?}" "${CTID:?}" "${OUT:?}" "${VZPKG_CONF:?}" "${TEMPLATE:?}" "${RUN_DIR:?}"
export VZPKG_CONF

if [[ "$(readlink /proc/self/ns/mnt)" == "$(readlink /proc/1/ns/mnt)" ]]; then
  echo "cgroup2_vps.sh: not in a mount namespace of its own: refusing to remount" >&2
  exit 99
fi

step() {
  local name=$1
  shift
  "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"
  echo $? >"$OUT/$name.rc"
}

vzctl() { "$BIN/vzctl" "$@"; }

# Whatever fails or is interrupted below: the VPS is killed and destroyed before the namespace
# (and with it VE_ROOT's mount) goes away.
cleanup() {
  vzctl stop --fast "$CTID"
  vzctl destroy "$CTID"
  rm -rf "$OUT/lost-state"
} >/dev/null 2>&1
trap cleanup EXIT
trap 'exit 130' INT TERM

# The host's own cgroup2 mount is bound (not mounted afresh: a new cgroup2 mount from the
# initial cgroup namespace re-applies its options, nsdelegate and memory_recursiveprot, to the
# one hierarchy the whole machine shares). The v1 hierarchies are unmounted from this view.
cgroup2_only() {
  if [[ "$(stat -f -c %T /sys/fs/cgroup)" == cgroup2fs ]]; then
    return 0 # a pure v2 host already
  fi
  local held source
  held=$(mktemp -d)
  source=$(findmnt -n -t cgroup2 -o TARGET | head -n 1)
  if [[ -n "$source" ]]; then
    mount --bind "$source" "$held"
  else
    mount -t cgroup2 cgroup2 "$held" # none mounted yet: its options are the defaults
  fi || return 1
  umount -R /sys/fs/cgroup && mount --move "$held" /sys/fs/cgroup && rmdir "$held"
}
step mount cgroup2_only
[[ $(cat "$OUT/mount.rc") == 0 ]] || exit 1
step fstype stat -f -c %T /sys/fs/cgroup
step mounts findmnt -n -R -o TARGET,FSTYPE /sys/fs/cgroup
# "cleanup": only what the trap does, for a VPS that an earlier run left behind.
[[ ${1:-} == cleanup ]] && exit 0

step create vzctl create "$CTID" --ostemplate "$TEMPLATE"
# The basic sample's limits need the memory and pids controllers: a v2 hierarchy that lacks them
# (a hybrid host's) refuses the start naming them, one that has them starts. The rest runs
# without them.
step root-controllers cat /sys/fs/cgroup/cgroup.controllers
step limited vzctl start "$CTID"
[[ $(cat "$OUT/limited.rc") == 0 ]] && vzctl stop --fast "$CTID" >/dev/null 2>&1
step unlimit vzctl set "$CTID" --ram unlimited --swap unlimited --numproc unlimited --save
step start vzctl start "$CTID"
state="$RUN_DIR/runc/vz$CTID/state.json"
step state cat "$state"
group=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["cgroup_paths"][""])' \
  "$state" 2>/dev/null)

boot() {
  local state i
  for i in $(seq 60); do
    state=$(vzctl exec2 "$CTID" systemctl is-system-running)
    case $state in running | degraded) break ;; esac
    sleep 0.5
  done
  echo "$state"
  vzctl exec2 "$CTID" systemctl --failed --no-legend --plain >&2
}
step boot boot
step inside vzctl exec2 "$CTID" 'cat /proc/$(pidof cron)/cgroup; findmnt -n -o FSTYPE /sys/fs/cgroup'
step owners stat -c '%n %u:%g' "$group" "$group"/cgroup.* "$group"/*.max

# Every file of its own cgroup that the VPS was not given: each write must fail.
limits='for f in /sys/fs/cgroup/cgroup.* /sys/fs/cgroup/*.max; do
  case ${f##*/} in cgroup.procs|cgroup.threads|cgroup.subtree_control) continue;; esac
  [ -f "$f" ] || continue
  if (echo 1 >"$f") 2>/dev/null; then echo "$f written"; else echo "$f refused"; fi
done'
step limits vzctl exec2 "$CTID" "$limits"

# A real v2 host has domain controllers, and the VPS's systemd turns them on below its own
# cgroup: from then on no process may join that cgroup itself (runc exec then joins init's).
step controllers cat "$group/cgroup.controllers"
enable() {
  local c
  for c in $(cat "$group/cgroup.controllers"); do echo "+$c"; done >"$group/cgroup.subtree_control"
  cat "$group/cgroup.subtree_control"
}
step enable enable
step exec vzctl exec "$CTID" 'cat /proc/self/cgroup'
step vzlist "$BIN/vzlist" -H -o ctid,nproc,status "$CTID"
step status vzctl status "$CTID"

stop() {
  local started=$SECONDS
  vzctl stop "$CTID" || return
  echo "seconds $((SECONDS - started))"
}
step stop stop
step after-stop ls -d "$group" "${group%/*}"

# runc loses its state (RUN_DIR cleaned while the VPS runs): the VPS is still found by its
# cgroup, and stop kills it there.
step restart vzctl start "$CTID"
step reboot boot
mv "$RUN_DIR/runc/vz$CTID" "$OUT/lost-state"
step lost-status vzctl status "$CTID"
step lost-stop vzctl stop "$CTID"
step after-lost-stop ls -d "$group" "${group%/*}"
rm -rf "$OUT/lost-state"

step destroy vzctl destroy "$CTID"
