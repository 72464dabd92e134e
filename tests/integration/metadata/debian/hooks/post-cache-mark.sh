# On the host, after cleanup: the pre-cache mark is beside the root, the root is complete.
test -f "$VZ_ROOT/../pre-cache-ran"
test -f "$VZ_ROOT/etc/vzpkg-post-install"
echo "$VZ_HOOK" > "$VZ_ROOT/etc/vzpkg-post-cache"
