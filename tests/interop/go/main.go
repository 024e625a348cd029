// kubelet-go: a grpc-go peer for sdplite's interop tests, driven by pytest.
//
//	kubelet-go kubelet --dir DIR [--authority localhost|path] [--cleanup]
//	kubelet-go plugin --socket PATH
//	kubelet-go watcher --dir DIR [--authority localhost|path]
//	kubelet-go dra --dir DIR [--health-retry-ms N]
//
// "kubelet" acts like the kubelet's device manager (docs/design.md, "Kubelet facts the code relies on"):
// it serves v1beta1.Registration on DIR/kubelet.sock, and each Register dials
// the plugin back, calls GetDevicePluginOptions and holds ListAndWatch open.
// "plugin" serves v1beta1.DevicePlugin, so that sdplite's client can be tested
// against a grpc-go server. "watcher" is the kubelet's plugin watcher
// (the plugin watcher in docs/design.md): it finds sockets in the plugins_registry DIR, and
// the ones serving a device plugin join the kubelet role's resource table.
// "dra" is the kubelet's DRA side (dra.go): the plugin watcher with the DRA
// manager as handler, NodePrepareResources/NodeUnprepareResources and the
// DRAResourceHealth stream.
//
// The protocol (the same for the grpc-js peer in ../js): commands arrive on
// stdin as JSON lines {"id": N, "cmd": NAME, ...}; everything the peer has to
// say goes to stdout as JSON lines {"event": KIND, ...}; each command gets
// exactly one {"event": "reply", "id": N, ...}. Diagnostics go to stderr.
// EOF on stdin stops the peer.
package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"sync"

	"google.golang.org/grpc/status"

	pb "sdplite.test/v1beta1"
)

// The fields of one event or command.
type fields = map[string]interface{}

var out = struct {
	sync.Mutex
	w *bufio.Writer
}{w: bufio.NewWriterSize(os.Stdout, 1<<16)}

// emit writes one event as a JSON line.
func emit(kind string, f fields) {
	if f == nil {
		f = fields{}
	}
	f["event"] = kind
	line, err := json.Marshal(f)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kubelet-go: cannot encode %v: %v\n", f, err)
		return
	}
	out.Lock()
	defer out.Unlock()
	out.w.Write(line)
	out.w.WriteByte('\n')
	out.w.Flush()
}

// withStatus adds the gRPC status of err (code 0 for nil) to f.
func withStatus(f fields, err error) fields {
	s := status.Convert(err)
	f["code"] = int(s.Code())
	f["message"] = s.Message()
	return f
}

// summary describes a device list: count, healthy count and a digest of
// "ID\tHealth\n" lines in order; small lists are also listed in full.
func summary(devices []*pb.Device) fields {
	h := sha256.New()
	healthy := 0
	for _, d := range devices {
		fmt.Fprintf(h, "%s\t%s\n", d.ID, d.Health)
		if d.Health == "Healthy" {
			healthy++
		}
	}
	f := fields{"count": len(devices), "healthy": healthy, "digest": hex.EncodeToString(h.Sum(nil))}
	if len(devices) <= 64 {
		list := make([]interface{}, 0, len(devices))
		for _, d := range devices {
			numa := []int64{}
			for _, n := range d.GetTopology().GetNodes() {
				numa = append(numa, n.ID)
			}
			list = append(list, []interface{}{d.ID, d.Health, numa})
		}
		f["devices"] = list
	}
	return f
}

// command is one line of stdin.
type command struct {
	ID  int    `json:"id"`
	Cmd string `json:"cmd"`
	// Arguments; each command uses some of them.
	Resource    string          `json:"resource"`
	Containers  [][]string      `json:"containers"`
	IDs         []string        `json:"ids"`
	Available   []string        `json:"available"`
	MustInclude []string        `json:"must_include"`
	Size        int32           `json:"size"`
	TimeoutMS   int64           `json:"timeout_ms"`
	Devices     [][]interface{} `json:"devices"`
	Generate    *generate       `json:"generate"`
	Code        int             `json:"code"`
	Message     string          `json:"message"`
	// The DRA role's.
	Driver  string     `json:"driver"`
	Claims  [][]string `json:"claims"`
	Version string     `json:"version"`
}

// generate describes a large device list: IDs prefix + zero-padded index.
type generate struct {
	Prefix string `json:"prefix"`
	Count  int    `json:"count"`
	Width  int    `json:"width"`
}

// A peer answers commands; "stop" is handled by each mode too.
type peer interface {
	handle(c *command) fields
	stop()
}

// serve reads commands until "stop" or EOF; each runs on its own goroutine
// so a slow call (a PreStartContainer waiting for its deadline) blocks nothing.
func serve(p peer) {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 64<<20)
	var wg sync.WaitGroup
	for in.Scan() {
		var c command
		if err := json.Unmarshal(in.Bytes(), &c); err != nil {
			emit("error", fields{"message": fmt.Sprintf("bad command line: %v", err)})
			continue
		}
		if c.Cmd == "stop" {
			p.stop() // ends calls in flight, so their replies come first
			wg.Wait()
			emit("reply", fields{"id": c.ID, "code": 0})
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			f := p.handle(&c)
			f["id"] = c.ID
			emit("reply", f)
		}()
	}
	p.stop()
	wg.Wait()
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kubelet-go kubelet --dir DIR [--authority localhost|path] [--cleanup]")
		fmt.Fprintln(os.Stderr, "       kubelet-go plugin --socket PATH")
		fmt.Fprintln(os.Stderr, "       kubelet-go watcher --dir DIR [--authority localhost|path]")
		fmt.Fprintln(os.Stderr, "       kubelet-go dra --dir DIR [--health-retry-ms N]")
		os.Exit(2)
	}
	var p peer
	var err error
	switch os.Args[1] {
	case "kubelet":
		p, err = startKubelet(os.Args[2:])
	case "plugin":
		p, err = startPlugin(os.Args[2:])
	case "watcher":
		p, err = startWatcher(os.Args[2:])
	case "dra":
		p, err = startDRA(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kubelet-go: %v\n", err)
		os.Exit(1)
	}
	serve(p)
}
