#!/usr/bin/env bash
# Runs N processes of vidtx.main on this machine as one multi-process JAX run, e.g.
#   launch/local.sh 2 --config=configs/demo.py --workdir=/tmp/vidtx_2proc
# Each process gets VIDTX_COORDINATOR/NUM_PROCESSES/PROCESS_ID (read by
# vidtx.sharding.initialize_distributed) and VIDTX_LOCAL_DEVICES CPU devices (default 1).
# Output lines are prefixed with "[i] ". Exits non-zero, stopping the others, if any process fails.
set -uo pipefail
set -m  # each background job in its own process group, so a stop reaches python and sed alike

if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 NUM_PROCESSES <vidtx.main args...> (got NUM_PROCESSES='${1:-}')" >&2
  exit 2
fi
n=$1
shift
devices=${VIDTX_LOCAL_DEVICES:-1}
python=${PYTHON:-python}
# A port free now (the OS picks it); the coordinator in process 0 binds it a moment later.
port=$("$python" -c \
  'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')

declare -A running=()  # pid -> process index
stop_all() {
  for pid in "${!running[@]}"; do kill -- "-$pid" 2>/dev/null; done
}
trap 'stop_all; exit 130' INT TERM

for ((i = 0; i < n; i++)); do
  (
    VIDTX_COORDINATOR="localhost:$port" VIDTX_NUM_PROCESSES=$n VIDTX_PROCESS_ID=$i \
      XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices" \
      "$python" -m vidtx.main "$@" 2>&1 | sed -u "s/^/[$i] /"
  ) &
  running[$!]=$i
done
set +m  # no "Terminated" job notices when the others are stopped

status=0
while ((${#running[@]} > 0)); do
  wait -n -p done_pid "${!running[@]}"
  rc=$?
  index=${running[$done_pid]}
  unset "running[$done_pid]"
  if ((rc != 0 && status == 0)); then
    echo "local.sh: process $index exited with status $rc; stopping the others" >&2
    status=$rc
    stop_all
  fi
done
exit $status
