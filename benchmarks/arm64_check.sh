#!/usr/bin/env bash
# arm64_check.sh: prove the device runtime (edgekit-runtime) installs, imports and gives the same
# answers on linux/aarch64, run under qemu user emulation on this x86-64 host.
#
# usage: benchmarks/arm64_check.sh --bundle PATH [--texts FILE] [--root DIR] [--threads N] [--fresh-venv]
#
#   --bundle PATH   bundle directory to check (required); `edgekit-run verify` must pass on it
#   --texts FILE    texts to classify, one per line (UTF-8, no blank lines); default: 8 built-in
#                   sentences plus one very long text that the bundle's max_length truncates
#   --root DIR      arm64 Debian bookworm root (default /var/cache/edgekit/arm64-root); built once
#                   with debootstrap (~6 min), reused afterwards (a rerun takes seconds)
#   --threads N     onnxruntime intra-op threads on both sides (default 1; the host is shared)
#   --fresh-venv    recreate the venvs even if they already hold this exact runtime wheel
#   -h, --help      show this help
#
# Runs as root. What it does:
#   1. installs qemu-user-static, debootstrap and binfmt-support on the host if missing, mounts
#      binfmt_misc if needed and enables qemu-aarch64;
#   2. builds the arm64 root once (mirror read from the host's apt sources), writes a CA bundle
#      and /etc/pip.conf inside it (the host's pip config is NOT copied: it points at x86-only
#      local folders);
#   3. mounts proc, sys, /dev and an ARM-looking /proc/cpuinfo in the root (qemu 7.2 passes the
#      host's x86 cpuinfo through and onnxruntime then segfaults on import);
#   4. builds the runtime wheel on the host, installs ONLY that wheel into a venv in the root
#      (numpy/onnxruntime/tokenizers come from PyPI as aarch64 wheels), prints versions, the
#      machine (must be aarch64) and that torch/transformers/onnx are absent;
#   5. runs `edgekit-run verify` and `edgekit-run predict --json` (batched, padded) plus the raw
#      logits through the Python API (one text per call) in the root, and the same in an x86
#      venv on the host with the same wheel and the same dependency versions; for a causal-lm
#      bundle instead: greedy generation of the first 4 texts (24 new tokens, a left-padded batch
#      and one by one) and each prompt's prefill logits;
#   6. compares: same label and truncation for every text; every logit, score and probability
#      within the bundle's own tolerance for its precision (manifest profile tolerances:
#      |arm - x86| <= atol + rtol * |x86|); for a causal-lm bundle, identical greedy tokens and
#      prefill logits within that tolerance. Prints PASS or FAIL with the max abs differences.
#
# Exit status: 0 PASS, 1 FAIL (or a step failed), 2 usage. Everything the script mounts is
# unmounted on exit, also on failure or Ctrl-C. Emulation proves install/import/identical
# answers, not speed: do not read timings from it.
set -euo pipefail

PROG=$(basename "$0")
REPO=$(cd "$(dirname "$0")/.." && pwd)
BUNDLE="" TEXTS="" ROOT=/var/cache/edgekit/arm64-root THREADS=1 FRESH_VENV=0
SUITE=bookworm
VENV_IN_ROOT=/opt/edgekit-venv      # inside the root
WORK_IN_ROOT=/srv/edgekit           # inside the root: bundle, texts, helper

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() { echo "$PROG: error: $*" >&2; exit 1; }
usage_error() { echo "$PROG: error: $*. See \`$PROG --help\`." >&2; exit 2; }
T0=$SECONDS
step() { printf '\n== [%4ds] %s\n' "$((SECONDS - T0))" "$*"; }
info() { echo "   $*"; }

while (($#)); do
    case "$1" in
        --bundle) (($# >= 2)) || usage_error "--bundle needs a PATH"; BUNDLE=$2; shift 2 ;;
        --texts) (($# >= 2)) || usage_error "--texts needs a FILE"; TEXTS=$2; shift 2 ;;
        --root) (($# >= 2)) || usage_error "--root needs a DIR"; ROOT=$2; shift 2 ;;
        --threads) (($# >= 2)) || usage_error "--threads needs N"; THREADS=$2; shift 2 ;;
        --fresh-venv) FRESH_VENV=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage_error "unknown argument '$1'" ;;
    esac
done
[[ -n $BUNDLE ]] || usage_error "--bundle PATH is required"
[[ -d $BUNDLE && -f $BUNDLE/manifest.json ]] || usage_error "--bundle $BUNDLE: not a bundle directory (no manifest.json)"
[[ -z $TEXTS || -f $TEXTS ]] || usage_error "--texts $TEXTS: no such file"
[[ -z $TEXTS ]] || ! grep -qn '^[[:space:]]*$' "$TEXTS" ||
    usage_error "--texts $TEXTS: line $(grep -n '^[[:space:]]*$' "$TEXTS" | head -1 | cut -d: -f1) is blank (edgekit-run rejects blank texts)"
[[ -z $TEXTS || -s $TEXTS ]] || usage_error "--texts $TEXTS: the file is empty"
[[ $THREADS =~ ^[1-9][0-9]*$ ]] || usage_error "--threads $THREADS: expected a positive integer"
((EUID == 0)) || die "run as root (debootstrap, mount and chroot need it)"
[[ $(uname -m) == x86_64 ]] || die "this host is $(uname -m); the script emulates arm64 on an x86-64 host"
BUNDLE=$(realpath "$BUNDLE")
ROOT=$(realpath -m "$ROOT")
case "$ROOT" in /|/usr|/usr/*|/etc|/etc/*|/var|/home|/root|/tmp|/proc*|/sys*|/dev*) die "--root $ROOT: refusing a system directory" ;; esac
HOST_VENV="$ROOT-x86-venv"         # the x86 reference venv lives next to the root

# Fail fast on a bundle that does not verify here (before minutes of root building), when the
# host's python can run the runtime from the source tree; the real checks come later, both sides.
if python3 -c 'import numpy, onnxruntime, tokenizers' 2>/dev/null; then
    PYTHONPATH="$REPO/runtime" python3 -m edgekit_runtime.cli verify "$BUNDLE" >/dev/null ||
        die "the bundle does not verify on this host (message above); fix or rebuild it first"
fi

# ------------------------------------------------------------------ cleanup: unmount what we mounted
MOUNTED=()       # mount points this run created, unmounted in reverse order on exit
WORK=""
# The terminal's stdout/stderr, kept for cleanup: a signal can arrive while a step's output is
# redirected to a file (redirections on a shell function apply to the whole shell meanwhile).
exec 3>&1 4>&2
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    local rc=$? i
    exec 1>&3 2>&4
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
        umount "${MOUNTED[i]}" 2>/dev/null || umount -l "${MOUNTED[i]}" 2>/dev/null ||
            echo "$PROG: warning: could not unmount ${MOUNTED[i]}" >&2
    done
    if [[ -n $WORK && -d $WORK ]]; then
        if ((rc == 0)); then rm -rf "$WORK"; else echo "$PROG: outputs kept for inspection in $WORK" >&2; fi
    fi
    ((${#MOUNTED[@]} == 0)) || echo "   unmounted ${#MOUNTED[@]} mount(s): ${MOUNTED[*]}"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
do_mount() {  # do_mount TARGET mount-args...: mount and remember it
    local target=$1; shift
    mount "$@" "$target"
    MOUNTED+=("$target")
}

mkdir -p "$(dirname "$ROOT")"
exec 9>"$ROOT.lock"
flock -n 9 || die "another $PROG is using $ROOT (lock $ROOT.lock)"
WORK=$(mktemp -d /tmp/edgekit-arm64.XXXXXX)

# A run killed with SIGKILL leaves its mounts behind; with the lock held, they are ours to remove.
stale=$(findmnt -rn -o TARGET | awk -v r="$ROOT/" 'index($0, r) == 1' | sort -r || true)
if [[ -n $stale ]]; then
    echo "$PROG: unmounting mounts left by an earlier, killed run: ${stale//$'\n'/ }" >&2
    while read -r m; do umount "$m" || umount -l "$m"; done <<<"$stale"
fi

# ------------------------------------------------------------------ 1. host tools and binfmt
step "host: qemu-user-static, debootstrap, binfmt-support"
missing=()
for pkg in qemu-user-static debootstrap binfmt-support; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    info "installing ${missing[*]} (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
info "$(qemu-aarch64-static --version | head -1)"

BINFMT=/proc/sys/fs/binfmt_misc
if ! mountpoint -q "$BINFMT"; then
    do_mount "$BINFMT" -t binfmt_misc binfmt_misc
    info "mounted binfmt_misc on $BINFMT"
fi
if [[ ! -e $BINFMT/qemu-aarch64 ]] || ! grep -qx enabled "$BINFMT/qemu-aarch64"; then
    update-binfmts --enable qemu-aarch64
fi
grep -qx enabled "$BINFMT/qemu-aarch64" || die "binfmt qemu-aarch64 is not enabled (update-binfmts --enable qemu-aarch64 failed)"
# F (fix-binary): the kernel holds the interpreter open, so a plain chroot runs arm64 binaries
# without a copy of qemu inside the root.
grep -q '^flags:.*F' "$BINFMT/qemu-aarch64" ||
    die "binfmt qemu-aarch64 lacks the F (fix-binary) flag: $(grep ^flags "$BINFMT/qemu-aarch64")"
info "binfmt qemu-aarch64: enabled, $(grep ^flags: "$BINFMT/qemu-aarch64")"

# ------------------------------------------------------------------ 2. the arm64 root (once)
host_mirror() {  # the host's Debian mirror for $SUITE: deb822 .sources first, then one-line lists
    local m
    m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk -v suite="$SUITE" 'BEGIN { RS = "" }
        { types = uris = suites = ""
          n = split($0, lines, "\n")
          for (i = 1; i <= n; i++) {
              if (lines[i] ~ /^Types:/)  types = lines[i]
              if (lines[i] ~ /^URIs:/)   uris = lines[i]
              if (lines[i] ~ /^Suites:/) suites = " " lines[i] " "
          }
          if (types ~ /[ \t]deb([ \t]|$)/ && suites ~ ("[ \t]" suite "[ \t]")) {
              split(uris, u, /[ \t]+/); print u[2]; exit } }')
    if [[ -z $m ]]; then
        m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            awk -v suite="$SUITE" '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) break
                                                 if ($(i + 1) == suite) { print $i; exit } }')
    fi
    echo "${m:-http://deb.debian.org/debian}"
}

MARKER="$ROOT/.edgekit-arm64-root"
if [[ -f $MARKER ]]; then
    step "arm64 root: reusing $ROOT ($(sed -n 1p "$MARKER"))"
else
    MIRROR=$(host_mirror)
    step "arm64 root: building $ROOT with debootstrap ($SUITE arm64 from $MIRROR; about 6 minutes)"
    if [[ -e $ROOT ]]; then  # a build that did not finish: start again (no mounts are left, see above)
        info "removing an unfinished root"
        rm -rf --one-file-system "$ROOT"
    fi
    LOG="$ROOT.debootstrap.log"
    t=$SECONDS
    if ! debootstrap --arch=arm64 --variant=minbase \
            --include=python3,python3-venv,python3-pip,ca-certificates \
            "$SUITE" "$ROOT" "$MIRROR" >"$LOG" 2>&1; then
        tail -n 20 "$LOG" >&2
        die "debootstrap failed (full log: $LOG)"
    fi
    info "debootstrap done in $((SECONDS - t)) s (log: $LOG)"
    echo "built $(date -u +%Y-%m-%dT%H:%MZ) from $MIRROR ($SUITE, arm64, minbase)" >"$MARKER"
fi

# Per run (cheap, and picks up a changed host CA): DNS, CA bundle, pip config, fake cpuinfo.
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/edgekit-host-ca.crt"
cat >"$ROOT/etc/pip.conf" <<'EOF'
# Written by edgekit benchmarks/arm64_check.sh: PyPI only, through the host's CA bundle.
[global]
cert = /etc/ssl/certs/edgekit-host-ca.crt
disable-pip-version-check = true
timeout = 180
EOF
NCPU=$(grep -c '^processor' /proc/cpuinfo)
CPUINFO="$ROOT/etc/edgekit/cpuinfo.arm64"
mkdir -p "$(dirname "$CPUINFO")"
for ((i = 0; i < NCPU; i++)); do  # what a Neoverse-N1 (Cortex-A76 class) Linux box reports
    printf 'processor\t: %d\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n' "$i"
done >"$CPUINFO"

step "arm64 root: mounting proc, sys, dev and an ARM /proc/cpuinfo"
do_mount "$ROOT/proc" -t proc proc
do_mount "$ROOT/sys" -t sysfs sysfs
do_mount "$ROOT/dev" --bind /dev
do_mount "$ROOT/proc/cpuinfo" --bind "$CPUINFO"
info "mounted: ${MOUNTED[*]}"

in_root() {  # run a command in the root with a clean environment (the host's PIP_* must not leak in)
    env -i HOME=/root LANG=C.UTF-8 LC_ALL=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        chroot "$ROOT" "$@"
}
[[ $(in_root uname -m) == aarch64 ]] || die "uname -m in the root is not aarch64: $(in_root uname -m)"

# ------------------------------------------------------------------ 3. the wheel and the venvs
step "host: building the runtime wheel (pip wheel --no-deps ./runtime)"
cp -a "$REPO/runtime" "$WORK/src"       # build from a copy: the repo gets no build/ or egg-info changes
rm -rf "$WORK/src/build" "$WORK/src"/*.egg-info
python3 -m pip wheel -q --no-deps --no-build-isolation "$WORK/src" -w "$WORK/wheel" >/dev/null 2>"$WORK/wheel.log" ||
    python3 -m pip wheel -q --no-deps "$WORK/src" -w "$WORK/wheel" >/dev/null 2>>"$WORK/wheel.log" ||
    { cat "$WORK/wheel.log" >&2; die "building the wheel failed"; }
WHEEL=$(ls "$WORK"/wheel/edgekit_runtime-*.whl)
# Identity of the wheel's contents (its RECORD lists every file's sha256; zip timestamps vary).
WHEEL_ID=$(python3 - "$WHEEL" <<'EOF'
import hashlib, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
record = next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))
print(hashlib.sha256(z.read(record)).hexdigest()[:16])
EOF
)
info "$(basename "$WHEEL") (contents id $WHEEL_ID)"
python3 - "$WHEEL" <<'EOF'
import sys, zipfile
meta = zipfile.ZipFile(sys.argv[1]).read(next(n for n in zipfile.ZipFile(sys.argv[1]).namelist()
                                              if n.endswith(".dist-info/METADATA"))).decode()
print("   declared dependencies:", ", ".join(l.split(":", 1)[1].strip() for l in meta.splitlines()
                                              if l.startswith("Requires-Dist:")))
EOF

step "arm64: venv with only the runtime wheel ($VENV_IN_ROOT)"
mkdir -p "$ROOT$WORK_IN_ROOT"
STAMP="$ROOT$VENV_IN_ROOT/.edgekit-wheel"
if ((FRESH_VENV == 0)) && [[ -f $STAMP && $(cat "$STAMP") == "$WHEEL_ID" ]]; then
    info "reusing: it already holds this exact wheel (--fresh-venv to rebuild it)"
else
    t=$SECONDS
    rm -rf "$ROOT$VENV_IN_ROOT"
    cp "$WHEEL" "$ROOT$WORK_IN_ROOT/"
    in_root python3 -m venv "$VENV_IN_ROOT"
    in_root "$VENV_IN_ROOT/bin/pip" install -q --progress-bar off "$WORK_IN_ROOT/$(basename "$WHEEL")" ||
        die "pip install of the wheel in the arm64 root failed"
    echo "$WHEEL_ID" >"$STAMP"
    info "installed in $((SECONDS - t)) s (from PyPI, aarch64 wheels)"
fi
in_root "$VENV_IN_ROOT/bin/pip" freeze --all | grep -v -e '^edgekit-runtime' -e '^pip==' -e '^setuptools==' >"$WORK/arm64-freeze.txt"
info "installed: $(in_root "$VENV_IN_ROOT/bin/pip" freeze | tr '\n' ' ')"

cat >"$ROOT$WORK_IN_ROOT/probe.py" <<'EOF'
"""What the venv is: the machine, the dependencies' wheel tags, and the absence of the compile stack."""
import importlib.metadata as md, importlib.util, platform, sys, sysconfig
print(f"   python {platform.python_version()} on {platform.machine()}, platform tag {sysconfig.get_platform()}")
for dist in ("edgekit-runtime", "onnxruntime", "numpy", "tokenizers"):
    d = md.distribution(dist)
    tags = [l.split(":", 1)[1].strip() for l in (d.read_text("WHEEL") or "").splitlines() if l.startswith("Tag:")]
    print(f"   {dist} {d.version}: wheel {', '.join(tags)}")
import onnxruntime, edgekit_runtime
print(f"   import onnxruntime OK ({onnxruntime.__version__}, providers {onnxruntime.get_available_providers()}); "
      f"import edgekit_runtime OK ({edgekit_runtime.__version__})")
present = [m for m in ("torch", "transformers", "onnx") if importlib.util.find_spec(m) is not None]
print(f"   torch, transformers, onnx: {'PRESENT: ' + ', '.join(present) if present else 'not installed (find_spec is None)'}")
sys.exit(1 if present or (platform.machine() not in ("aarch64", "x86_64")) else 0)
EOF
info "uname -m in the root: $(in_root uname -m)"
in_root "$VENV_IN_ROOT/bin/python" "$WORK_IN_ROOT/probe.py" >"$WORK/probe-arm64.txt" ||
    { cat "$WORK/probe-arm64.txt"; die "the arm64 venv is not clean (see above)"; }
cat "$WORK/probe-arm64.txt"
grep -q "on aarch64, platform tag linux-aarch64" "$WORK/probe-arm64.txt" || die "the root's python is not aarch64"

step "x86: reference venv with the same wheel and the same dependency versions ($HOST_VENV)"
HSTAMP="$HOST_VENV/.edgekit-wheel"
HKEY="$WHEEL_ID $(sha256sum "$WORK/arm64-freeze.txt" | cut -c1-16)"
if ((FRESH_VENV == 0)) && [[ -f $HSTAMP && $(cat "$HSTAMP") == "$HKEY" ]]; then
    info "reusing: same wheel, same pinned versions"
else
    t=$SECONDS
    rm -rf "$HOST_VENV"
    python3 -m venv "$HOST_VENV"
    # The host's own pip config (local x86 wheel folders, PyPI) applies here; the pins keep the
    # versions equal to the arm64 side. Its "Location ... is ignored" warnings are noise.
    "$HOST_VENV/bin/pip" install -q --progress-bar off -c "$WORK/arm64-freeze.txt" "$WHEEL" 2>"$WORK/x86-pip.err" ||
        { cat "$WORK/x86-pip.err" >&2; die "pip install of the wheel on the host failed"; }
    grep -v "is ignored: it is neither a file nor a directory" "$WORK/x86-pip.err" >&2 || true
    echo "$HKEY" >"$HSTAMP"
    info "installed in $((SECONDS - t)) s"
fi
cp "$ROOT$WORK_IN_ROOT/probe.py" "$WORK/probe.py"
env -u PYTHONPATH "$HOST_VENV/bin/python" "$WORK/probe.py" ||
    die "the x86 reference venv is not clean"

# ------------------------------------------------------------------ 4. verify and predict, both sides
if [[ -n $TEXTS ]]; then
    cp "$TEXTS" "$WORK/texts.txt"
else
    long="The battery lasted all day, the screen is sharp, the speakers are loud, and the case feels solid"
    long="$long$(for i in $(seq 1 40); do printf ', and then day %d of testing brought one more small surprise' "$i"; done)."
    cat >"$WORK/texts.txt" <<EOF
The battery lasts all day and the screen is gorgeous.
It stopped working after a week and support never answered.
Delivery was on time; the box was a little dented.
I love this film, the acting and the music were great!
What a boring, slow story with a terrible plot.
Not bad, not good, just ok.
Die Verarbeitung ist hochwertig, aber der Preis ist zu hoch.
Works as described. 5/5 would buy again :)
$long
EOF
fi
NTEXTS=$(wc -l <"$WORK/texts.txt")
MODEL_DESC=$(python3 - "$BUNDLE/manifest.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1], encoding="utf-8"))
p = m["profile"]; data = p.get("data", p)
print(f"profile {p.get('name')}, precision {m['model']['precision']}, max_length {m['tokenizer']['max_length']}")
EOF
)
TASK=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1], encoding="utf-8"))["task"]["name"])' "$BUNDLE/manifest.json")
step "bundle $BUNDLE: $MODEL_DESC, task $TASK; $NTEXTS texts"

rm -rf "$ROOT$WORK_IN_ROOT/bundle"
cp -a "$BUNDLE" "$ROOT$WORK_IN_ROOT/bundle"
cp "$WORK/texts.txt" "$ROOT$WORK_IN_ROOT/texts.txt"
if [[ $TASK == causal-lm ]]; then
    # A decoder bundle: greedy generation (a left-padded batch and each prompt alone) and the prefill
    # logits of the first 4 texts, on both sides (benchmarks/arm64_generate.py).
    cp "$REPO/benchmarks/arm64_generate.py" "$ROOT$WORK_IN_ROOT/arm64_generate.py"
    B="$WORK_IN_ROOT/bundle" X="$WORK_IN_ROOT/texts.txt"
    step "arm64 (emulated): edgekit-run verify, greedy generation, prefill logits"
    in_root "$VENV_IN_ROOT/bin/edgekit-run" verify "$B" | sed 's/^/     /'
    t=$SECONDS
    in_root "$VENV_IN_ROOT/bin/python" "$WORK_IN_ROOT/arm64_generate.py" run "$B" "$X" "$THREADS" \
        >"$WORK/arm64-gen.out" || die "generation failed in the arm64 root"
    info "arm64 generation: ok ($((SECONDS - t)) s)"
    step "x86 (host): the same"
    "$HOST_VENV/bin/edgekit-run" verify "$BUNDLE" | sed 's/^/     /'
    "$HOST_VENV/bin/python" "$REPO/benchmarks/arm64_generate.py" run "$BUNDLE" "$WORK/texts.txt" "$THREADS" \
        >"$WORK/x86-gen.out" || die "generation failed on the host"
    step "compare arm64 against x86"
    set +e
    "$HOST_VENV/bin/python" "$REPO/benchmarks/arm64_generate.py" compare "$BUNDLE/manifest.json" \
        "$WORK/arm64-gen.out" "$WORK/x86-gen.out"
    rc=$?
    set -e
    info "total $((SECONDS - T0)) s"
    exit "$rc"
fi

cat >"$ROOT$WORK_IN_ROOT/logits.py" <<'EOF'
"""The raw logits per text through the Python API, one text per call (no padding): predict --json
gives scores and probabilities of the padded batch, so the two runs cover both paths."""
import json, logging, sys
from edgekit_runtime import load
logging.getLogger("edgekit_runtime").setLevel(logging.ERROR)  # predict --verbose already showed the backend choice
bundle, texts, threads = sys.argv[1], open(sys.argv[2], encoding="utf-8").read().splitlines(), int(sys.argv[3])
with load(bundle, threads=threads) as model:
    print(json.dumps({"backend": model.backend_name, "logits": model.logits(texts, batch_size=1).tolist()}))
EOF
cp "$ROOT$WORK_IN_ROOT/logits.py" "$WORK/logits.py"

run_side() {  # run_side NAME cmd...: run, keep stdout in $WORK/NAME.out, show stderr indented
    local name=$1; shift
    local t=$SECONDS
    if ! "$@" >"$WORK/$name.out" 2>"$WORK/$name.err"; then
        sed 's/^/     | /' "$WORK/$name.err" "$WORK/$name.out" >&2
        die "$name failed: $*"
    fi
    [[ ! -s $WORK/$name.err ]] || sed 's/^/     | /' "$WORK/$name.err"
    info "$name: ok ($((SECONDS - t)) s)"
}
B="$WORK_IN_ROOT/bundle" X="$WORK_IN_ROOT/texts.txt"
step "arm64 (emulated): edgekit-run verify, predict --json, logits"
run_side arm64-verify in_root "$VENV_IN_ROOT/bin/edgekit-run" verify "$B"
sed 's/^/     /' "$WORK/arm64-verify.out"
run_side arm64-predict in_root "$VENV_IN_ROOT/bin/edgekit-run" predict --verbose "$B" --file "$X" --json --threads "$THREADS"
run_side arm64-logits in_root "$VENV_IN_ROOT/bin/python" "$WORK_IN_ROOT/logits.py" "$B" "$X" "$THREADS"

step "x86 (host): the same"
run_side x86-verify "$HOST_VENV/bin/edgekit-run" verify "$BUNDLE"
sed 's/^/     /' "$WORK/x86-verify.out"
run_side x86-predict "$HOST_VENV/bin/edgekit-run" predict --verbose "$BUNDLE" --file "$WORK/texts.txt" --json --threads "$THREADS"
run_side x86-logits "$HOST_VENV/bin/python" "$WORK/logits.py" "$BUNDLE" "$WORK/texts.txt" "$THREADS"

# ------------------------------------------------------------------ 5. compare
step "compare arm64 against x86 (tolerance from the bundle's manifest)"
set +e
"$HOST_VENV/bin/python" - "$BUNDLE/manifest.json" "$WORK" "$NTEXTS" <<'EOF'
import json, math, sys
from pathlib import Path
manifest = json.load(open(sys.argv[1], encoding="utf-8"))
work, n = Path(sys.argv[2]), int(sys.argv[3])
load = lambda name: json.loads((work / f"{name}.out").read_text())
precision = manifest["model"]["precision"]
prof = manifest["profile"]
tolerances = (prof.get("data") or prof).get("tolerances") or {}
if precision not in tolerances:
    print(f"   FAIL: the manifest's profile has no tolerance for precision {precision!r}")
    sys.exit(1)
atol, rtol = float(tolerances[precision]["atol"]), float(tolerances[precision]["rtol"])
arm, x86 = load("arm64-predict"), load("x86-predict")
arm_l, x86_l = load("arm64-logits"), load("x86-logits")
problems = []
if not (len(arm) == len(x86) == len(arm_l["logits"]) == len(x86_l["logits"]) == n):
    problems.append(f"result counts differ: arm64 {len(arm)}/{len(arm_l['logits'])}, x86 {len(x86)}/{len(x86_l['logits'])}, texts {n}")
worst = {}  # quantity -> (abs diff, text number, allowed)

def check(quantity, i, a, r):
    diff, allowed = abs(a - r), atol + rtol * abs(r)
    if not math.isfinite(a) or not math.isfinite(r) or diff > allowed:
        problems.append(f"text {i + 1}: {quantity} arm64 {a!r} vs x86 {r!r}: |diff| {diff:.3g} > allowed {allowed:.3g}")
    if quantity not in worst or diff > worst[quantity][0]:
        worst[quantity] = (diff, i + 1, allowed)

labels_same = truncated_same = 0
for i, (a, r, al, rl) in enumerate(zip(arm, x86, arm_l["logits"], x86_l["logits"])):
    if a["label"] == r["label"]:
        labels_same += 1
    else:
        problems.append(f"text {i + 1}: label arm64 {a['label']!r} vs x86 {r['label']!r}")
    if a["truncated"] == r["truncated"]:
        truncated_same += 1
    else:
        problems.append(f"text {i + 1}: truncated arm64 {a['truncated']} vs x86 {r['truncated']}")
    check("score", i, a["score"], r["score"])
    for k in r["probabilities"]:
        check("probability", i, a["probabilities"].get(k, float("nan")), r["probabilities"][k])
    if len(al) != len(rl):
        problems.append(f"text {i + 1}: {len(al)} logits on arm64, {len(rl)} on x86")
    for a_v, r_v in zip(al, rl):
        check("logit", i, a_v, r_v)

print(f"   backends: arm64 {arm_l['backend']}, x86 {x86_l['backend']}; precision {precision}: "
      f"tolerance atol {atol:g} + rtol {rtol:g} * |x86|")
print(f"   {'text':>4}  {'x86 label':<14} {'arm64 label':<14} {'x86 score':>9}  {'max |logit diff|':>16}  trunc")
for i, (a, r, al, rl) in enumerate(zip(arm, x86, arm_l["logits"], x86_l["logits"])):
    d = max((abs(p - q) for p, q in zip(al, rl)), default=float("nan"))
    print(f"   {i + 1:>4}  {r['label']:<14} {a['label']:<14} {r['score']:>9.5f}  {d:>16.3g}  {'yes' if r['truncated'] else 'no'}")
print(f"   labels identical: {labels_same}/{n}; truncation identical: {truncated_same}/{n} "
      f"({sum(r['truncated'] for r in x86)} truncated)")
for q in ("logit", "score", "probability"):
    if q in worst:
        d, t, allowed = worst[q]
        print(f"   max |{q} diff| {d:.3g} (text {t}; allowed there {allowed:.3g})")
if problems:
    print(f"\nFAIL: arm64 and x86 disagree ({len(problems)} problem(s)):")
    for p in problems[:20]:
        print(f"   {p}")
    sys.exit(1)
print(f"\nPASS: on aarch64 (emulated) the runtime installed from its wheel alone, verified the bundle and "
      f"gave the same labels as x86 for all {n} texts; max |logit diff| {worst['logit'][0]:.3g} within "
      f"{precision} tolerance (atol {atol:g}, rtol {rtol:g}).")
EOF
rc=$?
set -e
info "total $((SECONDS - T0)) s"
exit "$rc"
