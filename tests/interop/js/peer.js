'use strict';
// peer.js: a grpc-js peer for sdplite's interop tests, driven by pytest.
//
//   node peer.js kubelet --dir DIR [--authority localhost|path] [--cleanup] [--midstream-window N]
//   node peer.js plugin --socket PATH [--midstream-window N]
//
// The same two roles and the same protocol as the grpc-go peer (../go/main.go,
// ../go/kubelet.go, ../go/plugin.go): commands on stdin as JSON lines
// {"id": N, "cmd": NAME, ...}, events on stdout as JSON lines
// {"event": KIND, ...}, one {"event": "reply", "id": N, ...} per command.
// EOF on stdin stops the peer.
//
// grpc-js has no BDP estimator, so unlike grpc-go it never changes its
// flow-control window by itself. With --midstream-window N it does so on
// purpose: when a stream's response starts (kubelet role) or a request
// arrives (plugin role), and again after every 256 KiB received on it, it
// sends SETTINGS with INITIAL_WINDOW_SIZE alternating between N and 16 KiB,
// so the sender's windows grow and shrink (even below the bytes already in
// flight) in the middle of a message.

const crypto = require('crypto');
const fs = require('fs');
const http2 = require('http2');
const path = require('path');
const readline = require('readline');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', '..', 'proto');
const CHECKPOINT = 'kubelet_internal_checkpoint';
const PRE_START_TIMEOUT_MS = 30000; // KubeletPreStartContainerRPCTimeoutInSecs

const v1beta1 = grpc.loadPackageDefinition(
  protoLoader.loadSync('v1beta1/api.proto', {
    includeDirs: [PROTO_ROOT],
    keepCase: true,
    longs: Number,
    defaults: true,
    arrays: true,
  }),
).v1beta1;

// -- output -------------------------------------------------------------------

function emit(kind, fields = {}) {
  process.stdout.write(JSON.stringify({ ...fields, event: kind }) + '\n');
}

// The status of a finished call: code 0 for success.
function withStatus(fields, err) {
  fields.code = err ? err.code : grpc.status.OK;
  fields.message = err ? err.details : '';
  return fields;
}

// Count, healthy count and digest of "ID\tHealth\n" lines; small lists in full.
function summary(devices) {
  const hash = crypto.createHash('sha256');
  let healthy = 0;
  for (const d of devices) {
    hash.update(`${d.ID}\t${d.health}\n`);
    if (d.health === 'Healthy') healthy++;
  }
  const fields = { count: devices.length, healthy, digest: hash.digest('hex') };
  if (devices.length <= 64) {
    fields.devices = devices.map((d) => [
      d.ID,
      d.health,
      ((d.topology && d.topology.nodes) || []).map((n) => Number(n.ID)),
    ]);
  }
  return fields;
}

function parseArgs(args, known) {
  const options = {};
  for (let i = 0; i < args.length; i++) {
    const name = args[i].replace(/^--/, '');
    if (!(name in known)) throw new Error(`unknown option ${args[i]}`);
    options[name] = known[name] === 'flag' ? true : args[++i];
  }
  return options;
}

// -- window changes (--midstream-window) -----------------------------------------

let windowSizes = null; // [N, 16 KiB] when on
let windowTurn = 0;
const WINDOW_CHANGE_EVERY = 256 * 1024;

function changeWindow(session) {
  if (!windowSizes || session.destroyed || session.closed) return;
  const size = windowSizes[windowTurn++ % windowSizes.length];
  session.settings({ initialWindowSize: size });
  emit('window_change', { initial_window_size: size });
}

function changeWindowWhileReceiving(session, stream) {
  if (!windowSizes) return;
  changeWindow(session);
  let received = 0;
  let next = WINDOW_CHANGE_EVERY;
  stream.on('data', (chunk) => {
    received += chunk.length;
    if (received >= next) {
      next += WINDOW_CHANGE_EVERY;
      changeWindow(session);
    }
  });
}

// grpc-js makes its HTTP/2 sessions with Node's http2 module: hook both ends.
const connect = http2.connect;
http2.connect = function (...args) {
  const session = connect.apply(this, args);
  const request = session.request;
  session.request = function (...requestArgs) {
    const stream = request.apply(this, requestArgs);
    stream.once('response', () => changeWindowWhileReceiving(session, stream));
    return stream;
  };
  return session;
};
const createServer = http2.createServer;
http2.createServer = function (...args) {
  const server = createServer.apply(this, args);
  server.on('session', (session) => {
    session.on('stream', (stream) => changeWindowWhileReceiving(session, stream));
  });
  return server;
};

// -- the kubelet role ------------------------------------------------------------

const SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const SHORT_NAME = /^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$/;

// The kubelet's IsExtendedResourceName (docs/design.md, "Kubelet facts the code relies on").
function isExtendedResourceName(name) {
  if (!name.includes('/') || name.includes('kubernetes.io/') || name.startsWith('requests.')) {
    return false;
  }
  const parts = `requests.${name}`.split('/');
  return (
    parts.length === 2 &&
    parts[0].length <= 253 &&
    SUBDOMAIN.test(parts[0]) &&
    parts[1].length <= 63 &&
    SHORT_NAME.test(parts[1])
  );
}

function cleanupPluginDirectory(dir) {
  const removed = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    if (entry.name !== CHECKPOINT && entry.isSocket()) {
      fs.unlinkSync(path.join(dir, entry.name));
      removed.push(entry.name);
    }
  }
  return removed;
}

function removeIfThere(file) {
  try {
    fs.unlinkSync(file);
  } catch (err) {
    if (err.code !== 'ENOENT') throw err;
  }
}

function bind(server, socket) {
  return new Promise((resolve, reject) => {
    server.bindAsync(`unix:${socket}`, grpc.ServerCredentials.createInsecure(), (err) =>
      err ? reject(err) : resolve(),
    );
  });
}

class Kubelet {
  constructor(options) {
    this.dir = options.dir;
    this.authority = options.authority || 'localhost';
    if (!this.dir || !['localhost', 'path'].includes(this.authority)) {
      throw new Error('kubelet mode needs --dir, and --authority localhost or path');
    }
    this.socket = path.join(this.dir, 'kubelet.sock');
    this.endpoints = new Map(); // resource name -> endpoint
    this.registrations = 0;
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o750 });
    if (options.cleanup) emit('cleanup', { removed: cleanupPluginDirectory(this.dir) });
    removeIfThere(this.socket);
    this.server = new grpc.Server();
    this.server.addService(v1beta1.Registration.service, {
      Register: (call, callback) => this.register(call.request, callback),
    });
  }

  async start() {
    await bind(this.server, this.socket);
    emit('ready', { socket: this.socket, pid: process.pid });
  }

  refuse(request, message, callback) {
    emit('register_refused', { resource: request.resource_name, message });
    callback({ code: grpc.status.UNKNOWN, details: message });
  }

  // What the kubelet's Register does, all before answering.
  register(request, callback) {
    if (request.version !== 'v1beta1') {
      const message = `requested API version "${request.version}" is not supported by kubelet. Supported version is ["v1beta1"]`;
      return this.refuse(request, message, callback);
    }
    if (!isExtendedResourceName(request.resource_name)) {
      return this.refuse(request, `the ResourceName "${request.resource_name}" is invalid`, callback);
    }
    const target = path.join(this.dir, request.endpoint);
    const client = new v1beta1.DevicePlugin(`unix:${target}`, grpc.credentials.createInsecure(), {
      // grpc-js says "localhost" for unix targets; old kubelets sent the socket path.
      'grpc.default_authority': this.authority === 'localhost' ? 'localhost' : target,
      // One connection per registration, as the kubelet's one ClientConn.
      'grpc.use_local_subchannel_pool': 1,
    });
    // The kubelet's blocking 10 s dial.
    client.waitForReady(Date.now() + 10000, (err) => {
      if (err) {
        client.close();
        return this.refuse(request, `failed to dial device plugin: ${err.message}`, callback);
      }
      client.GetDevicePluginOptions({}, (err, options) => {
        if (err) {
          client.close();
          return this.refuse(request, `failed to get device plugin options: ${err.details}`, callback);
        }
        const ep = { resource: request.resource_name, registration: ++this.registrations, client };
        const old = this.endpoints.get(ep.resource);
        this.endpoints.set(ep.resource, ep);
        if (old) this.disconnect(old); // the newest registration wins
        const requested = request.options || {};
        emit('register', {
          resource: ep.resource,
          registration: ep.registration,
          version: request.version,
          endpoint: request.endpoint,
          request_options: {
            pre_start_required: !!requested.pre_start_required,
            get_preferred_allocation_available: !!requested.get_preferred_allocation_available,
          },
          options: {
            pre_start_required: options.pre_start_required,
            get_preferred_allocation_available: options.get_preferred_allocation_available,
          },
        });
        this.listAndWatch(ep);
        callback(null, {});
      });
    });
  }

  // Hold ListAndWatch open; any end disconnects the plugin.
  listAndWatch(ep) {
    let seq = 0;
    ep.stream = ep.client.ListAndWatch({});
    ep.stream.on('data', (response) => {
      const fields = summary(response.devices);
      Object.assign(fields, { resource: ep.resource, registration: ep.registration, seq: ++seq });
      emit('list', fields);
    });
    ep.stream.on('error', () => {}); // the status event says it all
    ep.stream.on('status', (status) => {
      const err = status.code === grpc.status.OK ? null : status;
      emit('stream_end', withStatus({ resource: ep.resource, registration: ep.registration }, err));
      ep.client.close();
      if (this.endpoints.get(ep.resource) === ep) this.endpoints.delete(ep.resource);
    });
  }

  // The kubelet closes the connection; grpc-js's close() leaves calls running,
  // so cancel the stream first.
  disconnect(ep) {
    if (ep.stream) ep.stream.cancel();
    ep.client.close();
  }

  handle(command, reply) {
    const ep = this.endpoints.get(command.resource);
    if (!ep) return reply({ code: -1, message: `no plugin registered for "${command.resource}"` });
    const client = ep.client;
    switch (command.cmd) {
      case 'allocate': {
        const request = {
          container_requests: (command.containers || []).map((ids) => ({ devices_ids: ids })),
        };
        return client.Allocate(request, (err, response) => {
          const fields = withStatus({}, err);
          if (!err) fields.containers = response.container_responses.map(describeContainer);
          reply(fields);
        });
      }
      case 'preferred': {
        const request = {
          container_requests: [
            {
              available_deviceIDs: command.available || [],
              must_include_deviceIDs: command.must_include || [],
              allocation_size: command.size || 0,
            },
          ],
        };
        return client.GetPreferredAllocation(request, (err, response) => {
          const fields = withStatus({}, err);
          if (!err) fields.ids = response.container_responses.flatMap((c) => c.deviceIDs);
          reply(fields);
        });
      }
      case 'pre_start': {
        const deadline = Date.now() + (command.timeout_ms || PRE_START_TIMEOUT_MS);
        return client.PreStartContainer({ devices_ids: command.ids || [] }, { deadline }, (err) =>
          reply(withStatus({}, err)),
        );
      }
      case 'options':
        return client.GetDevicePluginOptions({}, (err, options) => {
          const fields = withStatus({}, err);
          if (!err) fields.options = options;
          reply(fields);
        });
      case 'cancel_stream':
        ep.stream.cancel();
        return reply({ code: 0 });
      case 'disconnect':
        this.disconnect(ep);
        return reply({ code: 0 });
    }
    return reply({ code: -1, message: `unknown command "${command.cmd}"` });
  }

  // A kubelet going down: disconnect every plugin, stop serving, remove kubelet.sock.
  stop() {
    for (const ep of this.endpoints.values()) this.disconnect(ep);
    this.endpoints.clear();
    this.server.forceShutdown();
    removeIfThere(this.socket);
  }
}

function describeContainer(c) {
  return {
    envs: c.envs || {},
    annotations: c.annotations || {},
    devices: (c.devices || []).map((d) => [d.container_path, d.host_path, d.permissions]),
    mounts: (c.mounts || []).map((m) => [m.container_path, m.host_path, m.read_only]),
    cdi: (c.cdi_devices || []).map((d) => d.name),
  };
}

// -- the plugin role ----------------------------------------------------------------

// grpc-js ends a call at its deadline without telling the handler (no
// 'cancelled' event): a timer for the deadline, or null without one.
function afterDeadline(call, fn) {
  const deadline = Number(call.getDeadline());
  return Number.isFinite(deadline) ? setTimeout(fn, Math.max(0, deadline - Date.now())) : null;
}

// Behaves as described at the top of ../go/plugin.go.
class Plugin {
  constructor(options) {
    if (!options.socket) throw new Error('plugin mode needs --socket');
    this.socket = options.socket;
    this.list = { devices: [] };
    this.watchers = new Map(); // number -> ServerWritableStream
    this.watched = 0;
    removeIfThere(this.socket);
    this.server = new grpc.Server();
    this.server.addService(v1beta1.DevicePlugin.service, {
      GetDevicePluginOptions: (call, callback) =>
        callback(null, { pre_start_required: true, get_preferred_allocation_available: true }),
      ListAndWatch: (call) => this.listAndWatch(call),
      Allocate: (call, callback) => this.allocate(call.request, callback),
      GetPreferredAllocation: (call, callback) => this.preferred(call.request, callback),
      PreStartContainer: (call, callback) => this.preStart(call, callback),
    });
  }

  async start() {
    await bind(this.server, this.socket);
    emit('ready', { socket: this.socket, pid: process.pid });
  }

  listAndWatch(call) {
    const n = ++this.watched;
    this.watchers.set(n, call);
    emit('watch_started', { watcher: n });
    const done = (reason) => {
      clearTimeout(timer);
      if (this.watchers.delete(n)) emit('watch_done', { watcher: n, reason });
    };
    call.on('cancelled', () => done('cancelled'));
    const timer = afterDeadline(call, () => done('deadline'));
    call.write(this.list);
  }

  allocate(request, callback) {
    const containers = request.container_requests;
    const first = containers.length ? containers[0].devices_ids : [];
    if (first.length === 3 && first[0] === '!status') {
      return callback({ code: Number(first[1]), details: first[2] });
    }
    callback(null, {
      container_responses: containers.map((c) => ({ envs: { IDS: c.devices_ids.join(',') } })),
    });
  }

  preferred(request, callback) {
    const container_responses = request.container_requests.map((c) => {
      const chosen = [...c.must_include_deviceIDs];
      for (const id of c.available_deviceIDs) {
        if (chosen.length >= c.allocation_size) break;
        if (!c.must_include_deviceIDs.includes(id)) chosen.push(id);
      }
      return { deviceIDs: chosen };
    });
    callback(null, { container_responses });
  }

  preStart(call, callback) {
    const ids = call.request.devices_ids;
    const deadline = Number(call.getDeadline());
    emit('pre_start', { ids, deadline_ms: Number.isFinite(deadline) ? deadline - Date.now() : -1 });
    if (!(ids.length === 1 && ids[0] === 'hang')) return callback(null, {});
    let finished = false;
    const done = (reason) => {
      clearTimeout(timer);
      if (finished) return;
      finished = true;
      emit('pre_start_done', { reason });
      callback({ code: grpc.status.CANCELLED, details: reason });
    };
    call.on('cancelled', () => done('cancelled'));
    const timer = afterDeadline(call, () => done('deadline'));
  }

  handle(command, reply) {
    switch (command.cmd) {
      case 'publish': {
        let devices;
        if (command.generate) {
          const { prefix, count, width } = command.generate;
          devices = Array.from({ length: count }, (_, i) => ({
            ID: prefix + String(i).padStart(width || 0, '0'),
            health: 'Healthy',
          }));
        } else {
          devices = (command.devices || []).map(([ID, health, numa]) => ({
            ID,
            health,
            topology: numa && numa.length ? { nodes: numa.map((n) => ({ ID: n })) } : null,
          }));
        }
        this.list = { devices };
        for (const call of this.watchers.values()) call.write(this.list);
        return reply({ code: 0, watchers: this.watchers.size });
      }
      case 'end_streams': {
        const watchers = [...this.watchers.entries()];
        this.watchers.clear();
        for (const [n, call] of watchers) {
          emit('watch_done', { watcher: n, reason: 'ended' });
          if (command.code) call.emit('error', { code: command.code, details: command.message || '' });
          else call.end();
        }
        return reply({ code: 0, watchers: watchers.length });
      }
      case 'drain':
        this.server.tryShutdown(() => emit('drained'));
        return reply({ code: 0 });
    }
    return reply({ code: -1, message: `unknown command "${command.cmd}"` });
  }

  stop() {
    this.server.forceShutdown();
    removeIfThere(this.socket);
  }
}

// -- main --------------------------------------------------------------------------

async function main() {
  const [mode, ...args] = process.argv.slice(2);
  let peer;
  if (mode === 'kubelet') {
    const options = parseArgs(args, {
      dir: 'value',
      authority: 'value',
      cleanup: 'flag',
      'midstream-window': 'value',
    });
    if (options['midstream-window']) windowSizes = [Number(options['midstream-window']), 16384];
    peer = new Kubelet(options);
  } else if (mode === 'plugin') {
    const options = parseArgs(args, { socket: 'value', 'midstream-window': 'value' });
    if (options['midstream-window']) windowSizes = [Number(options['midstream-window']), 16384];
    peer = new Plugin(options);
  } else {
    throw new Error('usage: peer.js kubelet --dir DIR ... | peer.js plugin --socket PATH');
  }
  await peer.start();

  let stopped = false;
  const stop = (id) => {
    if (stopped) return;
    stopped = true;
    peer.stop();
    if (id !== undefined) emit('reply', { id, code: 0 });
    // Let stdout drain, then go even if grpc-js still holds timers.
    process.stdout.write('', () => process.exit(0));
  };
  const lines = readline.createInterface({ input: process.stdin });
  lines.on('line', (line) => {
    let command;
    try {
      command = JSON.parse(line);
    } catch (err) {
      return emit('error', { message: `bad command line: ${err.message}` });
    }
    if (command.cmd === 'stop') return stop(command.id);
    peer.handle(command, (fields) => emit('reply', { ...fields, id: command.id }));
  });
  lines.on('close', () => stop());
}

main().catch((err) => {
  process.stderr.write(`peer.js: ${err.stack || err}\n`);
  process.exit(1);
});
