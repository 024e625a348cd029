package main

// The kubelet's DRA side: its plugin watcher with the DRA manager as the
// "DRAPlugin" handler (docs/design.md, "Dynamic Resource Allocation"). A
// socket in the registry DIR is dialled, asked GetInfo (1 s), its
// supported_versions walked in the plugin's order for the first DRAPlugin
// version this kubelet knows, its endpoint (empty: the registration socket)
// dialled, NotifyRegistrationStatus sent (5 s). When the plugin advertises
// DRAResourceHealth (v1 preferred, else v1alpha1) the health stream is held
// open and re-opened after any end. Calls go to the newest registration of a
// driver, with the kubelet's 45 s deadline.
//
// Events: "ready", "register" (driver, socket, endpoint, versions, version,
// health, registration), "notify", "register_failed", "deregister",
// "health" (one NodeWatchResources message), "health_end".
// Commands: prepare, unprepare (driver, claims [[namespace, uid, name]],
// optional version "v1" or "v1beta1"), disconnect (driver), stop.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"

	healthv1 "sdplite.test/drahealthv1"
	healthv1alpha1 "sdplite.test/drahealthv1alpha1"
	drav1 "sdplite.test/drav1"
	drav1beta1 "sdplite.test/drav1beta1"
	reg "sdplite.test/pluginregistration"
)

const (
	draPluginType  = "DRAPlugin"
	draCallTimeout = 45 * time.Second // defaultClientCallTimeout in the kubelet's dra_plugin.go
)

// The DRAPlugin versions a kubelet may know, as plugins advertise them
// (1.34+: both; 1.32 and 1.33: v1beta1 only; --known chooses).
// v1alpha4 (1.31) is here only to play a kubelet that knows none of sdplite's versions.
var draVersions = map[string]string{"v1.DRAPlugin": "v1", "v1beta1.DRAPlugin": "v1beta1", "v1alpha4.DRAPlugin": "v1alpha4"}

type draPlugin struct {
	driver       string
	registration int
	version      string // "v1" or "v1beta1"
	health       string // "", "v1" or "v1alpha1"
	conn         *grpc.ClientConn
	cancel       context.CancelFunc // ends the health stream
}

type draKubelet struct {
	*watcher
	healthRetry time.Duration
	known       map[string]string // advertised DRAPlugin string -> API version
	healthKnown []string          // health API versions, preferred first

	mu            sync.Mutex
	plugins       map[string]*draPlugin // by driver: the newest registration
	bySocket      map[string]*draPlugin
	registrations int
}

func startDRA(args []string) (peer, error) {
	flags := flag.NewFlagSet("dra", flag.ContinueOnError)
	dir := flags.String("dir", "", "the plugins_registry directory")
	retry := flags.Int("health-retry-ms", 5000, "re-open an ended health stream after this long (kubelet: 5 s)")
	known := flags.String("known", "v1.DRAPlugin,v1beta1.DRAPlugin", "the DRAPlugin versions this kubelet knows")
	healthKnown := flags.String("health", "v1,v1alpha1", "the health versions this kubelet knows, preferred first")
	if err := flags.Parse(args); err != nil {
		return nil, err
	}
	if *dir == "" {
		return nil, errors.New("dra mode needs --dir")
	}
	w, err := newWatcher(*dir, "localhost")
	if err != nil {
		return nil, err
	}
	d := &draKubelet{
		watcher:     w,
		healthRetry: time.Duration(*retry) * time.Millisecond,
		known:       map[string]string{},
		healthKnown: strings.Split(*healthKnown, ","),
		plugins:     map[string]*draPlugin{},
		bySocket:    map[string]*draPlugin{},
	}
	for _, v := range strings.Split(*known, ",") {
		if draVersions[v] == "" {
			return nil, fmt.Errorf("--known: unknown version %q", v)
		}
		d.known[v] = draVersions[v]
	}
	w.registerFn, w.deregisterFn = d.register, d.deregister
	w.run()
	return d, nil
}

// register is the operation generator's RegisterPlugin with the DRA manager as the handler.
func (d *draKubelet) register(path string) (string, bool, error) {
	conn, err := d.dialContext(d.ctx, path)
	if err != nil {
		return "", false, fmt.Errorf("RegisterPlugin error -- dial failed at socket %s, err: %v", path, err)
	}
	defer conn.Close()
	client := reg.NewRegistrationClient(conn)
	ctx, cancel := context.WithTimeout(d.ctx, getInfoTimeout)
	info, err := client.GetInfo(ctx, &reg.InfoRequest{})
	cancel()
	if err != nil {
		return "", false, fmt.Errorf("RegisterPlugin error -- failed to get plugin info using RPC GetInfo at socket %s, err: %v", path, err)
	}
	if info.Type != draPluginType {
		text := fmt.Sprintf("RegisterPlugin error -- no handler registered for plugin type: %s at socket %s", info.Type, path)
		if err := d.notify(client, path, info.Name, false, text); err != nil {
			return "", false, err
		}
		return "", false, errors.New(text)
	}
	version := ""
	for _, v := range info.SupportedVersions { // the plugin's order: the first one known wins
		if known, ok := d.known[v]; ok {
			version = known
			break
		}
	}
	if version == "" {
		text := fmt.Sprintf("RegisterPlugin error -- plugin validation failed with err: none of services supported by the plugin %v are supported by the kubelet", info.SupportedVersions)
		if err := d.notify(client, path, info.Name, false, text); err != nil {
			return "", false, err
		}
		return "", false, errors.New(text)
	}
	health := ""
	for _, h := range d.healthKnown { // this kubelet's preference, among what the plugin advertises
		for _, v := range info.SupportedVersions {
			if health == "" && h != "" && v == h+".DRAResourceHealth" {
				health = h
			}
		}
	}
	endpoint := info.Endpoint
	if endpoint == "" {
		endpoint = path
	}
	pluginConn, err := d.dialContext(d.ctx, endpoint)
	if err != nil {
		text := fmt.Sprintf("RegisterPlugin error -- plugin registration failed with err: %v", err)
		return info.Name, true, d.notify(client, path, info.Name, false, text)
	}
	d.add(path, info, version, health, endpoint, pluginConn)
	return info.Name, true, d.notify(client, path, info.Name, true, "")
}

func (d *draKubelet) add(path string, info *reg.PluginInfo, version, health, endpoint string, conn *grpc.ClientConn) {
	ctx, cancel := context.WithCancel(d.ctx)
	d.mu.Lock()
	d.registrations++
	p := &draPlugin{info.Name, d.registrations, version, health, conn, cancel}
	d.plugins[info.Name] = p
	d.bySocket[path] = p
	d.mu.Unlock()
	emit("register", fields{
		"driver": info.Name, "socket": path, "endpoint": info.Endpoint, "dialled": endpoint,
		"versions": info.SupportedVersions, "version": version, "health": health, "registration": p.registration,
	})
	if health != "" {
		go d.watchHealth(ctx, p)
	}
}

// notify sends NotifyRegistrationStatus (5 s deadline) and reports it.
func (d *draKubelet) notify(client reg.RegistrationClient, path, name string, registered bool, text string) error {
	ctx, cancel := context.WithTimeout(d.ctx, notifyTimeout)
	defer cancel()
	_, err := client.NotifyRegistrationStatus(ctx, &reg.RegistrationStatus{PluginRegistered: registered, Error: text})
	emit("notify", withStatus(fields{"socket": path, "driver": name, "registered": registered, "error": text}, err))
	if err != nil {
		return fmt.Errorf("RegisterPlugin error -- failed to send registration status at socket %s, err: %v", path, err)
	}
	return nil
}

// deregister: the registration socket went away; the instance is dropped.
func (d *draKubelet) deregister(path, name string) {
	d.mu.Lock()
	p := d.bySocket[path]
	delete(d.bySocket, path)
	if p != nil && d.plugins[name] == p {
		delete(d.plugins, name)
	}
	d.mu.Unlock()
	emit("deregister", fields{"socket": path, "driver": name, "connected": p != nil})
	if p != nil {
		p.cancel()
		p.conn.Close()
	}
}

// watchHealth holds NodeWatchResources open, re-opening it after any end.
func (d *draKubelet) watchHealth(ctx context.Context, p *draPlugin) {
	for ctx.Err() == nil {
		seq, err := d.healthStream(ctx, p)
		if err == io.EOF {
			err = nil
		}
		emit("health_end", withStatus(fields{"driver": p.driver, "registration": p.registration, "messages": seq}, err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(d.healthRetry):
		}
	}
}

func (d *draKubelet) healthStream(ctx context.Context, p *draPlugin) (int, error) {
	seq := 0
	report := func(devices [][]interface{}) {
		seq++
		emit("health", fields{"driver": p.driver, "registration": p.registration, "version": p.health, "seq": seq, "devices": devices})
	}
	if p.health == "v1" {
		stream, err := healthv1.NewDRAResourceHealthClient(p.conn).NodeWatchResources(ctx, &healthv1.NodeWatchResourcesRequest{})
		for err == nil {
			var m *healthv1.NodeWatchResourcesResponse
			if m, err = stream.Recv(); err == nil {
				devices := [][]interface{}{}
				for _, h := range m.Devices {
					devices = append(devices, []interface{}{h.Device.GetPoolName(), h.Device.GetDeviceName(), h.Health.String(), h.Message, h.LastUpdatedTime})
				}
				report(devices)
			}
		}
		return seq, err
	}
	stream, err := healthv1alpha1.NewDRAResourceHealthClient(p.conn).NodeWatchResources(ctx, &healthv1alpha1.NodeWatchResourcesRequest{})
	for err == nil {
		var m *healthv1alpha1.NodeWatchResourcesResponse
		if m, err = stream.Recv(); err == nil {
			devices := [][]interface{}{}
			for _, h := range m.Devices {
				devices = append(devices, []interface{}{h.Device.GetPoolName(), h.Device.GetDeviceName(), h.Health.String(), h.Message, h.LastUpdatedTime})
			}
			report(devices)
		}
	}
	return seq, err
}

func (d *draKubelet) plugin(driver string) *draPlugin {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.plugins[driver]
}

type claimRef = [3]string // namespace, uid, name

func claimsOf(c *command) []claimRef {
	refs := []claimRef{}
	for _, c := range c.Claims {
		refs = append(refs, claimRef{c[0], c[1], c[2]})
	}
	return refs
}

func (d *draKubelet) handle(c *command) fields {
	p := d.plugin(c.Driver)
	if p == nil {
		return fields{"code": -1, "message": fmt.Sprintf("DRA driver %s is not registered", c.Driver)}
	}
	version := p.version
	if c.Version != "" {
		version = c.Version
	}
	ctx, cancel := context.WithTimeout(context.Background(), draCallTimeout)
	defer cancel()
	switch c.Cmd {
	case "prepare":
		if version == "v1" {
			return prepareV1(ctx, p.conn, claimsOf(c))
		}
		return prepareV1beta1(ctx, p.conn, claimsOf(c))
	case "unprepare":
		if version == "v1" {
			request := &drav1.NodeUnprepareResourcesRequest{}
			for _, r := range claimsOf(c) {
				request.Claims = append(request.Claims, &drav1.Claim{Namespace: r[0], Uid: r[1], Name: r[2]})
			}
			response, err := drav1.NewDRAPluginClient(p.conn).NodeUnprepareResources(ctx, request)
			f := withStatus(fields{"version": version}, err)
			if err == nil {
				errs := fields{}
				for uid, r := range response.Claims {
					errs[uid] = r.Error
				}
				f["claims"] = errs
			}
			return f
		}
		request := &drav1beta1.NodeUnprepareResourcesRequest{}
		for _, r := range claimsOf(c) {
			request.Claims = append(request.Claims, &drav1beta1.Claim{Namespace: r[0], Uid: r[1], Name: r[2]})
		}
		response, err := drav1beta1.NewDRAPluginClient(p.conn).NodeUnprepareResources(ctx, request)
		f := withStatus(fields{"version": version}, err)
		if err == nil {
			errs := fields{}
			for uid, r := range response.Claims {
				errs[uid] = r.Error
			}
			f["claims"] = errs
		}
		return f
	case "disconnect":
		p.conn.Close()
		return fields{"code": 0}
	}
	return fields{"code": -1, "message": fmt.Sprintf("unknown command %q", c.Cmd)}
}

func prepareV1(ctx context.Context, conn *grpc.ClientConn, refs []claimRef) fields {
	request := &drav1.NodePrepareResourcesRequest{}
	for _, r := range refs {
		request.Claims = append(request.Claims, &drav1.Claim{Namespace: r[0], Uid: r[1], Name: r[2]})
	}
	response, err := drav1.NewDRAPluginClient(conn).NodePrepareResources(ctx, request)
	f := withStatus(fields{"version": "v1"}, err)
	if err == nil {
		claims := fields{}
		for uid, r := range response.Claims {
			devices := [][]interface{}{}
			for _, dev := range r.Devices {
				var share interface{}
				if dev.ShareId != nil {
					share = *dev.ShareId
				}
				devices = append(devices, []interface{}{dev.RequestNames, dev.PoolName, dev.DeviceName, dev.CdiDeviceIds, share})
			}
			claims[uid] = fields{"error": r.Error, "devices": devices}
		}
		f["claims"] = claims
	}
	return f
}

func prepareV1beta1(ctx context.Context, conn *grpc.ClientConn, refs []claimRef) fields {
	request := &drav1beta1.NodePrepareResourcesRequest{}
	for _, r := range refs {
		request.Claims = append(request.Claims, &drav1beta1.Claim{Namespace: r[0], Uid: r[1], Name: r[2]})
	}
	response, err := drav1beta1.NewDRAPluginClient(conn).NodePrepareResources(ctx, request)
	f := withStatus(fields{"version": "v1beta1"}, err)
	if err == nil {
		claims := fields{}
		for uid, r := range response.Claims {
			devices := [][]interface{}{}
			for _, dev := range r.Devices {
				devices = append(devices, []interface{}{dev.RequestNames, dev.PoolName, dev.DeviceName, dev.CdiDeviceIds, nil})
			}
			claims[uid] = fields{"error": r.Error, "devices": devices}
		}
		f["claims"] = claims
	}
	return f
}

// stop: the kubelet goes away; connections close, the sockets stay.
func (d *draKubelet) stop() {
	d.watcher.cancel()
	d.watcher.wg.Wait()
	d.mu.Lock()
	plugins := d.bySocket
	d.bySocket = map[string]*draPlugin{}
	d.plugins = map[string]*draPlugin{}
	d.mu.Unlock()
	for _, p := range plugins {
		p.cancel()
		p.conn.Close()
	}
}
