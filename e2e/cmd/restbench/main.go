// Command restbench loads cocoond's guest REST API with wrk (Debian's
// package, installed by make e2e-tools): /cdh/resource (a KBS resource with a
// cached attestation token) and /aa/evidence (sample attester), each for a
// fixed duration, against a development KBS on loopback. It reports requests
// per second, p99 latency and errors, and fails when any request failed.
// As a baseline measured in the same run it also loads /info, which does no
// attestation work, and reports each endpoint's throughput relative to it.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/cocoon-cc/cocoon/e2e/harness"
)

type result struct {
	Endpoint    string  `json:"endpoint"`
	Requests    int64   `json:"requests"`
	RPS         float64 `json:"requests_per_second"`
	P50ms       float64 `json:"p50_ms"`
	P99ms       float64 `json:"p99_ms"`
	Errors      int64   `json:"errors"`
	VsBaseline  float64 `json:"throughput_vs_info"`
	Connections int     `json:"connections"`
}

func main() {
	duration := flag.Duration("duration", 30*time.Second, "wrk run time per endpoint")
	conns := flag.Int("connections", 16, "wrk connections")
	out := flag.String("out", "", "write results as JSON to this `file` (default bin/bench-rest.json)")
	flag.Parse()
	var results []result
	harness.RunScript("restbench", true, func(ctx context.Context, s *harness.Script) (err error) {
		results, err = run(ctx, s, *duration, *conns)
		return err
	})
	path := *out
	if path == "" {
		root, _ := filepath.Abs("..")
		path = filepath.Join(root, "bin", "bench-rest.json")
	}
	b, _ := json.MarshalIndent(results, "", "  ")
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	fmt.Printf("wrote %s\n", path)
	for _, r := range results {
		if r.Errors > 0 {
			os.Exit(1)
		}
	}
}

func run(ctx context.Context, s *harness.Script, d time.Duration, conns int) ([]result, error) {
	wrk, err := exec.LookPath("wrk")
	if err != nil {
		return nil, fmt.Errorf("wrk not found (make e2e-tools installs it): %w", err)
	}
	env, err := harness.New(s)
	if err != nil {
		return nil, err
	}
	kbs, err := env.StartKBS(ctx, harness.KBSOptions{
		Policy:    harness.AllowAllPolicy,
		Resources: map[string][]byte{"default/bench/key": []byte("0123456789abcdef0123456789abcdef")},
	})
	if err != nil {
		return nil, err
	}
	port, err := harness.FreePort()
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if _, err := env.StartCocoond(ctx, harness.CocoondOptions{LogLevel: "warn",
		ExtraArgs: []string{"--rest-api", addr, "--rest-features", "all", "--kbs-url", kbs.URL, "--tee", "sample"}}); err != nil {
		return nil, err
	}
	endpoints := []string{"/info", "/cdh/resource/default/bench/key", "/aa/evidence?runtime_data=bench"}
	var results []result
	fmt.Printf("%-34s %10s %10s %9s %9s %7s %9s\n", "endpoint", "requests", "req/s", "p50", "p99", "errors", "vs /info")
	for _, ep := range endpoints {
		r, err := runWrk(ctx, wrk, "http://"+addr+ep, d, conns)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", ep, err)
		}
		r.Endpoint = ep
		if len(results) > 0 && results[0].RPS > 0 {
			r.VsBaseline = r.RPS / results[0].RPS
		} else {
			r.VsBaseline = 1
		}
		results = append(results, r)
		fmt.Printf("%-34s %10d %10.0f %7.2fms %7.2fms %7d %8.2fx\n", ep, r.Requests, r.RPS, r.P50ms, r.P99ms, r.Errors, r.VsBaseline)
	}
	return results, nil
}

var (
	reLatency  = regexp.MustCompile(`^\s*(50|99)%\s+([\d.]+)(us|ms|s)\s*$`)
	reRequests = regexp.MustCompile(`^\s*(\d+) requests in`)
	reRPS      = regexp.MustCompile(`^Requests/sec:\s+([\d.]+)`)
	reNon2xx   = regexp.MustCompile(`Non-2xx or 3xx responses:\s+(\d+)`)
	reSocket   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
)

func runWrk(ctx context.Context, wrk, url string, d time.Duration, conns int) (result, error) {
	cmd := exec.CommandContext(ctx, wrk, "-t2", "-c"+strconv.Itoa(conns), "-d"+strconv.Itoa(int(d.Seconds()))+"s", "--latency", url)
	outb, err := cmd.CombinedOutput()
	if err != nil {
		return result{}, fmt.Errorf("wrk: %w: %s", err, outb)
	}
	r := result{Connections: conns}
	sc := bufio.NewScanner(strings.NewReader(string(outb)))
	for sc.Scan() {
		line := sc.Text()
		if m := reLatency.FindStringSubmatch(line); m != nil {
			v, _ := strconv.ParseFloat(m[2], 64)
			switch m[3] {
			case "us":
				v /= 1000
			case "s":
				v *= 1000
			}
			if m[1] == "50" {
				r.P50ms = v
			} else {
				r.P99ms = v
			}
		}
		if m := reRequests.FindStringSubmatch(line); m != nil {
			r.Requests, _ = strconv.ParseInt(m[1], 10, 64)
		}
		if m := reRPS.FindStringSubmatch(line); m != nil {
			r.RPS, _ = strconv.ParseFloat(m[1], 64)
		}
		if m := reNon2xx.FindStringSubmatch(line); m != nil {
			n, _ := strconv.ParseInt(m[1], 10, 64)
			r.Errors += n
		}
		if m := reSocket.FindStringSubmatch(line); m != nil {
			for _, g := range m[1:] {
				n, _ := strconv.ParseInt(g, 10, 64)
				r.Errors += n
			}
		}
	}
	if r.Requests == 0 || r.RPS == 0 {
		return r, fmt.Errorf("could not read wrk's output:\n%s", outb)
	}
	return r, nil
}
