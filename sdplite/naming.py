"""Checks on names the kubelet would refuse, done before anything starts.

The resource-name rules are the kubelet's IsExtendedResourceName
(kubernetes/kubernetes pkg/apis/core/v1/helper/helpers.go; docs/design.md,
"Kubelet facts the code relies on"): a name it rejects makes Register fail for
good, so we refuse it up front with a message that says how to fix it.
"""

from __future__ import annotations

import os
import re

from .wire.socket_file import MAX_UNIX_PATH, path_too_long

__all__ = ["validate_resource_name", "validate_socket_name", "InvalidNameError"]

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


class InvalidNameError(ValueError):
    """A resource or socket name that the kubelet or the OS would refuse."""


def validate_resource_name(name: str) -> str:
    """Return ``name`` if the kubelet accepts it as an extended resource name."""
    if not isinstance(name, str):
        raise InvalidNameError(f"resource name must be a str, not {type(name).__name__}")
    example = "use a domain you own, for example 'example.com/gpu'"
    if "/" not in name:
        raise InvalidNameError(f"resource name {name!r} has no domain prefix: {example}")
    if "kubernetes.io/" in name:
        raise InvalidNameError(f"resource name {name!r} uses the reserved kubernetes.io domain: {example}")
    if name.startswith("requests."):
        raise InvalidNameError(f"resource name {name!r} must not start with 'requests.'")
    prefix, _, short = name.partition("/")
    if "/" in short:
        raise InvalidNameError(f"resource name {name!r} has more than one '/': {example}")
    # The kubelet checks "requests." + name, so the prefix gains 9 characters.
    full_prefix = "requests." + prefix
    if len(full_prefix) > 253 or not _SUBDOMAIN.match(full_prefix):
        raise InvalidNameError(
            f"resource name {name!r}: the prefix {prefix!r} must be a lower-case DNS subdomain "
            f"(letters, digits, '-' and '.', at most 244 characters): {example}"
        )
    if not 1 <= len(short) <= 63 or not _NAME.match(short):
        raise InvalidNameError(
            f"resource name {name!r}: the part after '/' must be 1-63 characters of letters, "
            f"digits, '-', '_' or '.', starting and ending with a letter or digit"
        )
    return name


def validate_socket_name(name: str, directory: str) -> str:
    """Return the socket's full path if ``name`` is a plain file name that fits."""
    if not isinstance(name, str) or not name:
        raise InvalidNameError("socket name must be a non-empty str such as 'gpu.sock'")
    if os.sep in name or (os.altsep and os.altsep in name) or name in (".", ".."):
        raise InvalidNameError(
            f"socket name {name!r} must be a file name without a path separator; "
            f"the directory comes from plugin_dir"
        )
    if name == "kubelet.sock":
        raise InvalidNameError("socket name 'kubelet.sock' is the kubelet's own: pick another")
    for what, value in (("socket name", name), ("plugin directory", directory)):
        if "\0" in value:
            raise InvalidNameError(f"{what} {value!r} contains a NUL byte, which no path can hold: remove it")
    path = os.path.join(directory, name)
    size = path_too_long(path)
    if size is not None:
        raise InvalidNameError(
            f"socket path {path!r} is {size} bytes; Unix sockets allow {MAX_UNIX_PATH}: "
            f"use a shorter socket name or plugin_dir"
        )
    return path
