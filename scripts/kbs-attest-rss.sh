#!/bin/sh
# kbs-attest-rss.sh BINARY [PORT]: the memory an unauthenticated caller can
# make cocoon-kbs hold. Starts BINARY on 127.0.0.1:PORT, sends 8 concurrent
# POST /kbs/v0/attest requests of 32 MiB each with a bogus session cookie,
# and prints VmRSS before and after, and the peak (VmHWM), from
# /proc/PID/status. Needs curl.
set -eu
bin=$1
port=${2:-18080}
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
head -c $((32 << 20)) /dev/zero | tr '\0' a >"$dir/body"
"$bin" --listen "127.0.0.1:$port" --repository "$dir/repo" --log-level error &
pid=$!
i=0
until curl -sf "http://127.0.0.1:$port/healthz" >/dev/null; do
	i=$((i + 1))
	[ "$i" -lt 100 ] || { echo "cocoon-kbs did not start" >&2; exit 1; }
	sleep 0.1
done
rss() { awk -v k="$1:" '$1 == k { print $2 " kB" }' "/proc/$pid/status"; }
echo "idle:  VmRSS $(rss VmRSS)"
curls=
for n in 1 2 3 4 5 6 7 8; do
	curl -s -o /dev/null -w "request $n: %{http_code}, %{time_total}s\n" \
		-H 'Content-Type: application/json' -b 'kbs-session-id=0123456789abcdef0123456789abcdef' \
		--data-binary "@$dir/body" "http://127.0.0.1:$port/kbs/v0/attest" &
	curls="$curls $!"
done
for c in $curls; do wait "$c" || true; done
echo "after: VmRSS $(rss VmRSS), peak VmHWM $(rss VmHWM)"
