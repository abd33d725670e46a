package detach

import (
	"os"
	"path/filepath"
	"testing"
)

func TestAliveAndState(t *testing.T) {
	pid := os.Getpid()
	start := StartTime(pid)
	if start == 0 || !Alive(pid, start) {
		t.Fatalf("this process not alive: start %d", start)
	}
	if Alive(pid, start+1) || Alive(0, start) {
		t.Fatal("a different start time or PID 0 counted as alive")
	}
	type st struct{ PID int }
	p := filepath.Join(t.TempDir(), "s.json")
	if err := WriteState(p, st{pid}); err != nil {
		t.Fatal(err)
	}
	var got st
	if err := ReadState(p, &got); err != nil || got.PID != pid {
		t.Fatalf("ReadState = %+v, %v", got, err)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file mode: %v %v", fi.Mode(), err)
	}
}
