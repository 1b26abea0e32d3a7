#!/usr/bin/env bash
# Installs what oxtarget's guest tests need on Debian 12 (bookworm) and caches
# the guest kernel. Idempotent, non-interactive; run as root:
#
#     sudo integration/install-deps.sh
#
# - adds a bookworm-backports apt source if none is configured, reusing the URI
#   of the existing bookworm source (never a hard-coded mirror);
# - installs QEMU from bookworm-backports only (qemu-utils 10.0 from there may
#   already be installed, and every QEMU package must come from one suite);
# - installs busybox-static, cpio, zstd, xz-utils (the initramfs userland and
#   the tools that unpack the kernel), libiscsi-bin, open-iscsi (whose
#   iscsid/iscsiadm the guest's initramfs carries; no service is started)
#   and sg3-utils (sg_reset, also for the guest);
# - installs rdma-core's development files and the soft-RoCE provider (the SRP
#   transport links libibverbs and librdmacm; the rxe provider goes into the
#   SRP guest), fio (I/O checks and the SRP benchmark in that guest), and a
#   one-node Ceph's daemons with librbd's headers (the RBD backend's tests);
# - downloads the package that linux-image-amd64 depends on (without
#   installing it) and unpacks it into the guest cache:
#   $OXTARGET_GUEST_CACHE, default integration/cache/, as kernel/<release>/,
#   and writes <release> into kernel/current. The harness extracts the ELF
#   vmlinux from it on first use.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${OXTARGET_GUEST_CACHE:-$here/cache}

log() { printf 'install-deps: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0)"
[ -r /etc/os-release ] && . /etc/os-release
[ "${VERSION_CODENAME:-}" = bookworm ] || log "warning: written for Debian 12 (bookworm), this is '${VERSION_CODENAME:-unknown}'"

# --- apt sources -----------------------------------------------------------

# Prints "URI<TAB>SIGNED-BY" of the first enabled source that serves the
# plain "bookworm" suite, from deb822 (*.sources) or one-line (*.list) files.
bookworm_source() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk '
            function flush() {
                if (deb && enabled && has_suite && uri != "") { print uri "\t" signed; found = 1; exit }
                deb = 0; enabled = 1; has_suite = 0; uri = ""; signed = ""
            }
            BEGIN { enabled = 1 }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            {
                key = tolower($1); sub(/:$/, "", key)
                if (key == "types") { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
                else if (key == "enabled") { if (tolower($2) == "no") enabled = 0 }
                else if (key == "suites") { for (i = 2; i <= NF; i++) if ($i == "bookworm") has_suite = 1 }
                else if (key == "uris") { uri = $2 }
                else if (key == "signed-by") { signed = $2 }
            }
            END { if (!found) flush() }
        ' "$f" | head -n1 | grep . && return 0
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk '
            $1 != "deb" { next }
            {
                i = 2; signed = ""
                if ($i ~ /^\[/) {
                    while (i <= NF) {
                        if ($i ~ /signed-by=/) { s = $i; sub(/.*signed-by=/, "", s); sub(/\]$/, "", s); signed = s }
                        if ($i ~ /\]$/) { i++; break }
                        i++
                    }
                }
                if ($(i + 1) == "bookworm") { print $i "\t" signed; exit }
            }
        ' "$f" | head -n1 | grep . && return 0
    done
    return 1
}

has_backports_source() {
    grep -rqsE '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources
}

if has_backports_source; then
    log "bookworm-backports source already configured"
else
    src=$(bookworm_source) || die "no enabled apt source for the 'bookworm' suite found in /etc/apt"
    uri=${src%%$'\t'*}
    signed=${src#*$'\t'}
    # A keyring path is reused; an inline key block (or none) is not.
    case $signed in
        /*) ;;
        *) signed=/usr/share/keyrings/debian-archive-keyring.gpg ;;
    esac
    log "adding bookworm-backports from the same URI as the bookworm source"
    cat >/etc/apt/sources.list.d/oxtarget-bookworm-backports.sources <<EOF
# Added by oxtarget integration/install-deps.sh: QEMU for the guest tests.
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: $signed
EOF
fi

log "apt-get update"
apt-get update -qq

# --- packages --------------------------------------------------------------

apt-get install -y -q --no-install-recommends \
    busybox-static cpio zstd xz-utils gzip ca-certificates

# Every QEMU package from bookworm-backports, so the versions match.
apt-get install -y -q --no-install-recommends -t bookworm-backports \
    qemu-system-x86 qemu-system-common qemu-system-data qemu-block-extra qemu-utils
# libiscsi's initiators and conformance suite (iscsi-inq, iscsi-ls, iscsi-test-cu).
apt-get install -y -q --no-install-recommends libiscsi-bin
# open-iscsi: iscsid and iscsiadm (with their libraries) go into the guest
# initramfs, for the kernel initiator's test. Nothing runs on the host: its
# postinst starts services only under systemd (/run/systemd/system) and
# registers the init scripts disabled, so it is quiet in a container. It also
# writes /etc/iscsi/initiatorname.iscsi on first install (the guest gets its
# own name from the test).
apt-get install -y -q --no-install-recommends open-iscsi
# sg3-utils: sg_reset in the guest (LU and target reset through the kernel).
apt-get install -y -q --no-install-recommends sg3-utils
# RDMA: the SRP transport builds against libibverbs and librdmacm; the guest
# that tests it carries the rxe provider (ibverbs-providers), iproute2's rdma
# tool and fio.
# dmsetup holds a command back in that guest (a suspended dm-zero device) for
# the task management test; objcopy strips the daemon copied into it.
apt-get install -y -q --no-install-recommends \
    libibverbs-dev librdmacm-dev ibverbs-providers ibverbs-utils iproute2 fio \
    dmsetup binutils
# Ceph for the RBD backend: one mon and one OSD on 127.0.0.1 per test (no
# service is started by the packages without systemd), librbd to link.
apt-get install -y -q --no-install-recommends \
    ceph-mon ceph-osd ceph-common librbd-dev

# --- guest kernel ----------------------------------------------------------

kpkg=$(apt-cache depends linux-image-amd64 | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
[ -n "$kpkg" ] || die "cannot resolve the package linux-image-amd64 depends on"
kver=$(apt-cache show --no-all-versions "$kpkg" | awk '$1 == "Version:" { print $2; exit }')
release=${kpkg#linux-image-}
kdir=$cache/kernel/$release
stamp="$kpkg $kver"

mkdir -p "$cache/kernel"
if [ -f "$kdir/.oxtarget-package" ] && [ "$(cat "$kdir/.oxtarget-package")" = "$stamp" ]; then
    log "kernel $stamp already unpacked in $kdir"
else
    log "downloading $kpkg $kver"
    tmp=$(mktemp -d "$cache/kernel/.download.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    chmod 755 "$tmp"
    if id _apt >/dev/null 2>&1; then chown _apt "$tmp"; fi
    (cd "$tmp" && apt-get download -q "$kpkg=$kver")
    deb=$(ls "$tmp"/*.deb)
    log "unpacking $(basename "$deb") into $kdir"
    mkdir "$tmp/tree"
    dpkg-deb -x "$deb" "$tmp/tree"
    printf '%s\n' "$stamp" >"$tmp/tree/.oxtarget-package"
    rm -rf "$kdir"
    mv "$tmp/tree" "$kdir"
    rm -rf "$tmp"
    trap - EXIT
fi
printf '%s\n' "$release" >"$cache/kernel/current.tmp"
mv "$cache/kernel/current.tmp" "$cache/kernel/current"

# Drop kernels this script unpacked before that are no longer current.
for old in "$cache"/kernel/*/.oxtarget-package; do
    [ -f "$old" ] || continue
    dir=$(dirname "$old")
    if [ "$(basename "$dir")" != "$release" ]; then
        log "removing old kernel $dir"
        rm -rf "$dir"
    fi
done

# Let the user who ran sudo use and refresh the cache without root.
if [ -n "${SUDO_UID:-}" ] && [ -n "${SUDO_GID:-}" ]; then
    chown -R "$SUDO_UID:$SUDO_GID" "$cache"
fi

log "done: $(qemu-system-x86_64 --version | head -n1); kernel $release in $kdir"
