"""Names the kubelet and its plugins agree on: gRPC method paths, versions, directories.

A method path is ``/<proto package>.<service>/<method>``; the tests check each one
against the service descriptors generated from ``proto/``.
"""

# --- device plugin API, v1beta1 (proto package "v1beta1") ---------------------

VERSION = "v1beta1"
SUPPORTED_VERSIONS = (VERSION,)

#: Device.health values. The kubelet counts a device healthy only if its health is
#: exactly HEALTHY; any other string makes it unhealthy.
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"

#: Directory of kubelet.sock and of the plugins' own sockets (trailing slash kept,
#: as in the kubelet's constant).
DEVICE_PLUGIN_PATH = "/var/lib/kubelet/device-plugins/"
#: The kubelet's registration socket, a file name inside DEVICE_PLUGIN_PATH.
KUBELET_SOCKET = "kubelet.sock"
#: The kubelet's own file in DEVICE_PLUGIN_PATH; not a socket, never to be removed.
CHECKPOINT_FILE = "kubelet_internal_checkpoint"
#: The kubelet's deadline for PreStartContainer, in seconds.
PRE_START_CONTAINER_TIMEOUT = 30.0

REGISTRATION_SERVICE = "v1beta1.Registration"
DEVICE_PLUGIN_SERVICE = "v1beta1.DevicePlugin"

REGISTER = "/v1beta1.Registration/Register"
GET_DEVICE_PLUGIN_OPTIONS = "/v1beta1.DevicePlugin/GetDevicePluginOptions"
LIST_AND_WATCH = "/v1beta1.DevicePlugin/ListAndWatch"  # server-streaming
GET_PREFERRED_ALLOCATION = "/v1beta1.DevicePlugin/GetPreferredAllocation"
ALLOCATE = "/v1beta1.DevicePlugin/Allocate"
PRE_START_CONTAINER = "/v1beta1.DevicePlugin/PreStartContainer"

# --- plugin-watcher registration (proto package "pluginregistration") ---------

#: Directory the kubelet watches for registration sockets.
PLUGINS_REGISTRY_PATH = "/var/lib/kubelet/plugins_registry/"
#: PluginInfo.type of a device plugin.
DEVICE_PLUGIN_TYPE = "DevicePlugin"

PLUGIN_REGISTRATION_SERVICE = "pluginregistration.Registration"
GET_INFO = "/pluginregistration.Registration/GetInfo"
NOTIFY_REGISTRATION_STATUS = "/pluginregistration.Registration/NotifyRegistrationStatus"

# --- pod resources, v1 (proto package "v1"), served by the kubelet ------------

POD_RESOURCES_PATH = "/var/lib/kubelet/pod-resources/"
POD_RESOURCES_SOCKET = POD_RESOURCES_PATH + "kubelet.sock"

POD_RESOURCES_SERVICE = "v1.PodResourcesLister"
POD_RESOURCES_LIST = "/v1.PodResourcesLister/List"
POD_RESOURCES_GET_ALLOCATABLE = "/v1.PodResourcesLister/GetAllocatableResources"
POD_RESOURCES_GET = "/v1.PodResourcesLister/Get"

# --- Dynamic Resource Allocation (docs/design.md, "Dynamic Resource Allocation") ---
# For DRAPlugin the string a plugin advertises in PluginInfo.supported_versions is
# NOT the gRPC service name; for DRAResourceHealth it is.

#: PluginInfo.type of a DRA driver.
DRA_PLUGIN_TYPE = "DRAPlugin"
#: Where DRA drivers keep their service sockets and data: <dir>/<driver name>/.
DRA_PLUGINS_PATH = "/var/lib/kubelet/plugins/"

DRA_V1_SERVICE = "k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin"
DRA_V1BETA1_SERVICE = "k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin"
DRA_V1_PREPARE = f"/{DRA_V1_SERVICE}/NodePrepareResources"
DRA_V1_UNPREPARE = f"/{DRA_V1_SERVICE}/NodeUnprepareResources"
DRA_V1BETA1_PREPARE = f"/{DRA_V1BETA1_SERVICE}/NodePrepareResources"
DRA_V1BETA1_UNPREPARE = f"/{DRA_V1BETA1_SERVICE}/NodeUnprepareResources"
#: Advertised for the two DRAPlugin versions, newest first: kubelets 1.34+ take the
#: first entry they know, in the plugin's order.
DRA_V1_VERSION = "v1.DRAPlugin"
DRA_V1BETA1_VERSION = "v1beta1.DRAPlugin"

DRA_HEALTH_V1_SERVICE = "v1.DRAResourceHealth"
DRA_HEALTH_V1ALPHA1_SERVICE = "v1alpha1.DRAResourceHealth"
DRA_HEALTH_V1_WATCH = f"/{DRA_HEALTH_V1_SERVICE}/NodeWatchResources"  # server-streaming
DRA_HEALTH_V1ALPHA1_WATCH = f"/{DRA_HEALTH_V1ALPHA1_SERVICE}/NodeWatchResources"  # server-streaming
