#!/usr/bin/env bash
# Fill deploy/wheels/ with the pinned wheels of deploy/requirements/{engines,serve-cpu,locust}.txt
# (pip download on the host, with the host's pip configuration and cache), so that the cpu
# images install exactly those files with `--no-index` instead of downloading the same releases
# again in every build. Optional anywhere; the Dockerfiles fall back to PyPI without it.
# The host must be Linux x86-64 with Python 3.11, like the images (same wheels).
#   deploy/offline/wheelhouse.sh [PYTHON]     # default python3.11
set -euo pipefail
cd "$(dirname "$0")/../.."
python="${1:-python3.11}"
"$python" -c 'import sys; assert sys.version_info[:2] == (3, 11), "the images run Python 3.11"'
req=deploy/requirements
stamp=deploy/wheels/.requirements.sha256
want="$(cat $req/engines.txt $req/serve-cpu.txt $req/locust.txt | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "wheelhouse current ($(ls deploy/wheels/*.whl | wc -l) wheels)"; exit 0
fi
rm -f deploy/wheels/*.whl "$stamp"
# torch's +cpu build: from the host's own pip sources when they have it (find-links), else from
# PyTorch's CPU index; then everything else, from PyPI (or the host's mirror of it).
torch_pin="$(grep -E '^torch==' $req/engines.txt)"
pip=("$python" -m pip download --quiet --disable-pip-version-check --only-binary :all: -d deploy/wheels)
"${pip[@]}" --no-deps --no-index "$torch_pin" 2>/dev/null \
    || "${pip[@]}" --no-deps --index-url "${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}" "$torch_pin"
"${pip[@]}" --find-links deploy/wheels -r $req/engines.txt -r $req/serve-cpu.txt -r $req/locust.txt
echo "$want" > "$stamp"
echo "wheelhouse: $(ls deploy/wheels/*.whl | wc -l) wheels, $(du -sh deploy/wheels | cut -f1)"
