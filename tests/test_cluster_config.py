"""cluster.yaml passes Ray's own cluster-config validation and installs abexrat with the gpu extra."""

from __future__ import annotations

import copy

import pytest
import yaml

from tests.conftest import REPO


def _config() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_validates_with_ray() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _config()
    validate_config(prepare_config(copy.deepcopy(cfg)))  # what `ray up` runs; raises on a schema error
    assert cfg["docker"]["image"].startswith("rayproject/ray:") and "ray-ml" not in cfg["docker"]["image"]
    assert cfg["docker"]["image"].endswith("-gpu")
    assert cfg["available_node_types"][cfg["head_node_type"]]["resources"] == {"CPU": 0}
    gpu = cfg["available_node_types"]["gpu_worker"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1  # autoscaling from zero
    assert any("abexrat[gpu]" in c for c in cfg["setup_commands"])


def test_ray_rejects_a_broken_copy() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _config()
    cfg["available_node_types"]["gpu_worker"]["max_workers"] = "many"
    with pytest.raises(Exception, match="many"):
        validate_config(prepare_config(cfg))
