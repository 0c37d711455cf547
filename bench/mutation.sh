#!/usr/bin/env bash
# Mutation testing of one module with mutmut 3, against a chosen selection of tests (see
# docs/development-testing.md). Works in a scratch copy of the committed tree, so the checkout
# is never touched; prints mutmut's summary and writes the survivors to $WORK/survivors.txt.
#
#   bash bench/mutation.sh headstart/cache/validate.py tests/test_cache.py tests/test_hdf5_safety.py
#
# Settings (environment): MUTATION_WORK (scratch folder, /tmp/headstart-mutation/<module>),
# MUTATION_PYTHON (python with mutmut, python3), MUTATION_JOBS (parallel test runs, 2),
# MUTATION_K (a pytest -k expression narrowing the tests), HEADSTART_SHARED (../shared elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: bash bench/mutation.sh MODULE.py TEST_FILE..."; exit 2; }
MODULE=$1
shift
PY=${MUTATION_PYTHON:-python3}
WORK=${MUTATION_WORK:-/tmp/headstart-mutation/$(basename "$MODULE" .py)}
rm -rf "$WORK"
mkdir -p "$WORK"
git archive HEAD | tar -x -C "$WORK"
cd "$WORK"
# The package goes under src/: mutmut puts mutants/src first on sys.path, where an editable install
# of headstart (a meta path finder) cannot shadow it.
mkdir src && mv headstart src/
{
    echo "[tool.mutmut]"
    echo "source_paths = [\"src\"]"
    echo "only_mutate = [\"src/$MODULE\"]"
    echo "also_copy = [\"tests\", \"bench\"]"
    printf 'pytest_add_cli_args_test_selection = ['
    for t in "$@"; do printf '"%s", ' "$t"; done
    [ -n "${MUTATION_K:-}" ] && printf '"-k", "%s", ' "$MUTATION_K"
    echo '"-x", "-q", "-p", "no:cacheprovider"]'
} >>pyproject.toml
"$PY" -m mutmut run --max-children "${MUTATION_JOBS:-2}" || true
"$PY" -m mutmut results --all true >"$WORK/results.txt" 2>&1 || true
grep -c ": killed" "$WORK/results.txt" | sed 's/^/killed: /'
grep -c ": survived" "$WORK/results.txt" | sed 's/^/survived: /' || true
grep -E ": (survived|no tests|timeout|suspicious)" "$WORK/results.txt" >"$WORK/survivors.txt" || true
echo "survivors and untested mutants: $WORK/survivors.txt (show one: cd $WORK && $PY -m mutmut show NAME)"
