#!/usr/bin/env bash
# Installs what amilab needs on Debian 12 (as root) and creates .venv; idempotent and quick
# when nothing changed (a stamp records what was installed).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"

DEBS=(
  mmdebstrap debootstrap qemu-system-x86 qemu-utils e2fsprogs fdisk dosfstools mtools
  busybox-static kmod cpio zstd xz-utils python3-venv python3-guestfs libguestfs-tools
  ovmf seabios sudo curl uidmap grub-pc-bin grub-efi-amd64-bin grub2-common
  linux-image-cloud-amd64 amazon-ec2-utils netcat-openbsd socat
  openssl procps iproute2
  chromium  # headless: tests/integration/test_matrix.py renders the HTML report
  diffoscope-minimal  # build --verify: how two builds' files differ
  postgresql  # the results store's team server: its tests start one (initdb, pg_ctl) in tmp
  # arm64 images: their trees through QEMU user-mode emulation (mmdebstrap needs arch-test
  # for a foreign architecture), their boots on qemu-system-aarch64 with AAVMF. GRUB's
  # arm64-efi modules (grub-efi-arm64-bin, an arm64 package) come from the mirror at build time.
  qemu-user-static binfmt-support arch-test qemu-system-arm qemu-efi-aarch64
)
# AMILAB_BENCH_PEERS=1: also what bench/matrix.py's virtme-ng peer boots, Debian's generic
# kernel on the host (virtme-ng boots the host's root over 9p, which the cloud kernel lacks;
# ~400 MB and an initramfs build, so not in every setup)
if [ "${AMILAB_BENCH_PEERS:-}" = 1 ]; then
  DEBS+=(linux-image-amd64)
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (apt-get, chroot and mounts need it)" >&2
  exit 3
fi
export DEBIAN_FRONTEND=noninteractive
missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

stamp=.venv/.amilab-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: creating .venv (system site packages for python3-guestfs)"
  /usr/bin/python3 -m venv --system-site-packages .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test,dib,bench]'
  echo "$want" > "$stamp"
fi
