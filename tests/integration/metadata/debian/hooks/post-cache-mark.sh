# On the host, after cleanup: the pre-cache mark is beside the root, the root is complete.
test -f "$VZPKG_ROOT/../pre-cache-ran"
test -f "$VZPKG_ROOT/etc/vzpkg-post-install"
echo "$VZPKG_HOOK" > "$VZPKG_ROOT/etc/vzpkg-post-cache"
