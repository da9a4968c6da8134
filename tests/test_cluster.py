"""The cluster launcher files: valid against Ray's shipped schema, GPU workers from zero, no secrets."""

import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@pytest.mark.parametrize("name", ["cluster.yaml", "local.yaml"])
def test_cluster_yaml_is_valid_for_ray_up(name):
    cfg = yaml.safe_load((CLUSTER / name).read_text())
    jsonschema.validate(cfg, SCHEMA)
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cfg))  # what `ray up` itself runs, defaults filled in


def test_aws_cluster_autoscales_gpu_workers_from_zero_with_declared_resources():
    cfg = yaml.safe_load((CLUSTER / "cluster.yaml").read_text())
    nodes = cfg["available_node_types"]
    gpu = [n for n in nodes.values() if n.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu and all(n["min_workers"] == 0 and n["max_workers"] >= 1 for n in gpu)
    assert nodes[cfg["head_node_type"]]["resources"].get("GPU", 0) == 0
    setup = "\n".join(cfg["setup_commands"])
    assert "torch==2.14.1" in setup and "torchvision==0.29.1" in setup and "dpsearch" in setup
    assert ".venv" in cfg["rsync_exclude"]  # the local virtualenv never goes to the nodes


@pytest.mark.parametrize("name", ["cluster.yaml", "local.yaml"])
def test_no_secret_is_written_into_a_cluster_file(name):
    text = (CLUSTER / name).read_text()
    assert not re.search(r"(?i)(aws_secret_access_key|aws_access_key_id|secret_key|password|token)\s*[:=]", text)
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)  # an AWS access key id
