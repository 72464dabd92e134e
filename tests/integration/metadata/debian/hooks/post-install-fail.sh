echo "this hook fails on purpose" >&2
exit 7
