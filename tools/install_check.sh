#!/usr/bin/env bash
# A non-editable install into a fresh virtual environment, used as a researcher would use it:
# the core package alone, run from an empty folder outside the repository.
#   bash tools/install_check.sh            (MEDCLASS_DATA must hold medmnist/breastmnist.npz)
# Checks: the configs ship inside the package, the console scripts work, a run writes metrics.json,
# and a missing extra is one `error:` line naming its pip command.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
"$work/venv/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1 "$repo"   # not -e: a copy in site-packages
mkdir "$work/empty" && cd "$work/empty"
export PATH="$work/venv/bin:$PATH"
site="$("$work/venv/bin/python" -c 'import medclass, pathlib; print(pathlib.Path(medclass.__file__).parent)')"
case "$site" in "$repo"*) echo "FAIL: medclass imported from the repository ($site), not the install"; exit 1;; esac
test -f "$site/conf/train.yaml" || { echo "FAIL: the configs are not in the installed package"; exit 1; }
medclass-train debug=fast data.name=breastmnist
metrics="$(find "$work/empty/outputs" -name metrics.json | head -1)"
test -n "$metrics" || { echo "FAIL: medclass-train wrote no metrics.json"; exit 1; }
python -c "import json,sys; m=json.load(open(sys.argv[1])); assert 0 <= m['test']['test/acc'] <= 1, m" "$metrics"
medclass-gather "$work/empty/outputs/train/runs" > /dev/null
ckpt="$(find "$work/empty/outputs" -name 'last.ckpt' | head -1)"
for cmd in "medclass-train logger=mlflow" "medclass-export ckpt_path=$ckpt"; do
  set +e; err="$($cmd 2>&1 >/dev/null)"; code=$?; set -e
  echo "$cmd -> exit $code: $err"
  [ "$code" -ne 0 ] && echo "$err" | grep -q '^error: .*pip install "medclass\[\(mlflow\|onnx\)\]"' \
    || { echo "FAIL: a missing extra must be one error line naming its pip command"; exit 1; }
done
echo "install check passed: $metrics"
