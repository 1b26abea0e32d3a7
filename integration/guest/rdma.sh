# Shell functions for the RDMA guest (integration/src/rdma.rs puts this file at
# /etc/oxtarget/rdma.sh; a test script sources it). Soft RoCE (rdma_rxe) on
# eth0, the kernel's SRP target ib_srpt through configfs, and ib_srp logins
# over RDMA/CM, all inside one guest. busybox ash. Every wait is bounded; a
# function that fails says why on stderr (the console) and returns non-zero.

# iproute2's ip, by path: busybox's ip applet would shadow it on PATH.
IP=/usr/bin/ip
# eth0's address: the target listens and the initiator logs in on it (rxe
# loops traffic to its own GID back inside the kernel).
GUEST_ADDR=10.0.2.15
CFS=/sys/kernel/config/target
SRP_ADD_TARGET=/sys/class/infiniband_srp/srp-rxe0-1/add_target

# wait_for TENTHS CMD...: runs CMD every 0.1 s until it succeeds, at most TENTHS
# times.
wait_for() {
    _wf_n=$1
    shift
    _wf_i=0
    until "$@"; do
        _wf_i=$((_wf_i + 1))
        [ $_wf_i -lt "$_wf_n" ] || return 1
        sleep 0.1
    done
}

rxe_active() {
    grep -q ACTIVE /sys/class/infiniband/rxe0/ports/1/state 2>/dev/null
}

# rxe_up: eth0 up with GUEST_ADDR, rxe0 on it, its port ACTIVE.
rxe_up() {
    $IP link set lo up || return 1
    $IP link set eth0 up || return 1
    $IP addr add $GUEST_ADDR/24 dev eth0 || return 1
    rdma link add rxe0 type rxe netdev eth0 || return 1
    if ! wait_for 100 rxe_active; then
        echo "rxe0 port 1 did not become ACTIVE" >&2
        rdma link show >&2
        return 1
    fi
}

# rxe0's GID 0 without its link-local prefix (5054:00ff:fe12:3456): ib_srpt's
# name for the target port.
rxe_gid_suffix() {
    sed 's/^fe80:0000:0000:0000://' /sys/class/infiniband/rxe0/ports/1/gids/0
}

# The GUID ib_srpt answers to (rxe0's node GUID), as 0x + 16 hex digits: the
# id_ext and ioc_guid of a login to ib_srpt.
srpt_guid() {
    cat /sys/module/ib_srpt/parameters/srpt_service_guid
}

configfs_up() {
    grep -q ' /sys/kernel/config ' /proc/mounts ||
        mount -t configfs configfs /sys/kernel/config
}

# rd_backstore NAME PAGES: a LIO ramdisk of PAGES 4 KiB pages,
# core/rd_mcp_0/NAME.
rd_backstore() {
    configfs_up || return 1
    _d=$CFS/core/rd_mcp_0/$1
    mkdir -p "$_d" &&
        echo "rd_pages=$2" >"$_d/control" &&
        echo 1 >"$_d/enable"
}

# iblock_backstore NAME DEVICE: a LIO block device backstore,
# core/iblock_0/NAME.
iblock_backstore() {
    configfs_up || return 1
    _d=$CFS/core/iblock_0/$1
    mkdir -p "$_d" &&
        echo "udev_path=$2" >"$_d/control" &&
        echo 1 >"$_d/enable"
}

# dm_zero_device NAME SECTORS: a dm-zero device (reads zeros, drops writes)
# whose I/O `dmsetup suspend NAME` holds; prints its /dev/dm-N (no udev here
# to make /dev/mapper/NAME).
dm_zero_device() {
    dmsetup create "$1" --noudevsync --table "0 $2 zero" || return 1
    _m=$(dmsetup info -c --noheadings -o minor "$1") || return 1
    echo "/dev/dm-$((_m))"
}

# srpt_setup PORT BACKSTORE...: ib_srpt listening on PORT (RDMA/CM) on rxe0's
# target port, LUN i = BACKSTORE i (a path under core/, e.g.
# rd_mcp_0/ramdisk0), an ACL for the initiator's address with every LUN,
# enabled.
srpt_setup() {
    _port=$1
    shift
    configfs_up || return 1
    mkdir -p $CFS/srpt || return 1
    echo "$_port" >$CFS/srpt/discovery_auth/rdma_cm_port || return 1
    _tp=$(rxe_gid_suffix) || return 1
    _t=$CFS/srpt/$_tp/$_tp
    mkdir -p "$_t" || return 1
    _i=0
    for _b in "$@"; do
        mkdir "$_t/lun/lun_$_i" &&
            ln -s "$CFS/core/$_b" "$_t/lun/lun_$_i/${_b##*/}" || return 1
        _i=$((_i + 1))
    done
    _acl=$_t/acls/$GUEST_ADDR
    mkdir "$_acl" || return 1
    _i=0
    for _b in "$@"; do
        mkdir "$_acl/lun_$_i" &&
            ln -s "$_t/lun/lun_$_i" "$_acl/lun_$_i/lun_$_i" || return 1
        _i=$((_i + 1))
    done
    echo 1 >"$_t/enable"
}

# srp_login PORT ID_EXT IOC_GUID [OPTIONS]: has ib_srp log in to GUEST_ADDR:PORT
# over RDMA/CM (OPTIONS: more add_target fields, e.g. ch_count=1). Retries
# while an earlier port with the same ids is still going away ("File exists"),
# at most 10 s.
srp_login() {
    _s="id_ext=$2,ioc_guid=$3,dest=$GUEST_ADDR:$1,src=$GUEST_ADDR${4:+,$4}"
    echo "srp login: $_s" >&2
    _i=0
    until echo "$_s" 2>/tmp/srp-login.err >$SRP_ADD_TARGET; do
        _i=$((_i + 1))
        if [ $_i -ge 50 ] || ! grep -q 'exists' /tmp/srp-login.err; then
            echo "srp login to port $1 failed: $(cat /tmp/srp-login.err)" >&2
            return 1
        fi
        sleep 0.2
    done
}

# srp_login_refused KEY PORT ID: a login to GUEST_ADDR:PORT naming target port
# ID (as id_ext and ioc_guid) that the target does not have, one attempt;
# prints "KEY refused" when ib_srp's add_target failed and left no remote
# port, with "KEY-reason 0x..." (the SRP_LOGIN_REJ reason ib_srp logged, if
# any), "KEY accepted" otherwise (and logs out again).
srp_login_refused() {
    _s="id_ext=$3,ioc_guid=$3,dest=$GUEST_ADDR:$2,src=$GUEST_ADDR,ch_count=1"
    if echo "$_s" 2>/tmp/srp-login.err >$SRP_ADD_TARGET; then
        echo "$1 accepted"
        srp_logout
    elif _no_srp_ports; then
        echo "srp login to unknown target port $3: $(cat /tmp/srp-login.err)" >&2
        echo "$1 refused"
        _r=$(dmesg | grep -o 'SRP LOGIN REJECTED, reason 0x[0-9a-f]*' | tail -n 1)
        echo "$1-reason ${_r##* }"
    else
        echo "$1 accepted"
        srp_logout
    fi
}

# srp_host: the SCSI host number of the (newest) SRP remote port.
srp_host() {
    _h=
    for _p in /sys/class/srp_remote_ports/port-*; do
        [ -e "$_p" ] || continue
        _n=${_p##*/port-}
        _n=${_n%%:*}
        if [ -z "$_h" ] || [ "$_n" -gt "$_h" ]; then _h=$_n; fi
    done
    [ -n "$_h" ] && echo "$_h"
}

_disk_of() {
    for _b in /sys/class/scsi_device/$1:*:*:$2/device/block/*; do
        if [ -e "$_b" ] && [ -b "/dev/${_b##*/}" ]; then
            echo "${_b##*/}"
            return 0
        fi
    done
    return 1
}

# srp_disk HOST LUN: the block device (sdX) of LUN on SCSI host HOST, once the
# scan has made it (at most 30 s).
srp_disk() {
    if ! wait_for 300 _disk_of "$1" "$2" >/dev/null; then
        echo "no disk for LUN $2 on host$1" >&2
        ls /sys/class/scsi_device >&2
        return 1
    fi
    _disk_of "$1" "$2"
}

_no_srp_ports() {
    for _p in /sys/class/srp_remote_ports/port-*; do
        [ -e "$_p" ] && return 1
    done
    return 0
}

# srp_logout: deletes every SRP remote port (a CM disconnect of each channel)
# and waits until they are gone (at most 30 s).
srp_logout() {
    for _p in /sys/class/srp_remote_ports/port-*; do
        [ -e "$_p" ] && echo 1 >"$_p/delete"
    done
    wait_for 300 _no_srp_ports || {
        echo "SRP remote ports left after logout" >&2
        return 1
    }
}

# host_attrs KEY HOST: prints "KEY-ch_count N" and "KEY-req_lim N" of ib_srp's
# SCSI host.
host_attrs() {
    echo "$1-ch_count $(cat /sys/class/scsi_host/host$2/ch_count)"
    echo "$1-req_lim $(cat /sys/class/scsi_host/host$2/req_lim)"
}

md5() { md5sum "$1" | cut -d' ' -f1; }

# io_check KEY DEV MIB SEEK_MIB: MIB MiB of random data written to /dev/DEV at
# SEEK_MIB with O_DIRECT, read back with O_DIRECT and compared; prints
# "KEY-written MD5", "KEY-read MD5" and "KEY-cmp ok|differ".
io_check() {
    head -c $(($3 << 20)) /dev/urandom >/tmp/io-pattern
    dd if=/tmp/io-pattern of="/dev/$2" bs=64k seek=$(($4 * 16)) oflag=direct conv=notrunc 2>/dev/null ||
        return 1
    dd if="/dev/$2" of=/tmp/io-back bs=64k skip=$(($4 * 16)) count=$(($3 * 16)) iflag=direct 2>/dev/null ||
        return 1
    echo "$1-written $(md5 /tmp/io-pattern)"
    echo "$1-read $(md5 /tmp/io-back)"
    if cmp /tmp/io-pattern /tmp/io-back >&2; then echo "$1-cmp ok"; else echo "$1-cmp differ"; fi
    rm -f /tmp/io-pattern /tmp/io-back
}

# fio_verify KEY DEV JOBS: fio writes 4K..64K blocks at queue depth 16 from
# JOBS jobs (each its own 4 MiB region) with O_DIRECT and reads every block
# back, checking its CRC32C and header (offset, length); prints
# "KEY-fio ok|failed".
fio_verify() {
    if fio --name=verify --filename="/dev/$2" --direct=1 --ioengine=libaio \
        --rw=randwrite --bsrange=4k-64k --iodepth=16 --numjobs="$3" --size=4M \
        --offset_increment=4M --verify=crc32c --verify_fatal=1 --do_verify=1 \
        --group_reporting >/tmp/fio-verify.out 2>&1; then
        echo "$1-fio ok"
    else
        echo "$1-fio failed"
    fi
    sed "s/^/fio $1: /" /tmp/fio-verify.out >&2
}

# Task management: count_log TEXT: how many kernel log lines contain TEXT.
count_log() {
    dmesg | grep -c "$1" || true
}

# tm_check KEY DEV HOLD: with the dm device HOLD (a dm target under LUN DEV's
# backstore) suspended, a direct read of DEV cannot complete; ib_srp's command
# timeout (2 s) fires and it sends ABORT TASK. Once the kernel has logged the
# abort, and 2 s later (so the TMF reaches the target while the command is
# still held), the device resumes. Then `sg_reset -N -d` has ib_srp send a LUN
# RESET. Prints "KEY-abort-sent N", "KEY-abort-read ok|failed",
# "KEY-lun-reset STATUS" (sg_reset's exit status: 0 when the target answered
# FUNCTION COMPLETE), "KEY-reset-device-called N", "KEY-reset-host-called N",
# "KEY-null-scmnd N" (responses for commands ib_srp had aborted) as counts of
# new kernel log lines.
tm_check() {
    _aborts=$(count_log 'Sending SRP abort')
    _devres=$(count_log 'SRP reset_device called')
    _hostres=$(count_log 'SRP reset_host called')
    _null=$(count_log 'Null scmnd')
    _timeout=$(cat /sys/block/$2/device/timeout)
    echo 2 >/sys/block/$2/device/timeout
    dmsetup suspend "$3" || return 1
    dd if="/dev/$2" of=/dev/null bs=4k count=1 skip=7 iflag=direct 2>/tmp/tm-dd.err &
    _dd=$!
    if ! wait_for 600 _log_has_more 'Sending SRP abort' "$_aborts"; then
        echo "no ABORT TASK within 60 s" >&2
    fi
    sleep 2
    dmsetup resume "$3" || return 1
    if wait "$_dd"; then echo "$1-abort-read ok"; else echo "$1-abort-read failed"; fi
    echo "$_timeout" >/sys/block/$2/device/timeout
    echo "$1-abort-sent $(($(count_log 'Sending SRP abort') - _aborts))"
    if sg_reset -N -d "/dev/$2" >&2; then _st=0; else _st=$?; fi
    echo "$1-lun-reset $_st"
    echo "$1-reset-device-called $(($(count_log 'SRP reset_device called') - _devres))"
    echo "$1-reset-host-called $(($(count_log 'SRP reset_host called') - _hostres))"
    echo "$1-null-scmnd $(($(count_log 'Null scmnd') - _null))"
}

_log_has_more() {
    [ "$(count_log "$1")" -gt "$2" ]
}

# srp_suite PORT GUID DATA_LUN DATA_SECTORS HOLD_LUN HOLD_NAME: what every SRP
# target in these guests goes through. For ch in 1 2: ib_srp logs in to
# GUEST_ADDR:PORT (id_ext = ioc_guid = GUID) with ch_count=1, then with the
# default channel count (one per vCPU: 2); the data LUN's size, ib_srp's
# channel count and credits; ib_srpt's count of login requests (0 for any
# other target); random data written and read back with O_DIRECT and
# compared; fio's verify from $ch jobs. With one channel also tm_check on the
# hold LUN (HOLD_NAME is its dm device) and the data read back after it. Then
# logout. Before all that, a login naming a target port the target does not
# have must be refused. Prints "wrong-target-login refused|accepted",
# "chN-..." lines (see io_check, fio_verify, tm_check) and "suite done".
srp_suite() {
    srp_login_refused wrong-target-login "$1" 0x1111111111111111
    for _ch in 1 2; do
        _logins=$(count_log 'Received SRP_LOGIN_REQ')
        if [ $_ch = 1 ]; then
            srp_login "$1" "$2" "$2" ch_count=1 || return 1
        else
            srp_login "$1" "$2" "$2" || return 1
        fi
        _host=$(srp_host) || { echo "no SRP remote port after the login" >&2; return 1; }
        _disk=$(srp_disk "$_host" "$3") || return 1
        _hold=$(srp_disk "$_host" "$5") || return 1
        echo "ch$_ch-disk-sectors $(cat /sys/block/$_disk/size)"
        host_attrs ch$_ch "$_host"
        echo "ch$_ch-srpt-logins $(($(count_log 'Received SRP_LOGIN_REQ') - _logins))"
        io_check ch$_ch "$_disk" 4 $((_ch * 8)) || return 1
        fio_verify ch$_ch "$_disk" $_ch
        if [ $_ch = 1 ]; then
            tm_check ch1 "$_hold" "$6" || return 1
            io_check ch1-after-tm "$_disk" 1 30 || return 1
        fi
        srp_logout || return 1
    done
    dmesg | grep -E 'srp|SRP|ABORT|reset' >&2 || true
    echo "suite done"
}
