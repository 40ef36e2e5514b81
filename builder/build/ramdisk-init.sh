#!/bin/sh
# amilab generated ramdisk: load the root disk's drivers, find the root, switch to it.
# Kernel parameters: root= (LABEL=, UUID=, PARTUUID=, /dev/NAME, NAME, MAJOR:MINOR),
# rootfstype=, rootflags=, ro, rw, init=, rootdelay=N (pause first), rootwait[=N] (wait up to
# N s, 60 without a value, instead of 10), amilab.shell (a shell on the console before mounting).
# Every failure prints one `amilab-ramdisk: ...` line and powers off, so QEMU exits.

BUILT_FOR=@RELEASE@

say() { echo "amilab-ramdisk: $*"; }

number_or() {  # $1 if it is a whole number, else $2
    case "$1" in ''|*[!0-9]*) echo "$2" ;; *) echo "$1" ;; esac
}

parse_cmdline() {
    root=""; rootfstype=""; rootflags=""; mode=ro; init=""; rootdelay=0; wait=10; shell=""
    set -f  # a `*` on the command line must not expand to file names
    for arg in $1; do
        case "$arg" in
            root=*) root=${arg#root=} ;;
            rootfstype=*) rootfstype=${arg#rootfstype=} ;;
            rootflags=*) rootflags=${arg#rootflags=} ;;
            ro) mode=ro ;;
            rw) mode=rw ;;
            init=*) init=${arg#init=} ;;
            rootdelay=*) rootdelay=$(number_or "${arg#rootdelay=}" 0) ;;
            rootwait) wait=60 ;;
            rootwait=*) wait=$(number_or "${arg#rootwait=}" 60) ;;
            amilab.shell) shell=1 ;;
        esac
    done
    set +f
}

lower() { echo "$1" | tr A-F a-f; }

partuuid_of() {  # $1 whole-disk device, $2 partition number, $3 sector size: print PARTUUID
    magic=$(od -An -tx1 -j"$3" -N8 "$1" 2>/dev/null | tr -d ' \n')
    if [ "$magic" = 4546492050415254 ]; then  # "EFI PART": GPT
        lba=$(od -An -tu8 -j$(($3 + 72)) -N8 "$1" | tr -d ' ')
        esz=$(od -An -tu4 -j$(($3 + 84)) -N4 "$1" | tr -d ' ')
        set -- $(od -An -tx1 -j$((lba * $3 + ($2 - 1) * esz + 16)) -N16 "$1")
        echo "$4$3$2$1-$6$5-$8$7-$9${10}-${11}${12}${13}${14}${15}${16}"
    else  # MBR: disk signature and partition number
        printf '%s-%02x\n' "$(od -An -tx4 -j440 -N4 "$1" | tr -d ' ')" "$2"
    fi
}

find_partuuid() {
    want=$(lower "$1")
    for p in /sys/class/block/*; do
        [ -f "$p/partition" ] || continue
        disk=$(basename "$(readlink -f "$p/..")")
        size=$(cat "/sys/block/$disk/queue/logical_block_size" 2>/dev/null || echo 512)
        got=$(partuuid_of "/dev/$disk" "$(cat "$p/partition")" "$size")
        [ "$got" = "$want" ] && { echo "/dev/${p##*/}"; return 0; }
    done
    return 1
}

find_root() {  # print the device for a root= value, if it is there yet
    case "$1" in
        LABEL=*) findfs "$1" 2>/dev/null ;;
        UUID=*) findfs "UUID=$(lower "${1#UUID=}")" 2>/dev/null ;;
        PARTUUID=*) find_partuuid "${1#PARTUUID=}" ;;
        /dev/*) [ -b "$1" ] && echo "$1" ;;
        *:*) name=$(sed -n 's/^DEVNAME=//p' "/sys/dev/block/$1/uevent" 2>/dev/null)
             [ -n "$name" ] && [ -b "/dev/$name" ] && echo "/dev/$name" ;;
        ?*) [ -b "/dev/$1" ] && echo "/dev/$1" ;;
    esac
}

ext_label() {  # the label of an ext2/3/4 filesystem, from its superblock
    [ "$(od -An -tx2 -j1080 -N2 "$1" 2>/dev/null | tr -d ' ')" = ef53 ] || return 1
    dd if="$1" bs=1 skip=1144 count=16 2>/dev/null | tr -d '\000'
}

block_devices() {  # what the kernel found, with ext labels: "vda vda1(LABEL=root)"
    out=""
    for p in /sys/class/block/*; do
        [ -e "$p" ] || continue
        name=${p##*/}
        case "$name" in loop*|ram*) continue ;; esac
        if label=$(ext_label "/dev/$name"); then name="$name(LABEL=$label)"; fi
        out="$out $name"
    done
    echo "${out# }" | grep . || echo none
}

load_modules() {
    loaded=0; failed=""
    dir=/lib/modules/$(uname -r)
    if [ ! -d "$dir" ]; then
        say "carries modules for $BUILT_FOR but the kernel is $(uname -r); loading none"
        return
    fi
    while read -r path; do
        [ -n "$path" ] || continue
        # drivers for absent hardware (Xen on KVM, ...) refuse to load: expected
        if insmod "$dir/$path" 2>/dev/null; then loaded=$((loaded + 1))
        else failed="$failed ${path##*/}"; fi
    done < /@MODULES_LIST@
}

fail() {
    say "$*"
    if [ -n "$shell" ]; then sh; fi
    poweroff -f
    sleep 5
    exit 1  # init exiting panics the kernel; with panic=-1 and -no-reboot QEMU exits too
}

uptime_s() { read -r up _ < /proc/uptime; echo "${up%.*}"; }

wait_for_root() {
    if [ "$rootdelay" -gt 0 ]; then sleep "$rootdelay"; fi
    # a deadline, not a count of tries: each probe forks, which is slow under TCG
    deadline=$(($(uptime_s) + wait))
    while :; do
        dev=$(find_root "$root") && [ -n "$dev" ] && return 0
        [ "$(uptime_s)" -lt "$deadline" ] || return 1
        usleep 100000
    done
}

mount_root() {
    opts=$mode
    if [ -n "$rootflags" ]; then opts="$opts,$rootflags"; fi
    if [ -n "$rootfstype" ]; then
        err=$(mount -t "$rootfstype" -o "$opts" "$dev" /newroot 2>&1)
    else
        err=$(mount -o "$opts" "$dev" /newroot 2>&1)
    fi || fail "CANNOT MOUNT ROOT: root=$root on $dev (${rootfstype:-auto}, $opts): $err"
}

choose_init() {
    if [ -n "$init" ]; then set -- "$init"; else set -- /sbin/init /etc/init /bin/init /bin/sh; fi
    for candidate in "$@"; do
        if [ -e "/newroot$candidate" ] || [ -L "/newroot$candidate" ]; then
            init=$candidate
            return 0
        fi
    done
    umount /newroot
    fail "NO INIT: none of $* on root=$root ($dev)"
}

main() {
    export PATH=/sbin:/bin:/usr/sbin:/usr/bin
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev
    parse_cmdline "$(cat /proc/cmdline)"
    load_modules
    if [ -n "$shell" ]; then say "amilab.shell: exit the shell to continue"; sh; fi
    if [ -z "$root" ]; then fail "ROOT NOT FOUND: no root= on the kernel command line"; fi
    wait_for_root || fail "ROOT NOT FOUND: root=$root (waited ${wait} s);" \
        "block devices: $(block_devices); modules loaded: $loaded, refused:${failed:- none}"
    mount_root
    choose_init
    say "switching to $root ($dev, $mode) init=$init"
    for d in dev proc sys; do
        if [ -d "/newroot/$d" ]; then mount -o move "/$d" "/newroot/$d"; else umount -l "/$d"; fi
    done
    exec switch_root /newroot "$init" "$@"
}

[ -n "$AMILAB_RAMDISK_TEST" ] || main "$@"
