"""Starting or joining a Ray cluster for the distributed CLIs (``reproduce.py``, ``extract_features.py --ray``).

Without an address a local Ray instance is started with the given CPUs/GPUs, no dashboard unless asked,
worker output kept out of the console (``log_to_driver=False``: each task writes its own log file) and
Ray's temporary files and logs in Ray's own temp folder (``/tmp/ray`` unless ``--ray-temp-dir``), never in
the project tree. With an address (``auto``, ``ray://host:port``, ``host:port``) the CLI joins a running
cluster started with ``ray start`` (on SLURM, for instance, see Ray's cluster documentation).

Workers import the project, so they get the project root on ``PYTHONPATH`` and a few environment
variables the project reads (cache folder, Hugging Face offline settings): a local instance inherits
them from the driver, a cluster's workers get them through the job's runtime environment. On a cluster
the project and the data must be at the same paths on every node (a shared file system).

When Ray is already initialised in this process (a notebook, a test) that session is used as it is and
left running.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

from utils.errors import InputError, one_line
from utils.paths import CACHE_ENV, PROJECT_ROOT

# Environment variables the workers need to see as the driver does (when set in the driver).
FORWARDED_ENV = (
    CACHE_ENV,
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "TOKENIZERS_PARALLELISM",
)


def import_ray():
    """The ``ray`` module, or one error line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError("Ray is not installed: pip install 'ray>=2.9'") from None
    return ray


def worker_runtime_env() -> dict:
    """Runtime environment of the job: the project on ``PYTHONPATH`` plus :data:`FORWARDED_ENV`."""
    path = [str(PROJECT_ROOT)]
    if os.environ.get("PYTHONPATH"):
        path.append(os.environ["PYTHONPATH"])
    env = {"PYTHONPATH": os.pathsep.join(path)}
    env.update({name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)})
    return {"env_vars": env}


@dataclass
class RaySession:
    """The Ray session a CLI works in."""

    owned: bool  # initialised by this CLI (and shut down by :meth:`close`)
    local: bool  # a local instance started by this CLI
    address: str
    dashboard_url: str | None
    seconds: float  # start-up (or connection) time

    def describe(self) -> str:
        ray = import_ray()
        resources = ray.cluster_resources()
        cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        how = "started a local Ray instance" if self.local else f"joined the Ray cluster at {self.address}"
        if not self.owned:
            how = "using the Ray session of this process"
        return f"{how}: {nodes} node(s), {cpus:g} CPU(s), {gpus:g} GPU(s) ({self.seconds:.1f} s)"

    def close(self) -> None:
        if self.owned:
            import_ray().shutdown()


def start_ray(
    address: str | None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    dashboard: bool = False,
    temp_dir: str | None = None,
) -> RaySession:
    """Join ``address`` or start a local instance (``num_cpus``/``num_gpus``: None = all of this machine)."""
    import time

    ray = import_ray()
    start = time.perf_counter()
    if ray.is_initialized():
        context = ray.get_runtime_context()
        return RaySession(False, False, context.gcs_address, _dashboard_url(None), 0.0)
    options = {"log_to_driver": False, "configure_logging": True, "logging_level": logging.WARNING}
    if address:
        check_reachable(address)
        try:
            context = ray.init(address=address, runtime_env=worker_runtime_env(), **options)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise InputError(
                f"--address {address}: cannot join a Ray cluster ({one_line(err, with_type=False)}); "
                "start one with 'ray start --head' or leave --address out for a local instance"
            ) from None
    else:
        local = {"num_cpus": num_cpus, "num_gpus": num_gpus, "include_dashboard": dashboard}
        if temp_dir:
            local["_temp_dir"] = str(temp_dir)
        # A local instance's processes inherit this environment: the pre-started workers can then be
        # used as they are (a runtime environment would make Ray start new ones).
        try:
            with _environment(worker_runtime_env()["env_vars"]):
                context = ray.init(**local, **options)
        except Exception as err:  # Ray raises plain Exceptions, e.g. for a dashboard without its packages
            hint = " (the dashboard needs pip install 'ray[default]')" if dashboard else ""
            raise InputError(
                f"cannot start a local Ray instance: {one_line(err, with_type=False)}{hint}"
            ) from None
    return RaySession(
        True, not address, address or "local", _dashboard_url(context), time.perf_counter() - start
    )


CONNECT_TIMEOUT_S = 3.0  # an address that accepts no connection within this time is refused


def address_endpoint(address: str) -> tuple[str, int] | None:
    """``(host, port)`` named by a Ray address (``host:port``, ``ray://host:port``, ``[v6]:port``; a
    ``ray://`` address without a port means the client port 10001); None for ``auto``/``local`` (Ray finds
    the cluster itself) or a form this parser does not know."""
    text = address.strip()
    if text in ("auto", "local", ""):
        return None
    client = text.startswith("ray://")
    if "://" in text:
        if not client:
            return None
        text = text[len("ray://") :]
    text = text.split("/", 1)[0]
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not port and client:
        port = "10001"
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """One :class:`InputError` line when nothing accepts a TCP connection at ``address`` within ``timeout``
    seconds (Ray itself would retry for a minute and print a warning per attempt)."""
    import socket

    endpoint = address_endpoint(address)
    if endpoint is None:
        return
    try:
        with socket.create_connection(endpoint, timeout=timeout):
            pass
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else one_line(err, with_type=False)
        _unreachable(address, endpoint, timeout, reason)
    if not address.strip().startswith("ray://"):  # a GCS address: ask it for the cluster id
        problem = _gcs_problem(endpoint, timeout)
        if problem is not None:
            _unreachable(address, endpoint, timeout, problem)


def _unreachable(address: str, endpoint: tuple[str, int], timeout: float, reason: str) -> None:
    raise InputError(
        f"--address {address}: no Ray cluster answers at {endpoint[0]}:{endpoint[1]} within {timeout:g} s "
        f"({reason}); start one with 'ray start --head' or leave --address out for a local instance"
    )


def _gcs_problem(endpoint: tuple[str, int], timeout: float) -> str | None:
    """Why the server at ``endpoint`` is not a Ray GCS (one gRPC call, ``timeout`` seconds), else None.

    Something else listening there (a web server, a proxy) would keep ``ray.init`` retrying for a minute.
    Uses Ray's generated gRPC stubs; when this Ray version lacks them, nothing is checked."""
    try:
        import grpc
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
    except ImportError:
        return None
    not_a_gcs = {
        grpc.StatusCode.UNIMPLEMENTED,  # something speaks gRPC/HTTP2 there, without Ray's service
        grpc.StatusCode.UNAVAILABLE,  # the connection broke or is not HTTP/2
        grpc.StatusCode.DEADLINE_EXCEEDED,  # nothing answered in time
    }
    host = f"[{endpoint[0]}]" if ":" in endpoint[0] else endpoint[0]
    channel = grpc.insecure_channel(f"{host}:{endpoint[1]}")
    try:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=timeout)
    except grpc.RpcError as err:
        code = err.code()
        if code not in not_a_gcs:  # e.g. UNAUTHENTICATED: a Ray GCS that wants a token; ray.init handles it
            return None
        what = "no answer" if code == grpc.StatusCode.DEADLINE_EXCEEDED else "not a Ray GCS"
        return f"{what}: {code.name} {one_line(err.details() or '', 120, with_type=False)}".strip()
    except AttributeError:  # the stubs of this Ray version differ: leave the check to ray.init
        return None
    finally:
        channel.close()
    return None


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    """Set environment variables for the block, then restore the previous values."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _dashboard_url(context) -> str | None:
    url = getattr(context, "dashboard_url", None) if context is not None else None
    if not url:
        return None
    return url if "://" in url else f"http://{url}"


def error_cause(err: BaseException) -> BaseException:
    """The exception a Ray task raised (Ray wraps it in ``RayTaskError``), else ``err`` itself."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, BaseException) else err


def error_line(err: BaseException, limit: int = 300) -> str:
    """A failed task's error on one line: an :class:`InputError`'s message, else ``Type: message``."""
    cause = error_cause(err)
    if isinstance(cause, InputError):
        return one_line(cause, limit=limit, with_type=False)
    return one_line(cause, limit=limit)
