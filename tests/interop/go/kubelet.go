package main

// The kubelet role: Registration on kubelet.sock, dial-back, the calls a
// kubelet makes to a registered plugin.
//
// Events: "ready" (serving), "cleanup" (sockets removed at start),
// "register" (a registration succeeded: dialled back and got the options),
// "register_refused", "list" (one ListAndWatch message), "stream_end".
// Commands: allocate, preferred, pre_start, options, cancel_stream,
// disconnect, stop.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"

	pb "sdplite.test/v1beta1"
)

const checkpointFile = "kubelet_internal_checkpoint"

type kubelet struct {
	pb.UnimplementedRegistrationServer
	dir       string
	authority string // "localhost" (kubelet >= 1.26) or "path" (older: the socket path)
	server    *grpc.Server

	mu            sync.Mutex
	endpoints     map[string]*endpoint
	registrations int
}

// endpoint is one registered plugin, as the device manager keeps it.
type endpoint struct {
	resource     string
	registration int
	conn         *grpc.ClientConn
	client       pb.DevicePluginClient
	cancel       context.CancelFunc // ends ListAndWatch
}

func startKubelet(args []string) (peer, error) {
	flags := flag.NewFlagSet("kubelet", flag.ContinueOnError)
	dir := flags.String("dir", "", "the device-plugins directory")
	authority := flags.String("authority", "localhost", `":authority" of dial-backs: "localhost" or "path"`)
	cleanup := flags.Bool("cleanup", false, "remove every socket in dir first, as a starting kubelet does")
	if err := flags.Parse(args); err != nil {
		return nil, err
	}
	if *dir == "" || (*authority != "localhost" && *authority != "path") {
		return nil, errors.New("kubelet mode needs --dir, and --authority localhost or path")
	}
	if err := os.MkdirAll(*dir, 0o750); err != nil {
		return nil, err
	}
	if *cleanup {
		removed, err := cleanupPluginDirectory(*dir)
		if err != nil {
			return nil, err
		}
		emit("cleanup", fields{"removed": removed})
	}
	sock := filepath.Join(*dir, "kubelet.sock")
	if err := os.Remove(sock); err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	listener, err := net.Listen("unix", sock)
	if err != nil {
		return nil, err
	}
	k := &kubelet{dir: *dir, authority: *authority, endpoints: map[string]*endpoint{}}
	k.server = grpc.NewServer()
	pb.RegisterRegistrationServer(k.server, k)
	go k.server.Serve(listener)
	emit("ready", fields{"socket": sock, "pid": os.Getpid()})
	return k, nil
}

// cleanupPluginDirectory removes every Unix socket in dir except the checkpoint.
func cleanupPluginDirectory(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	removed := []string{}
	for _, e := range entries {
		if e.Name() == checkpointFile || e.Type()&os.ModeSocket == 0 {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
			return nil, err
		}
		removed = append(removed, e.Name())
	}
	return removed, nil
}

var (
	subdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	shortName = regexp.MustCompile(`^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$`)
)

// isExtendedResourceName follows the kubelet's rules (docs/design.md, "Kubelet facts the code relies on").
func isExtendedResourceName(name string) bool {
	if !strings.Contains(name, "/") || strings.Contains(name, "kubernetes.io/") ||
		strings.HasPrefix(name, "requests.") {
		return false
	}
	parts := strings.Split("requests."+name, "/")
	if len(parts) != 2 {
		return false
	}
	return len(parts[0]) <= 253 && subdomain.MatchString(parts[0]) &&
		len(parts[1]) <= 63 && shortName.MatchString(parts[1])
}

func (k *kubelet) refuse(r *pb.RegisterRequest, err error) error {
	emit("register_refused", fields{"resource": r.ResourceName, "message": err.Error()})
	return err
}

// Register does what the kubelet's handler does, all inside the call.
func (k *kubelet) Register(_ context.Context, r *pb.RegisterRequest) (*pb.Empty, error) {
	if r.Version != "v1beta1" {
		return nil, k.refuse(r, fmt.Errorf(
			"requested API version %q is not supported by kubelet. Supported version is [\"v1beta1\"]", r.Version))
	}
	if !isExtendedResourceName(r.ResourceName) {
		return nil, k.refuse(r, fmt.Errorf("the ResourceName %q is invalid", r.ResourceName))
	}
	conn, options, err := k.connect(context.Background(), filepath.Join(k.dir, r.Endpoint))
	if err != nil {
		return nil, k.refuse(r, err)
	}
	k.add(r.ResourceName, conn, options, fields{
		"version":  r.Version,
		"endpoint": r.Endpoint,
		"request_options": fields{
			"pre_start_required":                 r.GetOptions().GetPreStartRequired(),
			"get_preferred_allocation_available": r.GetOptions().GetGetPreferredAllocationAvailable(),
		},
	})
	return &pb.Empty{}, nil
}

// connect is the device manager's side of a registration, shared by both
// ways of registering: dial the plugin, then GetDevicePluginOptions.
func (k *kubelet) connect(ctx context.Context, path string) (*grpc.ClientConn, *pb.DevicePluginOptions, error) {
	conn, err := k.dialContext(ctx, path)
	if err != nil {
		return nil, nil, fmt.Errorf("failed to dial device plugin: %v", err)
	}
	options, err := pb.NewDevicePluginClient(conn).GetDevicePluginOptions(ctx, &pb.Empty{})
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("failed to get device plugin options: %v", err)
	}
	return conn, options, nil
}

// add makes a connected plugin the endpoint of resource (the newest
// registration wins), reports it with a "register" event (describe adds to
// it) and holds ListAndWatch open.
func (k *kubelet) add(resource string, conn *grpc.ClientConn, options *pb.DevicePluginOptions, describe fields) *endpoint {
	ctx, cancel := context.WithCancel(context.Background())
	k.mu.Lock()
	k.registrations++
	ep := &endpoint{resource, k.registrations, conn, pb.NewDevicePluginClient(conn), cancel}
	old := k.endpoints[resource]
	k.endpoints[resource] = ep
	k.mu.Unlock()
	if old != nil {
		old.conn.Close() // the newest registration wins
	}
	f := fields{
		"resource":     resource,
		"registration": ep.registration,
		"options": fields{
			"pre_start_required":                 options.PreStartRequired,
			"get_preferred_allocation_available": options.GetPreferredAllocationAvailable,
		},
	}
	for key, value := range describe {
		f[key] = value
	}
	emit("register", f)
	go k.listAndWatch(ctx, ep)
	return ep
}

// dialContext is the kubelet's dial: 10 s, blocking until the HTTP/2 transport is
// ready (the plugin's SETTINGS arrived), insecure, over a Unix socket.
// ctx can end it sooner.
func (k *kubelet) dialContext(ctx context.Context, path string) (*grpc.ClientConn, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	options := []grpc.DialOption{
		grpc.WithInsecure(),
		grpc.WithBlock(),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", addr)
		}),
	}
	if k.authority == "localhost" {
		options = append(options, grpc.WithAuthority("localhost"))
	}
	return grpc.DialContext(ctx, path, options...)
}

// listAndWatch holds the stream open; any end disconnects the plugin.
func (k *kubelet) listAndWatch(ctx context.Context, ep *endpoint) {
	stream, err := ep.client.ListAndWatch(ctx, &pb.Empty{})
	seq := 0
	for err == nil {
		var response *pb.ListAndWatchResponse
		response, err = stream.Recv()
		if err != nil {
			break
		}
		seq++
		f := summary(response.Devices)
		f["resource"], f["registration"], f["seq"] = ep.resource, ep.registration, seq
		emit("list", f)
	}
	if err == io.EOF {
		err = nil // the plugin ended the stream with OK
	}
	emit("stream_end", withStatus(fields{"resource": ep.resource, "registration": ep.registration}, err))
	ep.conn.Close()
	k.mu.Lock()
	if k.endpoints[ep.resource] == ep {
		delete(k.endpoints, ep.resource)
	}
	k.mu.Unlock()
}

func (k *kubelet) endpoint(resource string) *endpoint {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.endpoints[resource]
}

func (k *kubelet) handle(c *command) fields {
	ep := k.endpoint(c.Resource)
	if ep == nil {
		return fields{"code": -1, "message": fmt.Sprintf("no plugin registered for %q", c.Resource)}
	}
	switch c.Cmd {
	case "allocate":
		request := &pb.AllocateRequest{}
		for _, ids := range c.Containers {
			request.ContainerRequests = append(request.ContainerRequests, &pb.ContainerAllocateRequest{DevicesIds: ids})
		}
		response, err := ep.client.Allocate(context.Background(), request)
		f := withStatus(fields{}, err)
		if err == nil {
			f["containers"] = describeAllocation(response)
		}
		return f
	case "preferred":
		request := &pb.PreferredAllocationRequest{ContainerRequests: []*pb.ContainerPreferredAllocationRequest{{
			AvailableDeviceIDs: c.Available, MustIncludeDeviceIDs: c.MustInclude, AllocationSize: c.Size,
		}}}
		response, err := ep.client.GetPreferredAllocation(context.Background(), request)
		f := withStatus(fields{}, err)
		if err == nil {
			ids := []string{}
			for _, r := range response.ContainerResponses {
				ids = append(ids, r.DeviceIDs...)
			}
			f["ids"] = ids
		}
		return f
	case "pre_start":
		timeout := 30 * time.Second // KubeletPreStartContainerRPCTimeoutInSecs
		if c.TimeoutMS > 0 {
			timeout = time.Duration(c.TimeoutMS) * time.Millisecond
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		_, err := ep.client.PreStartContainer(ctx, &pb.PreStartContainerRequest{DevicesIds: c.IDs})
		return withStatus(fields{}, err)
	case "options":
		options, err := ep.client.GetDevicePluginOptions(context.Background(), &pb.Empty{})
		f := withStatus(fields{}, err)
		if err == nil {
			f["options"] = fields{
				"pre_start_required":                 options.PreStartRequired,
				"get_preferred_allocation_available": options.GetPreferredAllocationAvailable,
			}
		}
		return f
	case "cancel_stream":
		ep.cancel()
		return fields{"code": 0}
	case "disconnect":
		ep.conn.Close()
		return fields{"code": 0}
	}
	return fields{"code": -1, "message": fmt.Sprintf("unknown command %q", c.Cmd)}
}

func describeAllocation(response *pb.AllocateResponse) []fields {
	containers := []fields{}
	for _, r := range response.ContainerResponses {
		devices, mounts, cdi := [][]interface{}{}, [][]interface{}{}, []string{}
		for _, d := range r.Devices {
			devices = append(devices, []interface{}{d.ContainerPath, d.HostPath, d.Permissions})
		}
		for _, m := range r.Mounts {
			mounts = append(mounts, []interface{}{m.ContainerPath, m.HostPath, m.ReadOnly})
		}
		for _, d := range r.CdiDevices {
			cdi = append(cdi, d.Name)
		}
		envs, annotations := map[string]string{}, map[string]string{}
		for k, v := range r.Envs {
			envs[k] = v
		}
		for k, v := range r.Annotations {
			annotations[k] = v
		}
		containers = append(containers, fields{
			"envs": envs, "annotations": annotations, "devices": devices, "mounts": mounts, "cdi": cdi,
		})
	}
	return containers
}

// stop is a kubelet going down: disconnect every plugin, stop serving
// (grpc-go's listener unlinks kubelet.sock).
func (k *kubelet) stop() {
	k.mu.Lock()
	endpoints := k.endpoints
	k.endpoints = map[string]*endpoint{}
	k.mu.Unlock()
	for _, ep := range endpoints {
		ep.conn.Close()
	}
	if k.server != nil {
		k.server.Stop()
	}
}
