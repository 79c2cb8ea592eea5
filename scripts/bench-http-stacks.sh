#!/usr/bin/env bash
# Measures the HTTP stacks the live server was chosen among (tools/http-stacks: tiny_http,
# axum on hyper with a current-thread tokio runtime, actix-web), each serving the same 2 KB
# JSON and 16 KB frame, on this machine:
#   - clean release build time and stripped binary size;
#   - idle RSS and threads, then RSS and threads under 50 slowloris connections;
#   - whether a request still gets through while those connections hang;
#   - survival of one request declaring a 30 GB body;
#   - requests per second with wrk (4 connections, 5 s) on /stats and /frame.jpg.
# Needs wrk (apt-get install wrk). Prints one table row per stack.
set -euo pipefail
cd "$(dirname "$0")/../tools/http-stacks"
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
# Each stack from clean, in a target directory of its own.
build=()
for bin in tiny axum actix; do
  rm -rf "target/$bin"
  t0=$(date +%s.%N)
  CARGO_TARGET_DIR="target/$bin" cargo build --release --quiet --bin "$bin"
  build+=("$(python3 -c "import time; print(round(time.time() - $t0, 1))")")
done

rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
threads() { ls "/proc/$1/task" | wc -l; }
status_of() { curl -s -o /dev/null -m 3 -w '%{http_code}' "$1" || true; }

printf '| stack | clean build (s) | binary (KiB) | idle RSS (KiB) / threads | 50 slow clients: RSS / threads / a request gets through | 30 GB Content-Length | /stats req/s | /frame.jpg req/s |\n|---|---|---|---|---|---|---|---|\n'
i=0
for bin in tiny axum actix; do
  port=$((18080 + i))
  addr="127.0.0.1:$port"
  "target/$bin/release/$bin" "$addr" >/dev/null 2>&1 &
  pid=$!
  sleep 0.5
  idle="$(rss $pid) / $(threads $pid)"
  # 50 connections that send half a request head and hang.
  python3 - "$port" <<'EOF' &
import socket, sys, time
socks = []
for _ in range(50):
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    s.send(b"GET /stats HTTP/1.1\r\nHost: x")
    socks.append(s)
time.sleep(4)
EOF
  slow=$!
  sleep 1
  through=$(status_of "http://$addr/stats")
  under="$(rss $pid) / $(threads $pid) / $([ "$through" = 200 ] && echo yes || echo "no ($through)")"
  wait $slow || true
  # One request that declares a 30 GB body and sends nothing.
  printf 'POST /stats HTTP/1.1\r\nHost: x\r\nContent-Length: 30000000000\r\n\r\n' | timeout 3 nc -q 1 127.0.0.1 "$port" >/dev/null 2>&1 || true
  sleep 0.5
  if kill -0 $pid 2>/dev/null && [ "$(status_of "http://$addr/stats")" = 200 ]; then big="survives"; else big="process died"; fi
  rps() { wrk -t1 -c4 -d5s "http://$addr$1" 2>/dev/null | awk '/Requests\/sec/ {printf "%.0f", $2}'; }
  if kill -0 $pid 2>/dev/null; then s=$(rps /stats); f=$(rps /frame.jpg); else s="-"; f="-"; fi
  size=$(( $(stat -c %s "target/$bin/release/$bin") / 1024 ))
  printf '| %s | %.1f | %s | %s | %s | %s | %s | %s |\n' "$bin" "${build[$i]}" "$size" "$idle" "$under" "$big" "$s" "$f"
  kill $pid 2>/dev/null || true
  wait $pid 2>/dev/null || true
  i=$((i + 1))
done
echo "($(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'))"
