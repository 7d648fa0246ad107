"""The forja-serve address and headers the load scripts use (standard library only).

Only loopback addresses are accepted: the scripts are local load tests, never
remote ones.
"""
import ipaddress
import socket
import sys
import urllib.parse


def is_loopback(host):
    try:
        addrs = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        return False
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)


def target(url_text, tool):
    """(host, port, base path without a trailing /v1) of an http:// loopback
    URL; exits naming `tool` and the problem otherwise."""
    url = urllib.parse.urlsplit(url_text)
    if url.scheme != "http" or not url.hostname:
        sys.exit(f"{tool}: --url must be http://HOST:PORT")
    if not is_loopback(url.hostname):
        sys.exit(f"{tool}: {url.hostname} is not a loopback address; refusing")
    base = url.path.rstrip("/")
    if base.endswith("/v1"):
        base = base[:-3]
    return url.hostname, url.port or 80, base


def headers(api_key, **extra):
    """JSON content type, the bearer key when given, and `extra` headers."""
    h = {"Content-Type": "application/json", **extra}
    if api_key:
        h["Authorization"] = f"Bearer {api_key}"
    return h
