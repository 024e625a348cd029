package main

// The kubelet's plugin watcher with the device manager as its "DevicePlugin"
// handler (docs/design.md, "Kubelet facts the code relies on"): sockets in a registry directory are found
// by polling, asked GetInfo, validated, connected to through the kubelet
// role's code (one resource table, so allocate & co. work on them) and told
// the outcome with NotifyRegistrationStatus.
//
// Events: "ready", "register" (as in the kubelet role, plus "socket" and
// "versions"), "notify" (a NotifyRegistrationStatus sent: "registered",
// "error", and the call's status), "register_failed" (an attempt that ended
// in an error; it is retried with backoff), "deregister" (a registered
// socket went away or was re-created), "list", "stream_end".
// Commands: those of the kubelet role.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	reg "sdplite.test/pluginregistration"
)

const (
	devicePluginType = "DevicePlugin"
	pollInterval     = 100 * time.Millisecond
	getInfoTimeout   = time.Second     // the operation generator's GetInfo deadline
	notifyTimeout    = 5 * time.Second // and NotifyRegistrationStatus's
	firstBackoff     = 500 * time.Millisecond
	maxBackoff       = 2*time.Minute + 2*time.Second // nestedpendingoperations' limits
)

// fileID tells a re-created socket from the old one, as the kubelet's
// timestamps do.
type fileID struct {
	ino   uint64
	ctime syscall.Timespec
}

// socketState is what the watcher knows of one socket path.
type socketState struct {
	seen    fileID // the file now at the path (desired state)
	pending bool   // an operation on this path is running
	// The actual state: registered with the handler (even if RegisterPlugin
	// then failed, as in the kubelet), under this file ID and plugin name.
	registered bool
	id         fileID
	name       string
	// Backoff of failed registrations of the file "seen".
	retryAt time.Time
	backoff time.Duration
}

type watcher struct {
	*kubelet
	// What a found socket is registered and deregistered with: the device
	// manager's handler here, the DRA manager's in dra.go.
	registerFn   func(path string) (name string, added bool, err error)
	deregisterFn func(path, name string)
	dir          string
	ctx          context.Context
	cancel       context.CancelFunc
	wg           sync.WaitGroup

	smu     sync.Mutex
	sockets map[string]*socketState
}

func startWatcher(args []string) (peer, error) {
	flags := flag.NewFlagSet("watcher", flag.ContinueOnError)
	dir := flags.String("dir", "", "the plugins_registry directory")
	authority := flags.String("authority", "localhost", `":authority" of the watcher's dials: "localhost" or "path"`)
	if err := flags.Parse(args); err != nil {
		return nil, err
	}
	if *dir == "" || (*authority != "localhost" && *authority != "path") {
		return nil, errors.New("watcher mode needs --dir, and --authority localhost or path")
	}
	w, err := newWatcher(*dir, *authority)
	if err != nil {
		return nil, err
	}
	w.registerFn, w.deregisterFn = w.registerPlugin, w.deregister
	w.run()
	return w, nil
}

// newWatcher makes a watcher of dir; set registerFn and deregisterFn, then run.
func newWatcher(dir, authority string) (*watcher, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &watcher{
		kubelet: &kubelet{authority: authority, endpoints: map[string]*endpoint{}},
		dir:     dir,
		ctx:     ctx,
		cancel:  cancel,
		sockets: map[string]*socketState{},
	}, nil
}

// run starts the reconciler and says "ready".
func (w *watcher) run() {
	w.wg.Add(1)
	go w.loop()
	emit("ready", fields{"dir": w.dir, "pid": os.Getpid()})
}

// scan is the desired state: every socket under dir, subdirectories too;
// names starting with "." are ignored (and so are such directories).
func (w *watcher) scan() map[string]fileID {
	found := map[string]fileID{}
	filepath.WalkDir(w.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // gone meanwhile, or unreadable: not a socket we can use
		}
		if path != w.dir && strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.Type()&fs.ModeSocket == 0 {
			return nil
		}
		var st syscall.Stat_t
		if syscall.Lstat(path, &st) == nil {
			found[path] = fileID{st.Ino, st.Ctim}
		}
		return nil
	})
	return found
}

// loop is the reconciler: deregister what went away or was re-created,
// register what is new; one operation per socket at a time.
func (w *watcher) loop() {
	defer w.wg.Done()
	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	for {
		desired := w.scan()
		now := time.Now()
		w.smu.Lock()
		for path, s := range w.sockets {
			id, present := desired[path]
			if s.pending {
				continue
			}
			if s.registered && (!present || id != s.id) {
				s.registered = false
				w.deregisterFn(path, s.name)
			}
			if !present {
				delete(w.sockets, path)
			}
		}
		for path, id := range desired {
			s := w.sockets[path]
			if s == nil {
				s = &socketState{}
				w.sockets[path] = s
			}
			if s.seen != id {
				s.seen, s.retryAt, s.backoff = id, time.Time{}, 0
			}
			if s.pending || s.registered || now.Before(s.retryAt) {
				continue
			}
			s.pending = true
			w.wg.Add(1)
			go w.register(path, id)
		}
		w.smu.Unlock()
		select {
		case <-w.ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// register runs one registration attempt and records its outcome.
func (w *watcher) register(path string, id fileID) {
	defer w.wg.Done()
	name, added, err := w.registerFn(path)
	w.smu.Lock()
	defer w.smu.Unlock()
	s := w.sockets[path]
	if s == nil { // cannot happen: pending paths are kept
		return
	}
	s.pending = false
	if added {
		s.registered, s.id, s.name = true, id, name
	}
	if err != nil && w.ctx.Err() == nil {
		if s.backoff == 0 {
			s.backoff = firstBackoff
		} else if s.backoff *= 2; s.backoff > maxBackoff {
			s.backoff = maxBackoff
		}
		s.retryAt = time.Now().Add(s.backoff)
		emit("register_failed", fields{"socket": path, "message": err.Error(), "retry_ms": s.backoff.Milliseconds()})
	}
}

// registerPlugin is the operation generator's RegisterPlugin with the device
// manager as the handler, error texts included. added means the plugin went
// into the actual state (a failure after that is not retried).
func (w *watcher) registerPlugin(path string) (name string, added bool, err error) {
	conn, err := w.dialContext(w.ctx, path)
	if err != nil {
		return "", false, fmt.Errorf("RegisterPlugin error -- dial failed at socket %s, err: %v", path, err)
	}
	defer conn.Close()
	client := reg.NewRegistrationClient(conn)
	ctx, cancel := context.WithTimeout(w.ctx, getInfoTimeout)
	info, err := client.GetInfo(ctx, &reg.InfoRequest{})
	cancel()
	if err != nil {
		return "", false, fmt.Errorf(
			"RegisterPlugin error -- failed to get plugin info using RPC GetInfo at socket %s, err: %v", path, err)
	}
	if info.Type != devicePluginType {
		text := fmt.Sprintf("RegisterPlugin error -- no handler registered for plugin type: %s at socket %s", info.Type, path)
		if err := w.notify(client, path, info.Name, false, text); err != nil {
			return "", false, err
		}
		return "", false, errors.New(text)
	}
	endpoint := info.Endpoint
	if endpoint == "" {
		endpoint = path
	}
	if err := validatePlugin(info.Name, info.SupportedVersions); err != nil {
		text := fmt.Sprintf("RegisterPlugin error -- plugin validation failed with err: %v", err)
		if err := w.notify(client, path, info.Name, false, text); err != nil {
			return "", false, err
		}
		return "", false, errors.New("RegisterPlugin error -- pluginHandler.ValidatePluginFunc failed")
	}
	// The device manager's RegisterPlugin: the endpoint is used verbatim.
	pluginConn, options, err := w.connect(w.ctx, endpoint)
	if err != nil {
		text := fmt.Sprintf("RegisterPlugin error -- plugin registration failed with err: %v", err)
		return info.Name, true, w.notify(client, path, info.Name, false, text)
	}
	w.add(info.Name, pluginConn, options, fields{
		"version":  "v1beta1",
		"versions": info.SupportedVersions,
		"endpoint": info.Endpoint,
		"socket":   path,
	})
	return info.Name, true, w.notify(client, path, info.Name, true, "")
}

// validatePlugin is the device manager's ValidatePlugin.
func validatePlugin(name string, versions []string) error {
	compatible := false
	for _, v := range versions {
		compatible = compatible || v == "v1beta1"
	}
	if !compatible {
		return fmt.Errorf("manager version, v1beta1, is not among plugin supported versions %v", versions)
	}
	if !isExtendedResourceName(name) {
		return fmt.Errorf("invalid name of device plugin socket: the ResourceName %q is invalid", name)
	}
	return nil
}

// notify sends NotifyRegistrationStatus (5 s deadline) and reports it.
func (w *watcher) notify(client reg.RegistrationClient, path, name string, registered bool, text string) error {
	ctx, cancel := context.WithTimeout(w.ctx, notifyTimeout)
	defer cancel()
	_, err := client.NotifyRegistrationStatus(ctx, &reg.RegistrationStatus{PluginRegistered: registered, Error: text})
	emit("notify", withStatus(fields{"socket": path, "resource": name, "registered": registered, "error": text}, err))
	if err != nil {
		if registered {
			return fmt.Errorf("RegisterPlugin error -- failed to send registration status at socket %s, err: %v", path, err)
		}
		return fmt.Errorf("RegisterPlugin error -- failed to send error at socket %s, err: %v", path, err)
	}
	return nil
}

// deregister is the device manager's DeRegisterPlugin: the resource's
// current endpoint is disconnected (its ListAndWatch ends).
func (w *watcher) deregister(path, name string) {
	ep := w.endpoint(name)
	emit("deregister", fields{"socket": path, "resource": name, "connected": ep != nil})
	if ep != nil {
		ep.conn.Close()
	}
}

// stop ends the watcher, waits for registrations in flight, then stops the
// kubelet role (disconnecting every plugin); the sockets stay.
func (w *watcher) stop() {
	w.cancel()
	w.wg.Wait()
	w.kubelet.stop()
}
