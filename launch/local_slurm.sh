#!/usr/bin/env bash
# Start / stop a REAL single-node Slurm cluster on this machine (Debian bookworm, as root).
# Used by CI and by the launcher's end-to-end tests.
#
#   launch/local_slurm.sh up       # install slurm-wlm+munge if missing, start munged/slurmctld/slurmd
#   launch/local_slurm.sh status   # print sinfo/squeue; exit non-zero unless the cluster is usable
#   launch/local_slurm.sh down     # scancel every job, stop the daemons, leave nothing running
#   launch/local_slurm.sh env      # print `export ...` lines:  eval "$(launch/local_slurm.sh env)"
#
# Everything (configs, munge key, state, logs, pids, sockets, fake GPU device nodes) lives under
#   ${LATENTBRIDGE_SLURM_DIR:-/tmp/latentbridge-slurm}
#
# How client commands find the config: `up` also installs copies of slurm.conf and gres.conf at
# /etc/slurm/ (Debian's compiled-in default, marked with a "managed by" header; a foreign file
# there is first backed up to *.latentbridge-bak). So sbatch/srun/squeue/scontrol/sinfo work
# from any process -- including Python's submitit, which shells out to them -- with no extra env.
# The slurm.conf names the munge socket (AuthInfo=socket=...), so clients find munged too.
# Consequence: one such cluster per machine (fixed ports 6817/6818 and one /etc/slurm).
#
# The cluster: node `localhost` (slurmd -N localhost; the hostname is not localhost),
# CPUs=8 declared (more than the 2 real cores; SlurmdParameters=config_overrides) so 4-task jobs
# fit, Gres=gpu:4 backed by 4 copies of /dev/null (jobs get CUDA_VISIBLE_DEVICES=0,1,2,3 but
# there is no CUDA: code must fall back to CPU/gloo). Partitions: `debug` (default, PriorityTier=1,
# preemptable with PreemptMode=REQUEUE) and `urgent` (PriorityTier=10, preempts debug).
# No accounting (no sacct): a job that left the queue is gone from Slurm's view.
# AuthInfo cred_expire=10 so a requeued job restarts in ~15 s instead of ~170 s.
set -euo pipefail

DIR="${LATENTBRIDGE_SLURM_DIR:-/tmp/latentbridge-slurm}"
WAIT_S="${LATENTBRIDGE_SLURM_WAIT_S:-60}"
ETC_SLURM=/etc/slurm
MARKER="# managed by latentbridge launch/local_slurm.sh"
NODE=localhost
FAKE_GPUS=4
DECLARED_CPUS=8

CONF_DIR="$DIR/etc"
CONF="$CONF_DIR/slurm.conf"
GRES_CONF="$CONF_DIR/gres.conf"
RUN="$DIR/run"
LOG="$DIR/log"
STATE="$DIR/state"
MUNGE_SOCK="$RUN/munge/munge.socket.2"
MUNGE_KEY="$CONF_DIR/munge.key"
MUNGE_PID="$RUN/munged.pid"
CTLD_PID="$RUN/slurmctld.pid"
SLURMD_PID="$RUN/slurmd.pid"

say() { echo "[local_slurm] $*"; }
err() { echo "[local_slurm] ERROR: $*" >&2; }

# fail MSG [LOGFILE...]: print the message and the tail of each log, exit 1.
fail() {
    local msg="$1"; shift
    err "$msg"
    local f
    for f in "$@"; do
        if [[ -s "$f" ]]; then
            echo "----- errors in $f -----" >&2
            tail -n 300 "$f" | grep -E 'error|fatal|FATAL|Error' | grep -viE 'pmix|MPI' | tail -n 8 >&2 || true
            echo "----- tail of $f -----" >&2
            tail -n 15 "$f" >&2 || true
        fi
    done
    exit 1
}

# wait_for SECONDS CMD...: poll CMD every 0.2 s until it succeeds; return 1 on timeout.
wait_for() {
    local limit="$1"; shift
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

pid_alive() {  # pid_alive PIDFILE
    local pid
    [[ -s "$1" ]] || return 1
    pid="$(cat "$1" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

# stop_pidfiles NAME=PIDFILE...: SIGTERM all the daemons at once, SIGKILL any left after 15 s.
stop_pidfiles() {
    local arg name pidfile pid pids=()
    for arg in "$@"; do
        name="${arg%%=*}" pidfile="${arg#*=}"
        if pid_alive "$pidfile"; then
            pid="$(cat "$pidfile")"
            say "stopping $name (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done
    if ((${#pids[@]})) && ! wait_for 15 bash -c "! ps -p ${pids[*]// /,} >/dev/null"; then
        err "pid(s) ${pids[*]} ignored SIGTERM for 15 s; sending SIGKILL"
        kill -KILL "${pids[@]}" 2>/dev/null || true
        wait_for 5 bash -c "! ps -p ${pids[*]// /,} >/dev/null" || true
    fi
    for arg in "$@"; do rm -f "${arg#*=}"; done
}
stop_pidfile() { stop_pidfiles "$1=$2"; }

# Daemons started from our config whose pidfile was lost (e.g. a crashed `up`): find their pids.
stray_pids() {  # stray_pids DAEMON
    pgrep -x "$1" -a 2>/dev/null | awk -v d="$DIR" 'index($0, d) {print $1}' || true
}

ensure_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v munged >/dev/null && command -v sinfo >/dev/null; then
        return
    fi
    say "installing slurm-wlm and munge with apt-get (one-time, ~10-30 s)"
    export DEBIAN_FRONTEND=noninteractive
    local aptlog
    aptlog="$(mktemp /tmp/local_slurm-apt.XXXXXX.log)"
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
            -o Dpkg::Options::=--force-confold slurm-wlm munge; } >"$aptlog" 2>&1; then
        fail "apt-get install slurm-wlm munge failed" "$aptlog"
    fi
    rm -f "$aptlog"
    # Debian's postinst does not start daemons without systemd; if it did, they would use
    # /etc/munge and the default socket, which we do not touch.
}

real_memory() {
    local mem
    mem="$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n1)"
    [[ -n "$mem" ]] || mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 ))
    echo "$mem"
}

# Print the slurm.conf for this machine on stdout.
render_slurm_conf() {
    local cpus mem
    cpus="$(nproc)"
    ((cpus > DECLARED_CPUS)) || cpus="$DECLARED_CPUS"
    mem="$(real_memory)"
    cat <<EOF
$MARKER
# Real config: $CONF  (this file may be the copy installed at $ETC_SLURM/slurm.conf)
ClusterName=latentbridge
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCK,cred_expire=10
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5,batch_sched_delay=0,preempt_send_user_signal
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmdParameters=config_overrides
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:$FAKE_GPUS State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=20
PartitionName=urgent Nodes=$NODE MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
}

render_gres_conf() {
    cat <<EOF
$MARKER
# Fake GPUs: character devices that are copies of /dev/null (a count-only line drains the node).
AutoDetect=off
NodeName=$NODE Name=gpu File=$DIR/fakegpu/nvidia[0-$((FAKE_GPUS - 1))]
EOF
}

# install_etc SRC NAME: copy SRC to /etc/slurm/NAME, backing up a file we did not write.
install_etc() {
    local src="$1" dst="$ETC_SLURM/$2"
    mkdir -p "$ETC_SLURM"
    if [[ -e "$dst" ]] && ! grep -qF "$MARKER" "$dst" 2>/dev/null; then
        say "backing up foreign $dst to $dst.latentbridge-bak"
        cp -a "$dst" "$dst.latentbridge-bak"
    fi
    if ! cmp -s "$src" "$dst"; then
        cp "$src" "$dst.tmp.$$" && chmod 644 "$dst.tmp.$$" && mv -f "$dst.tmp.$$" "$dst"
    fi
}

# Write every file. Sets CONF_CHANGED=1 when slurm.conf/gres.conf differ from what was there.
write_files() {
    mkdir -p "$CONF_DIR" "$RUN/munge" "$LOG" "$STATE/slurmctld" "$STATE/slurmd" "$STATE/munge" \
        "$DIR/fakegpu"
    # munged refuses group/world-writable dirs; its socket dir must be 755 for clients.
    chmod 755 "$DIR" "$RUN" "$RUN/munge"
    chmod 700 "$STATE/munge"
    local i
    for ((i = 0; i < FAKE_GPUS; i++)); do
        [[ -c "$DIR/fakegpu/nvidia$i" ]] || mknod -m 666 "$DIR/fakegpu/nvidia$i" c 1 3
    done
    if [[ ! -s "$MUNGE_KEY" ]]; then
        (umask 077 && dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none)
    fi
    chmod 400 "$MUNGE_KEY"

    CONF_CHANGED=0
    render_slurm_conf >"$CONF.new"
    render_gres_conf >"$GRES_CONF.new"
    cmp -s "$CONF.new" "$CONF" || CONF_CHANGED=1
    cmp -s "$GRES_CONF.new" "$GRES_CONF" || CONF_CHANGED=1
    mv -f "$CONF.new" "$CONF"
    mv -f "$GRES_CONF.new" "$GRES_CONF"
    install_etc "$CONF" slurm.conf
    install_etc "$GRES_CONF" gres.conf
}

munge_ok() { munge -n -S "$MUNGE_SOCK" 2>/dev/null | unmunge -S "$MUNGE_SOCK" >/dev/null 2>&1; }
ctld_up() { scontrol ping 2>/dev/null | grep -q 'is UP'; }

node_state() { sinfo -h -n "$NODE" -o '%T' 2>/dev/null | head -n1; }
node_usable() {
    local s
    s="$(node_state)"
    [[ "$s" =~ ^(idle|mixed|allocated|completing)$ ]]
}

start_munged() {
    if pid_alive "$MUNGE_PID" && munge_ok; then
        return
    fi
    stop_pidfile munged "$MUNGE_PID"
    rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock"
    say "starting munged"
    munged --socket="$MUNGE_SOCK" --key-file="$MUNGE_KEY" --pid-file="$MUNGE_PID" \
        --log-file="$LOG/munged.log" --seed-file="$STATE/munge/munged.seed" \
        || fail "munged failed to start" "$LOG/munged.log"
    wait_for "$WAIT_S" munge_ok || fail "munged not answering on $MUNGE_SOCK" "$LOG/munged.log"
}

start_slurmctld() {
    if pid_alive "$CTLD_PID" && ctld_up; then
        return
    fi
    stop_pidfile slurmctld "$CTLD_PID"
    say "starting slurmctld"
    # -i: ignore unreadable state files (keeps jobs across restarts otherwise).
    # slurmctld exits 0 even on a fatal config error, so readiness is judged by `scontrol ping`.
    slurmctld -i -f "$CONF" || fail "slurmctld failed to start" "$LOG/slurmctld.log"
    local deadline=$((SECONDS + WAIT_S)) started=$SECONDS
    until ctld_up; do
        if ((SECONDS - started >= 2)) && [[ -z "$(stray_pids slurmctld)" ]]; then
            fail "slurmctld exited (it exits 0 even on fatal errors)" "$LOG/slurmctld.log"
        fi
        ((SECONDS < deadline)) || fail "slurmctld not UP after ${WAIT_S}s (scontrol ping)" \
            "$LOG/slurmctld.log"
        sleep 0.2
    done
}

start_slurmd() {
    if ! pid_alive "$SLURMD_PID"; then
        say "starting slurmd"
        slurmd -f "$CONF" -N "$NODE" || fail "slurmd failed to start" "$LOG/slurmd.log"
        wait_for 10 pid_alive "$SLURMD_PID" || fail "slurmd exited" "$LOG/slurmd.log"
    fi
}

wait_node_ready() {
    local deadline=$((SECONDS + WAIT_S)) s last_resume=-10
    while :; do
        s="$(node_state)"
        if [[ "$s" =~ ^(idle|mixed|allocated|completing)$ ]]; then
            return 0
        fi
        pid_alive "$SLURMD_PID" || fail "slurmd died (node state '$s')" "$LOG/slurmd.log"
        # A node that registered but is DOWN/DRAINED (e.g. left so by a previous run): resume it.
        # "down*" (trailing *) means not responding yet: resuming would be refused.
        if [[ "$s" =~ ^(down|drained|draining|drain|fail|failing)$ ]] && ((SECONDS - last_resume >= 2)); then
            say "node is '$s'; resuming"
            scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
            last_resume=$SECONDS
        fi
        if ((SECONDS >= deadline)); then
            sinfo -N -l >&2 2>/dev/null || true
            fail "node $NODE not ready after ${WAIT_S}s (state '$s')" \
                "$LOG/slurmd.log" "$LOG/slurmctld.log"
        fi
        sleep 0.2
    done
}

# Kill slurmd/slurmctld/munged: pidfile first, then strays started from our config.
stop_daemons() {
    stop_pidfiles slurmd="$SLURMD_PID" slurmctld="$CTLD_PID"
    stop_pidfile munged "$MUNGE_PID"
    local d pid
    for d in slurmd slurmctld munged; do
        for pid in $(stray_pids "$d"); do
            say "stopping stray $d (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            wait_for 10 bash -c "! kill -0 $pid" || kill -KILL "$pid" 2>/dev/null || true
        done
    done
}

cmd_up() {
    local t0=$SECONDS
    [[ $EUID -eq 0 ]] || fail "must run as root (SlurmUser=root, writes $ETC_SLURM)"
    (( ${#MUNGE_SOCK} < 100 )) || fail "LATENTBRIDGE_SLURM_DIR too long for a unix socket path"
    ensure_packages
    write_files
    if ((CONF_CHANGED)) && { pid_alive "$CTLD_PID" || pid_alive "$SLURMD_PID"; }; then
        say "config changed: restarting slurmctld and slurmd (job state is kept)"
        stop_pidfiles slurmd="$SLURMD_PID" slurmctld="$CTLD_PID"
    fi
    # Daemons of ours without a pidfile would hold the ports: clear them.
    if ! pid_alive "$CTLD_PID" && [[ -n "$(stray_pids slurmctld)$(stray_pids slurmd)" ]]; then
        stop_daemons
    fi
    start_munged
    start_slurmctld
    start_slurmd
    wait_node_ready
    say "up in $((SECONDS - t0))s: node $NODE is $(node_state); dir $DIR; config $ETC_SLURM/slurm.conf"
}

cmd_down() {
    if ctld_up; then
        local n
        n="$(squeue -h -o %i 2>/dev/null | wc -l)"
        if ((n > 0)); then
            say "cancelling $n job(s)"
            squeue -h -o %i | xargs -r scancel 2>/dev/null || true
            # Bounded wait for the jobs to leave RUNNING/COMPLETING.
            if ! wait_for 30 bash -c '[[ -z "$(squeue -h -t PD,R,CG,S,CF,RQ,RS,RH,SO -o %i)" ]]'; then
                err "jobs still present after 30 s; stopping daemons anyway"
                squeue >&2 || true
            fi
        fi
    fi
    stop_daemons
    # Job steps left behind by a killed slurmd (only ours: there is one cluster per machine).
    local pid
    for pid in $(pgrep -x slurmstepd 2>/dev/null || true); do
        say "killing leftover slurmstepd (pid $pid)"
        kill -KILL "$pid" 2>/dev/null || true
    done
    say "down (files kept in $DIR)"
}

cmd_status() {
    if ! command -v sinfo >/dev/null; then
        err "slurm is not installed (no sinfo); run: $0 up"
        return 1
    fi
    if ! ctld_up; then
        err "slurmctld is not up (scontrol ping); run: $0 up"
        return 1
    fi
    sinfo
    echo
    squeue
    if ! node_usable; then
        err "node $NODE is '$(node_state)', not usable"
        return 1
    fi
    if [[ -z "$(pgrep -x slurmd || true)" ]]; then
        err "slurmd is not running"
        return 1
    fi
}

cmd_env() {
    echo "export LATENTBRIDGE_SLURM_DIR=$DIR"
    echo "export SLURM_CONF=$CONF"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *)
        echo "usage: $0 up|down|status|env" >&2
        exit 2
        ;;
esac
