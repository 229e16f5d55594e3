#!/usr/bin/env bash
# Set up gem_ros in a venv on the pip-only ROS 2 route (Kilted cp311 wheels from PyPI):
#   torch (pinned, first) -> ROS 2 wheels -> gem_msgs (built by pip/scikit-build-core) -> gem_ros (editable).
# Idempotent: each step records a hash of its inputs under $VENV/.gem_setup/ and is skipped when
# nothing changed, so a second run takes seconds. Robot PCs with apt ROS use colcon instead (README).
#
# Env: GEM_VENV (default <repo>/.venv), PYTHON (default python3.11),
#      TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cu128 for a CUDA build of the same torch).
set -eEuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GEM_VENV:-$ROOT/.venv}"
TORCH_VERSION="2.13.0"
# Pinned like gem_msgs/pyproject.toml: generated message code and runtime must share one ABI.
ROS_WHEELS=(
  ros-rclpy==9.1.2 ros-rmw-fastrtps-cpp==9.3.3 ros-ament-index-python==1.11.0
  ros-builtin-interfaces==2.3.0 ros-std-msgs==5.5.1 ros-geometry-msgs==5.5.1
  ros-sensor-msgs==5.5.1 ros-trajectory-msgs==5.5.1 ros-action-msgs==2.3.0
  ros-diagnostic-msgs==5.5.1 ros-lifecycle-msgs==2.3.0 ros-std-srvs==5.5.1
)
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off

START=$SECONDS
log() { printf '[setup %3ds] %s\n' "$((SECONDS - START))" "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }
trap 'printf "[setup] FAILED (line %s): %s\n" "$LINENO" "$BASH_COMMAND" >&2' ERR

cd "$ROOT"

# --- preconditions -----------------------------------------------------------------------------
if [[ -n "${ROS_DISTRO:-}" && "${AMENT_PREFIX_PATH:-}" == *"/opt/ros/"* ]]; then
  die "ROS 2 '$ROS_DISTRO' from /opt/ros is sourced: this script sets up the pip-only route and would shadow it. Use colcon (README), or run from a shell that did not source /opt/ros."
fi
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || die "$PY not found: the ROS 2 Kilted wheels need Python 3.11 (Debian 12: apt-get install python3 python3-venv)."
"$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || die "$PY is not Python 3.11."
if ! command -v c++ >/dev/null; then  # gem_msgs compiles its typesupport libraries
  if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
    log "installing a C++ compiler (apt-get install g++) for the gem_msgs build"
    apt-get update -qq && apt-get install -y -qq --no-install-recommends g++ >/dev/null
  else
    die "no C++ compiler: apt-get install g++ (needed to build gem_msgs)."
  fi
fi

# --- step bookkeeping --------------------------------------------------------------------------
STAMPS="$VENV/.gem_setup"
hash_of() {  # hash_of <text> [files/dirs...]: this script + text + names and contents of the files
  local text="$1"; shift
  { cat "$ROOT/scripts/setup.sh"; printf '%s\n' "$text"
    if (($#)); then
      find "$@" -type f -not -path '*/build/*' -not -path '*/__pycache__/*' -not -path '*.egg-info/*' \
        2>/dev/null | LC_ALL=C sort | while read -r f; do printf '%s\n' "$f"; cat "$f"; done
    fi
  } | sha256sum | cut -d' ' -f1
}
is_done() { [[ -f "$STAMPS/$1" && "$(cat "$STAMPS/$1")" == "$2" ]]; }
mark_done() { mkdir -p "$STAMPS"; printf '%s\n' "$2" > "$STAMPS/$1"; }
pip() { "$VENV/bin/python" -m pip "$@"; }

# --- 1. venv -----------------------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating $VENV with $PY"
  "$PY" -m venv "$VENV" || die "venv creation failed (Debian: apt-get install python3-venv)."
else
  "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || die "$VENV is not a Python 3.11 venv: remove it and run again."
  log "using existing $VENV"
fi

# --- 2. torch first, pinned: an unpinned resolve would pull the multi-GB CUDA build ------------
installed_torch="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)"
if [[ "$installed_torch" == "$TORCH_VERSION" || "$installed_torch" == "$TORCH_VERSION+"* ]]; then
  log "torch $installed_torch already installed"
else
  log "installing torch==$TORCH_VERSION${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL}"
  pip install -q "torch==$TORCH_VERSION" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi

# --- 3. ROS 2 Kilted wheels ----------------------------------------------------------------------
ros_hash="$(hash_of ros)"
if is_done ros "$ros_hash" && "$VENV/bin/python" -c 'import rclpy' 2>/dev/null; then
  log "ROS 2 wheels up to date"
else
  log "installing ROS 2 wheels: ${ROS_WHEELS[*]}"
  pip install -q "${ROS_WHEELS[@]}"
  mark_done ros "$ros_hash"
fi

# --- 4. gem_msgs (ament_cmake + rosidl, built by scikit-build-core into the venv prefix) --------
# Some PyPI ROS wheels export include dirs of their build machine (/opt/python/cp311-cp311/...).
# gem_msgs/CMakeLists.txt drops missing ones; should that ever not suffice, fall back to the
# documented work-around: symlink those paths to this interpreter's (root only, and never when a
# real ROS install is active, checked above).
link_build_machine_paths() {
  local base=/opt/python/cp311-cp311
  [[ -d /opt/ros || -e "$base" || $EUID -ne 0 ]] && return 1
  log "applying the /opt/python/cp311-cp311 symlink work-around"
  local py_inc np_inc
  py_inc="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  np_inc="$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')"
  mkdir -p "$base/include" "$base/lib/python3.11/site-packages/numpy/_core"
  ln -s "$py_inc" "$base/include/python3.11"
  ln -s "$np_inc" "$base/lib/python3.11/site-packages/numpy/_core/include"
}
msgs_hash="$(hash_of gem_msgs gem_msgs)"
if is_done gem_msgs "$msgs_hash" && "$VENV/bin/python" -c 'import gem_msgs.msg' 2>/dev/null; then
  log "gem_msgs up to date"
else
  log "building gem_msgs (about 30 s)"
  if ! pip install -q ./gem_msgs; then
    link_build_machine_paths || die "gem_msgs build failed (see the CMake output above)."
    pip install -q ./gem_msgs
  fi
  mark_done gem_msgs "$msgs_hash"
fi

# --- 5. gem_ros + gem_train, editable, with the train, dev and arms extras ----------------------------
# The editable finder maps the top-level packages once: the package list is part of the hash.
ros_pkg_hash="$(hash_of "gem_ros $(ls -d ./*/__init__.py 2>/dev/null || true)" pyproject.toml)"
if is_done gem_ros "$ros_pkg_hash" && "$VENV/bin/python" -c 'import gem_ros' 2>/dev/null; then
  log "gem_ros up to date"
else
  log "installing gem_ros (editable) with extras [train,dev,arms]"
  pip install -q -e '.[train,dev,arms]'
  mark_done gem_ros "$ros_pkg_hash"
fi
# pip installs no data files, so lay out share/gem_ros as symlinks into the checkout, like
# `colcon build --symlink-install`: edits to urdf/ and config/ show at once.
# Mirrors data_files in ros/gem_ros/setup.py, the colcon build (test/test_packaging.py checks both agree).
share="$VENV/share"
mkdir -p "$share/ament_index/resource_index/packages" "$share/gem_ros"
link() { [[ -L "$2" || ! -e "$2" ]] || rm -rf "$2"; ln -sfn "$1" "$2"; }
link "$ROOT/ros/gem_ros/resource/gem_ros" "$share/ament_index/resource_index/packages/gem_ros"
link "$ROOT/ros/gem_ros/package.xml" "$share/gem_ros/package.xml"
for dir in urdf config; do link "$ROOT/$dir" "$share/gem_ros/$dir"; done

# --- 6. smoke check: fails loudly if any layer is broken ------------------------------------------
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import os
import sys
from pathlib import Path

import rclpy  # noqa: F401  (needs rmw_fastrtps_cpp)
from gem_msgs.msg import ActionChunk  # noqa: F401
import gem_ros  # noqa: F401
from ament_index_python.packages import get_package_share_directory

os.environ["AMENT_PREFIX_PATH"] = sys.prefix  # how nodes find share/ on the pip route
for package in ("gem_ros", "gem_msgs"):
    assert (Path(get_package_share_directory(package)) / "package.xml").is_file(), package
print("[setup] ok: torch %s, rclpy %s, gem-msgs %s, gem_ros %s" % tuple(
    md.version(p) for p in ("torch", "ros-rclpy", "gem-msgs", "gem_ros")))
EOF
log "done. Activate with: source ${VENV#"$ROOT"/}/bin/activate"
