# On the host, before the bootstrap: the new root is empty.
test -d "$VZ_ROOT"
test -z "$(ls -A "$VZ_ROOT")"
echo "$VZ_TEMPLATE" > "$VZ_ROOT/../pre-cache-ran"
