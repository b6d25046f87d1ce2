#!/usr/bin/env bash
# Download the app image's pinned Python dependencies (services/pyproject.toml) as wheels for
# the image's Python (Debian trixie: CPython 3.13, x86_64 glibc) into docker/wheels/, using
# this host's pip configuration (CA bundle, proxies, local indexes). The image build then
# installs from them with --no-index. Skips the download when the pins have not changed.
# Without this step the build installs from the package index (needs direct access).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
OUT=$HERE/wheels
PYVER=${KS_IMAGE_PYTHON:-3.13}
PY=${PYTHON:-python3}

mkdir -p "$OUT"
req=$("$PY" - "$REPO/services/pyproject.toml" <<'PYEOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    p = tomllib.load(f)
# the PostgreSQL store's driver too (psycopg[binary]: `--db postgresql+psycopg://...`)
extra = p["project"].get("optional-dependencies", {}).get("postgres", [])
print("\n".join(p["project"]["dependencies"] + extra + ["setuptools>=61", "wheel"]))
PYEOF
)
stamp="$OUT/.requirements-$PYVER"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$req" ] && ls "$OUT"/*.whl >/dev/null 2>&1; then
    echo "fetch-wheels: docker/wheels up to date ($(ls "$OUT"/*.whl | wc -l) wheels)"
    exit 0
fi
rm -f "$OUT"/*.whl "$OUT"/.requirements-*
printf '%s\n' "$req" >"$OUT/requirements.txt"
"$PY" -m pip download -q --dest "$OUT" --only-binary=:all: \
    --python-version "$PYVER" --implementation cp --abi "cp${PYVER/./}" --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any \
    -r "$OUT/requirements.txt" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
printf '%s\n' "$req" >"$stamp"
printf '*\n!.gitignore\n' >"$OUT/.gitignore"
echo "fetch-wheels: $(ls "$OUT"/*.whl | wc -l) wheels for CPython $PYVER in docker/wheels"
