package server

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Restarts that drop no click
//
// An upgrade or a planned restart must not refuse a single connection. Handoff starts the new
// process (the executable now at this process's path, so a replaced binary is what runs) with
// the API and ops listening sockets as inherited descriptors 3 and 4, named in
// ADPULSE_INHERITED_LISTENERS. This process then shuts down as for SIGTERM: it stops accepting,
// drains what is in flight, closes its stores and releases the data dir. The sockets stay open
// throughout, since the new process holds them too, so connections that arrive meanwhile wait
// in the kernel's accept queue: the new process takes the data dir lock as soon as it is
// released, recovers, and accepts them. A client sees a slower answer, never a refused
// connection or a reset. If the new process cannot start, Handoff fails and this one keeps
// serving.

// inheritEnv names the listeners a process was handed, in descriptor order from 3.
const inheritEnv = "ADPULSE_INHERITED_LISTENERS"

// handoffLockWait bounds how long a new process waits for the old one to release the data dir.
const handoffLockWait = 5 * time.Minute

// inherited returns the listener named name handed over by the previous process, if any.
func inherited(name string) (net.Listener, bool, error) {
	names := os.Getenv(inheritEnv)
	if names == "" {
		return nil, false, nil
	}
	for i, n := range strings.Split(names, ",") {
		if n != name {
			continue
		}
		f := os.NewFile(uintptr(3+i), "inherited-"+name)
		if f == nil {
			return nil, false, fmt.Errorf("inherited %s listener: descriptor %d is not open", name, 3+i)
		}
		ln, err := net.FileListener(f)
		f.Close() // FileListener dups it
		if err != nil {
			return nil, false, fmt.Errorf("inherited %s listener: %w", name, err)
		}
		return ln, true, nil
	}
	return nil, false, nil
}

// handedOver reports whether this process was started by Handoff.
func handedOver() bool { return os.Getenv(inheritEnv) != "" }

// listen returns the inherited listener called name, or a new one on addr.
func listen(name, addr string) (net.Listener, error) {
	ln, ok, err := inherited(name)
	if err != nil || ok {
		return ln, err
	}
	return net.Listen("tcp", addr)
}

// Handoff starts the new process on this one's listening sockets (see above). The caller then
// stops this process as for SIGTERM.
func (a *App) Handoff() (pid int, err error) {
	if a.apiLn == nil || a.opsLn == nil {
		return 0, errors.New("handoff: not serving yet")
	}
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for _, ln := range []net.Listener{a.apiLn, a.opsLn} {
		tl, ok := ln.(*net.TCPListener)
		if !ok {
			return 0, fmt.Errorf("handoff: listener %s is not TCP", ln.Addr())
		}
		f, err := tl.File() // a duplicate descriptor, inherited by the child
		if err != nil {
			return 0, fmt.Errorf("handoff: %w", err)
		}
		files = append(files, f)
	}
	exe, err := os.Executable()
	if err != nil {
		return 0, fmt.Errorf("handoff: %w", err)
	}
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Env = append(withoutEnv(os.Environ(), inheritEnv), inheritEnv+"=api,ops")
	cmd.ExtraFiles = files
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("handoff: start %s: %w", exe, err)
	}
	go func() { _ = cmd.Wait() }() // reap it if it exits while this process still runs
	a.logger.Info("handed the listening sockets to a new process; draining and stopping", "pid", cmd.Process.Pid, "executable", exe)
	return cmd.Process.Pid, nil
}

func withoutEnv(env []string, name string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}
