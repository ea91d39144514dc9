"""The Ray session: join a cluster, or start an embedded Ray tuned for Tune's trial actors.

Studies, streamed training and streamed scoring all need Ray; they share this one start-up so
the workarounds below (quiet logs, prestarted workers the trial actors can take) live in one place.
"""

from __future__ import annotations

import logging
import os

from abexrat.core.errors import UserError


def connect(address: str | None, preload: tuple[str, ...] = ()) -> bool:
    """Join ``address`` (or ``$RAY_ADDRESS``), else start an embedded local Ray whose prestarted
    workers import ``preload`` and can host Tune's trial actors. True if we started it."""
    import ray

    # Tune's own tables would drown the progress line: verbose=0 is silent only with the legacy output.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.getLogger("tensorboardX").setLevel(logging.WARNING)  # it complains about per-class key names
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    quiet = {"include_dashboard": False, "log_to_driver": False, "configure_logging": True, "logging_level": "ERROR"}
    if not _starts_local_ray(address):
        try:
            ray.init(address=address, **quiet)
        except Exception as e:
            raise UserError(
                f"--address {address or 'auto'}: cannot connect to the Ray cluster ({str(e).splitlines()[0]})"
            ) from None
    else:
        system = None
        if preload:
            _trial_actors_take_prestarted_workers()
            system = {
                "preload_python_modules": list(preload),
                # Once Tune's placement groups reserve every CPU, Ray reaps workers idle for over
                # this long (default 1 s) before the trial actors' leases arrive: keep the preloaded ones.
                "idle_worker_killing_time_threshold_ms": 60_000,
            }
        ray.init(address=address, **quiet, _system_config=system)
    return True


def _starts_local_ray(address: str | None) -> bool:
    """Whether ``ray.init(address)`` starts a new local Ray rather than joining one (with no address,
    Ray joins a cluster ``ray start``-ed on this machine if there is one)."""
    try:
        from ray._private.services import canonicalize_bootstrap_address

        return canonicalize_bootstrap_address(address) is None
    except ImportError:  # Ray moved it: only "local" is sure to start one
        return address == "local"
    except Exception:  # a malformed address, "auto" with no cluster: joining reports it
        return False


def _trial_actors_take_prestarted_workers() -> None:
    """Tune gives its trial actors ``runtime_env={"env_vars": {"PL_DISABLE_FORK": "1"}}`` (a PyTorch
    Lightning switch), and Ray hands an actor with its own runtime env only a worker started for that
    env: each trial actor would start a new process (~0.7 s) and import torch and ray.tune there
    (~2 s) instead of taking a prestarted, preloaded worker. For a Ray we start here, the variables go
    into the environment its workers inherit instead, and the actors' runtime env is left empty."""
    from ray.tune.execution import class_cache

    defaults = getattr(class_cache, "DEFAULT_ENV_VARS", None)
    if isinstance(defaults, dict):
        for key, value in defaults.items():
            os.environ.setdefault(key, value)
        defaults.clear()


def cluster_resources() -> tuple[float, float]:
    import ray

    r = ray.cluster_resources()
    return float(r.get("CPU", 1)), float(r.get("GPU", 0))
