# Shared by tests/bench/run.sh (`make bench`) and hundred-k.sh
# (`make bench-100k`): sourced after `cd` to the repository and after $OUT
# is set. Every process a script starts goes into PIDS and is killed on exit.

say() { printf '\n== %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# Many connections need many descriptors (one a relay connection, one a
# client connection) and kernel settings for the load tool's side.
raise_limits() {
  ulimit -n "$(ulimit -Hn)" || true
  for kv in net.core.somaxconn=65535 net.ipv4.tcp_max_syn_backlog=65535 \
            "net.ipv4.ip_local_port_range=1024 65000" net.ipv4.tcp_tw_reuse=1; do
    sysctl -qw "$kv" 2>/dev/null || echo "could not set $kv (not root, or not in this namespace)" >&2
  done
}

# A node answers /readyz 200 once it is ready (in a cluster: it holds its
# lease). Waits up to tries x 50 ms (default 300: 15 s).
wait_ready() { # port, name, [tries]
  python3 - "$1" "${3:-300}" <<'PY' || { echo "$2 never became ready; see $OUT/logs" >&2; exit 1; }
import sys, time, urllib.request
for _ in range(int(sys.argv[2])):
    try:
        if urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=1).status == 200:
            sys.exit(0)
    except Exception:
        pass
    time.sleep(0.05)
sys.exit(1)
PY
}
