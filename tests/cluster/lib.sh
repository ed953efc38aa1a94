# Process helpers shared by up and down (sourced; needs $state and $exe).
components=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

# pid_of NAME: the recorded pid, if that process is alive and is ours.
pid_of() {
  local f="$state/pids/$1.pid" pid
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f")"
  [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "llmops-cluster $1 " || return 1
  echo "$pid"
}

# is_alive PID: running and not a zombie (a zombie has an empty cmdline).
is_alive() {
  [[ -n "$(tr -d '\0' < "/proc/$1/cmdline" 2>/dev/null)" ]]
}

all_running() {
  local c
  for c in "${components[@]}"; do pid_of "$c" >/dev/null || return 1; done
}

# check_running: every component started by this run is still alive. Only
# liveness is checked: right after `start` the pid may still be the forked
# shell that is about to exec the component.
check_running() {
  local f
  for f in "$state"/pids/*.pid; do
    [[ -e "$f" ]] || continue
    is_alive "$(cat "$f")" || return 1
  done
}

# start NAME CMD...: run CMD detached (own session, survives the caller),
# logging to $state/logs/NAME.log.
start() {
  local name="$1"; shift
  setsid nohup "$@" > "$state/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$state/pids/$name.pid"
}

# stop_all: SIGTERM every recorded component (reverse start order), then
# SIGKILL whatever is left after 15 seconds.
stop_all() {
  local i c pid pids=() n
  for (( i=${#components[@]}-1; i>=0; i-- )); do
    c="${components[$i]}"
    if pid="$(pid_of "$c")"; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  for (( n=0; n<150; n++ )); do
    local alive=()
    for pid in "${pids[@]}"; do is_alive "$pid" && alive+=("$pid"); done
    (( ${#alive[@]} == 0 )) && break
    pids=("${alive[@]}")
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    is_alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
  done
  rm -f "$state"/pids/*.pid 2>/dev/null || true
}
