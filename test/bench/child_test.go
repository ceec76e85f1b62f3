//go:build linux

package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
)

// planChild is a helper process (this test binary in a child mode) that
// was handed its plan as JSON on stdin and said "ready"; "go" on stdin
// starts it, and it reports on stdout. It dies with the benchmark.
type planChild struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

func startPlanChild(what, mode string, plan any, env ...string) (*planChild, error) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(append(os.Environ(), childEnv+"="+mode), env...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", what, err)
	}
	c := &planChild{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	if err := json.NewEncoder(stdin).Encode(plan); err != nil {
		c.kill()
		return nil, err
	}
	if line, err := c.out.ReadString('\n'); err != nil || line != "ready\n" {
		c.kill()
		return nil, fmt.Errorf("%s not ready: %q %v", what, line, err)
	}
	return c, nil
}

// start tells the child to begin.
func (c *planChild) start() error {
	_, err := io.WriteString(c.stdin, "go\n")
	return err
}

func (c *planChild) kill() {
	_ = c.stdin.Close()
	_ = c.cmd.Process.Kill()
	_ = c.cmd.Wait()
}
