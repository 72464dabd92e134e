# On the host, before the bootstrap: the new root is empty.
test -d "$VZPKG_ROOT"
test -z "$(ls -A "$VZPKG_ROOT")"
echo "$VZPKG_TEMPLATE" > "$VZPKG_ROOT/../pre-cache-ran"
