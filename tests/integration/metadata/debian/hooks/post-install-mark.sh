# Inside the new root: Debian's files are at /, and this shell is the root's own.
test -f /etc/debian_version
test -z "${VZ_ROOT:-}"
echo "$VZ_TEMPLATE $VZ_HOOK" > /etc/vzpkg-post-install
ps -o pid= -p 1 >/dev/null  # /proc is the new PID namespace's
