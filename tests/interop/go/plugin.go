package main

// The plugin role: a v1beta1.DevicePlugin server for sdplite's client.
//
// GetDevicePluginOptions: both options true.
// ListAndWatch: the current list, then every "publish", until cancelled or
// "end_streams".
// Allocate: echoes, one container response per request, envs {"IDS": the IDs
// joined by ","}; a first container whose IDs are ["!status", CODE, MESSAGE]
// fails the call with that status instead.
// GetPreferredAllocation: must_include, then the other available IDs in
// order, up to the size.
// PreStartContainer: reports the deadline it saw; the ID list ["hang"]
// waits until the call is cancelled or its deadline passes.
//
// Events: "ready", "watch_started", "watch_done" (with the reason),
// "pre_start", "pre_start_done", "drained". Commands: publish, end_streams,
// drain (a graceful stop), stop.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "sdplite.test/v1beta1"
)

type plugin struct {
	pb.UnimplementedDevicePluginServer
	server *grpc.Server

	mu       sync.Mutex
	list     *pb.ListAndWatchResponse
	watchers map[int]chan watchItem
	watched  int
}

// watchItem is the next thing a ListAndWatch sends: a list, or its end.
type watchItem struct {
	list *pb.ListAndWatchResponse
	end  error
}

func startPlugin(args []string) (peer, error) {
	flags := flag.NewFlagSet("plugin", flag.ContinueOnError)
	sock := flags.String("socket", "", "the socket to serve on")
	if err := flags.Parse(args); err != nil {
		return nil, err
	}
	if *sock == "" {
		return nil, errors.New("plugin mode needs --socket")
	}
	if err := os.Remove(*sock); err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	listener, err := net.Listen("unix", *sock)
	if err != nil {
		return nil, err
	}
	p := &plugin{list: &pb.ListAndWatchResponse{}, watchers: map[int]chan watchItem{}}
	p.server = grpc.NewServer()
	pb.RegisterDevicePluginServer(p.server, p)
	go p.server.Serve(listener)
	emit("ready", fields{"socket": *sock, "pid": os.Getpid()})
	return p, nil
}

func (p *plugin) GetDevicePluginOptions(context.Context, *pb.Empty) (*pb.DevicePluginOptions, error) {
	return &pb.DevicePluginOptions{PreStartRequired: true, GetPreferredAllocationAvailable: true}, nil
}

func (p *plugin) ListAndWatch(_ *pb.Empty, stream pb.DevicePlugin_ListAndWatchServer) error {
	items := make(chan watchItem, 1024)
	p.mu.Lock()
	p.watched++
	n := p.watched
	p.watchers[n] = items
	first := p.list
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.watchers, n)
		p.mu.Unlock()
	}()
	emit("watch_started", fields{"watcher": n})
	ctx := stream.Context()
	item := watchItem{list: first}
	for {
		if item.end != nil {
			emit("watch_done", fields{"watcher": n, "reason": "ended"})
			if item.end == errStreamOK {
				return nil
			}
			return item.end
		}
		if err := stream.Send(item.list); err != nil {
			emit("watch_done", fields{"watcher": n, "reason": "send failed: " + err.Error()})
			return err
		}
		select {
		case <-ctx.Done():
			emit("watch_done", fields{"watcher": n, "reason": ctx.Err().Error()})
			return status.FromContextError(ctx.Err()).Err()
		case item = <-items:
		}
	}
}

func (p *plugin) Allocate(_ context.Context, r *pb.AllocateRequest) (*pb.AllocateResponse, error) {
	response := &pb.AllocateResponse{}
	for i, c := range r.ContainerRequests {
		if i == 0 && len(c.DevicesIds) == 3 && c.DevicesIds[0] == "!status" {
			code, err := strconv.Atoi(c.DevicesIds[1])
			if err != nil {
				return nil, err
			}
			return nil, status.Error(codes.Code(code), c.DevicesIds[2])
		}
		response.ContainerResponses = append(response.ContainerResponses, &pb.ContainerAllocateResponse{
			Envs: map[string]string{"IDS": strings.Join(c.DevicesIds, ",")},
		})
	}
	return response, nil
}

func (p *plugin) GetPreferredAllocation(
	_ context.Context, r *pb.PreferredAllocationRequest,
) (*pb.PreferredAllocationResponse, error) {
	response := &pb.PreferredAllocationResponse{}
	for _, c := range r.ContainerRequests {
		chosen := append([]string{}, c.MustIncludeDeviceIDs...)
		must := map[string]bool{}
		for _, id := range chosen {
			must[id] = true
		}
		for _, id := range c.AvailableDeviceIDs {
			if len(chosen) >= int(c.AllocationSize) {
				break
			}
			if !must[id] {
				chosen = append(chosen, id)
			}
		}
		response.ContainerResponses = append(response.ContainerResponses,
			&pb.ContainerPreferredAllocationResponse{DeviceIDs: chosen})
	}
	return response, nil
}

func (p *plugin) PreStartContainer(
	ctx context.Context, r *pb.PreStartContainerRequest,
) (*pb.PreStartContainerResponse, error) {
	f := fields{"ids": r.DevicesIds, "deadline_ms": -1}
	if deadline, ok := ctx.Deadline(); ok {
		f["deadline_ms"] = time.Until(deadline).Milliseconds()
	}
	emit("pre_start", f)
	if len(r.DevicesIds) == 1 && r.DevicesIds[0] == "hang" {
		<-ctx.Done()
		emit("pre_start_done", fields{"reason": ctx.Err().Error()})
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	return &pb.PreStartContainerResponse{}, nil
}

// devicesFrom builds a list from [[id, health, [numa...]], ...] or a generator.
func devicesFrom(c *command) ([]*pb.Device, error) {
	var devices []*pb.Device
	if g := c.Generate; g != nil {
		for i := 0; i < g.Count; i++ {
			id := fmt.Sprintf("%s%0*d", g.Prefix, g.Width, i)
			devices = append(devices, &pb.Device{ID: id, Health: "Healthy"})
		}
		return devices, nil
	}
	for _, d := range c.Devices {
		if len(d) < 2 {
			return nil, fmt.Errorf("device %v: want [id, health, numa nodes]", d)
		}
		id, _ := d[0].(string)
		health, _ := d[1].(string)
		device := &pb.Device{ID: id, Health: health}
		if len(d) > 2 {
			nodes, _ := d[2].([]interface{})
			if len(nodes) > 0 {
				device.Topology = &pb.TopologyInfo{}
			}
			for _, n := range nodes {
				number, _ := n.(float64)
				device.Topology.Nodes = append(device.Topology.Nodes, &pb.NUMANode{ID: int64(number)})
			}
		}
		devices = append(devices, device)
	}
	return devices, nil
}

func (p *plugin) broadcast(item watchItem) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if item.list != nil {
		p.list = item.list
	}
	for _, w := range p.watchers {
		w <- item
	}
	return len(p.watchers)
}

func (p *plugin) handle(c *command) fields {
	switch c.Cmd {
	case "publish":
		devices, err := devicesFrom(c)
		if err != nil {
			return fields{"code": -1, "message": err.Error()}
		}
		n := p.broadcast(watchItem{list: &pb.ListAndWatchResponse{Devices: devices}})
		return fields{"code": 0, "watchers": n}
	case "end_streams":
		var end error = status.Error(codes.Code(c.Code), c.Message)
		if c.Code == 0 {
			end = errStreamOK
		}
		return fields{"code": 0, "watchers": p.broadcast(watchItem{end: end})}
	case "drain":
		// GOAWAY, then wait for the calls in flight; "drained" once they are done.
		go func() {
			p.server.GracefulStop()
			emit("drained", nil)
		}()
		return fields{"code": 0}
	}
	return fields{"code": -1, "message": fmt.Sprintf("unknown command %q", c.Cmd)}
}

// errStreamOK marks an end with status OK (a nil error would be no end at all).
var errStreamOK = errors.New("end with OK")

func (p *plugin) stop() {
	p.server.Stop()
}
